"""Global-batch uniformity across processes (torch.distributed, any backend).

    from pyhypersphere.distributed import uniform_loss
    loss = align_loss(x, y) + lam * uniform_loss(x, t=2)   # x: this rank's shard

``uniform_loss`` returns the uniformity loss of the concatenation of every rank's shard
(in rank order), the same value on every rank, so the N^2 pairs of the global batch are
all counted, not just the (N/W)^2 within each shard.

How the work is split: every rank all-gathers the features (O(N*d) traffic) and sums
only its own ``part = rank`` of ``num_parts = W`` balanced slices of the pair tiles, so
each rank does about 1/W of the pair work.  The partial log-sum-exps are combined by a
max-shifted sum, and the gradient d loss / d x of the whole batch is the sum over ranks
of each part's gradient weighted by exp(lse_r - lse); a reduce-scatter hands every
rank the rows of its own shard (O(N*d) traffic again).

Gradient scaling under DistributedDataParallel: DDP *averages* the parameter gradients
over the W ranks, i.e. it optimizes the mean over ranks of each rank's loss.  This loss
has the same value L on every rank, so that mean is L itself, and the backward returns
the exact gradient of the *sum* over ranks of the W copies of L with respect to this
rank's rows (as ``torch.distributed.nn.functional.all_gather`` does): with the usual
upstream gradient of 1 on every rank, W * dL/dx_r.  DDP's division by W then gives
exactly dL/dtheta, the gradient of single-process training on the concatenated batch.
If you sum gradients over ranks instead of averaging them, divide this loss by W.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable

from . import _ops
from .losses import DEFAULT_T, _as_float, _check_tensor, _needs_grad

_FUNCTION = "pyhypersphere.distributed.uniform_loss"
# Index of a dtype in the metadata the ranks exchange; anything else is rejected.
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# Metadata columns exchanged before the features, one row per rank.
_VALID, _ROWS, _DIM, _DTYPE, _REQUIRES_GRAD, _T_BITS = range(6)

# torch >= 2.13 names the single-tensor collectives *_single; older releases *_tensor.
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter_single = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


@dataclass(frozen=True)
class _Layout:
    """Where each rank's rows sit in the gathered batch (agreed on by every rank)."""

    rank: int
    world: int
    rows: list[int]  # N_s of every rank s, in rank order
    dim: int

    @property
    def total(self) -> int:
        return sum(self.rows)

    @property
    def max_rows(self) -> int:
        return max(self.rows)

    @property
    def equal(self) -> bool:
        return all(r == self.rows[0] for r in self.rows)

    def offset(self, s: int) -> int:
        return sum(self.rows[:s])


def _t_bits(t: float) -> int:
    return torch.tensor([t], dtype=torch.float64).view(torch.int64).item()


