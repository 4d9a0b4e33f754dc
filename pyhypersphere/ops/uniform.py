"""The uniformity family: uniform_lse's fake kernel and autograd, and uniform_loss.

The C++ extension registers `torch.ops.pyhypersphere.uniform_lse` (schema and checks in
csrc/uniform.cpp, contract in csrc/ops.h, kernels in csrc/cpu/uniform_cpu.cpp,
csrc/cuda/uniform_cuda.cpp and pyhypersphere/triton_kernels/uniform.py).  It computes the
gradient in the forward pass when asked (the `grad_x` / `grad_queue` flags), so the
backward is a scale by the upstream gradient; under create_graph it is a differentiable
recomputation (uniform_lse_gradients below).  The losses call the op through
`uniform_lse` / `uniform_loss_value`: autograd.Functions usable by torch.func, and the
op's precision warning issued as a PrecisionWarning; eager CPU calls of uniform_loss take
the C++ twin of that autograd.Function instead (csrc/uniform_autograd.h: no Python
per-call cost).  Gradient routes and their costs: docs/autograd.md.  The global-batch
form is in uniform_distributed.py.
"""

import math
import warnings
from typing import Optional

import torch
import torch.autograd.forward_ad as _forward_ad

from .. import _C
from ._common import (
    accumulate_dtype,
    apply_autograd,
    as_float,
    below_autograd,
    block_rows,
    check_tensor,
    eager,
    learned,
    loss_dtype,
    needs_grad,
    no_forward_mode,
    vmap_by_loop,
)

# op -> has a C++ CUDA kernel (gpu_backend.py builds its table from this).
OPS = {"uniform_lse": True}

DEFAULT_T = 2.0

_lib_ops = torch.ops.pyhypersphere


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


# ---------------------------------------------------------------- differentiable gradient
#
# The fused kernel returns d lse / d x as numbers, without a graph of its own.  When the
# backward runs with grad mode on (create_graph=True, torch.func.grad) the formula below
# is used instead, so every derivative order is exact.
#
# Uniformity: with P the pair set, e_ij = -t ||z_i - z_j||^2 and p_ij = exp(e_ij - lse),
#
#     d lse / d z_i = -2t * sum_{j : (i, j) in P} p_ij (z_i - z_j)
#                   = -2t * (s_i z_i - sum_j p_ij z_j),   s_i = sum_j p_ij.
#
# It is evaluated one block of rows at a time against all of their partners (each block's
# pair matrix holds at most ``PAIR_BLOCK_ELEMENTS`` entries), in float64, on rows centered
# by their (detached) mean: the distances are translation invariant, so the expression is
# the same function of the inputs, with fewer digits lost in the Gram form.  ``lse`` is
# the forward's differentiable output, so the derivative of the normalisation flows
# through the fused op (and, at the next order, through this module again).  Autograd
# keeps each block's pair matrix for the next derivative: a graph built here holds
# O(rows x partners) numbers, as any exact second derivative through the pairs must.


def _rows_gradient(rows, partners, t: float, lse, first_self: Optional[int]):
    """d lse / d rows over the pairs (rows_i, partners_j), excluding the self pairs
    (rows_i, partners_{first_self + i}) when ``first_self`` is given (rows is then a
    slice of partners)."""
    sq_rows = (rows * rows).sum(1)
    sq_partners = (partners * partners).sum(1)
    e = (sq_rows[:, None] + sq_partners[None, :] - 2.0 * (rows @ partners.T)) * -t
    if first_self is not None:
        i = torch.arange(rows.shape[0], device=rows.device)
        j = torch.arange(partners.shape[0], device=rows.device)
        e = torch.where(j[None, :] == (i + first_self)[:, None], float("-inf"), e)
    p = torch.exp(e - lse)
    return (p.sum(1, keepdim=True) * rows - p @ partners) * (-2.0 * t)


def _blocked_gradient(rows, partners, t, lse, with_self_pairs: bool):
    step = block_rows(partners.shape[0])
    blocks = [
        _rows_gradient(rows[s : s + step], partners, t, lse, s if with_self_pairs else None)
        for s in range(0, rows.shape[0], step)
    ]
    return torch.cat(blocks, 0)


def uniform_lse_gradients(x, queue, t: float, intra_batch: bool, lse, want_x: bool, want_queue: bool):
    """(d lse / d x or None, d lse / d queue or None) in float64, differentiable in x,
    queue and lse (the op's output for the same arguments, whole pair set)."""
    x64 = x.to(torch.float64)
    q64 = queue.to(torch.float64) if queue is not None else None
    stacked = x64 if q64 is None else torch.cat([x64, q64], 0)
    center = stacked.detach().mean(0, keepdim=True)
    zx = x64 - center
    zq = q64 - center if q64 is not None else None
    lse = lse.to(torch.float64)
    grad_x = grad_q = None
    if want_x:
        partners = [zx] if intra_batch else []
        if zq is not None:
            partners.append(zq)
        grad_x = _blocked_gradient(zx, torch.cat(partners, 0), t, lse, with_self_pairs=intra_batch)
    if want_queue:
        grad_q = _blocked_gradient(zq, zx, t, lse, with_self_pairs=False)
    return grad_x, grad_q


