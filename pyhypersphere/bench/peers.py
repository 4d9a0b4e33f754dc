"""Uniformity-loss formulations built on other libraries: KeOps and FlexAttention.

Both compute the same quantity as `pyhypersphere.reference.reference_uniform_loss`,
log of the mean of exp(-t ||x_i - x_j||^2) over the pairs i < j, in log-sum-exp form.
Both visit every ordered pair (i, j), twice the pairs the fused kernel visits.
"""

import math

import torch

KEOPS_MISSING = "pykeops is not installed (pip install pykeops)"


def keops_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("pykeops") is not None


def keops_uniform_loss(x: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """KeOps LazyTensor reduction: per-row log-sum-exp over all j, diagonal removed after.

    KeOps cannot skip j == i inside the reduction, but that term is exactly exp(0) = 1,
    so each row's off-diagonal log-sum-exp is log(exp(lse_i) - 1) = lse_i + log(-expm1(-lse_i)).
    Precision is lost only in rows where every off-diagonal term is below float epsilon,
    i.e. where the row contributes nothing to the sum anyway.  Works for any input.
    """
    from pykeops.torch import LazyTensor

    n = x.shape[0]
    xi = LazyTensor(x[:, None, :])
    xj = LazyTensor(x[None, :, :])
    lse_all = (-t * xi.sqdist(xj)).logsumexp(dim=1).reshape(-1)
    lse_off_diagonal = lse_all + torch.log(-torch.expm1(-lse_all))
    # sum over ordered pairs = 2 x sum over i < j; the mean runs over n(n-1)/2 pairs
    return torch.logsumexp(lse_off_diagonal, dim=0) - math.log(n * (n - 1))


def _off_diagonal(_batch, _head, q_idx, kv_idx):
    return q_idx != kv_idx


def flex_block_mask(n: int, device):
    """The FlexAttention block mask that drops i == j (built once per size, outside timing)."""
    from torch.nn.attention.flex_attention import create_block_mask

    return create_block_mask(_off_diagonal, 1, 1, n, n, device=device)


def flex_uniform_loss(x: torch.Tensor, t: float = 2.0, *, block_mask=None, attention=None) -> torch.Tensor:
    """FlexAttention log-sum-exp formulation, for unit-norm rows of x.

    For ||x_i|| = 1, -t ||x_i - x_j||^2 = 2t <x_i, x_j> - 2t, so attention with
    q = k = x, scale 2t and the diagonal masked returns lse_i = log sum_{j != i}
    exp(2t <x_i, x_j>), and the loss is logsumexp_i(lse_i) - 2t - log(n(n-1)).
    The value is wrong for rows that are not unit-norm; the gradient equals the
    reference's up to a component along each x_i, which the Jacobian of
    F.normalize (the paper's last layer) removes.

    attention: the flex_attention callable, e.g. torch.compile(flex_attention) (the
    fused kernel; CUDA only for this op: compiled CPU flex attention is inference-only
    and cannot return the lse in torch 2.13); defaults to the eager function, which
    materializes the N x N scores (fine for checking values on small inputs).
    """
    from torch.nn.attention.flex_attention import AuxRequest, flex_attention

    n = x.shape[0]
    if attention is None:
        attention = flex_attention
    if block_mask is None:
        block_mask = flex_block_mask(n, x.device)
    q = x[None, None]  # [batch=1, heads=1, n, d]
    # The output is discarded; value must still be given.  Detached so no gradient flows to it.
    _, aux = attention(q, q, q.detach(), block_mask=block_mask, scale=2.0 * t, return_aux=AuxRequest(lse=True))
    lse = aux.lse.reshape(-1).float()
    return (torch.logsumexp(lse, dim=0) - 2.0 * t - math.log(n * (n - 1))).to(x.dtype)
