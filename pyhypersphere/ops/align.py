"""The alignment family: align_loss's fake kernel and autograd, and the public align_loss.

The C++ extension registers `torch.ops.pyhypersphere.align_loss` (schema and checks in
csrc/align.cpp, contract in csrc/ops.h, kernels in csrc/cpu/align_cpu.cpp,
csrc/cuda/align_cuda.cpp and pyhypersphere/triton_kernels/align.py).  It computes the
gradient in the forward pass when asked (`compute_grad`), so the backward is a scale by
the upstream gradient; under create_graph it is the closed form below, differentiable to
every order.  The loss calls the op through `align`: an autograd.Function usable by
torch.func.
"""

import torch

from .. import _C  # noqa: F401  (loads the library and registers the operators)
from ._common import (
    apply_autograd,
    as_float,
    below_autograd,
    check_tensor,
    eager,
    learned,
    loss_dtype,
    needs_grad,
    no_forward_mode,
    vmap_by_loop,
)

# op -> has a C++ CUDA kernel (gpu_backend.py builds its table from this).
OPS = {"align_loss": True}

DEFAULT_ALPHA = 2.0

_lib_ops = torch.ops.pyhypersphere


@torch.library.register_fake("pyhypersphere::align_loss")
def _align_loss_fake(x, y, alpha, compute_grad):
    # As for uniform_lse: with mixed devices this runs instead of the real kernel, and
    # would return an uninitialized tensor on x's device.
    if y.device != x.device:
        raise ValueError(f"align_loss: y must be on the same device as x ({x.device}), got {y.device}")
    grad = torch.empty_like(x, memory_format=torch.contiguous_format) if compute_grad else x.new_empty((0,))
    return x.new_empty(()), grad


# ---------------------------------------------------------------- autograd
#
# A plain backward scales the gradient the kernel computed in the forward; with grad mode
# on (create_graph=True, torch.func.grad) it is the closed form below, so every
# derivative order is exact.


def align_row_powers(x, y, alpha):
    """||x_i - y_i||^alpha per row in float32/float64, differentiable to every order in
    x, y and a tensor alpha.  Rows with x_i == y_i give 0 with zero first derivatives
    (the kernel's convention); alpha == 2 is the polynomial ||x_i - y_i||^2, smooth
    everywhere, so its second derivative at such rows is exact too."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    diff = x.to(acc) - y.to(acc)
    sq = (diff * diff).sum(1)
    if not isinstance(alpha, torch.Tensor) and alpha == 2.0:
        return sq
    positive = sq > 0
    # Two wheres: the unselected branch must not produce inf/NaN gradients at sq == 0.
    safe = torch.where(positive, sq, torch.ones_like(sq))
    return torch.where(positive, safe.pow(alpha / 2), torch.zeros_like(sq))


def align_gradient(x, y, alpha: float):
    """d mean_i ||x_i - y_i||^alpha / d x (d / d y is its negative) in closed form,
    (alpha / N) ||x_i - y_i||^(alpha - 2) (x_i - y_i), differentiable to every order;
    0 at rows with x_i == y_i (for alpha == 2 that is the formula itself)."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    diff = x.to(acc) - y.to(acc)
    scale = alpha / x.shape[0]
    if alpha == 2.0:
        return diff * scale
    sq = (diff * diff).sum(1, keepdim=True)
    positive = sq > 0
    safe = torch.where(positive, sq, torch.ones_like(sq))
    return torch.where(positive, safe.pow(alpha / 2 - 1) * scale, torch.zeros_like(sq)) * diff


def _setup_align(ctx, inputs, output):
    x, y, alpha, compute_grad = inputs
    _, grad_x = output
    ctx.mark_non_differentiable(grad_x)
    ctx.set_materialize_grads(False)
    ctx.alpha = alpha
    ctx.dtypes = (x.dtype, y.dtype)
    ctx.save_for_backward(grad_x, x, y)
    ctx.computed = bool(compute_grad)


def _backward_align(ctx, grad_loss, _grad_gx):
    if grad_loss is None:  # not materialized: the loss's upstream gradient is zero
        return None, None, None, None
    grad_x, x, y = ctx.saved_tensors
    if torch.is_grad_enabled():
        grad_x = align_gradient(x, y, ctx.alpha)
    elif not ctx.computed:
        _, grad_x = _lib_ops.align_loss(x, y, ctx.alpha, True)
    g = grad_x * grad_loss
    out_x = g.to(ctx.dtypes[0]) if ctx.needs_input_grad[0] else None
    out_y = (-g).to(ctx.dtypes[1]) if ctx.needs_input_grad[1] else None
    return out_x, out_y, None, None


torch.library.register_autograd("pyhypersphere::align_loss", _backward_align, setup_context=_setup_align)


class _AlignLoss(torch.autograd.Function):
    @staticmethod
    def forward(x, y, alpha, compute_grad):
        return below_autograd(_lib_ops.align_loss, x, y, alpha, compute_grad)

    setup_context = staticmethod(_setup_align)
    backward = staticmethod(_backward_align)
    jvp = staticmethod(no_forward_mode)


_AlignLoss.vmap = vmap_by_loop(lambda *args: _AlignLoss.apply(*args))
_AlignLossEager = eager(_AlignLoss)


def align(x, y, alpha, compute_grad):
    """The op, differentiable (torch.func included)."""
    args = (x, y, alpha, compute_grad)
    return _lib_ops.align_loss(*args) if torch.compiler.is_compiling() else apply_autograd(_AlignLoss, _AlignLossEager, *args)


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
    check_tensor(x, "x", function)
    check_tensor(y, "y", function)
    alpha_tensor = learned(alpha)
    alpha = as_float(alpha, "alpha", function)
    if alpha_tensor is None:
        loss, _ = align(x, y, alpha, needs_grad(x, y))
        return loss
    # A learned exponent: the closed form in plain torch ops (O(N d) like the kernel),
    # after the kernel's checks of the arguments.
    with torch.no_grad():
        align(x, y, alpha, False)
    powers = align_row_powers(x, y, alpha_tensor.to(x.device))
    return powers.mean().to(loss_dtype(x))
