"""The contrastive family: the contrastive operators' fake kernels and autograd, and the
losses built on them (SimCLR's NT-Xent, InfoNCE with a MoCo queue, CLIP's symmetric loss).

`torch.ops.pyhypersphere.contrastive_lse` returns the log-sum-exps of every row's logits
(and, for the symmetric and self-pair forms, of b's rows), over the negatives only when
`skip_positives`; its backward is a second op, `contrastive_lse_backward`, since every
weight exp(s_ij - lse_i) needs row i's final lse.  `contrastive_lse_row_grad` returns a's
lse with o_i = sum_j p_ij b_j from the same pass, so that a's gradient needs no second
pass (b's, when b needs one, is contrastive_lse_backward's).  `contrastive_mean_lse` returns
in-batch InfoNCE's mean cross entropy with its gradients computed in the forward (every
row has the same upstream gradient).  Schemas and checks in csrc/contrastive.cpp,
contract in csrc/ops.h, kernels in csrc/cpu/contrastive_cpu.cpp and
pyhypersphere/triton_kernels/contrastive.py.  The losses call them through
autograd.Functions (usable by torch.func, _common.func_compatible), with the same formulas
as the ops' registered autograd (torch.compile).  A backward with grad mode on
(create_graph=True, torch.func.grad) evaluates the gradients as differentiable torch
expressions (below), so every derivative order is exact.  The global-batch forms are in
contrastive_distributed.py.

What the losses compute, and how they stay stable: pyhypersphere/contrastive.py.
"""

import math
from typing import Optional, Tuple, Union

import torch

from .. import _C  # noqa: F401  (loads the library and registers the operators)
from ._common import (
    accumulate_dtype, as_float, block_rows, check_features, check_matches, check_reduction, check_weight, func_compatible,
    loss_dtype, needs_grad, reduce_rows,
)

# op -> has a C++ CUDA kernel (gpu_backend.py builds its table from this): none, Triton's.
OPS = {
    "contrastive_lse": False,
    "contrastive_lse_backward": False,
    "contrastive_lse_row_grad": False,
    "contrastive_mean_lse": False,
}

DEFAULT_NT_XENT_TAU = 0.5  # SimCLR (and lightly's NTXentLoss)
DEFAULT_INFO_NCE_TAU = 0.07  # MoCo
DEFAULT_CLIP_TAU = 0.07  # CLIP's initial temperature

Temperature = Union[float, torch.Tensor]

_lib_ops = torch.ops.pyhypersphere


# ---------------------------------------------------------------- fake kernels


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


@torch.library.register_fake("pyhypersphere::contrastive_lse_row_grad")
def _contrastive_lse_row_grad_fake(a, b, scale, skip_positives=False):
    if b.device != a.device:
        raise ValueError(f"contrastive_lse_row_grad: b must be on the same device as a ({a.device}), got {b.device}")
    acc = accumulate_dtype(a.dtype)
    return a.new_empty((a.shape[0],), dtype=acc), a.new_empty(tuple(a.shape), dtype=acc)


@torch.library.register_fake("pyhypersphere::contrastive_mean_lse")
def _contrastive_mean_lse_fake(a, b, scale, grad_a, grad_b):
    if b.device != a.device:
        raise ValueError(f"contrastive_mean_lse: b must be on the same device as a ({a.device}), got {b.device}")
    acc = accumulate_dtype(a.dtype)
    ga = a.new_empty(tuple(a.shape), dtype=acc) if grad_a else a.new_empty((0,), dtype=acc)
    gb = b.new_empty(tuple(b.shape), dtype=acc) if grad_b else a.new_empty((0,), dtype=acc)
    return a.new_empty((), dtype=acc), ga, gb


# ---------------------------------------------------------------- differentiable gradients
#
# With logits s_ij = scale <r_i, c_j>, the gradient of sum_i g_i lse_i + sum_j h_j lse_j
# (the rows' and the columns' log-sum-exps over their partners) with respect to the rows
# is scale * sum_j W_ij c_j, W_ij = g_i e^(s_ij - lse_i) + h_j e^(s_ij - lse_j), W = 0
# where (i, j) is not a pair.  Self pairs (rows = columns = the stacked views) give the
# whole gradient this way: the logit matrix is symmetric.  Evaluated in float64, one
# block of rows at a time (uniform.py's uniform_lse_gradients likewise).


