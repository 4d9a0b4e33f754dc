"""Supervised contrastive loss (Khosla et al. 2020, L_out), fused: the `supcon` family.

For x [N, d] holding every view (views of one sample share a label) and integer labels
[N], with s_ia = <x_i, x_a> / tau and P(i) = {p != i : labels_p == labels_i}:

    L_i = -(1 / |P(i)|) sum_{p in P(i)} log( e^{s_ip} / sum_{a != i} e^{s_ia} )
        = lse_i - (1 / |P(i)|) sum_{p in P(i)} s_ip,

and the loss averages L_i over the anchors with |P(i)| >= 1 (an anchor without positives
is skipped).  The operator `supcon_lse` returns every anchor's lse_i, its sum of positive
logits and |P(i)| (no N x N logits or mask: the CPU kernel compares labels inside each
tile, the Triton launcher takes the contrastive kernels' lse and O(N d) class sums); its
backward `supcon_lse_backward` is a second pass.  Contract in csrc/ops.h, schemas and
checks in csrc/supcon.cpp, kernels in csrc/cpu/supcon_cpu.cpp and triton_kernels/supcon.py.
Below: the fake kernels, the autograd formula, the public `supcon_loss` and its
distributed form (`distributed_supcon_loss`, on the global-batch layer).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

import torch

from .. import _C  # noqa: F401  (loads the library and registers the operators)
from .. import _global_batch as gb
from ._common import (
    accumulate_dtype, check_features, check_reduction, check_weight, constant_weight_problem, func_compatible, learned,
    loss_dtype, reduce_rows, row_options,
)
from .contrastive import _check_kernel, _divide, kernel_problem, temperature
from .contrastive_distributed import _tau_param, _to_learned_tau

DEFAULT_SUPCON_TAU = 0.1  # Khosla et al.'s temperature

# op name -> has a C++ CUDA kernel (the registry, gpu_backend.py, reads it).
OPS = {"supcon_lse": False, "supcon_lse_backward": False}

_lib_ops = torch.ops.pyhypersphere


# ---------------------------------------------------------------- fake kernels


@torch.library.register_fake("pyhypersphere::supcon_lse")
def _supcon_lse_fake(x, labels, scale, part=0, num_parts=1):
    if labels.device != x.device:  # mixed devices reach this instead of a kernel's checks
        raise ValueError(f"supcon_lse: labels must be on the same device as x ({x.device}), got {labels.device}")
    acc = accumulate_dtype(x.dtype)
    n = x.shape[0]
    return x.new_empty((n,), dtype=acc), x.new_empty((n,), dtype=acc), x.new_empty((n,), dtype=torch.int64)


@torch.library.register_fake("pyhypersphere::supcon_lse_backward")
def _supcon_lse_backward_fake(x, labels, scale, lse, grad_lse, grad_positive, part=0, num_parts=1):
    if labels.device != x.device:
        raise ValueError(f"supcon_lse_backward: labels must be on the same device as x ({x.device}), got {labels.device}")
    return x.new_empty(tuple(x.shape), dtype=accumulate_dtype(x.dtype))


# ---------------------------------------------------------------- autograd


def _setup(ctx, inputs, output):
    x, labels, scale, *parts = inputs
    lse, _, count = output
    ctx.mark_non_differentiable(count)
    ctx.set_materialize_grads(False)
    ctx.args = (scale, *(parts or (0, 1)))
    ctx.dtype = x.dtype
    ctx.save_for_backward(x, labels, lse)


def _backward(ctx, grad_lse, grad_positive, _grad_count):
    x, labels, lse = ctx.saved_tensors
    nones = (None,) * 4  # labels, scale, part, num_parts
    if not ctx.needs_input_grad[0] or (grad_lse is None and grad_positive is None):
        return None, *nones
    if torch.is_grad_enabled():
        raise RuntimeError(
            "supcon_loss: second derivatives (create_graph=True, torch.func.grad of a gradient) are not supported"
        )
    scale, part, num_parts = ctx.args
    grad_lse = lse.new_zeros(lse.shape) if grad_lse is None else grad_lse.to(lse.dtype)
    grad_positive = lse.new_zeros(lse.shape) if grad_positive is None else grad_positive.to(lse.dtype)
    grad = _lib_ops.supcon_lse_backward(x, labels, scale, lse, grad_lse, grad_positive, part, num_parts)
    return grad.to(ctx.dtype), *nones  # accumulated in float32/float64: rounded once


torch.library.register_autograd("pyhypersphere::supcon_lse", _backward, setup_context=_setup)

_SupConLse = func_compatible("_SupConLse", _lib_ops.supcon_lse, _setup, _backward)


def supcon_lse(x, labels, scale, part=0, num_parts=1):
    """The op (lse, positive_sum, positive_count), differentiable (torch.func included)."""
    args = (x, labels, scale, part, num_parts)
    return _lib_ops.supcon_lse(*args) if torch.compiler.is_compiling() else _SupConLse.apply(*args)


# ---------------------------------------------------------------- the loss


def check_labels(labels, x, function: str) -> torch.Tensor:
    """labels as int64 [N] on x's device, or a clear error."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{function}: labels must be a torch.Tensor of integer class labels, got {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"{function}: labels must be an integer tensor, got {labels.dtype}")
    if labels.dim() != 1 or labels.shape[0] != x.shape[0]:
        raise ValueError(
            f"{function}: labels must be a 1-D tensor with one label per row of x ({x.shape[0]}), "
            f"got shape {tuple(labels.shape)}"
        )
    if labels.device != x.device:
        raise ValueError(f"{function}: labels must be on the same device as x ({x.device}), got {labels.device}")
    return labels.to(torch.int64)


