"""SigLIP's pairwise sigmoid loss (Zhai et al. 2023), fused: the operator's fake kernel and
autograd, the public ``siglip_loss`` and its global-batch form for ``pyhypersphere.distributed``.

The logits l_ij = t <x_i, y_j> + b over all N x N pairs, labels z_ii = +1 and z_ij = -1
off the diagonal; row i's loss is L_i = -sum_j log sigmoid(z_ij l_ij) and the loss
(1/N) sum_i L_i (big_vision's and open_clip's definition).  The operator
``torch.ops.pyhypersphere.siglip`` (schema: csrc/siglip.cpp, contract: csrc/ops.h) returns the rows'
losses L_i and sum_i coef_i L_i for per-row coefficients coef; a weight depends on its own
logit only, so the gradients of that sum (x, y, t, b) come out of the same pass over the
pairs, and the backward is a scale.  A backward that needs other coefficients
(``reduction='none'``) calls the operator again with them.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .. import _C  # noqa: F401  (loads the library and registers the operators)
from .. import _global_batch as gb
from ._common import (
    NONE_NEEDS_SYNC, accumulate_dtype, as_float, check_features, check_matches, check_reduction, check_weight,
    constant_weight_problem, func_compatible, learned, loss_dtype, row_options,
)

DEFAULT_T = 10.0  # the paper's initial scale t = exp(t'), t' = log 10
DEFAULT_B = -10.0  # the paper's initial bias
# The operator; False: no C++ CUDA kernel (Triton serves CUDA tensors: gpu_backend.py).
OPS = {"siglip": False}

Scalar = Union[float, torch.Tensor]
_lib_ops = torch.ops.pyhypersphere


# ---------------------------------------------------------------- the operator


@torch.library.register_fake("pyhypersphere::siglip")
def _siglip_fake(x, y, t, b, coef, grad_x, grad_y, grad_tb):
    # With mixed devices this runs instead of a real kernel's checks, so it raises too.
    if y.device != x.device:
        raise ValueError(f"siglip_loss: y must be on the same device as x ({x.device}), got {y.device}")
    acc = accumulate_dtype(x.dtype)

    def maybe(flag, shape):
        return x.new_empty(shape if flag else (0,), dtype=acc)

    return (x.new_empty((), dtype=acc), x.new_empty((x.shape[0],), dtype=acc), maybe(grad_x, tuple(x.shape)),
            maybe(grad_y, tuple(y.shape)), maybe(grad_tb, (2,)))


def _setup(ctx, inputs, output):
    x, y, t, b, coef, want_x, want_y, want_tb = inputs
    _, rows, grad_x, grad_y, grad_tb = output
    ctx.mark_non_differentiable(grad_x, grad_y, grad_tb)
    ctx.set_materialize_grads(False)  # an output nobody differentiates gets None
    ctx.computed = (bool(want_x), bool(want_y), bool(want_tb))
    ctx.save_for_backward(x, y, t, b, coef, rows, grad_x, grad_y, grad_tb)


def _coefficients(grad_total, grad_rows, coef, rows):
    """Each row's upstream coefficient: d/dL_i of grad_total * sum_i coef_i L_i + <grad_rows, L>."""
    c = grad_rows.to(rows.dtype) if grad_rows is not None else torch.zeros_like(rows)
    return c if grad_total is None else c + grad_total.to(rows.dtype) * coef.to(rows.dtype)


def _differentiable_gradients(x, y, t, b, c):
    """(L, d/dx, d/dy, [d/dt, d/db]) of sum_i c_i L_i as differentiable torch expressions over
    the explicit logits: O(N_x N_y) memory, for second derivatives only."""
    acc = c.dtype
    x, y, t, b = x.to(acc), y.to(acc), t.to(acc), b.to(acc)
    gram = x @ y.T
    labels = -torch.ones_like(gram)
    i = torch.arange(min(x.shape[0], y.shape[0]), device=x.device)
    labels[i, i] = 1.0
    u = -labels * (t * gram + b)
    w = c[:, None] * -labels * torch.sigmoid(u)  # c_i d softplus(u_ij) / d l_ij
    return (F.softplus(u).sum(1), t * (w @ y), t * (w.T @ x), torch.stack([(w * gram).sum(), w.sum()]))