def _finite_shift(lse):
    """lse with -inf (a row without partners: all its entries are masked) replaced by 0,
    so that exp(-inf - shift) is 0 and its derivative too."""
    return torch.where(torch.isneginf(lse), torch.zeros_like(lse), lse)


def _weighted_rows(rows, cols, scale, row_terms, col_terms, excluded):
    """scale * W @ cols for every row; row_terms / col_terms are (lse, g) or None;
    excluded(i, j) -> bool mask of the entries that are not pairs (i, j index tensors)."""
    step = block_rows(cols.shape[0])
    j = torch.arange(cols.shape[0], device=rows.device)
    blocks = []
    for s in range(0, rows.shape[0], step):
        i = torch.arange(s, min(s + step, rows.shape[0]), device=rows.device)
        logits = torch.where(excluded(i[:, None], j[None, :]), float("-inf"), scale * (rows[i] @ cols.T))
        w = torch.zeros_like(logits)
        if row_terms is not None:
            lse, g = row_terms
            w = w + g[i, None] * torch.exp(logits - _finite_shift(lse)[i, None])
        if col_terms is not None:
            lse, g = col_terms
            w = w + g[None, :] * torch.exp(logits - _finite_shift(lse)[None, :])
        blocks.append(scale * (w @ cols))
    return torch.cat(blocks, 0)


def contrastive_lse_gradients(a, b, scale, self_pairs, skip_positives, lse_a, lse_b, g_a, g_b, want_a, want_b):
    """(d/da or None, d/db or None) of sum_i g_a[i] lse_a[i] + sum_j g_b[j] lse_b[j] (g_b
    None: no b terms) as contrastive_lse computes the lse (csrc/ops.h), in float64,
    differentiable in a, b, the lse and the upstream gradients."""
    a64, b64 = a.to(torch.float64), b.to(torch.float64)
    na, nb = a64.shape[0], b64.shape[0]
    f64 = [None if v is None else v.to(torch.float64) for v in (lse_a, lse_b, g_a, g_b)]
    lse_a, lse_b, g_a, g_b = f64
    if self_pairs:
        z = torch.cat([a64, b64])
        terms = (torch.cat([lse_a, lse_b]), torch.cat([g_a, g_b]))

        def excluded(i, j):
            partner = torch.where(i < na, i + na, torch.where(i < 2 * na, i - na, -1))
            return (i == j) | ((j == partner) & skip_positives)

        grad = _weighted_rows(z, z, scale, terms, terms, excluded)
        return (grad[:na] if want_a else None), (grad[na:] if want_b else None)

    def excluded(i, j):
        return (i == j) & skip_positives

    a_terms = (lse_a, g_a)
    b_terms = (lse_b, g_b) if g_b is not None else None
    grad_a = _weighted_rows(a64, b64, scale, a_terms, b_terms, excluded) if want_a else None
    grad_b = _weighted_rows(b64, a64, scale, b_terms, a_terms, excluded) if want_b else None
    return grad_a, grad_b


def mean_cross_entropy_gradients(a, b, scale, want_a, want_b):
    """(d/da or None, d/db or None) of contrastive_mean_lse's mean cross entropy (b_i a_i's
    positive) in float64, differentiable: (scale / N) sum_{j != i} p_ij (b_j - b_i), the
    negatives' weights and, separately, their total times b_i."""
    a64, b64 = a.to(torch.float64), b.to(torch.float64)
    na = a64.shape[0]
    step = block_rows(b64.shape[0])
    j = torch.arange(b64.shape[0], device=a64.device)
    grad_a, grad_b = [], torch.zeros_like(b64)
    for s in range(0, na, step):
        i = torch.arange(s, min(s + step, na), device=a64.device)
        logits = scale * (a64[i] @ b64.T)
        lse = logits.logsumexp(1, keepdim=True)
        w = torch.where(i[:, None] == j[None, :], 0.0, torch.exp(logits - lse) / na)
        total = w.sum(1, keepdim=True)
        if want_a:
            grad_a.append(scale * (w @ b64 - total * b64[i]))
        if want_b:
            grad_b = grad_b + scale * (w.T @ a64[i])
            grad_b = grad_b.index_add(0, i, -scale * total * a64[i])
    return (torch.cat(grad_a, 0) if want_a else None), (grad_b if want_b else None)