def anchor_losses(lse, positive_sum, count):
    """L_i = lse_i - positive_sum_i / |P(i)| for anchors with positives, 0 for the others.

    L_i >= log |P(i)| exactly (lse_i is at least the positives' lse, which is at least
    log |P(i)| plus their mean logit, by Jensen); where the difference of the two terms
    rounds below that (a dominating positive: L_i near 0, both terms near 1/tau) the value
    is lifted to the bound, so a loss is never negative; the gradient stays the formula's.
    """
    has = count > 0
    size = count.clamp(min=1).to(positive_sum.dtype)
    raw = lse - positive_sum / size
    losses = raw + (torch.log(size) - raw).clamp(min=0).detach()
    return torch.where(has, losses, 0), has


def supcon_loss(x: torch.Tensor, labels: torch.Tensor, tau=DEFAULT_SUPCON_TAU, reduction: str = "mean",
                weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Supervised contrastive loss L_out (Khosla et al. 2020), O(N d) memory.

    Args:
        x: [N, d] features of every view (normalize them first, as SupCon does).
        labels: [N] integer labels; rows with equal labels are each other's positives.
        tau: the temperature: a positive number, or a one-element tensor (differentiable).
        reduction: 'mean' (default: the weighted mean over the anchors that have at least
            one positive), 'sum', or 'none' (the [N] per-anchor losses in row order, 0 for
            an anchor without positives).
        weight: optional [N] weights, one per anchor row; 'mean' divides by the sum of the
            weights of the anchors that have positives.

    Raises ValueError when no two rows share a label (no anchor has a positive); under
    torch.compile that check (a host read) is skipped and the mean is then NaN.
    Returns a tensor in x's dtype (float32 under autocast).
    """
    function = "supcon_loss"
    check_features(x, "x", function)
    labels = check_labels(labels, x, function)
    check_reduction(reduction, function)
    check_weight(weight, x.shape[0], x, function, "row of x (anchor)")
    _check_kernel(x, function)
    out_dtype = loss_dtype(x)
    scale, tau_tensor = temperature(tau, function)
    if tau_tensor is not None:  # <x_i, x_a> / tau = <x_i / sqrt(tau), x_a / sqrt(tau)>
        x = _divide(x, tau_tensor.sqrt())
    lse, positive, count = supcon_lse(x, labels, scale)
    if not torch.compiler.is_compiling() and not bool((count > 0).any()):
        raise ValueError(
            f"{function}: no two rows of x share a label, so no anchor has a positive; every class "
            "needs at least two views in the batch"
        )
    losses, has = anchor_losses(lse, positive, count)
    return reduce_rows(losses, weight, reduction, has).to(out_dtype)


# ---------------------------------------------------------------- distributed
#
# The global batch is every rank's x (and labels, weights) concatenated in rank order.
# Rank r sums the r-th slice of the pair tiles of the gathered batch (the kernel's part
# slicing: the O(N^2) work split W ways), every rank gathers the slices' per-anchor
# (lse, positive sum, count) in the status exchange and forms the same loss; the
# gradient's second pass is sliced the same way and one reduce-scatter hands every rank
# its rows.  A failure in either pass is exchanged before the next collective, so every
# rank raises together.


def _distributed_problem(x, labels, weight, reduction, function):
    """What is wrong with this rank's inputs (as a message without the function name), or None."""
    try:
        check_features(x, "x", function, min_rows=0)
        labels = check_labels(labels, x, function)
        check_weight(weight, x.shape[0], x, function, "row of x (anchor)")
        check_reduction(reduction, function)
    except (TypeError, ValueError) as error:
        return str(error).removeprefix(f"{function}: ")
    return constant_weight_problem(weight)


def distributed_supcon_loss(x: torch.Tensor, labels: torch.Tensor, tau=DEFAULT_SUPCON_TAU, group=None, *,
                            reduction: str = "mean", weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``supcon_loss`` of the global batch (every rank's x, labels and weight concatenated in
    rank order), the same value on every rank (``pyhypersphere.distributed.supcon_loss``).

    Args: as ``supcon_loss`` for this rank's shard (N_r rows, possibly 0; d and dtype the same
    on every rank), tau the same on every rank, reduction 'mean' or 'sum' over the global
    batch's anchors or 'none' (this rank's N_r anchors' losses), weight (this rank's [N_r],
    a constant) or None on every rank; group: the process group.  The backward returns
    W * g * dL/dx_r (the DDP convention of the other distributed losses) and issues no
    collective; with 'none' it returns rank r's rows of the single-process gradient of
    sum_s <G_s, rows_s> for every rank's upstream gradient G_s and is a collective (every
    rank must run it).  Every rank must call the loss; an invalid input or a failure on
    one rank raises on every rank.  World size 1 calls ``supcon_loss``.
    """
    function = "pyhypersphere.distributed.supcon_loss"
    rank, world = gb.member_of(group, function, "pyhypersphere.supcon_loss")
    if world == 1:
        return supcon_loss(x, labels, tau, reduction, weight)
    params = {"tau": _tau_param(tau), **row_options(reduction, weight)}

    def problem(views):
        return gb.check_views(views) or _distributed_problem(views[0], labels, weight, reduction, function)

    views = [x]
    tau_tensor = learned(tau)
    if tau_tensor is not None and params["tau"][1] is None and problem(views) is None:
        views = [_to_learned_tau(tau_tensor, params["tau"][0], x, x, True)[0]]
    grad = torch.is_grad_enabled() and isinstance(views[0], torch.Tensor) and views[0].requires_grad
    layout = gb.agree(views, params, grad, kernel_problem, group, function, check=problem,
                      expected="x must be a 2-D floating-point tensor [N_r, d] with int labels [N_r]",
                      inputs="x or tau", min_rows=2)
    z = gb.gather_views(views, layout, group)
    columns = lambda dtype: replace(layout, dim=1, views=1, dtype=dtype)  # noqa: E731
    all_labels = gb.gather_views([labels.to(torch.int64).view(-1, 1)], columns(torch.int64), group).view(-1)
    all_weights = None
    if weight is not None:
        all_weights = gb.gather_views([weight.detach().double().view(-1, 1)], columns(torch.float64), group).view(-1)
    acc = accumulate_dtype(layout.dtype)
    scale, n = 1.0 / params["tau"][0], layout.total
    z = z.to(acc)
    failure = gb.Failure()
    partials = None
    with failure:
        lse, positive, count = _lib_ops.supcon_lse(z, all_labels, scale, rank, world)
        partials = torch.cat([lse.double(), positive.double(), count.double()])
    table = gb.exchange_status(partials, failure, layout, params, True, group, function, width=3 * n)
    lse = table[:, :n].logsumexp(0).to(device=z.device, dtype=acc)
    positive = table[:, n : 2 * n].sum(0).to(device=z.device, dtype=acc)
    count = table[:, 2 * n :].sum(0).round().to(device=z.device, dtype=torch.int64)
    if not bool((count > 0).any()):  # the same table on every rank: every rank raises
        raise ValueError(f"{function}: no two rows of the global batch share a label, so no anchor has a positive")
    with torch.enable_grad():
        vectors = (lse.requires_grad_(grad), positive.requires_grad_(grad))
        losses, has = anchor_losses(*vectors, count)
        loss = reduce_rows(losses, all_weights, reduction, has)

    def gradient_rows(upstream):
        """This rank's slice of the pair tiles' gradient of <upstream, loss> ([N, d])."""
        g, h = torch.autograd.grad(loss, vectors, upstream, retain_graph=True)
        return _lib_ops.supcon_lse_backward(z, all_labels, scale, lse.detach(), g, h, rank, world)

    if reduction == "none":  # this rank's anchors; the backward gathers every rank's upstream gradient
        lo, hi = layout.my_offset, layout.my_offset + layout.my_rows
        out = loss.detach()[lo:hi].to(device=layout.device, dtype=loss_dtype(views[0]))
        if not grad:
            return out

        def backward(upstream):
            mine = upstream.detach().to(torch.float64).view(-1, 1)
            every = gb.gather_views([mine], columns(torch.float64), group).view(-1).to(device=z.device, dtype=acc)
            rows = gb.backward_collectives(lambda: gradient_rows(every), layout, params, group, function)
            return [rows.to(views[0].dtype)]

        return gb.attach_collective_backward(out, backward, views)
    rows = gb.backward_collectives(lambda: gradient_rows(None), layout, params, group, function) if grad else None
    out = loss.detach().to(device=layout.device, dtype=loss_dtype(views[0]))
    return gb.attach_gradient(out.reshape(1), rows, float(world), views)[0]
