"""Global-batch uniformity across processes: what is specific to uniformity (the pair
split and the weighting of the parts), on the global-batch layer in ``_global_batch.py``.
The public name, with the usage, the split and the DDP gradient convention, is
``pyhypersphere.distributed.uniform_loss``; the contrastive losses' counterpart is
``contrastive_distributed.py``.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
import torch.distributed as dist

from .. import _global_batch as gb
from . import uniform
from ._common import accumulate_dtype, learned, loss_dtype
from .uniform import DEFAULT_T, scale_to_learned_t

_FUNCTION = "pyhypersphere.distributed.uniform_loss"

# Below these sizes a split of the pairs leaves the devices idle: (rows per kernel
# block, pair tiles per rank wanted).  CUDA: one 128-row tile per SM of a 132-SM GPU,
# i.e. split when N >= 128 * sqrt(264 W).  CPU: 64-row tiles, 8 per rank.
_SPLIT_THRESHOLD = {"cuda": (128, 132), "cpu": (64, 8)}


def split_pays_off(total: int, world: int, device_type: str) -> bool:
    """Whether to split the pairs over the ranks (else every rank computes the whole
    loss): when each rank still gets enough pair tiles, (N/B)^2 / (2W) >= tiles.  A pure
    function of (N, W, the group's device type), so every rank decides alike."""
    block, tiles = _SPLIT_THRESHOLD.get(device_type, _SPLIT_THRESHOLD["cuda"])
    return total * total >= 2 * world * tiles * block * block


def pair_rows(total: int, world: int, rank: int) -> tuple[int, int]:
    """Rank r's rows [a_r, a_{r+1}): the first rows of the pairs it sums.  a_r is the
    smallest a whose pairs (i < j, i < a) number at least r/W of all pairs (integer
    arithmetic, the same on every rank; O(W log N) for all ranks, not O(W^2))."""

    def boundary(r: int) -> int:
        if r == world:
            return total
        target = -(-r * total * (total - 1) // (2 * world))  # ceil(r * pairs / W)
        lo, hi = 0, total  # pairs_before(a) = a * (2N - 1 - a) / 2 increases on [0, N]: bisect
        while lo < hi:
            mid = (lo + hi) // 2
            if mid * (2 * total - 1 - mid) // 2 >= target:
                hi = mid
            else:
                lo = mid + 1
        return lo

    return boundary(rank), boundary(rank + 1)


def _capability_problem(x: torch.Tensor) -> Optional[str]:
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(x.device.type)
    if key is None or not torch._C._dispatch_has_kernel_for_dispatch_key("pyhypersphere::uniform_lse", key):
        return f"no uniform_lse kernel for {x.device.type} tensors in this build"
    return None


def _pair_part(z: torch.Tensor, lo: int, hi: int, t: float, grad: bool):
    """log-sum-exp and gradient rows [lo, N) of the pairs whose first row is in [lo, hi)."""
    total = z.shape[0]
    if hi - lo < 1 or (hi - lo == 1 and hi == total):  # no pair starts here
        return z.new_full((), -math.inf, dtype=torch.float64), None, None
    queue = z[hi:] if hi < total else None
    # A precision warning points at the caller of uniform_loss: 5 frames up from the op
    # call (this function, _global_uniformity, uniform_loss, its caller).
    lse, gx, gq = uniform.uniform_lse(
        z[lo:hi], queue, t, True, 0, 1, grad, grad and queue is not None, warn_stacklevel=5
    )
    return lse, gx, gq if queue is not None else None


def _global_uniformity(views, layout: gb.Layout, params, group, sync: bool, split: Optional[bool], grad: bool):
    t = params["t"][0]
    z = gb.gather_views(views, layout, group)
    # int(): under torch.compile the partition specializes on N (one compile per shard size).
    total, d, world, width = int(layout.total), layout.dim, layout.world, layout.views * layout.dim
    if split is None:
        split = split_pays_off(total, world, layout.group_device.type)
    lo, hi = pair_rows(total, world, layout.rank) if split else (0, total)
    acc = accumulate_dtype(layout.dtype)
    failure = gb.Failure()
    if params["t"][1] is not None:  # only on the no-sync path: the exchange caught it otherwise
        failure.error = gb.LossInputError(f"{_FUNCTION}: {params['t'][1]}")
    partials, send, rows = None, None, None
    if failure.error is None:
        with failure:
            lses = []
            grads = z.new_empty((total, width), dtype=acc) if grad else None
            if grad:
                grads[:lo].zero_()  # rows whose pairs this rank does not sum
            for v in range(layout.views):
                lse, gx, gq = _pair_part(z[:, v * d : (v + 1) * d], lo, hi, t, grad)
                lses.append(lse)
                if grad:
                    columns = grads[lo:, v * d : (v + 1) * d]
                    if gx is None:
                        columns.zero_()
                        continue
                    columns[: hi - lo] = gx
                    if gq is not None:
                        columns[hi - lo :] = gq
            partials = torch.stack(lses)
            if grad and split:
                send = gb.scatter_buffer(grads, layout)
            elif grad:
                # A copy, so that the [N, V*d] buffer is not kept alive for the backward.
                rows = grads[layout.my_offset : layout.my_offset + layout.my_rows].clone()
            del grads
    table = gb.exchange_status(partials, failure, layout, params, sync, group, _FUNCTION)  # [W, V]
    # Every rank reduces the same table in the same order: bitwise the same loss everywhere.
    lse = torch.logsumexp(table, dim=0) if split else table[0]
    if grad and failure.error is not None:  # the no-sync path: NaN, and the collectives still run
        padded = layout.padded_rows(torch.finfo(acc).bits // 8)
        send = z.new_full((world * padded, width), math.nan, dtype=acc) if split else None
        rows = None if split else z.new_full((layout.my_rows, width), math.nan, dtype=acc)
    if grad and split:
        # d lse / dz = sum_r exp(lse_r - lse) d lse_r / dz: weight each part (in place), then sum.
        local = table[layout.rank] if failure.error is None else lse
        weight = torch.exp(local - lse).to(device=layout.device, dtype=acc)
        send.view(-1, layout.views, d).mul_(weight.view(1, -1, 1))
        rows = gb.reduce_scatter_rows(send, layout, group)
    elif grad and not sync:
        # Ranks that disagree got a NaN table: the gradient rows computed before the
        # exchange are NaN too, not a finite guess (a device-side select, no host read).
        nan_where_lost = torch.where(torch.isnan(lse), math.nan, 1.0).to(device=rows.device, dtype=acc)
        rows = (rows.view(-1, layout.views, d) * nan_where_lost.view(1, -1, 1)).view(rows.shape)
    failure.reraise()  # the no-sync path's failed rank, after its last collective
    pairs = total * (total - 1) // 2
    values = (lse - math.log(pairs)).to(device=layout.device, dtype=loss_dtype(views[0]))
    return gb.attach_gradient(values, rows, float(world), views)


def uniform_loss(
    x: Union[torch.Tensor, Sequence[torch.Tensor]],
    t: float = DEFAULT_T,
    group: Optional[dist.ProcessGroup] = None,
    *,
    equal_shards: bool = False,
    split: Optional[bool] = None,
):
    """Uniformity loss of the global batch: every rank's shard, concatenated in rank order.

    Args:
        x: this rank's features [N_r, d], or a list of views (e.g. ``[z1, z2]``) of one
            shape, each giving its own loss with one set of collectives for all.  N_r
            may differ between ranks (the last batch of an epoch) and may be 0; d, dtype
            and the number of views may not.
        t: the potential's scale, a positive finite number, the same on every rank
            (pass a Python number: a tensor is read with ``.item()``).
        group: the process group (default: the default group).
        equal_shards: promise that every rank's shard has the same shape; skips the
            metadata exchange and every host read outside the operator (the no-sync
            path: CUDA-graph and ``torch.compile(fullgraph=True)`` friendly; on a GPU the
            operator's precision policy reads once per call, except under capture).  A
            disagreement or a failure on one rank then makes the loss NaN on every rank,
            and the rank at fault raises.
        split: split the pair work over the ranks (True), compute the whole loss on every
            rank (False: no reduce-scatter), or decide by size (None, ``split_pays_off``).

    Returns the loss (a 0-dim tensor in x's dtype, float32 under autocast as the
    single-process loss's; the same on every rank), or a list of
    them for a list of views: the value of ``pyhypersphere.uniform_loss(torch.cat(all
    shards))``.

    Gradient: the backward returns W * g * dL/dx_r for an upstream gradient g that must
    be the same on every rank, so DDP's averaging yields the single-process gradient
    (summing over ranks instead: divide the loss by W).  It issues no collective.

    Collectives: every rank must call this the same number of times, in the same order
    relative to its other collectives (uneven loaders: DDP ``join()`` cannot stand in
    for a missing call).  An exception from it is fatal for the step on every rank: with
    ``equal_shards=False`` every rank raises together.
    """
    _, world = gb.member_of(group, _FUNCTION, "pyhypersphere.uniform_loss")
    single = not isinstance(x, (list, tuple))
    views = [x] if single else list(x)
    if world == 1:  # no collectives at all
        losses = [uniform.uniform_loss(v, t) for v in views]
        return losses[0] if single else losses
    t_tensor = learned(t)
    if t_tensor is not None:  # the rows scaled by exactly 1: dL/dt flows through the scale
        views = list(scale_to_learned_t(t_tensor, gb.parse_positive(t, "t")[0], *views))
    params = {"t": gb.parse_positive(t, "t")}
    tensors = [v for v in views if isinstance(v, torch.Tensor)]
    grad = torch.is_grad_enabled() and any(v.requires_grad for v in tensors)
    if equal_shards:
        layout = gb.assume_equal(views, params, group, _FUNCTION)
    else:
        layout = gb.agree(views, params, grad, _capability_problem, group, _FUNCTION)
    losses = _global_uniformity(views, layout, params, group, not equal_shards, split, grad)
    return losses[0] if single else losses