# ---------------------------------------------------------------- autograd


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
        grad_a, grad_b = contrastive_lse_gradients(
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


# ---------------------------------------------------------------- contrastive_lse_row_grad
#
# d lse_i / d a_i = scale o_i: a's gradient is an O(N d) product in the backward.  b's,
# when b requires grad (a learned queue, keys with gradients), is contrastive_lse_backward's
# pass over the pairs, for b alone.


def _setup_row_grad(ctx, inputs, output):
    a, b, scale, *skip = inputs
    lse, o = output
    ctx.mark_non_differentiable(o)
    ctx.scale = scale
    ctx.skip_positives = bool(skip and skip[0])
    ctx.dtypes = (a.dtype, b.dtype)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(a, b, lse, o)


def _backward_row_grad(ctx, grad_lse, _grad_o):
    a, b, lse, o = ctx.saved_tensors
    need_a, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if grad_lse is None or not (need_a or need_b):
        return None, None, None, None
    scale, skip = ctx.scale, ctx.skip_positives
    g = grad_lse.to(lse.dtype)
    if torch.is_grad_enabled():  # differentiable (o is not): the float64 form
        grad_a, grad_b = contrastive_lse_gradients(a, b, scale, False, skip, lse, None, g, None, need_a, need_b)
    else:
        grad_a = (scale * g)[:, None] * o if need_a else None
        grad_b = None
        if need_b:
            none = lse.new_empty((0,))
            _, grad_b = _lib_ops.contrastive_lse_backward(a, b, scale, False, lse, none, g, none, 0, 1, False, True,
                                                          skip)
    # In the accumulation dtype (or float64): round to the inputs' once.
    out_a = grad_a.to(ctx.dtypes[0]) if need_a else None
    out_b = grad_b.to(ctx.dtypes[1]) if need_b else None
    return out_a, out_b, None, None


torch.library.register_autograd(
    "pyhypersphere::contrastive_lse_row_grad", _backward_row_grad, setup_context=_setup_row_grad
)


_ContrastiveLseRowGrad = func_compatible("_ContrastiveLseRowGrad", _lib_ops.contrastive_lse_row_grad,
                                         _setup_row_grad, _backward_row_grad)


def contrastive_lse_row_grad(a, b, scale, *, skip_positives=False):
    """The op, differentiable (torch.func included): (lse of a's rows, o), o not
    differentiable."""
    args = (a, b, scale, skip_positives)
    op = _lib_ops.contrastive_lse_row_grad if torch.compiler.is_compiling() else _ContrastiveLseRowGrad.apply
    return op(*args)


# ---------------------------------------------------------------- contrastive_mean_lse
#
# The mean loss has the same upstream gradient for every row, so the kernel computes the
# gradients in the forward (as uniform_lse does) and the backward scales them.


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
        grad_a, grad_b = mean_cross_entropy_gradients(a, b, ctx.scale, need_a, need_b)
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


# ---------------------------------------------------------------- losses


def _check_pair(first, second, names: Tuple[str, str], function: str) -> None:
    """Both [N, d] features of a loss, the same shape, dtype and device, on a device with a kernel."""
    check_features(first, names[0], function)
    check_features(second, names[1], function)
    check_matches(first, names[0], second, names[1], function, same_rows=True)
    _check_kernel(first, function)


def device_problem(device: torch.device) -> Optional[str]:
    """Why the contrastive kernel cannot run on this device in this build, or None (CUDA
    needs triton: gpu_backend.py)."""
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device.type)
    if key is not None and not torch._C._dispatch_has_kernel_for_dispatch_key("pyhypersphere::contrastive_lse", key):
        hint = " (the CUDA kernels are Triton's: install triton)" if key == "CUDA" else ""
        return f"no {device.type} kernel for the contrastive losses in this build{hint}"
    return None