def _agree_on_layout(x: torch.Tensor, t: float, needs_grad: bool, group) -> _Layout:
    """Exchange (rows, d, dtype, requires_grad, t) and raise the same error on every rank
    when they disagree, before any collective whose shapes depend on them (a check on one
    rank only would leave the others waiting in the feature gather)."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    if rank < 0:
        raise ValueError(f"{_FUNCTION}: this process is not a member of the given group")
    valid = x.dim() == 2 and x.dtype in _FLOAT_DTYPES
    mine = torch.tensor(
        [
            int(valid),
            x.shape[0] if valid else -1,
            x.shape[1] if valid else -1,
            _FLOAT_DTYPES.index(x.dtype) if valid else -1,
            int(needs_grad),
            _t_bits(t),
        ],
        dtype=torch.int64,
        device=x.device,
    )
    # Gloo gathers along the first dimension only (no stacked output): gather flat.
    table = mine.new_empty((world * mine.numel(),))
    _all_gather_single(table, mine, group=group)
    meta = table.view(world, -1).cpu().tolist()

    def column(c):
        return [row[c] for row in meta]

    bad = [s for s in range(world) if not meta[s][_VALID]]
    if bad:
        local = f" (here x has shape {tuple(x.shape)} and dtype {x.dtype})" if rank in bad else ""
        raise ValueError(
            f"{_FUNCTION}: x must be a 2-D floating-point tensor [N_r, d] on every rank; "
            f"rank(s) {bad} passed something else{local}"
        )
    for c, what in ((_DIM, "the feature dimension d"), (_DTYPE, "the dtype of x"), (_T_BITS, "t")):
        values = column(c)
        if len(set(values)) > 1:
            if c == _DTYPE:
                values = [str(_FLOAT_DTYPES[v]).replace("torch.", "") for v in values]
            elif c == _T_BITS:
                values = [torch.tensor([v]).view(torch.float64).item() for v in values]
            listing = ", ".join(f"rank {s}: {v}" for s, v in enumerate(values))
            raise ValueError(f"{_FUNCTION}: the ranks disagree on {what} ({listing}); it must be the same on every rank")
    if len(set(column(_REQUIRES_GRAD))) > 1:
        which = [s for s in range(world) if meta[s][_REQUIRES_GRAD]]
        raise ValueError(
            f"{_FUNCTION}: x needs a gradient on rank(s) {which} only; the backward is a "
            "collective, so every rank must build the graph (x.requires_grad and grad mode "
            "the same on every rank) and call backward"
        )
    rows = column(_ROWS)
    if sum(rows) < 2:
        raise ValueError(f"{_FUNCTION}: needs at least 2 rows across all ranks, got shards of {rows} rows")
    return _Layout(rank=rank, world=world, rows=rows, dim=meta[0][_DIM])


def _gather_rows(x: torch.Tensor, layout: _Layout, group) -> torch.Tensor:
    """The concatenation of every rank's x in rank order, [N, d] (shards padded to equal
    size for the collective, padding dropped after)."""
    n, d, world = layout.max_rows, layout.dim, layout.world
    if layout.equal:
        gathered = x.new_empty((world * n, d))
        _all_gather_single(gathered, x.detach().contiguous(), group=group)
        return gathered
    padded = x.new_zeros((n, d))
    padded[: x.shape[0]] = x.detach()
    gathered = x.new_empty((world * n, d))
    _all_gather_single(gathered, padded, group=group)
    return torch.cat([gathered[s * n : s * n + rows] for s, rows in enumerate(layout.rows)])


class _GlobalUniformity(torch.autograd.Function):
    """Forward: this rank's part of the pairs of the gathered batch, combined over ranks.
    Backward: this rank's rows of the summed, weighted part gradients, times the sum of
    the upstream gradients of all ranks (see the module docstring for why)."""

    @staticmethod
    def forward(ctx, x, t, layout, group, compute_grad):
        z = _gather_rows(x, layout, group)
        lse_part, grad_part, _ = _ops._lib_ops.uniform_lse(
            z, None, t, True, layout.rank, layout.world, compute_grad, False
        )
        lse_parts = lse_part.new_empty((layout.world,))
        _all_gather_single(lse_parts, lse_part.reshape(1), group=group)
        # Max-shifted combination (torch.logsumexp); every rank reduces the same vector in
        # the same order, so the value is bitwise identical on every rank.
        lse = torch.logsumexp(lse_parts, dim=0)
        ctx.layout, ctx.group, ctx.x_dtype = layout, group, x.dtype
        if compute_grad:
            # d lse / dz = sum_r exp(lse_r - lse) * d lse_r / dz  (an empty part has weight 0).
            ctx.save_for_backward(grad_part, torch.exp(lse_part - lse))
        pairs = layout.total * (layout.total - 1) // 2
        return lse - math.log(pairs)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        grad_part, weight = ctx.saved_tensors
        layout, world, d = ctx.layout, ctx.layout.world, ctx.layout.dim
        acc = weight.dtype
        slot = layout.max_rows * d
        # One reduce-scatter: slot s holds rank s's rows of the weighted part gradient and,
        # in its last entry, this rank's upstream gradient, so rank s receives its rows
        # of the full gradient and the sum of the upstream gradients over ranks.
        send = grad_part.new_zeros((world, slot + 1), dtype=acc)
        weighted = grad_part.to(acc) * weight
        if layout.equal:
            send[:, :slot] = weighted.reshape(world, slot)
        else:
            for s, rows in enumerate(layout.rows):
                start = layout.offset(s)
                send[s, : rows * d] = weighted[start : start + rows].reshape(-1)
        send[:, slot] = grad_loss.to(acc)
        received = send.new_empty((slot + 1,))
        _reduce_scatter_single(received, send.view(-1), group=ctx.group)
        rows = layout.rows[layout.rank]
        grad_x = received[: rows * d].reshape(rows, d) * received[slot]
        return grad_x.to(ctx.x_dtype), None, None, None, None


def uniform_loss(x: torch.Tensor, t: float = DEFAULT_T, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Uniformity loss of the global batch: every rank's shard, concatenated in rank order.

    Args:
        x: this rank's features [N_r, d]; N_r may differ between ranks (e.g. the last
            batch of an epoch) and may be 0, d and dtype may not.
        t: the potential's scale, a positive finite number, the same on every rank.
        group: the process group (default: the default group).

    Returns the same 0-dim tensor on every rank, in x's dtype: the value of
    ``pyhypersphere.uniform_loss(torch.cat(all shards))``.

    Gradient convention: the backward returns W * dL/dx_r for an upstream gradient of 1
    on every rank (in general, the sum of the upstream gradients over ranks times
    dL/dx_r), so DistributedDataParallel's averaging over the W ranks yields exactly the
    single-process gradient on the concatenated batch.  Summing gradients over ranks
    instead of averaging: divide the loss by W.  The forward and the backward are
    collectives: every rank must call both, in the same order as the other collectives.
    """
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            f"{_FUNCTION}: no torch.distributed process group is initialized; call "
            "torch.distributed.init_process_group first, or use pyhypersphere.uniform_loss "
            "for a single process"
        )
    _check_tensor(x, "x", _FUNCTION)
    t = _as_float(t, "t", _FUNCTION)
    needs_grad = _needs_grad(x)
    layout = _agree_on_layout(x, t, needs_grad, group)
    loss = _GlobalUniformity.apply(x, t, layout, group, needs_grad)
    return loss.to(x.dtype)
