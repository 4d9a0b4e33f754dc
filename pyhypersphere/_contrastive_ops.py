"""The contrastive operators: fake (meta) implementations and the autograd formula.

`torch.ops.pyhypersphere.contrastive_lse` returns the log-sum-exps of every row's logits
(and, for the symmetric and self-pair forms, of b's rows), over the negatives only when
`skip_positives`; its backward is a second op, `contrastive_lse_backward`, since every
weight exp(s_ij - lse_i) needs row i's final lse.  `contrastive_mean_lse` returns
in-batch InfoNCE's mean cross entropy with its gradients computed in the forward (every
row has the same upstream gradient).  Schemas in csrc/op_schemas.cpp, contract in
csrc/ops.h.  The losses call them through autograd.Functions (usable by torch.func, as
_ops.py's), with the same formulas as the ops' registered autograd (torch.compile).  A
backward with grad mode on (create_graph=True, torch.func.grad) evaluates the gradients
as differentiable torch expressions (_differentiable.py), so every derivative order is
exact.
"""

import torch

from . import _C  # noqa: F401  (loads the library and registers the operators)
from . import _differentiable
from ._ops import accumulate_dtype, func_compatible

_lib_ops = torch.ops.pyhypersphere


@torch.library.register_fake("pyhypersphere::contrastive_lse")
def _contrastive_lse_fake(a, b, scale, self_pairs, lse_b, part, num_parts, skip_positives=False):
    # With mixed devices this runs instead of a real kernel's checks, so it raises too.
    if b.device != a.device:
        raise ValueError(f"contrastive_lse: b must be on the same device as a ({a.device}), got {b.device}")
    acc = accumulate_dtype(a.dtype)
    lse_rows_b = b.shape[0] if lse_b else 0
    return a.new_empty((a.shape[0],), dtype=acc), a.new_empty((lse_rows_b,), dtype=acc)


@torch.library.register_fake("pyhypersphere::contrastive_lse_backward")
def _contrastive_lse_backward_fake(
    a, b, scale, self_pairs, lse_a, lse_b, grad_lse_a, grad_lse_b, part, num_parts, grad_a, grad_b,
    skip_positives=False,
):
    if b.device != a.device:
        raise ValueError(f"contrastive_lse_backward: b must be on the same device as a ({a.device}), got {b.device}")
    acc = accumulate_dtype(a.dtype)
    ga = a.new_empty(tuple(a.shape), dtype=acc) if grad_a else a.new_empty((0,), dtype=acc)
    gb = b.new_empty(tuple(b.shape), dtype=acc) if grad_b else a.new_empty((0,), dtype=acc)
    return ga, gb


def _setup_contrastive(ctx, inputs, output):
    a, b, scale, self_pairs, lse_b, part, num_parts, *skip = inputs
    ctx.args = (scale, self_pairs, part, num_parts)
    ctx.skip_positives = bool(skip and skip[0])
    ctx.has_lse_b = bool(lse_b)
    ctx.dtypes = (a.dtype, b.dtype)
    # An lse nobody differentiates gets None, not zeros: the kernel then skips its terms.
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(a, b, *output)


def _backward_contrastive(ctx, grad_lse_a, grad_lse_b):
    a, b, lse_a, lse_b = ctx.saved_tensors
    scale, self_pairs, part, num_parts = ctx.args
    need_a, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    nones = (None,) * 6  # scale, self_pairs, lse_b, part, num_parts, skip_positives
    if not (need_a or need_b) or (grad_lse_a is None and grad_lse_b is None):
        return None, None, *nones
    acc = lse_a.dtype
    grad_lse_a = grad_lse_a.to(acc) if grad_lse_a is not None else lse_a.new_zeros(lse_a.shape)
    if grad_lse_b is not None:
        grad_lse_b = grad_lse_b.to(acc)
    elif self_pairs:
        grad_lse_b = lse_b.new_zeros(lse_b.shape)
    else:
        grad_lse_b = lse_a.new_empty((0,))
    if torch.is_grad_enabled():
        if num_parts != 1:
            raise RuntimeError(
                "pyhypersphere: second derivatives of a slice of the pairs (num_parts > 1) are not "
                "supported; differentiate the loss on the whole batch"
            )
        with_b = self_pairs or grad_lse_b.numel() > 0
        grad_a, grad_b = _differentiable.contrastive_lse_gradients(
            a, b, scale, self_pairs, ctx.skip_positives, lse_a, lse_b if with_b else None, grad_lse_a,
            grad_lse_b if with_b else None, need_a, need_b,
        )
    else:
        grad_a, grad_b = _lib_ops.contrastive_lse_backward(
            a, b, scale, self_pairs, lse_a, lse_b, grad_lse_a, grad_lse_b, part, num_parts, need_a, need_b,
            ctx.skip_positives,
        )
    # In the accumulation dtype (or float64): round to the inputs' once.
    out_a = grad_a.to(ctx.dtypes[0]) if need_a else None
    out_b = grad_b.to(ctx.dtypes[1]) if need_b else None
    return out_a, out_b, *nones


