"""The compiled operators: fake (meta) implementations and autograd formulas.

The C++ extension registers `torch.ops.pyhypersphere.uniform_lse` and
`torch.ops.pyhypersphere.align_loss` (schemas in csrc/op_schemas.cpp, contract in
csrc/ops.h).  Both compute the gradient in the forward pass when asked (uniform_lse's
`grad_x` / `grad_queue` flags, align_loss's `compute_grad`), so the backward is a scale
by the upstream gradient.
"""

import torch

from . import _C  # noqa: F401  (loads the library and registers the operators)

_lib_ops = torch.ops.pyhypersphere


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def loss_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype of a uniformity loss of x: x's dtype, or under autocast on x's device
    float32 (float64 kept), as torch.pdist under CUDA autocast (csrc/autocast.cpp)."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.promote_types(x.dtype, torch.float32)
    return x.dtype


# ---------------------------------------------------------------- fake kernels


@torch.library.register_fake("pyhypersphere::uniform_lse")
def _uniform_lse_fake(x, queue, t, intra_batch, part, num_parts, grad_x, grad_queue):
    # Mixed devices (e.g. a queue on "meta") dispatch here rather than to a real kernel's
    # checks, so this one must raise too.
    if queue is not None and queue.device != x.device:
        raise ValueError(
            f"uniform_loss: queue must be on the same device as x ({x.device}), got {queue.device}"
        )
    if grad_queue and queue is None:
        raise ValueError("uniform_loss: grad_queue=True needs a queue (got queue=None)")
    acc = accumulate_dtype(x.dtype)
    lse = x.new_empty((), dtype=acc)
    gx = x.new_empty(tuple(x.shape), dtype=acc) if grad_x else x.new_empty((0,), dtype=acc)
    gq = queue.new_empty(tuple(queue.shape), dtype=acc) if grad_queue else x.new_empty((0,), dtype=acc)
    return lse, gx, gq


@torch.library.register_fake("pyhypersphere::align_loss")
def _align_loss_fake(x, y, alpha, compute_grad):
    # As for uniform_lse: with mixed devices this runs instead of the real kernel, and
    # would return an uninitialized tensor on x's device.
    if y.device != x.device:
        raise ValueError(f"align_loss: y must be on the same device as x ({x.device}), got {y.device}")
    grad = torch.empty_like(x, memory_format=torch.contiguous_format) if compute_grad else x.new_empty((0,))
    return x.new_empty(()), grad


# ---------------------------------------------------------------- autograd

_DOUBLE_BACKWARD_MESSAGE = (
    "pyhypersphere: double backward (create_graph=True through a fused loss, e.g. a "
    "gradient penalty or a Hessian) is not supported: the fused kernels return first "
    "derivatives only"
)


def first_order_only(result: torch.Tensor) -> torch.Tensor:
    """Make `result` raise when differentiated again instead of silently missing terms."""
    if not torch.is_grad_enabled():
        return result
    # The same mechanism as torch.autograd.function.once_differentiable, with our message.
    err = torch._C._functions.DelayedError(_DOUBLE_BACKWARD_MESSAGE, 1)
    return err(result.detach().requires_grad_(True))


def _setup_uniform(ctx, inputs, output):
    x, queue, t, intra_batch, part, num_parts, want_x, want_queue = inputs
    _, grad_x, grad_q = output
    ctx.mark_non_differentiable(grad_x, grad_q)
    ctx.has_queue = queue is not None
    ctx.dtypes = (x.dtype, queue.dtype if queue is not None else None)
    ctx.args = (t, intra_batch, part, num_parts)
    ctx.computed = (bool(want_x), bool(want_queue))
    # Called without every gradient in mind but differentiated anyway: keep the inputs
    # too, to recompute what is missing.
    ctx.save_for_backward(grad_x, grad_q, x, queue)


def _backward_uniform(ctx, grad_lse, _grad_gx, _grad_gq):
    grad_x, grad_q, x, queue = ctx.saved_tensors
    need_x = ctx.needs_input_grad[0]
    need_q = ctx.has_queue and ctx.needs_input_grad[1]
    if (need_x and not ctx.computed[0]) or (need_q and not ctx.computed[1]):
        _, grad_x, grad_q = _lib_ops.uniform_lse(x, queue, *ctx.args, need_x, need_q)
    # The op's gradients are in the accumulation dtype: round to the inputs' once.
    out_x = out_q = None
    if need_x:
        out_x = first_order_only((grad_x * grad_lse.to(grad_x.dtype)).to(ctx.dtypes[0]))
    if need_q:
        out_q = first_order_only((grad_q * grad_lse.to(grad_q.dtype)).to(ctx.dtypes[1]))
    return out_x, out_q, None, None, None, None, None, None


def _setup_align(ctx, inputs, output):
    x, y, alpha, compute_grad = inputs
    _, grad_x = output
    ctx.mark_non_differentiable(grad_x)
    ctx.alpha = alpha
    if compute_grad:
        ctx.save_for_backward(grad_x)
        ctx.saved_inputs = False
    else:
        ctx.save_for_backward(x, y)
        ctx.saved_inputs = True


def _backward_align(ctx, grad_loss, _grad_gx):
    if ctx.saved_inputs:
        x, y = ctx.saved_tensors
        _, grad_x = _lib_ops.align_loss(x, y, ctx.alpha, True)
    else:
        (grad_x,) = ctx.saved_tensors
    g = grad_x * grad_loss.to(grad_x.dtype)
    out_x = first_order_only(g) if ctx.needs_input_grad[0] else None
    out_y = first_order_only(-g) if ctx.needs_input_grad[1] else None
    return out_x, out_y, None, None


torch.library.register_autograd("pyhypersphere::uniform_lse", _backward_uniform, setup_context=_setup_uniform)
torch.library.register_autograd("pyhypersphere::align_loss", _backward_align, setup_context=_setup_align)


def uniform_lse(x, queue, t, intra_batch, part, num_parts, grad_x, grad_queue):
    return _lib_ops.uniform_lse(x, queue, t, intra_batch, part, num_parts, grad_x, grad_queue)


def align(x, y, alpha, compute_grad):
    return _lib_ops.align_loss(x, y, alpha, compute_grad)