def kernel_problem(x: torch.Tensor) -> Optional[str]:
    """Why the contrastive kernel cannot run on x's device in this build, or None."""
    return device_problem(x.device)


def _check_kernel(x: torch.Tensor, function: str) -> None:
    if torch.compiler.is_compiling():  # fake tensors; the dispatcher raises for real ones
        return
    problem = kernel_problem(x)
    if problem is not None:
        raise NotImplementedError(f"{function}: {problem}")


def temperature(tau: Temperature, function: str) -> Tuple[float, Optional[torch.Tensor]]:
    """(scale, tau_tensor): for a number, scale = 1 / tau and no tensor; for a tensor,
    scale = 1 and the tensor, by which the caller divides the features (so that the loss
    is differentiable with respect to it)."""
    if isinstance(tau, torch.Tensor):
        if tau.numel() != 1 or not tau.is_floating_point():
            raise ValueError(
                f"{function}: tau must be a number or a one-element floating-point tensor, got a "
                f"{tau.dtype} tensor of shape {tuple(tau.shape)}"
            )
        if not torch.compiler.is_compiling():
            value = float(tau.detach().reshape(()).item())
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{function}: tau must be a positive finite number, got {value}")
        return 1.0, tau.reshape(())
    value = as_float(tau, "tau", function)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{function}: tau must be a positive finite number, got {value}")
    return 1.0 / value, None