def _backward(ctx, grad_total, grad_rows, *_unused):
    x, y, t, b, coef, rows, gx, gy, gtb = ctx.saved_tensors
    need_x, need_y, need_t, need_b, need_coef = ctx.needs_input_grad[:5]
    flags = (None, None, None)
    if grad_total is None and grad_rows is None:
        return (None,) * 5 + flags
    need_tb = need_t or need_b
    acc = rows.dtype
    have = all(done or not needed for done, needed in zip(ctx.computed, (need_x, need_y, need_tb)))
    if torch.is_grad_enabled():  # create_graph=True, torch.func.grad: differentiable expressions
        rows, gx, gy, gtb = _differentiable_gradients(x, y, t, b, _coefficients(grad_total, grad_rows, coef, rows))
        scale = None
    elif grad_rows is None and have:  # the forward's gradients of sum_i coef_i L_i, scaled
        scale = grad_total.to(acc)
    else:  # other coefficients: the gradients of sum_i c_i L_i from one more pass
        c = _coefficients(grad_total, grad_rows, coef, rows)
        _, _, gx, gy, gtb = _lib_ops.siglip(x, y, t, b, c, need_x, need_y, need_tb)
        scale = None

    def out(g, like):  # in the accumulation dtype: rounded to the input's once
        return (g if scale is None else g * scale).to(like.dtype).reshape(like.shape)

    grad_coef = None
    if need_coef and grad_total is not None:  # d total / d coef_i = L_i
        grad_coef = (grad_total.to(acc) * rows).to(coef.dtype)
    return (out(gx, x) if need_x else None, out(gy, y) if need_y else None, out(gtb[0], t) if need_t else None,
            out(gtb[1], b) if need_b else None, grad_coef, *flags)


torch.library.register_autograd("pyhypersphere::siglip", _backward, setup_context=_setup)

_SigLIP = func_compatible("_SigLIP", _lib_ops.siglip, _setup, _backward)


def _siglip(x, y, t, b, coef, gradients: bool):
    """(sum_i coef_i L_i, L), differentiable (torch.func included); with `gradients` the
    kernel computes in the forward the gradients that will be needed."""
    on = gradients and torch.is_grad_enabled()
    args = (x, y, t, b, coef, on and x.requires_grad, on and y.requires_grad, on and (t.requires_grad or b.requires_grad))
    op = _lib_ops.siglip if torch.compiler.is_compiling() else _SigLIP.apply
    total, rows, _, _, _ = op(*args)
    return total, rows


# ---------------------------------------------------------------- the loss


def kernel_problem(device: torch.device) -> Optional[str]:
    """Why the SigLIP kernel cannot run on this device in this build, or None."""
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device.type)
    if key is None or not torch._C._dispatch_has_kernel_for_dispatch_key("pyhypersphere::siglip", key):
        hint = " (the CUDA kernel is Triton's: install triton)" if key == "CUDA" else ""
        return f"no {device.type} kernel for siglip_loss in this build{hint}"
    return None


def _check_inputs(x, y, function: str, min_rows: int = 1) -> None:
    check_features(x, "x", function, min_rows)
    check_features(y, "y", function, min_rows)
    check_matches(x, "x", y, "y", function, same_rows=True)