torch.library.register_autograd(
    "pyhypersphere::contrastive_lse", _backward_contrastive, setup_context=_setup_contrastive
)


_ContrastiveLse = func_compatible("_ContrastiveLse", _lib_ops.contrastive_lse, _setup_contrastive,
                                  _backward_contrastive)


def contrastive_lse(a, b, scale, self_pairs, lse_b, part=0, num_parts=1, *, skip_positives=False):
    """The op, differentiable (torch.func included)."""
    args = (a, b, scale, self_pairs, lse_b, part, num_parts, skip_positives)
    return _lib_ops.contrastive_lse(*args) if torch.compiler.is_compiling() else _ContrastiveLse.apply(*args)


# ---------------------------------------------------------------- contrastive_mean_lse
#
# The mean loss has the same upstream gradient for every row, so the kernel computes the
# gradients in the forward (as uniform_lse does) and the backward scales them.


@torch.library.register_fake("pyhypersphere::contrastive_mean_lse")
def _contrastive_mean_lse_fake(a, b, scale, grad_a, grad_b):
    if b.device != a.device:
        raise ValueError(f"contrastive_mean_lse: b must be on the same device as a ({a.device}), got {b.device}")
    acc = accumulate_dtype(a.dtype)
    ga = a.new_empty(tuple(a.shape), dtype=acc) if grad_a else a.new_empty((0,), dtype=acc)
    gb = b.new_empty(tuple(b.shape), dtype=acc) if grad_b else a.new_empty((0,), dtype=acc)
    return a.new_empty((), dtype=acc), ga, gb


def _setup_mean_lse(ctx, inputs, output):
    a, b, scale, want_a, want_b = inputs
    _, grad_a, grad_b = output
    ctx.mark_non_differentiable(grad_a, grad_b)
    ctx.scale = scale
    ctx.dtypes = (a.dtype, b.dtype)
    ctx.computed = (bool(want_a), bool(want_b))
    # Called without every gradient in mind but differentiated anyway: keep the inputs
    # to recompute what is missing.
    ctx.save_for_backward(grad_a, grad_b, a, b)


def _backward_mean_lse(ctx, grad_mean, _grad_ga, _grad_gb):
    grad_a, grad_b, a, b = ctx.saved_tensors
    need_a, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if torch.is_grad_enabled():
        grad_a, grad_b = _differentiable.mean_cross_entropy_gradients(a, b, ctx.scale, need_a, need_b)
    elif (need_a and not ctx.computed[0]) or (need_b and not ctx.computed[1]):
        _, grad_a, grad_b = _lib_ops.contrastive_mean_lse(a, b, ctx.scale, need_a, need_b)
    # In the accumulation dtype (or float64): round to the inputs' once.
    out_a = (grad_a * grad_mean.to(grad_a.dtype)).to(ctx.dtypes[0]) if need_a else None
    out_b = (grad_b * grad_mean.to(grad_b.dtype)).to(ctx.dtypes[1]) if need_b else None
    return out_a, out_b, None, None, None


torch.library.register_autograd(
    "pyhypersphere::contrastive_mean_lse", _backward_mean_lse, setup_context=_setup_mean_lse
)


_ContrastiveMeanLse = func_compatible("_ContrastiveMeanLse", _lib_ops.contrastive_mean_lse, _setup_mean_lse,
                                      _backward_mean_lse)


def contrastive_mean_lse(a, b, scale):
    """In-batch InfoNCE's mean cross entropy, b_i a_i's positive (csrc/ops.h), differentiable
    (torch.func included); the kernel computes the gradients of the inputs that will need
    them (grad mode on and requires_grad)."""
    grad_on = torch.is_grad_enabled()
    args = (a, b, scale, grad_on and a.requires_grad, grad_on and b.requires_grad)
    op = _lib_ops.contrastive_mean_lse if torch.compiler.is_compiling() else _ContrastiveMeanLse.apply
    mean, _, _ = op(*args)
    return mean
