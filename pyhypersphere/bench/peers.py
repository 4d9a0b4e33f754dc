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


class _FlexUniformLoss(torch.autograd.Function):
    """The loss from FlexAttention's forward, its gradient from the closed form (no
    attention backward): with lse_i = log sum_{j != i} exp(-t ||x_i - x_j||^2) and
    o_i = sum_{j != i} softmax_j x_j, d LSE / d x_i = -4t softmax_i(lse) (x_i - o_i)."""

    @staticmethod
    def forward(ctx, x, t, block_mask, attention):
        from torch.nn.attention.flex_attention import AuxRequest

        n = x.shape[0]
        sq = x.float().square().sum(1) if x.dtype != torch.float64 else x.square().sum(1)
        col = (-t * sq).to(x.dtype if x.dtype == torch.float64 else torch.float32)

        def score_mod(score, _batch, _head, _q_idx, kv_idx):
            return score + col[kv_idx]  # 2t <x_i, x_j> - t ||x_j||^2

        q = x.detach()[None, None]  # [batch=1, heads=1, n, d]: Q = K = V = x
        out, aux = attention(q, q, q, score_mod=score_mod, block_mask=block_mask, scale=2.0 * t,
                             return_aux=AuxRequest(lse=True))
        lse = aux.lse.reshape(-1).to(sq.dtype) - t * sq  # the row's own -t ||x_i||^2
        total = torch.logsumexp(lse, 0)
        o = out.reshape(n, -1).to(sq.dtype)
        ctx.save_for_backward((-4.0 * t) * torch.exp(lse - total)[:, None] * (x.detach().to(sq.dtype) - o))
        # Ordered pairs: twice the pair sum over twice the pair count.
        return (total - math.log(n * (n - 1))).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_loss):
        (grad,) = ctx.saved_tensors
        return (grad * grad_loss.to(grad.dtype)).to(grad_loss.dtype), None, None, None


def flex_uniform_loss(x: torch.Tensor, t: float = 2.0, *, block_mask=None, attention=None) -> torch.Tensor:
    """Uniformity through FlexAttention's forward, for any rows: Q = K = V = x, scale 2t,
    a score_mod adding -t ||x_j||^2, the diagonal masked by a block mask, the lse
    returned; the loss is logsumexp_i(lse_i - t ||x_i||^2) - log(n(n-1)) and the gradient
    the closed form (_FlexUniformLoss), so no attention backward runs.

    attention: the flex_attention callable, e.g. torch.compile(flex_attention) (the fused
    kernel, CUDA); defaults to the eager function, which materializes the N x N scores
    (runs on CPU: fine for checking values and gradients on small inputs).
    """
    from torch.nn.attention.flex_attention import flex_attention

    if attention is None:
        attention = flex_attention
    if block_mask is None:
        block_mask = flex_block_mask(x.shape[0], x.device)
    return _FlexUniformLoss.apply(x, float(t), block_mask, attention)