# ---------------------------------------------------------------- autograd
#
# Without grad mode in the backward (a plain .backward()), the gradients the kernels
# computed in the forward are scaled by the upstream gradient.  With grad mode on
# (create_graph=True, torch.func.grad), they are recomputed as differentiable
# expressions (uniform_lse_gradients above), so second and higher derivatives are exact.


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
    return uniform_lse_gradients(x, queue, t, intra_batch, lse, need_x, need_q)


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


torch.library.register_autograd("pyhypersphere::uniform_lse", _backward_uniform, setup_context=_setup_uniform)


class _UniformLse(torch.autograd.Function):
    """The op's (lse, grad_x, grad_queue) and loss = lse - offset in loss_dtype, formed here
    (in float64, rounded once) so that a loss is one autograd node, not three."""

    @staticmethod
    def forward(x, queue, t, intra_batch, part, num_parts, grad_x, grad_queue, offset, loss_dtype):
        lse, gx, gq = below_autograd(
            _lib_ops.uniform_lse, x, queue, t, intra_batch, part, num_parts, grad_x, grad_queue
        )
        return lse, gx, gq, (lse - offset).to(loss_dtype)

    setup_context = staticmethod(_setup_uniform)
    backward = staticmethod(_backward_uniform)
    jvp = staticmethod(no_forward_mode)


_UniformLse.vmap = vmap_by_loop(lambda *args: _UniformLse.apply(*args))
_UniformLseEager = eager(_UniformLse)


def _uniform(args, offset, loss_dtype, warn_stacklevel):
    """_UniformLse's outputs; the precision warning `warn_stacklevel` frames up from here."""
    if torch.compiler.is_compiling():
        lse, gx, gq = _lib_ops.uniform_lse(*args)
        return lse, gx, gq, (lse - offset).to(loss_dtype)
    result, message = _capturing_precision_warning(
        apply_autograd, _UniformLse, _UniformLseEager, *args, offset, loss_dtype
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


# The C++ twin of _UniformLse (csrc/uniform_autograd.h) calls this under create_graph.
_C._set_uniform_create_graph_gradients(
    lambda x, queue, lse, t, intra_batch, need_x, need_q: uniform_lse_gradients(
        x, queue, t, intra_batch, lse, need_x, need_q
    )
)


def _cpp_autograd_applies(x) -> bool:
    """Eager CPU calls take the C++ autograd node: a Python autograd.Function's per-call
    cost (~25 us forward and backward) is what decides small batches.  torch.compile,
    torch.func transforms and forward-mode AD (which the C++ node lacks) keep _UniformLse;
    so do other devices, whose per-call cost is not Python's."""
    return (
        not torch.compiler.is_compiling()
        and x.is_cpu
        and not torch._C._are_functorch_transforms_active()
        and _forward_ad._current_level < 0
    )


def uniform_loss_value(x, queue, t, intra_batch, grad_x, grad_queue, log_pairs, loss_dtype, *, warn_stacklevel=3):
    """lse - log_pairs over the whole pair set, in loss_dtype: uniform_lse's value as a loss,
    one autograd node."""
    if _cpp_autograd_applies(x):
        loss, message = _C._uniform_loss_autograd(x, queue, t, intra_batch, grad_x, grad_queue, log_pairs, loss_dtype)
        if message:
            warnings.warn(message, PrecisionWarning, stacklevel=warn_stacklevel)
        return loss
    args = (x, queue, t, intra_batch, 0, 1, grad_x, grad_queue)
    return _uniform(args, log_pairs, loss_dtype, warn_stacklevel + 1)[3]


def scale_to_learned_t(t_tensor: torch.Tensor, t: float, *rows):
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
    check_tensor(x, "x", function)
    if queue is not None:
        check_tensor(queue, "queue", function)
    elif not intra_batch:
        raise ValueError(f"{function}: intra_batch=False needs a queue (there would be no pairs)")
    t_tensor = learned(t)
    t = as_float(t, "t", function)
    if t_tensor is not None:
        x, queue = scale_to_learned_t(t_tensor, t, x, queue)
    n = x.shape[0] if x.dim() >= 1 else 0
    k = queue.shape[0] if queue is not None and queue.dim() >= 1 else 0
    pairs = (n * (n - 1) // 2 if intra_batch else 0) + n * k
    # log(pairs) of no pairs: the op raises its own error first.
    log_pairs = math.log(pairs) if pairs > 0 else 0.0
    return uniform_loss_value(
        x, queue, t, bool(intra_batch), needs_grad(x), queue is not None and needs_grad(queue),
        log_pairs, loss_dtype(x),
    )
