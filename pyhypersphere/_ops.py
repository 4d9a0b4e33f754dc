"""The compiled operators: fake (meta) implementations and autograd formulas.

The C++ extension registers `torch.ops.pyhypersphere.uniform_lse` and
`torch.ops.pyhypersphere.align_loss` (schemas in csrc/op_schemas.cpp, contract in
csrc/ops.h).  Both compute the gradient in the forward pass when asked (uniform_lse's
`grad_x` / `grad_queue` flags, align_loss's `compute_grad`), so the backward is a scale
by the upstream gradient; under create_graph it is a differentiable recomputation
(_differentiable.py).  The losses call the ops through `uniform_lse` / `align` below:
autograd.Functions usable by torch.func, and uniform_lse's precision warning issued as a
PrecisionWarning.  Gradient routes and their costs: docs/autograd.md.
"""

import warnings

import torch

from . import _C, _differentiable  # noqa: F401  (loads the library and registers the operators)

_lib_ops = torch.ops.pyhypersphere


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def loss_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype of a uniformity loss of x: x's dtype, or under autocast on x's device
    float32 (float64 kept), as torch.pdist under CUDA autocast (csrc/autocast.cpp)."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.promote_types(x.dtype, torch.float32)
    return x.dtype


class PrecisionWarning(UserWarning):
    """The rows given to uniform_loss spread so far that even float64 distances in Gram
    form carry exponent errors above the budget: normalize or rescale the features."""


def _capturing_precision_warning(function, *args):
    """(function(*args), the precision warning the kernels gave meanwhile or "").  The op's
    warning is captured by the extension (csrc/uniform_rows.h) instead of printed, so that
    Python can issue it as a PrecisionWarning; an enclosing capture keeps it for itself."""
    enclosing = _C._capture_precision_warnings(True)
    try:
        result = function(*args)
    finally:
        _C._capture_precision_warnings(enclosing)
    return result, "" if enclosing else _C._take_precision_warning()


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
    lse = x.new_empty((), dtype=torch.float64)
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
#
# Without grad mode in the backward (a plain .backward()), the gradients the kernels
# computed in the forward are scaled by the upstream gradient.  With grad mode on
# (create_graph=True, torch.func.grad), they are recomputed as differentiable
# expressions (_differentiable.py), so second and higher derivatives are exact.


def _setup_uniform(ctx, inputs, output):
    x, queue, t, intra_batch, part, num_parts, want_x, want_queue = inputs[:8]
    lse, grad_x, grad_q = output[:3]
    ctx.inputs = len(inputs)
    ctx.mark_non_differentiable(grad_x, grad_q)
    # No zero tensors for the gradient outputs' (unused) upstream gradients.
    ctx.set_materialize_grads(False)
    ctx.has_queue = queue is not None
    ctx.dtypes = (x.dtype, queue.dtype if queue is not None else None)
    ctx.args = (t, intra_batch, part, num_parts)
    ctx.computed = (bool(want_x), bool(want_queue))
    # Called without every gradient in mind but differentiated anyway: keep the inputs
    # too, to recompute what is missing (and for the differentiable form).
    ctx.save_for_backward(grad_x, grad_q, x, queue, lse)


def _differentiable_uniform(ctx, x, queue, lse, need_x, need_q):
    t, intra_batch, part, num_parts = ctx.args
    if num_parts != 1:
        raise RuntimeError(
            "pyhypersphere: second derivatives of a slice of the pairs (num_parts > 1, as the "
            "distributed loss uses) are not supported; differentiate uniform_loss on the whole batch"
        )
    return _differentiable.uniform_lse_gradients(x, queue, t, intra_batch, lse, need_x, need_q)