def _scalar(value: Scalar, name: str, function: str, x: torch.Tensor) -> torch.Tensor:
    """t or b as a 0-dim tensor on x's device (a tensor keeps its autograd history)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or not value.is_floating_point():
            raise ValueError(
                f"{function}: {name} must be a number or a one-element floating-point tensor, got a "
                f"{value.dtype} tensor of shape {tuple(value.shape)}"
            )
        return value.reshape(()).to(x.device)
    number = as_float(value, name, function)
    if not math.isfinite(number):
        raise ValueError(f"{function}: {name} must be a finite number, got {number}")
    return torch.tensor(number, dtype=accumulate_dtype(x.dtype), device=x.device)


def siglip_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    t: Scalar = DEFAULT_T,
    b: Scalar = DEFAULT_B,
    reduction: str = "mean",
    weight: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """SigLIP's sigmoid loss: -(1/N) sum_ij log sigmoid(z_ij (t <x_i, y_j> + b)), z_ii = +1,
    z_ij = -1 for i != j, over every pair of the two batches, without the N x N logits.

    Args:
        x, y: paired features [N, d] (image and text embeddings, usually L2-normalized),
            same shape, dtype and device.
        t: the scale (open_clip passes ``logit_scale.exp()``), b: the bias: finite numbers,
            or one-element tensors (differentiable, e.g. learned: ``nn.SigLIPLoss``).
        reduction: 'mean' (the paper's: sum / N), 'sum', or 'none': each row's loss
            L_i = -sum_j log sigmoid(z_ij l_ij), in the order of x's rows.
        weight: optional [N] weight per row of x: 'none' returns w_i L_i, 'sum' sum_i w_i L_i,
            'mean' sum_i w_i L_i / sum_i w_i (torch's weighted mean; 1/N without weights).
            Differentiable.

    Returns a 0-dim tensor (or [N] for 'none') in x's dtype (16-bit inputs are accumulated in
    float32; float32 under autocast).  Differentiable with respect to x, y, t, b and weight.
    """
    function = "siglip_loss"
    _check_inputs(x, y, function)
    problem = None if torch.compiler.is_compiling() else kernel_problem(x.device)
    if problem is not None:
        raise NotImplementedError(f"{function}: {problem}")
    t_tensor, b_tensor = _scalar(t, "t", function, x), _scalar(b, "b", function, x)
    check_reduction(reduction, function)
    check_weight(weight, x.shape[0], x, function, "row of x")
    acc, n = accumulate_dtype(x.dtype), x.shape[0]
    reduce = reduction != "none"
    if weight is None or not reduce:
        coef = x.new_full((n,), 1.0 / n if reduction == "mean" else 1.0, dtype=acc)
    else:
        w = weight.to(acc)
        coef = w / w.sum() if reduction == "mean" else w
    total, rows = _siglip(x, y, t_tensor, b_tensor, coef, reduce)
    if reduce:
        return total.to(loss_dtype(x))
    return (rows if weight is None else rows * weight.to(acc)).to(loss_dtype(x))


# ---------------------------------------------------------------- distributed


def _finite_param(value, name: str) -> tuple[float, Optional[str]]:
    """(the float, None) for a finite number or one-element floating tensor (read with
    .item(): a host sync), else (nan, what is wrong): the global-batch layer's parameter."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or not value.is_floating_point():
            return math.nan, f"{name} must be a number or a one-element floating-point tensor"
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan, f"{name} must be a number, got {type(value).__name__}"
    value = float(value)
    return (value, None) if math.isfinite(value) else (math.nan, f"{name} must be a finite number, got {value}")


def _input_problem(views, reduction, weight, function: str) -> Optional[str]:
    """The single-process loss's checks of x, y, reduction and this rank's weight as a
    message (empty shards allowed)."""
    try:
        _check_inputs(*views, function, min_rows=0)
        check_reduction(reduction, function)
        check_weight(weight, views[0].shape[0], views[0], function, "row of x")
    except (TypeError, ValueError) as error:
        return str(error).removeprefix(f"{function}: ")
    return constant_weight_problem(weight)


def _rows(z: torch.Tensor, layout: gb.Layout, t: torch.Tensor, b: torch.Tensor, coef: torch.Tensor,
          gradients: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum_i coef_i L_i, L) of this rank's rows of x against every rank's y, with y
    reordered so that its own rows come first (row i's positive is then column i)."""
    d, lo, hi = layout.dim, layout.my_offset, layout.my_offset + layout.my_rows
    x, y = z[lo:hi, :d], z[:, d:]
    if layout.my_rows == 0:
        nothing = z[:0, 0] + 0 * (t + b)  # no rows, still a function of z, t and b
        return nothing.sum(), nothing
    return _siglip(x, torch.cat([y[lo:hi], y[:lo], y[hi:]]), t, b, coef, gradients)


def global_siglip_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    t: Scalar = DEFAULT_T,
    b: Scalar = DEFAULT_B,
    group: Optional[dist.ProcessGroup] = None,
    *,
    reduction: str = "mean",
    weight: Optional[torch.Tensor] = None,
    equal_shards: bool = False,
) -> torch.Tensor:
    """SigLIP's loss over the global batch (``siglip_loss`` of every rank's x and y shards
    concatenated in rank order): every x_i against all N y_j of every rank.

    Args:
        x, y: this rank's shards [N_r, d] (same shape, dtype, device); N_r may differ
            between ranks and may be 0.
        t, b: the same values on every rank: numbers, or one-element tensors (read with
            ``.item()``); one that requires grad gets W times this rank's share of its
            gradient, so DDP's averaging of a replicated parameter gives the gradient.
        group: the process group (default: the default group).
        reduction: 'mean' or 'sum' over the global batch's N rows, or 'none': this rank's
            N_r rows' losses (in the order of its x rows).
        weight: None on every rank, or on every rank this rank's [N_r] row weights
            (constants); 'mean' is then sum_i w_i L_i / sum_i w_i over the global batch.
        equal_shards: the no-sync path, as for ``distributed.nt_xent_loss`` (not with 'none').

    Returns the loss, the same on every rank; the backward returns W * g * dL/dx_r (and
    y_r), as the other global-batch losses (docs/distributed.md), and issues no collective.
    With 'none' the backward returns rank r's rows of the single-process gradient of
    sum_s <G_s, rows_s> for every rank's upstream gradient G_s (t and b: this rank's rows'
    part), and is a collective: every rank must run it.
    """
    function = "pyhypersphere.distributed.siglip_loss"
    _, world = gb.member_of(group, function, "pyhypersphere.siglip_loss")
    if world == 1:  # no collectives at all
        return siglip_loss(x, y, t, b, reduction, weight)
    per_row = reduction == "none"
    if equal_shards and per_row:
        raise ValueError(f"{function}: {NONE_NEEDS_SYNC}")
    params = {"t": _finite_param(t, "t"), "b": _finite_param(b, "b"), **row_options(reduction, weight)}
    views = [x, y]
    learned_params = {name: learned(value) for name, value in (("t", t), ("b", b))}
    tensors = [v for v in views if isinstance(v, torch.Tensor)]
    grad = torch.is_grad_enabled() and (any(v.requires_grad for v in tensors) or any(v is not None for v in learned_params.values()))

    def check(v):
        return _input_problem(v, reduction, weight, function)

    if equal_shards:
        problem = check(views) or kernel_problem(x.device)
        if problem is not None:
            raise gb.LossInputError(f"{function}: {problem}")
        layout = gb.assume_equal(views, params, group, function)
    else:
        layout = gb.agree(
            views, params, grad, lambda first: kernel_problem(first.device), group, function, check=check,
            expected="x and y must be 2-D floating-point tensors [N_r, d] of one shape, dtype and device",
            inputs="x, y, t or b", min_rows=1,
        )  # fmt: skip
    z = gb.gather_views(views, layout, group)
    acc = accumulate_dtype(layout.dtype)
    weighted_mean = reduction == "mean" and weight is not None
    failure = gb.Failure()
    bad = [err for _, err in params.values() if err]
    partials, send, tb, rows, w = None, None, None, None, None
    with failure:
        if bad:  # only on the no-sync path: agree() raised otherwise
            raise gb.LossInputError(f"{function}: {bad[0]}")
        with torch.enable_grad() if grad else torch.no_grad():
            z = z.to(acc).requires_grad_(grad)
            t_leaf, b_leaf = (torch.tensor(params[k][0], dtype=acc, device=z.device, requires_grad=grad) for k in "tb")
            w = None if weight is None else weight.detach().to(acc)
            # Each row's coefficient in this rank's part of the global sum (of the mean's
            # numerator when weighted).
            coef = w if w is not None else z.new_full((layout.my_rows,), 1.0 / layout.total if reduction == "mean" else 1.0)
            value, rows = _rows(z, layout, t_leaf, b_leaf, coef, not per_row)
            if grad and not per_row:
                grads, grad_t, grad_b = torch.autograd.grad(value, [z, t_leaf, b_leaf])
        if grad and not per_row:
            send, tb = gb.scatter_buffer(grads, layout), torch.stack([grad_t, grad_b])
            del grads
        partials = torch.stack([value.detach(), w.sum() if weighted_mean else value.detach() * 0])
    table = gb.exchange_status(partials, failure, layout, params, not equal_shards, group, function, width=2)
    if per_row:  # the checked path: every rank raised above if one failed
        values = rows.detach() if w is None else rows.detach() * w
        leaves = [(t_leaf, learned_params["t"]), (b_leaf, learned_params["b"])]
        return gb.per_row_output(values, rows, z, views, layout, params, group, function, w, leaves,
                                 dtype=loss_dtype(views[0]))
    loss = table[:, 0].sum()  # the same order on every rank
    if weighted_mean:  # sum_i w_i L_i / sum_i w_i over the global batch
        inverse = 1.0 / table[:, 1].sum()
        loss = loss * inverse
        if send is not None:
            inverse = inverse.to(device=send.device, dtype=send.dtype)
            send, tb = send * inverse, tb * inverse
    loss = loss.to(device=layout.device, dtype=loss_dtype(views[0]))
    if grad and failure.error is not None:  # the no-sync path: NaN, and the collectives still run
        padded = layout.padded_rows(torch.finfo(acc).bits // 8)
        send = z.new_full((world * padded, layout.views * layout.dim), math.nan, dtype=acc)
        tb = z.new_full((2,), math.nan, dtype=acc)
    elif grad and equal_shards:  # ranks that disagree got a NaN table: NaN gradients too
        lost = torch.where(torch.isnan(table).any(), math.nan, 1.0).to(send.dtype)
        send, tb = send * lost, tb * lost
    received = gb.reduce_scatter_rows(send, layout, group) if grad else None
    failure.reraise()  # the no-sync path's failed rank, after its last collective
    out = gb.attach_gradient(loss.reshape(1), received, float(world), views)[0]
    for k, param in enumerate(learned_params.values()):
        if param is not None:  # adds 0; d/dparam = W * this rank's share, as for x and y
            out = out + ((param - param.detach()) * (world * tb[k]).to(param.dtype)).to(out.dtype).to(out.device)
    return out
