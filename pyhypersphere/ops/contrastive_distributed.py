"""Global-batch contrastive losses across processes: NT-Xent, CLIP and InfoNCE
(torch.distributed).

    from pyhypersphere.distributed import nt_xent_loss, clip_loss, info_nce_loss
    loss = nt_xent_loss(z1, z2, tau=0.5)        # z1, z2: this rank's shards of the two views
    loss = clip_loss(image, text, tau=0.07)
    loss = info_nce_loss(q, k, tau=0.07, queue=queue)   # MoCo: the queue the same on every rank

Each returns the loss of the global batch (every rank's shards of x and y concatenated
in rank order), the same value on every rank: the value of the single-process loss in
``pyhypersphere.contrastive`` on the concatenated batch (re-exported by
``pyhypersphere.distributed``).  The collective steps are the
global-batch layer (``_global_batch.py``, with the views [x, y]); this module holds the
loss-specific step: rank r computes the log-sum-exps of its own rows only (its rows
against every row of the gathered batch, with the fused ``contrastive_lse``; never an
N x N matrix; each row's positive skipped, as the single-process losses do, so that a
row's cross entropy is formed from its negatives relative to its positive) and the
gradient of its share of the loss with respect to every row of the gathered batch,
which one reduce-scatter sums over the ranks (InfoNCE's queries' from the lse's own
pass, as in one process; MoCo's momentum keys get none).  The gradient follows the
distributed uniformity loss's DDP convention (docs/distributed.md): the backward
returns W * g * dL/dx_r, so DDP's averaging yields the single-process gradient.
reduction and weight (this rank's anchors') reduce the rank's anchors' losses over the
global batch; with reduction='none' the rank returns them, and their gradient waits for
the backward, a collective (``_global_batch.per_row_output``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.distributed as dist

from .. import _global_batch as gb
from . import contrastive
from ._common import (
    NONE_NEEDS_SYNC, accumulate_dtype, check_features, check_matches, constant_weight_problem, learned, loss_dtype,
    row_options,
)
from .contrastive import (
    DEFAULT_CLIP_TAU, DEFAULT_INFO_NCE_TAU, DEFAULT_NT_XENT_TAU, Temperature, contrastive_lse, contrastive_lse_row_grad,
)

@dataclass(frozen=True)
class _Spec:
    """A contrastive loss over the global batch: its single-process form `local(x, y,
    tau)` (named as the single-process loss), this rank's anchors' losses `rows(z, layout,
    scale)` from the gathered batch (its x rows' anchors, then its y rows':
    contrastive.ANCHOR_ROWS), whether tau scales both inputs (a Gram matrix's logits) or
    the first alone, the per-anchor options (weight: this rank's anchors'), the inputs'
    names, numbers every rank must agree on besides tau, a check of other arguments, and
    whether a queue supplies negatives."""

    local: Callable
    rows: Callable
    symmetric_scale: bool
    decoupled: bool = False
    reduction: str = "mean"
    weight: Optional[torch.Tensor] = None
    names: tuple = ("x", "y")
    params: dict = field(default_factory=dict)
    other_problem: Callable[[list], Optional[str]] = lambda views: None
    queue: bool = False

    @property
    def function(self) -> str:
        return f"pyhypersphere.distributed.{self.local.__name__}"

    @property
    def anchors(self) -> int:
        """Anchors per row of x."""
        return contrastive.ANCHOR_ROWS[self.local.__name__][0]

    def agreed(self) -> dict:
        """The numbers every rank must agree on besides tau: the per-anchor options and
        the loss's own."""
        return {**row_options(self.reduction, self.weight), "decoupled": (float(self.decoupled), None), **self.params}

    def expected(self) -> str:
        a, b = self.names
        return f"{a} and {b} must be 2-D floating-point tensors [N_r, d] of one shape, dtype and device"

    def input_problem(self, views) -> Optional[str]:
        """The single-process loss's checks of the views and the per-anchor options, as a
        message (an empty shard is allowed here: the loss is over the global batch), then
        of its other arguments."""
        (x, y), (a, b), function = views, self.names, self.function
        try:
            check_features(x, a, function, min_rows=0)
            check_features(y, b, function, min_rows=0)
            check_matches(x, a, y, b, function, same_rows=True)
            contrastive.check_row_options(self.decoupled, self.reduction, self.weight, x, self.local.__name__, function)
        except (TypeError, ValueError) as error:
            return str(error).removeprefix(f"{function}: ")
        return constant_weight_problem(self.weight) or self.other_problem(views)

    def batch_problem(self, layout: gb.Layout) -> Optional[str]:
        """What the global batch (the same on every rank) cannot give, or None: the
        single-process loss's check of its size."""
        return contrastive.decoupled_problem(self.local.__name__, self.decoupled, layout.total, self.queue)


def _tau_param(tau: Temperature) -> tuple[float, Optional[str]]:
    if isinstance(tau, torch.Tensor) and not tau.is_floating_point():
        return math.nan, f"tau must be a number or a one-element floating-point tensor, got a {tau.dtype} tensor"
    return gb.parse_positive(tau, "tau")


def _to_learned_tau(tau_tensor: torch.Tensor, tau: float, x, y, both: bool):
    """x (and y when `both`) times s = tau / tau_tensor (sqrt of it when `both`), which is
    exactly 1 (tau = float(tau_tensor)).  The logits <x, y> / tau then carry d/d tau
    through s on this rank's rows, while the gathered numbers and the kernel's scale
    1 / tau are those of a plain number: ranks may mix a tensor and a number of one value."""
    s = tau / tau_tensor
    if both:
        s = s.sqrt()
    x = x * s.to(device=x.device, dtype=x.dtype)
    return (x, y * s.to(device=y.device, dtype=y.dtype)) if both else (x, y)


def _row_lse(a: torch.Tensor, b: torch.Tensor, scale: float, skip_positives: bool = False) -> torch.Tensor:
    """log sum_j exp(scale <a_i, b_j>) for every row of a, without j = i when
    `skip_positives` (-inf with no such b rows)."""
    if a.shape[0] == 0 or b.shape[0] == 0:
        return a.new_full((a.shape[0],), -math.inf)
    return contrastive_lse(a, b, scale, False, False, skip_positives=skip_positives)[0]


def _mine_first(rows: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """The gathered rows with this rank's [lo, hi) first: row i of the rank's shard then
    has its positive at index i (the kernels' skipped pairs); a row set's lse does not
    depend on its order."""
    return torch.cat([rows[lo:hi], rows[:lo], rows[hi:]])


def _nt_xent_rows(z: torch.Tensor, layout: gb.Layout, scale: float, decoupled: bool) -> torch.Tensor:
    """NT-Xent's losses of this rank's 2 N_r views over the global 2N views (its x rows,
    then its y rows).  A view's partners are its own rank's other views (the kernel's self
    pairs) and every view of the other ranks (cross pairs); the two log-sum-exps combine
    by logaddexp."""
    d, lo, hi = layout.dim, layout.my_offset, layout.my_offset + layout.my_rows
    x, y = z[:, :d], z[:, d:]
    mine_x, mine_y = x[lo:hi], y[lo:hi]
    if layout.my_rows == 0:
        return z[:0, 0]  # no anchors, still a function of z
    others = torch.cat([x[:lo], x[hi:], y[:lo], y[hi:]])
    own_x, own_y = contrastive_lse(mine_x, mine_y, scale, True, True, skip_positives=True)
    lse = torch.logaddexp(torch.cat([own_x, own_y]), _row_lse(torch.cat([mine_x, mine_y]), others, scale))
    positive = contrastive.row_dots(mine_x, mine_y) * scale
    return contrastive.row_losses(lse, torch.cat([positive, positive]), decoupled)


def _clip_rows(z: torch.Tensor, layout: gb.Layout, scale: float) -> torch.Tensor:
    """CLIP's losses of this rank's anchors: its x rows' log-sum-exps over all of y (rows
    of the logits), then its y rows' over all of x (columns), against its positives."""
    d, lo, hi = layout.dim, layout.my_offset, layout.my_offset + layout.my_rows
    x, y = z[:, :d], z[:, d:]
    rows = _row_lse(x[lo:hi], _mine_first(y, lo, hi), scale, True)
    columns = _row_lse(y[lo:hi], _mine_first(x, lo, hi), scale, True)
    positive = contrastive.row_dots(x[lo:hi], y[lo:hi]) * scale
    ce = contrastive.cross_entropy
    return torch.cat([ce(rows, positive), ce(columns, positive)])


def _info_nce_rows(z: torch.Tensor, layout: gb.Layout, scale: float, queue, in_batch: bool,
                   decoupled: bool, keys_grad: bool) -> torch.Tensor:
    """InfoNCE's losses of this rank's queries, each against every rank's keys (when
    in_batch) and the queue, which every rank holds whole.  `keys_grad`: whether the
    user's keys need their gradient (MoCo's momentum keys do not: their part of z's
    gradient is never returned, so no pass computes it)."""
    d, lo, hi = layout.dim, layout.my_offset, layout.my_offset + layout.my_rows
    q, k = z[:, :d], z[:, d:]
    if layout.my_rows == 0:
        return z[:0, 0]  # no anchors, still a function of z
    if not keys_grad:
        k = k.detach()
    keys = ([_mine_first(k, lo, hi)] if in_batch else []) + ([queue.detach().to(z.dtype)] if queue is not None else [])
    keys = torch.cat(keys)
    positive = contrastive.row_dots(q[lo:hi], k[lo:hi]) * scale
    # in_batch: the positive is key i, skipped; else it is not among the keys.  With a
    # gradient to come, the queries' from the lse's own pass (as the single-process
    # loss's; MoCo: one pass in all), the keys' (if wanted) by a backward for them alone.
    if z.requires_grad and keys.shape[0] > 0:
        lse, _ = contrastive_lse_row_grad(q[lo:hi], keys, scale, skip_positives=in_batch)
    else:
        lse = _row_lse(q[lo:hi], keys, scale, in_batch)
    return contrastive.row_losses(lse, positive, decoupled)


def _queue_problem(q, queue, in_batch: bool, function: str) -> Optional[str]:
    """What is wrong with InfoNCE's queue (q already checked), or None."""
    if queue is None:
        return None if in_batch else "in_batch=False needs a queue (there would be no negatives)"
    try:
        check_features(queue, "queue", function)
        check_matches(q, "q", queue, "queue", function, same_rows=False)
    except (TypeError, ValueError) as error:
        return str(error).removeprefix(f"{function}: ")
    if queue.requires_grad and torch.is_grad_enabled():
        return "queue must not require grad: across ranks it is a constant (MoCo's holds detached keys)"
    return None


def _plain_saving():
    return torch.autograd.graph.saved_tensors_hooks(_keep, _keep)


def _keep(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def _global_loss(x, y, tau: Temperature, group, spec: _Spec, equal_shards: bool):
    """The global-batch loss of `spec` (`equal_shards`: the no-sync path)."""
    function = spec.function
    _, world = gb.member_of(group, function, f"pyhypersphere.{spec.local.__name__}")
    if world == 1:  # no collectives at all
        return spec.local(x, y, tau)
    per_row = spec.reduction == "none"
    if equal_shards and per_row:
        raise ValueError(f"{function}: {NONE_NEEDS_SYNC}")
    params = {"tau": _tau_param(tau), **spec.agreed()}
    views = [x, y]
    tau_tensor = learned(tau)
    if tau_tensor is not None and params["tau"][1] is None and spec.input_problem(views) is None:
        views = list(_to_learned_tau(tau_tensor, params["tau"][0], x, y, spec.symmetric_scale))
    grad = torch.is_grad_enabled() and any(isinstance(v, torch.Tensor) and v.requires_grad for v in views)
    if equal_shards:
        layout = _assume_equal(views, params, group, spec)
    else:
        layout = gb.agree(
            views, params, grad, contrastive.kernel_problem, group, function, check=spec.input_problem,
            expected=spec.expected(), inputs=f"{spec.names[0]}, {spec.names[1]} or tau", min_rows=1,
        )  # fmt: skip
    problem = spec.batch_problem(layout)
    if problem is not None:  # every rank has the same layout: every rank raises, before any other collective
        raise gb.LossInputError(f"{function}: {problem}")
    z = gb.gather_views(views, layout, group)
    acc = accumulate_dtype(layout.dtype)
    weighted_mean = spec.reduction == "mean" and spec.weight is not None
    failure = gb.Failure()
    if params["tau"][1] is not None:  # only on the no-sync path: agree() raised otherwise
        failure.error = gb.LossInputError(f"{function}: {params['tau'][1]}")
    partials, send, rows, weight = None, None, None, None
    with failure:
        if failure.error is not None:
            raise failure.error
        # This rank's anchors' losses as a function of the whole gathered batch, in the
        # accumulation dtype (16-bit gradients stay float32 through the reduce-scatter):
        # autograd through the operator gives their gradient with respect to every row at
        # once.  That graph lives only within this call (or, for 'none', until its
        # backward): the caller's saved-tensor hooks (CPU offloading) are replaced by
        # plain saving for it.
        with torch.enable_grad() if grad else torch.no_grad(), _plain_saving():
            z = z.to(acc).requires_grad_(grad)
            rows = spec.rows(z, layout, 1.0 / params["tau"][0])
            weight = None if spec.weight is None else spec.weight.detach().to(acc)
            share = rows if weight is None else rows * weight
            # This rank's part of the global sum (of the mean's numerator when weighted).
            value = share.sum() / (spec.anchors * layout.total if spec.reduction == "mean" and weight is None else 1)
            grads = torch.autograd.grad(value, z)[0] if grad and not per_row else None
        if grads is not None:
            send = gb.scatter_buffer(grads, layout)
            del grads
        partials = torch.stack([value.detach(), weight.sum() if weighted_mean else value.detach() * 0])
    table = gb.exchange_status(partials, failure, layout, params, not equal_shards, group, function, width=2)
    if per_row:  # the checked path: every rank raised above if one failed
        return gb.per_row_output(share.detach(), rows, z, views, layout, params, group, function, weight,
                                 dtype=loss_dtype(views[0]))
    # Every rank sums the same [W, 2] table in the same order: bitwise the same loss everywhere.
    loss = table[:, 0].sum()
    if weighted_mean:  # sum_i w_i l_i / sum_i w_i over the global batch
        inverse = 1.0 / table[:, 1].sum()
        loss = loss * inverse
        send = send * inverse.to(device=send.device, dtype=send.dtype) if send is not None else None
    loss = loss.to(device=layout.device, dtype=loss_dtype(views[0]))
    if grad and failure.error is not None:  # the no-sync path: NaN, and the collectives still run
        padded = layout.padded_rows(torch.finfo(acc).bits // 8)
        send = z.new_full((world * padded, layout.views * layout.dim), math.nan, dtype=acc)
    elif grad and equal_shards:
        # Ranks that disagree (each valid on its own) got a NaN table: the gradient is
        # NaN too, not each rank's own finite guess (a device-side select, no host read).
        send = send * torch.where(torch.isnan(table).any(), math.nan, 1.0).to(send.dtype)
    received = gb.reduce_scatter_rows(send, layout, group) if grad else None
    failure.reraise()  # the no-sync path's failed rank, after its last collective
    return gb.attach_gradient(loss.reshape(1), received, float(world), views)[0]


def _assume_equal(views, params, group, spec: _Spec) -> gb.Layout:
    """The no-sync path's layout: this rank's inputs checked before the first collective
    (a rank that raises here leaves its peers waiting in it, as on the uniformity's path);
    the ranks' agreement is checked by the status exchange, which makes the loss NaN."""
    problem = spec.input_problem(views) or contrastive.kernel_problem(views[0])
    if problem is not None:
        raise gb.LossInputError(f"{spec.function}: {problem}")
    return gb.assume_equal(views, params, group, spec.function)


def nt_xent_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    tau: Temperature = DEFAULT_NT_XENT_TAU,
    group: Optional[dist.ProcessGroup] = None,
    *,
    equal_shards: bool = False,
    decoupled: bool = False,
    reduction: str = "mean",
    weight: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """SimCLR's NT-Xent over the global batch's 2N views (``pyhypersphere.nt_xent_loss``
    of every rank's x and y shards concatenated in rank order).

    Args:
        x, y: this rank's shards of the two views [N_r, d] (same shape, dtype, device);
            N_r may differ between ranks and may be 0; d and dtype may not.
        tau: the temperature, the same value on every rank: a positive number, or a
            one-element tensor (read with ``.item()``: a host sync); one that requires
            grad gets this rank's share of dL/dtau (DDP's averaging of a replicated
            tau gives dL/dtau).
        group: the process group (default: the default group).
        equal_shards: promise that every rank's shards have the same shape; skips the
            metadata exchange and every host read of the collective layer (the no-sync
            path, as for ``distributed.uniform_loss``: pass tau as a Python number).  A
            disagreement or a failure on one rank then makes the loss and gradient NaN
            on every rank, and the rank at fault raises after its last collective.
            Not with reduction='none'.
        decoupled, reduction: as for the single-process loss, the same on every rank:
            'mean' and 'sum' over the global batch's 2N anchors, 'none' this rank's 2 N_r
            anchors' losses (its x rows, then its y rows).
        weight: None on every rank, or on every rank the [2 N_r] weights of this rank's
            anchors in that order (constants); 'mean' is then sum_i w_i l_i / sum_i w_i
            over the global batch.

    Returns the loss (a 0-dim tensor in x's dtype; float32 under autocast, as the
    single-process loss's), the same on every rank.  The backward
    returns W * g * dL/dx_r (and dL/dy_r) for an upstream gradient g that must be the
    same on every rank, and issues no collective; DDP's averaging then yields the
    single-process gradient (summing over ranks instead: divide the loss by W).  With
    reduction='none' the backward, for each rank's upstream gradient G_r, returns rank r's
    rows of the single-process gradient of sum_s <G_s, rows_s> (the concatenated
    per-anchor losses), and is a collective: every rank must run it.  Every rank must call
    the loss (the same number of times, in the same order); an invalid or disagreeing
    input raises the same error on every rank.  World size 1 calls the single-process loss.
    """
    def local(x_, y_, tau_):
        return contrastive.nt_xent_loss(x_, y_, tau_, decoupled=decoupled, reduction=reduction, weight=weight)

    local.__name__ = "nt_xent_loss"
    spec = _Spec(local, lambda z, layout, scale: _nt_xent_rows(z, layout, scale, decoupled), True, decoupled,
                 reduction, weight)
    return _global_loss(x, y, tau, group, spec, equal_shards)


def clip_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    tau: Temperature = DEFAULT_CLIP_TAU,
    group: Optional[dist.ProcessGroup] = None,
    *,
    equal_shards: bool = False,
    reduction: str = "mean",
    weight: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """CLIP's symmetric InfoNCE over the global batch (``pyhypersphere.clip_loss`` of
    every rank's x and y shards concatenated in rank order): every x_i against all N
    y_j of every rank, and every y_j against all N x_i.

    Arguments (``equal_shards``, reduction and weight too: this rank's 2 N_r anchors, its
    x rows against all of y, then its y rows against all of x), value, gradient and
    collectives as for :func:`nt_xent_loss`; a learned temperature
    (``tau = 1 / logit_scale.exp()``) gets this rank's share of dL/dtau.
    """
    def local(x_, y_, tau_):
        return contrastive.clip_loss(x_, y_, tau_, reduction=reduction, weight=weight)

    local.__name__ = "clip_loss"
    spec = _Spec(local, _clip_rows, False, False, reduction, weight)
    return _global_loss(x, y, tau, group, spec, equal_shards)


def info_nce_loss(
    q: torch.Tensor,
    k: torch.Tensor,
    tau: Temperature = DEFAULT_INFO_NCE_TAU,
    group: Optional[dist.ProcessGroup] = None,
    *,
    queue: Optional[torch.Tensor] = None,
    in_batch: bool = True,
    equal_shards: bool = False,
    decoupled: bool = False,
    reduction: str = "mean",
    weight: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """InfoNCE over the global batch (``pyhypersphere.info_nce_loss`` of every rank's q and
    k shards concatenated in rank order): each query against its positive key, every
    rank's keys as negatives (when ``in_batch``) and the rows of ``queue``.

    The queue is MoCo's: the same [K, d] tensor on every rank (its shape is checked to
    agree, its values are not), a constant (one that requires grad is refused).  Whether
    k requires grad must agree too: MoCo's momentum keys (k detached on every rank) get no
    gradient pass, the loss and q's gradient come from one pass over the pairs.
    Arguments otherwise (decoupled, reduction and weight too: this rank's N_r queries),
    value, gradient (to q and k) and collectives as for :func:`nt_xent_loss`; a learned
    temperature gets this rank's share of dL/dtau.
    """
    function = "pyhypersphere.distributed.info_nce_loss"

    def local(q_, k_, tau_):
        return contrastive.info_nce_loss(q_, k_, tau_, queue=queue, in_batch=in_batch, decoupled=decoupled,
                                         reduction=reduction, weight=weight)

    local.__name__ = "info_nce_loss"
    rows = 0 if queue is None else (queue.shape[0] if isinstance(queue, torch.Tensor) and queue.dim() == 2 else -1)
    # Whether k's gradient is computed (a learned tau scales q alone): every rank must
    # agree, as each rank's queries give every rank's keys part of their gradient.
    keys_grad = isinstance(k, torch.Tensor) and k.requires_grad
    spec = _Spec(
        local, lambda z, layout, scale: _info_nce_rows(z, layout, scale, queue, in_batch, decoupled, keys_grad), False,
        decoupled, reduction, weight, names=("q", "k"),
        params={"queue rows": (float(rows), None), "in_batch": (float(bool(in_batch)), None),
                "k requires_grad": (float(keys_grad), None)},
        other_problem=lambda views: _queue_problem(views[0], queue, in_batch, function), queue=queue is not None,
    )  # fmt: skip
    return _global_loss(q, k, tau, group, spec, equal_shards)