def _backward_uniform(ctx, grad_lse, _grad_gx, _grad_gq, grad_loss=None):
    # grad_loss: _UniformLse's fourth output, lse - offset (d loss / d lse = 1); the op's
    # registered autograd has three.  An upstream gradient not materialized is zero.
    if grad_loss is not None:
        grad_lse = grad_loss if grad_lse is None else grad_lse + grad_loss
    unused = (None,) * (ctx.inputs - 2)
    if grad_lse is None:
        return (None, None) + unused
    grad_x, grad_q, x, queue, lse = ctx.saved_tensors
    need_x = ctx.needs_input_grad[0]
    need_q = ctx.has_queue and ctx.needs_input_grad[1]
    if torch.is_grad_enabled():
        grad_x, grad_q = _differentiable_uniform(ctx, x, queue, lse, need_x, need_q)
    elif (need_x and not ctx.computed[0]) or (need_q and not ctx.computed[1]):
        # The forward call already reported any precision warning.
        (_, grad_x, grad_q), _ = _capturing_precision_warning(
            _lib_ops.uniform_lse, x, queue, *ctx.args, need_x, need_q
        )
    # The gradients are in the accumulation dtype (or float64): round to the inputs' once.
    # (A 0-dim grad_lse does not promote them: the product is in their dtype.)
    out_x = (grad_x * grad_lse).to(ctx.dtypes[0]) if need_x else None
    out_q = (grad_q * grad_lse).to(ctx.dtypes[1]) if need_q else None
    return (out_x, out_q) + unused


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
        grad_x = _differentiable.align_gradient(x, y, ctx.alpha)
    elif not ctx.computed:
        _, grad_x = _lib_ops.align_loss(x, y, ctx.alpha, True)
    g = grad_x * grad_loss
    out_x = g.to(ctx.dtypes[0]) if ctx.needs_input_grad[0] else None
    out_y = (-g).to(ctx.dtypes[1]) if ctx.needs_input_grad[1] else None
    return out_x, out_y, None, None


torch.library.register_autograd("pyhypersphere::uniform_lse", _backward_uniform, setup_context=_setup_uniform)
torch.library.register_autograd("pyhypersphere::align_loss", _backward_align, setup_context=_setup_align)


# ---------------------------------------------------------------- torch.func
#
# The autograd that torch.library registers on an op is not usable under torch.func
# transforms (grad, vmap, jacrev: "must override the setup_context staticmethod").  The
# losses therefore call the ops through these autograd.Functions, with the same
# formulas, a vmap rule and a forward-mode rule that raises.  Under torch.compile they
# call the ops directly (their registered autograd and fake kernels are what it traces).

_FORWARD_MODE_MESSAGE = (
    "pyhypersphere: forward-mode AD (torch.func.jvp, jacfwd, torch.func.hessian, "
    "torch.autograd.forward_ad) is not supported by the fused losses; for second "
    "derivatives use reverse mode: torch.autograd.functional.hessian, "
    "torch.func.jacrev(torch.func.jacrev(f)) or autograd.grad(..., create_graph=True)"
)


def _no_forward_mode(ctx, *tangents):
    raise RuntimeError(_FORWARD_MODE_MESSAGE)


def _vmap_by_loop(function):
    """A vmap rule calling `function` once per batch entry: a kernel call is one whole
    problem whose tiles already use every thread, so a loop is what a batch costs."""

    def rule(info, in_dims, *args):
        results = [
            function(*(a.select(dim, b) if dim is not None else a for a, dim in zip(args, in_dims)))
            for b in range(info.batch_size)
        ]
        outputs = tuple(torch.stack(parts) for parts in zip(*results))
        return outputs, (0,) * len(outputs)

    return staticmethod(rule)


def _below_autograd(op, *args):
    """The op called from inside an autograd.Function's forward: straight to its kernel
    (autocast still applies), past the autograd that torch.library registered on it, whose
    Python wrapper (a signature bind and a redispatch, ~15 us a call) would only find grad
    mode off and do the same."""
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)


def func_compatible(name: str, op, setup_context, backward):
    """An autograd.Function calling `op` with the formulas registered on it (setup_context,
    backward), a vmap rule and a forward-mode rule that raises: the op usable by
    torch.func (the contrastive operators use it)."""

    def forward(*args):
        return _below_autograd(op, *args)

    function = type(name, (torch.autograd.Function,), {
        "forward": staticmethod(forward), "setup_context": staticmethod(setup_context),
        "backward": staticmethod(backward), "jvp": staticmethod(_no_forward_mode),
    })  # fmt: skip
    function.vmap = _vmap_by_loop(lambda *args: function.apply(*args))
    return function


