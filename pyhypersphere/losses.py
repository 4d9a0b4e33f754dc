"""Drop-in alignment and uniformity losses (Wang & Isola, ICML 2020).

Same names, signatures, defaults and values as the paper's reference code::

    align_loss(x, y, alpha=2) = (x - y).norm(p=2, dim=1).pow(alpha).mean()
    uniform_loss(x, t=2)      = torch.pdist(x, p=2).pow(2).mul(-t).exp().mean().log()

computed by fused kernels in O(N * d) memory, stable where the reference underflows.
"""

import math
import numbers
from typing import Optional

import torch

from . import _differentiable, _ops

DEFAULT_T = 2.0
DEFAULT_ALPHA = 2.0


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _as_float(value, name: str, function: str) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{function}: {name} must be a number, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    # numbers.Real also admits numpy scalars (np.float32 is no subclass of float).
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{function}: {name} must be a number, got {type(value).__name__}")
    return float(value)


def _check_tensor(value, name: str, function: str) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{function}: {name} must be a torch.Tensor, got {type(value).__name__}")


def _learned(value) -> Optional[torch.Tensor]:
    """`value` if it is a tensor that autograd must differentiate, else None."""
    if isinstance(value, torch.Tensor) and _needs_grad(value):
        return value
    return None


def _scale_to_learned_t(t_tensor: torch.Tensor, t: float, *rows):
    """Rows scaled by s = sqrt(t_tensor / t), which is exactly 1 (t = float(t_tensor)).

    The loss depends on (rows, t) only through t ||z_i - z_j||^2, so uniform(z, t) equals
    uniform(s z, t) with the numbers unchanged, while autograd passes the gradient to
    t_tensor through s: dL/dt = sum_rows <z, dL/dz> / (2t), with no extra kernel work
    beyond the rows' gradients.  Non-floating rows are left alone (the op rejects them).
    """
    s = torch.sqrt(t_tensor / t)
    return tuple(
        r * s.to(device=r.device, dtype=r.dtype) if r is not None and r.is_floating_point() else r
        for r in rows
    )


def uniform_loss(
    x: torch.Tensor,
    t: float = DEFAULT_T,
    *,
    queue: Optional[torch.Tensor] = None,
    intra_batch: bool = True,
) -> torch.Tensor:
    """Uniformity loss: log of the mean Gaussian potential exp(-t ||x_i - x_j||^2) over pairs.

    Args:
        x: features [N, d] (the paper uses L2-normalized ones, but any input works).
        t: the potential's scale, a positive finite number.
        queue: optional [K, d] feature queue (the paper's MoCo variant, Eq. 17/18): the
            mean then runs over the N*K pairs (x_i, queue_k), plus the N(N-1)/2 pairs
            within x when ``intra_batch``.
        intra_batch: include the pairs within x (only meaningful with a queue).

    Returns a 0-dim tensor in x's dtype (float16/bfloat16 inputs are accumulated in
    float32), or in float32 under autocast (as torch.pdist under CUDA autocast).
    Differentiable with respect to x, queue and a tensor t, to any order.
    """
    function = "uniform_loss"
    _check_tensor(x, "x", function)
    if queue is not None:
        _check_tensor(queue, "queue", function)
    elif not intra_batch:
        raise ValueError(f"{function}: intra_batch=False needs a queue (there would be no pairs)")
    t_tensor = _learned(t)
    t = _as_float(t, "t", function)
    if t_tensor is not None:
        x, queue = _scale_to_learned_t(t_tensor, t, x, queue)
    n = x.shape[0] if x.dim() >= 1 else 0
    k = queue.shape[0] if queue is not None and queue.dim() >= 1 else 0
    pairs = (n * (n - 1) // 2 if intra_batch else 0) + n * k
    # log(pairs) of no pairs: the op raises its own error first.
    log_pairs = math.log(pairs) if pairs > 0 else 0.0
    return _ops.uniform_loss_value(
        x, queue, t, bool(intra_batch), _needs_grad(x), queue is not None and _needs_grad(queue),
        log_pairs, _ops.loss_dtype(x),
    )


def align_loss(x: torch.Tensor, y: torch.Tensor, alpha: float = DEFAULT_ALPHA) -> torch.Tensor:
    """Alignment loss: mean over rows of ||x_i - y_i||^alpha.

    Args:
        x, y: paired features [N, d] (positive pairs), same shape, dtype and device.
        alpha: exponent, a positive finite number.

    Returns a 0-dim tensor in x's dtype, or in float32 under autocast (as the
    reference's norm under CUDA autocast).  Differentiable with respect to x, y and a
    tensor alpha, to any order.
    """
    function = "align_loss"
    _check_tensor(x, "x", function)
    _check_tensor(y, "y", function)
    alpha_tensor = _learned(alpha)
    alpha = _as_float(alpha, "alpha", function)
    if alpha_tensor is None:
        loss, _ = _ops.align(x, y, alpha, _needs_grad(x, y))
        return loss
    # A learned exponent: the closed form in plain torch ops (O(N d) like the kernel),
    # after the kernel's checks of the arguments.
    with torch.no_grad():
        _ops.align(x, y, alpha, False)
    powers = _differentiable.align_row_powers(x, y, alpha_tensor.to(x.device))
    return powers.mean().to(_ops.loss_dtype(x))