def row_dots(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """<a_i, b_i> for every row, in the accumulation dtype (a product and a sum, not
    torch.linalg.vecdot, which autocast would run in 16 bits)."""
    acc = accumulate_dtype(a.dtype)
    return (a.to(acc) * b.to(acc)).sum(1)


def cross_entropy(lse_negatives: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Each row's -log softmax at its positive, log(1 + exp(lse_negatives - positive)):
    no cancellation, never negative, 0 for a row without negatives (lse -inf)."""
    u = lse_negatives - positive
    return torch.logaddexp(u, torch.zeros_like(u))


def row_losses(lse_negatives: torch.Tensor, positive: torch.Tensor, decoupled: bool) -> torch.Tensor:
    """Each anchor's loss from its negatives' lse: the cross entropy (cross_entropy), or with
    `decoupled` the decoupled contrastive loss of Yeh et al. (2022), lse_negatives - positive:
    the positive left out of the denominator (the kernels' skipped positives are exactly
    that denominator)."""
    return lse_negatives - positive if decoupled else cross_entropy(lse_negatives, positive)


# Each loss's anchors per row of x (reduction='none' and weight: x's rows' anchors, then
# y's), and how a weight's error names them.
ANCHOR_ROWS = {
    "nt_xent_loss": (2, "anchor row of [x; y] (2N)"),
    "info_nce_loss": (1, "query (row of q)"),
    "clip_loss": (2, "anchor row (x's rows, then y's: 2N)"),
}


def check_row_options(decoupled, reduction, weight, x: torch.Tensor, loss: str, function: str) -> None:
    """decoupled, reduction and weight (one per anchor of x's rows: ANCHOR_ROWS[loss]) of `loss`."""
    if not isinstance(decoupled, bool):
        raise TypeError(f"{function}: decoupled must be True or False, got {type(decoupled).__name__}")
    check_reduction(reduction, function)
    per_row, what = ANCHOR_ROWS[loss]
    check_weight(weight, per_row * x.shape[0], x, function, what)


def decoupled_problem(loss: str, decoupled: bool, pairs: int, queue: bool = False) -> Optional[str]:
    """Why `loss` with `decoupled` cannot run on a batch of `pairs` rows (and a queue or
    none), or None: the decoupled loss leaves the positive out of its denominator, so
    every anchor needs a negative (a single-process batch, or a global one across ranks)."""
    if not decoupled or pairs >= 2 or queue:
        return None
    if loss == "info_nce_loss":
        return "decoupled=True needs a negative: N >= 2 or a queue"
    return "decoupled=True needs N >= 2 (with one pair a view has no negatives)"


def _divide(features: torch.Tensor, divisor: torch.Tensor) -> torch.Tensor:
    acc = accumulate_dtype(features.dtype)
    return features.to(acc) / divisor.to(acc)


def nt_xent_loss(x: torch.Tensor, y: torch.Tensor, tau: Temperature = DEFAULT_NT_XENT_TAU, *, decoupled: bool = False,
                 reduction: str = "mean", weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """SimCLR's NT-Xent (normalized temperature-scaled cross entropy) over the 2N views.

    Each of the 2N rows of [x; y] is a view whose positive is its pair (x_i <-> y_i) and
    whose negatives are the other 2N - 2 views; the loss is the cross entropy of the
    logits <u, v> / tau averaged over the 2N views (the value of lightly's
    ``NTXentLoss(temperature=tau)`` on L2-normalized inputs: lightly normalizes inside).

    Args:
        x, y: the two views' features [N, d], same shape, dtype and device.
        tau: the temperature: a positive number, or a one-element tensor (differentiable).
        decoupled: leave the positive out of each view's denominator (Yeh et al.'s
            decoupled contrastive loss, lightly's ``DCLLoss`` without its weighting): each
            view's loss is log sum_{negatives} e^{s} - s_positive.  Needs N >= 2.
        reduction: 'mean' (default), 'sum', or 'none': the 2N anchors' losses, x's rows'
            (anchor x_i, positive y_i) then y's rows' (anchor y_i, positive x_i).
        weight: optional [2N] weights, one per anchor in that order; 'mean' is then
            sum_i w_i l_i / sum_i w_i.

    Returns x's dtype (float16/bfloat16 are accumulated in float32; float32 under autocast):
    a 0-dim tensor, or [2N] with reduction='none'.
    """
    function = "nt_xent_loss"
    _check_pair(x, y, ("x", "y"), function)
    check_row_options(decoupled, reduction, weight, x, function, function)
    problem = decoupled_problem(function, decoupled, x.shape[0])
    if problem is not None:
        raise ValueError(f"{function}: {problem}")
    out_dtype = loss_dtype(x)
    scale, tau_tensor = temperature(tau, function)
    if tau_tensor is not None:  # <x_i, y_j> / tau = <x_i / sqrt(tau), y_j / sqrt(tau)>
        root = tau_tensor.sqrt()
        x, y = _divide(x, root), _divide(y, root)
    lse_x, lse_y = contrastive_lse(x, y, scale, True, True, skip_positives=True)
    positive = row_dots(x, y) * scale
    rows = torch.cat([row_losses(lse_x, positive, decoupled), row_losses(lse_y, positive, decoupled)])
    return reduce_rows(rows, weight, reduction).to(out_dtype)


def info_nce_loss(
    q: torch.Tensor,
    k: torch.Tensor,
    tau: Temperature = DEFAULT_INFO_NCE_TAU,
    *,
    queue: Optional[torch.Tensor] = None,
    in_batch: bool = True,
    decoupled: bool = False,
    reduction: str = "mean",
    weight: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """InfoNCE: each query q_i against its positive key k_i, mean over i.

    The negatives of q_i are the other keys k_j (when ``in_batch``) and the rows of
    ``queue`` (MoCo's memory of earlier keys): the loss is the cross entropy of
    [<q_i, k_j> / tau for all j, <q_i, queue_m> / tau for all m] with target k_i.

    Args:
        q, k: queries and their positive keys [N, d], same shape, dtype and device.
        tau: the temperature: a positive number, or a one-element tensor (differentiable).
        queue: optional negatives [K, d], same dtype and device.
        in_batch: use the other keys of the batch as negatives; False (MoCo) needs a queue.
        decoupled: leave the positive out of the denominator (Yeh et al. 2022): each
            query's loss is log sum_{negatives} e^{s} - s_positive.  Needs a negative
            (N >= 2 in-batch, or a queue).
        reduction: 'mean' (default), 'sum', or 'none': the N queries' losses in row order.
        weight: optional [N] weights, one per query (anchor row); 'mean' is then
            sum_i w_i l_i / sum_i w_i.

    Returns q's dtype (float32 under autocast): a 0-dim tensor, or [N] with
    reduction='none'.  Differentiable with respect to q, k, queue (those that require
    grad; MoCo's keys and queue usually do not).
    """
    function = "info_nce_loss"
    _check_pair(q, k, ("q", "k"), function)
    check_row_options(decoupled, reduction, weight, q, function, function)
    if queue is not None:
        check_features(queue, "queue", function)
        check_matches(q, "q", queue, "queue", function, same_rows=False)
    elif not in_batch:
        raise ValueError(f"{function}: in_batch=False needs a queue (there would be no negatives)")
    problem = decoupled_problem(function, decoupled, q.shape[0], queue is not None)
    if problem is not None:
        raise ValueError(f"{function}: {problem}")
    out_dtype = loss_dtype(q)
    scale, tau_tensor = temperature(tau, function)
    if tau_tensor is not None:
        q = _divide(q, tau_tensor)
        k = k.to(q.dtype)
        queue = queue.to(q.dtype) if queue is not None else None
    keys = (k if queue is None else torch.cat([k, queue])) if in_batch else queue
    if in_batch and not decoupled and reduction == "mean" and weight is None:
        # Every row's loss enters with weight 1/N: the kernel's gradients come out of its
        # single pass over the logits (contrastive_mean_lse; k_i is column i).
        return contrastive_mean_lse(q, keys, scale).to(out_dtype)
    # Per-row losses: the negatives' lse, the positive k_i skipped in-batch (column i), not
    # among the keys otherwise.  With q's gradient to come, from the same pass (MoCo: one
    # pass in all; keys that require grad add contrastive_lse_backward for them alone,
    # no more than contrastive_lse and a backward for both); else the lse alone.
    if needs_grad(q):
        lse, _ = contrastive_lse_row_grad(q, keys, scale, skip_positives=in_batch)
    else:
        lse, _ = contrastive_lse(q, keys, scale, False, False, skip_positives=in_batch)
    rows = row_losses(lse, row_dots(q, k) * scale, decoupled)
    return reduce_rows(rows, weight, reduction).to(out_dtype)


def clip_loss(x: torch.Tensor, y: torch.Tensor, tau: Temperature = DEFAULT_CLIP_TAU, *, reduction: str = "mean",
              weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """CLIP's symmetric InfoNCE: (info_nce(x, y) + info_nce(y, x)) / 2 with in-batch negatives.

    The mean of the cross entropies of the logits x y^T / tau over rows and over columns,
    target the diagonal.

    Args:
        x, y: paired features [N, d] (e.g. image and text embeddings), same shape, dtype, device.
        tau: the temperature: a positive number, or a one-element tensor that requires grad
            (CLIP learns it: pass ``1 / logit_scale.exp()``); the loss is then
            differentiable with respect to it.
        reduction: 'mean' (default), 'sum', or 'none': the 2N anchors' losses of both
            directions, x's rows against all of y (x_i -> y) then y's rows against all
            of x (y_i -> x), each in row order: shape [2N] (``.view(2, N)`` separates the
            directions; their mean per pair is ``.view(2, N).mean(0)``).
        weight: optional [2N] weights, one per anchor in that order (``torch.cat([w, w])``
            weighs pair i's two directions alike); 'mean' is then sum_i w_i l_i / sum_i w_i.

    Returns x's dtype (float32 under autocast): a 0-dim tensor, or [2N] with
    reduction='none'.
    """
    function = "clip_loss"
    _check_pair(x, y, ("x", "y"), function)
    check_row_options(False, reduction, weight, x, function, function)
    out_dtype = loss_dtype(x)
    scale, tau_tensor = temperature(tau, function)
    if tau_tensor is not None:
        x = _divide(x, tau_tensor)
        y = y.to(x.dtype)
    lse_x, lse_y = contrastive_lse(x, y, scale, False, True, skip_positives=True)
    positive = row_dots(x, y) * scale
    rows = torch.cat([cross_entropy(lse_x, positive), cross_entropy(lse_y, positive)])
    return reduce_rows(rows, weight, reduction).to(out_dtype)