class _UniformLse(torch.autograd.Function):
    """The op's (lse, grad_x, grad_queue) and loss = lse - offset in loss_dtype, formed here
    (in float64, rounded once) so that a loss is one autograd node, not three."""

    @staticmethod
    def forward(x, queue, t, intra_batch, part, num_parts, grad_x, grad_queue, offset, loss_dtype):
        lse, gx, gq = _below_autograd(
            _lib_ops.uniform_lse, x, queue, t, intra_batch, part, num_parts, grad_x, grad_queue
        )
        return lse, gx, gq, (lse - offset).to(loss_dtype)

    setup_context = staticmethod(_setup_uniform)
    backward = staticmethod(_backward_uniform)
    jvp = staticmethod(_no_forward_mode)


class _AlignLoss(torch.autograd.Function):
    @staticmethod
    def forward(x, y, alpha, compute_grad):
        return _below_autograd(_lib_ops.align_loss, x, y, alpha, compute_grad)

    setup_context = staticmethod(_setup_align)
    backward = staticmethod(_backward_align)
    jvp = staticmethod(_no_forward_mode)


_UniformLse.vmap = _vmap_by_loop(lambda *args: _UniformLse.apply(*args))
_AlignLoss.vmap = _vmap_by_loop(lambda *args: _AlignLoss.apply(*args))


def _eager(function):
    """`function` (a setup_context-style autograd.Function) in the classic style, for calls
    outside torch.func transforms: the same forward, context and backward, without the
    per-call cost of the style torch.func needs (apply binds the arguments to forward's
    signature with inspect and checks for functorch wrappers: ~30 us, more than the kernel
    at N = 16)."""

    def forward(ctx, *args):
        output = function.forward(*args)
        function.setup_context(ctx, args, output)
        return output

    return type(function.__name__ + "Eager", (torch.autograd.Function,),
                {"forward": staticmethod(forward), "backward": staticmethod(function.backward)})


_UniformLseEager = _eager(_UniformLse)
_AlignLossEager = _eager(_AlignLoss)


def _apply(function, eager, *args):
    return (function if torch._C._are_functorch_transforms_active() else eager).apply(*args)


def _uniform(args, offset, loss_dtype, warn_stacklevel):
    """_UniformLse's outputs; the precision warning `warn_stacklevel` frames up from here."""
    if torch.compiler.is_compiling():
        lse, gx, gq = _lib_ops.uniform_lse(*args)
        return lse, gx, gq, (lse - offset).to(loss_dtype)
    result, message = _capturing_precision_warning(
        _apply, _UniformLse, _UniformLseEager, *args, offset, loss_dtype
    )
    if message:
        warnings.warn(message, PrecisionWarning, stacklevel=warn_stacklevel)
    return result


def uniform_lse(x, queue, t, intra_batch, part, num_parts, grad_x, grad_queue, *, warn_stacklevel=3):
    """The op, differentiable (torch.func included).  Its precision warning is issued as a
    PrecisionWarning attributed to the frame `warn_stacklevel` levels up (3: the caller of
    the public function that called this one), so Python's default filter shows it once
    per call site.  Under torch.compile the op is called directly and warns through c10."""
    args = (x, queue, t, intra_batch, part, num_parts, grad_x, grad_queue)
    return _uniform(args, 0.0, torch.float64, warn_stacklevel + 1)[:3]


def uniform_loss_value(x, queue, t, intra_batch, grad_x, grad_queue, log_pairs, loss_dtype, *, warn_stacklevel=3):
    """lse - log_pairs over the whole pair set, in loss_dtype: uniform_lse's value as a loss,
    one autograd node."""
    args = (x, queue, t, intra_batch, 0, 1, grad_x, grad_queue)
    return _uniform(args, log_pairs, loss_dtype, warn_stacklevel + 1)[3]


def align(x, y, alpha, compute_grad):
    args = (x, y, alpha, compute_grad)
    return _lib_ops.align_loss(*args) if torch.compiler.is_compiling() else _apply(_AlignLoss, _AlignLossEager, *args)
