"""The global-batch layer under the distributed losses (torch.distributed, any backend).

A global-batch loss sees the concatenation of every rank's shard, in rank order.  Each
such loss (uniformity in ``ops/uniform_distributed.py``, NT-Xent and CLIP in
``ops/contrastive_distributed.py``) is built from these steps, and only the middle one is
loss-specific:

1. ``agree`` (or ``assume_equal`` on the no-sync path): one all-gather of a metadata
   row per rank (validity of the inputs and of the loss's scalar parameters, rows, d,
   dtype, number of views, whether a gradient is needed, device type, a capability
   flag), read on the host once; every rank raises the same error before any
   collective whose shapes depend on it.
2. ``gather_views``: one all-gather of all views at once ([N_r, V*d] per rank, padded
   to equal, 16-byte aligned chunks), un-padded by one indexed copy.
3. (the loss) values and, per view, the gradient rows it contributes, in the
   accumulation dtype; any exception is caught (``Failure``) rather than raised.
4. ``exchange_status``: one all-gather of a float64 row per rank carrying the loss's
   partial values, a success flag and the shape/parameter fingerprint.  With ``sync``
   the host reads it and every rank raises together when any rank failed; without,
   the failure turns every rank's result into NaN (no host read).
5. ``scatter_buffer`` (before the status exchange, so that running out of memory
   there is a reported failure) and ``reduce_scatter_rows``: the gradient rows of every
   view summed over ranks and scattered, issued in the forward as soon as the weights
   are known (asynchronous: the wait happens at first use, in the backward).
6. ``attach_gradient``: the autograd node whose backward is a scale of this rank's
   received rows, so the backward issues no collective.

Every collective goes through ``_collective`` (one place to record or replace them).
"""

from __future__ import annotations

import functools
import itertools
import math
import numbers
import struct
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
DEVICE_TYPES = ("cpu", "cuda")  # index in the metadata row; anything else is len(DEVICE_TYPES)
# Collective chunks start on 16-byte boundaries (NCCL's fast path; the alignment rule).
CHUNK_ALIGN_BYTES = 16

# torch 2.13 renamed the functional tensor collectives (the old names warn there); torch
# before it has only the old names.
_ALL_GATHER = getattr(funcol, "all_gather_single", None) or funcol.all_gather_tensor
_REDUCE_SCATTER = getattr(funcol, "reduce_scatter_single", None) or funcol.reduce_scatter_tensor

# Metadata columns: a bitmask of what is valid, then the shape, then the parameters' bits.
_OK_VIEWS, _OK_PARAMS, _OK_CAPABLE = 1, 2, 4
_FLAGS, _ROWS, _DIM, _DTYPE, _VIEWS, _NEEDS_GRAD, _DEVICE, _PARAMS = range(8)


def _collective(name: str, tensor: torch.Tensor, group) -> torch.Tensor:
    """The only place that issues collectives (functional, so torch.compile traces them
    and the result is waited for at first use)."""
    group = dist.group.WORLD if group is None else group
    if name == "all_gather":
        return _ALL_GATHER(tensor, 0, group)
    if name == "reduce_scatter":
        return _REDUCE_SCATTER(tensor, "sum", 0, group)
    raise ValueError(f"unknown collective {name!r}")


def group_device(group) -> torch.device:
    """Where this group's collectives live: the current CUDA device for NCCL, else the CPU."""
    backend = str(dist.get_backend(group)).lower()
    if "nccl" in backend and "gloo" not in backend:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def world_of(group) -> tuple[int, int]:
    return dist.get_rank(group), dist.get_world_size(group)


def member_of(group, function: str, local: str) -> tuple[int, int]:
    """(rank, world) of this process in `group`, with clear errors when there is no
    process group (`local`: the single-process function to use instead) or this
    process is not in it."""
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            f"{function}: no torch.distributed process group is initialized; call "
            f"torch.distributed.init_process_group first, or use {local} for a single process"
        )
    rank, world = world_of(group)
    if rank < 0:
        raise ValueError(f"{function}: this process is not a member of the given group")
    return rank, world


def float_bits(value: float) -> int:
    """The IEEE-754 bits of a float64, computed on the host (no device round trip)."""
    return struct.unpack("<q", struct.pack("<d", value))[0]


def bits_float(bits: int) -> float:
    return struct.unpack("<d", struct.pack("<q", bits))[0]


def parse_positive(value, name: str) -> tuple[float, Optional[str]]:
    """(the float, None) for a positive finite number, else (nan, what is wrong).  A
    tensor is read with .item() (a host sync: pass a Python number on the no-sync path)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            return math.nan, f"{name} must be a number, got a tensor of shape {tuple(value.shape)}"
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return math.nan, f"{name} must be a number, got {type(value).__name__}"
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        return math.nan, f"{name} must be a positive finite number, got {value}"
    return value, None


def check_views(views: Sequence) -> Optional[str]:
    """What is wrong with this rank's views (2-D floating tensors of one shape, dtype and
    device), or None."""
    if len(views) == 0:
        return "got an empty list of views"
    for i, v in enumerate(views):
        if not isinstance(v, torch.Tensor):
            return f"view {i} is a {type(v).__name__}, not a torch.Tensor"
        if v.dim() != 2 or v.dtype not in FLOAT_DTYPES:
            return f"view {i} has shape {tuple(v.shape)} and dtype {v.dtype}"
    first = views[0]
    for i, v in enumerate(views[1:], 1):
        if v.shape != first.shape or v.dtype != first.dtype or v.device != first.device:
            return (
                f"view {i} is {tuple(v.shape)} {v.dtype} on {v.device}, view 0 is "
                f"{tuple(first.shape)} {first.dtype} on {first.device}"
            )
    return None


def device_index(device: torch.device) -> int:
    return DEVICE_TYPES.index(device.type) if device.type in DEVICE_TYPES else len(DEVICE_TYPES)


def chunk_rows(rows: int, row_elems: int, element_size: int) -> int:
    """Rows per collective chunk: at least `rows`, padded so every chunk starts 16-byte aligned."""
    step = CHUNK_ALIGN_BYTES // math.gcd(CHUNK_ALIGN_BYTES, row_elems * element_size)
    return -(-max(rows, 1) // step) * step


@dataclass(frozen=True)
class Layout:
    """Where every rank's rows sit in the gathered batch (the same on every rank)."""

    rank: int
    world: int
    rows: tuple[int, ...]  # N_s of every rank s, in rank order
    dim: int
    views: int
    dtype: torch.dtype
    device: torch.device  # the views' device (every gathered tensor lives there)
    group_device: torch.device
    offsets: tuple[int, ...]  # first global row of every rank, and the total at the end

    @staticmethod
    def build(rank, world, rows, dim, views, dtype, device, group_dev) -> "Layout":
        offsets = tuple(itertools.accumulate(rows, initial=0))  # O(W), not O(W^2)
        return Layout(rank, world, tuple(rows), dim, views, dtype, device, group_dev, offsets)

    @property
    def total(self) -> int:
        return self.offsets[-1]

    @property
    def my_rows(self) -> int:
        return self.rows[self.rank]

    @property
    def my_offset(self) -> int:
        return self.offsets[self.rank]

    @property
    def equal(self) -> bool:
        return all(r == self.rows[0] for r in self.rows)

    def padded_rows(self, element_size: int) -> int:
        return chunk_rows(max(self.rows), self.views * self.dim, element_size)

    def padded_positions(self, padded: int) -> torch.Tensor:
        """For every global row, its position in the padded [W * padded] gather layout
        (unequal shards; cached, as the same shard sizes recur)."""
        return _padded_positions(self.rows, padded, self.device)


@functools.lru_cache(maxsize=8)
def _padded_positions(rows: tuple[int, ...], padded: int, device: torch.device) -> torch.Tensor:
    world, total = len(rows), sum(rows)
    counts = torch.tensor(rows, device=device)
    owner = torch.repeat_interleave(torch.arange(world, device=device), counts, output_size=total)
    starts = torch.tensor(tuple(itertools.accumulate(rows, initial=0))[:-1], device=device)
    return owner * padded + torch.arange(total, device=device) - starts[owner]


class LossInputError(ValueError):
    """Raised on every rank when the metadata exchange finds a problem."""


def agree(
    views: Sequence,
    params: dict[str, tuple[float, Optional[str]]],
    needs_grad: bool,
    capable: Callable[[torch.Tensor], Optional[str]],
    group,
    function: str,
    *,
    check: Callable[[Sequence], Optional[str]] = check_views,
    expected: str = "x must be a 2-D floating-point tensor [N_r, d] (or a list of views of one shape)",
    inputs: str = "x",
    min_rows: int = 2,
) -> Layout:
    """The metadata exchange: one all-gather of one int64 row per rank on the group's
    device, one host read.  Raises the same error on every rank (naming the ranks at
    fault) when inputs are invalid or disagree, before any other collective.

    A loss other than uniformity names its own inputs: ``check`` (what is wrong with
    this rank's views, or None; it must also rule out everything ``check_views`` does),
    ``expected`` (what every rank must pass), ``inputs`` (their names) and ``min_rows``
    (the fewest rows of the global batch)."""
    rank, world = world_of(group)
    gdev = group_device(group)
    problem = check(views)
    first = views[0] if problem is None else None
    cap_problem = capable(first) if first is not None else None
    flags = (
        (_OK_VIEWS if problem is None else 0)
        | (_OK_PARAMS if all(err is None for _, err in params.values()) else 0)
        | (_OK_CAPABLE if cap_problem is None else 0)
    )
    values = [
        flags,
        first.shape[0] if first is not None else -1,
        first.shape[1] if first is not None else -1,
        FLOAT_DTYPES.index(first.dtype) if first is not None else -1,
        len(views),
        int(needs_grad),
        device_index(first.device) if first is not None else -1,
    ] + [float_bits(v) for v, _ in params.values()]
    mine = torch.empty(len(values), dtype=torch.int64, device=gdev)
    for i, v in enumerate(values):  # fills, not a host-to-device copy of a list
        mine[i] = v
    table = _collective("all_gather", mine, group).view(world, -1).tolist()  # the one host read
    column = lambda c: [row[c] for row in table]  # noqa: E731

    def ranks_without(bit):
        return [s for s in range(world) if not table[s][_FLAGS] & bit]

    bad = ranks_without(_OK_VIEWS)
    if bad:
        local = f" (here: {problem})" if rank in bad else ""
        raise LossInputError(f"{function}: {expected} on every rank; rank(s) {bad} passed something else{local}")
    bad = ranks_without(_OK_PARAMS)
    if bad:
        local = "; ".join(err for _, err in params.values() if err) if rank in bad else ""
        raise LossInputError(f"{function}: invalid parameter on rank(s) {bad}" + (f" (here: {local})" if local else ""))
    bad = ranks_without(_OK_CAPABLE)
    if bad:
        local = f" (here: {cap_problem})" if rank in bad else ""
        raise LossInputError(f"{function}: rank(s) {bad} cannot run the kernel on their device{local}")
    named = [(_DIM, "the feature dimension d", str), (_DTYPE, "the dtype of x", lambda v: str(FLOAT_DTYPES[v])[6:])]
    named.append((_VIEWS, "the number of views", str))
    named += [(_PARAMS + i, name, lambda v: repr(bits_float(v))) for i, name in enumerate(params)]
    for c, what, show in named:
        col = column(c)
        if len(set(col)) > 1:
            listing = ", ".join(f"rank {s}: {show(v)}" for s, v in enumerate(col))
            raise LossInputError(f"{function}: the ranks disagree on {what} ({listing}); it must be the same on every rank")
    if len(set(column(_NEEDS_GRAD))) > 1:
        which = [s for s in range(world) if table[s][_NEEDS_GRAD]]
        raise LossInputError(
            f"{function}: {inputs} needs a gradient on rank(s) {which} only; the loss is a collective, "
            f"so every rank must build the graph (requires_grad of {inputs} and grad mode the same on every rank)"
        )
    rows = column(_ROWS)
    if sum(rows) < min_rows:
        plural = "s" if min_rows != 1 else ""
        raise LossInputError(
            f"{function}: needs at least {min_rows} row{plural} across all ranks, got shards of {rows} rows"
        )
    return Layout.build(rank, world, rows, first.shape[1], len(views), first.dtype, first.device, gdev)


def assume_equal(views: Sequence, params: dict[str, tuple[float, Optional[str]]], group, function: str) -> Layout:
    """The no-sync path: no metadata exchange, every rank is taken to hold a shard of the
    same shape.  Only this rank's inputs are checked here (a rank whose views are not
    even tensors cannot take part in the gather: it raises before the first collective);
    an invalid parameter or a disagreement is carried to every rank by ``exchange_status``."""
    rank, world = world_of(group)
    problem = check_views(views)
    if problem is not None:
        raise LossInputError(f"{function}: x must be a 2-D floating-point tensor [N_r, d] (or a list of views); {problem}")
    first = views[0]
    if world * first.shape[0] < 2:
        raise LossInputError(f"{function}: needs at least 2 rows across all ranks, got {world} shards of {first.shape[0]}")
    return Layout.build(
        rank, world, [first.shape[0]] * world, first.shape[1], len(views), first.dtype, first.device, group_device(group)
    )


def gather_views(views: Sequence[torch.Tensor], layout: Layout, group) -> torch.Tensor:
    """All views of every rank in one all-gather: [N, V*d], view v in columns v*d:(v+1)*d."""
    n, width = layout.my_rows, layout.views * layout.dim
    padded = layout.padded_rows(views[0].element_size())
    send = torch.cat([v.detach() for v in views], dim=1) if layout.views > 1 else views[0].detach()
    if padded != n:
        send = torch.cat([send, send.new_zeros((padded - n, width))])
    gathered = _collective("all_gather", send.contiguous(), group)
    if layout.equal:  # the gathered buffer is the batch, up to the alignment rows
        return gathered if padded == n else gathered.view(layout.world, padded, width)[:, :n].reshape(-1, width)
    return gathered.index_select(0, layout.padded_positions(padded))  # one indexed copy


class Failure:
    """An exception caught on this rank (``with failure:``), raised again once the peers
    know of it: by ``exchange_status`` with ``sync``, else by ``reraise()`` after the
    last collective of the call."""

    def __init__(self):
        self.error: Optional[BaseException] = None

    def reraise(self) -> None:
        if self.error is not None:
            raise self.error

    def __enter__(self):
        return self

    def __exit__(self, kind, error, trace):
        if kind is not None and issubclass(kind, Exception):
            self.error = error
            return True  # swallowed here, raised by exchange_status
        return False


def exchange_status(
    partials: torch.Tensor,
    failure: Failure,
    layout: Layout,
    params: dict[str, tuple[float, Optional[str]]],
    sync: bool,
    group,
    function: str,
    width: Optional[int] = None,
) -> torch.Tensor:
    """Gather every rank's partial values ([width] of them: one per view by default) with
    a success flag and the shape/parameter fingerprint; return the [W, width] table of
    partials (float64, on the group's device).  With ``sync`` every rank raises when any
    rank failed; without, a failure or a disagreement makes every entry NaN (no host
    read) and the failed rank raises at ``failure.reraise()``, after its last collective."""
    ok = failure.error is None
    width = layout.views if width is None else width
    fingerprint = [float(ok), layout.my_rows, layout.dim, FLOAT_DTYPES.index(layout.dtype), layout.views]
    fingerprint += [v for v, _ in params.values()]
    row = torch.empty(width + len(fingerprint), dtype=torch.float64, device=layout.group_device)
    if ok:
        row[:width] = partials.to(device=layout.group_device, dtype=torch.float64)
    else:
        row[:width].fill_(math.nan)
    # fill_ with a Python number launches a fill with the value as an argument; `row[i] = v`
    # copies a CPU scalar tensor to the device instead, a synchronizing copy (seen under
    # torch.cuda.set_sync_debug_mode("error") on the GPU machine, torch 2.11).
    for i, v in enumerate(fingerprint):
        row[width + i].fill_(v)
    table = _collective("all_gather", row, group).view(layout.world, -1)
    values, status = table[:, :width], table[:, width:]
    if sync:
        flags = status[:, 0].tolist()  # a host read
        failed = [s for s, f in enumerate(flags) if f != 1.0]
        if failed:
            failure.reraise()
            raise RuntimeError(
                f"{function}: rank(s) {failed} failed inside the loss (see the error on that rank); "
                "every rank raises so that none is left waiting in a collective"
            )
        return values
    # The same fingerprint on every rank (equal shards are assumed on this path).
    agreed = (status == status[:1]).all() & (status[:, 0] == 1.0).all()
    return torch.where(agreed, values, torch.full_like(values, math.nan))


def scatter_buffer(grads: torch.Tensor, layout: Layout) -> torch.Tensor:
    """The reduce-scatter's send buffer for [N, V*d] gradient rows: [W * padded, V*d],
    chunk s holding rank s's rows, padded to the largest shard (16-byte aligned).  For
    equal, aligned shards it is `grads` itself; otherwise one indexed copy from `grads`
    with a zero row appended, not a zero-filled buffer.  Built before the status
    exchange, so that running out of memory here is reported like any other failure."""
    n, width = layout.my_rows, layout.views * layout.dim
    padded = layout.padded_rows(grads.element_size())
    if layout.equal:
        if padded == n:
            return grads
        pad = grads.new_zeros((layout.world, padded - n, width))
        return torch.cat([grads.view(layout.world, n, width), pad], 1).view(-1, width)
    source = torch.cat([grads, grads.new_zeros((1, width))])
    index = torch.full((layout.world * padded,), layout.total, dtype=torch.long, device=grads.device)
    index[layout.padded_positions(padded)] = torch.arange(layout.total, device=grads.device)
    return source.index_select(0, index)


def reduce_scatter_rows(send: torch.Tensor, layout: Layout, group) -> torch.Tensor:
    """Sum the send buffers (``scatter_buffer``) over ranks and hand every rank its own
    rows.  Issued at once and not waited for: the result is an asynchronous [N_r, V*d]
    tensor whose first use (in the backward) waits."""
    received = _collective("reduce_scatter", send, group)
    return received[: layout.my_rows]  # a view: still not waited for


_SECOND_ORDER_MESSAGE = (
    "pyhypersphere.distributed: second derivatives (a backward with create_graph=True, "
    "Hessians, gradient penalties, torch.func.grad) are not supported; for uniformity, "
    "pyhypersphere.uniform_loss on the gathered batch supports them"
)


class _PrecomputedGradient(torch.autograd.Function):
    """Outputs `values`: one per view (a loss per view, as uniformity's), or one for all
    views (one loss of several inputs, as the contrastive losses').  Backward: view v's
    gradient is ``scale * g * rows[:, v]`` with g the upstream gradient of its output,
    rounded once to the views' dtype."""

    @staticmethod
    def forward(ctx, values, rows, scale, *views):
        ctx.save_for_backward(rows)
        ctx.scale, ctx.dtype, ctx.count = scale, views[0].dtype, len(views)
        return tuple(values[i].clone() for i in range(values.shape[0]))

    @staticmethod
    def backward(ctx, *grad_values):
        if torch.is_grad_enabled():
            # The rows are numbers, not a graph: a second derivative through them would
            # silently miss this loss's terms.
            raise RuntimeError(_SECOND_ORDER_MESSAGE)
        (rows,) = ctx.saved_tensors
        d = rows.shape[1] // ctx.count
        grads = []
        for v in range(ctx.count):
            g = grad_values[v if len(grad_values) > 1 else 0]
            part = rows[:, v * d : (v + 1) * d] * (g.to(rows.dtype) * ctx.scale)
            grads.append(part.to(ctx.dtype))
        return (None, None, None, *grads)


def attach_gradient(values: torch.Tensor, rows: Optional[torch.Tensor], scale: float, views) -> list[torch.Tensor]:
    """One 0-dim output per entry of `values` (one per view, or one for all views); when
    `rows` (this rank's [N_r, V*d] gradient rows, possibly still in flight) is given, the
    outputs are differentiable with respect to the views and the backward is a scale
    (no collective)."""
    if rows is None:
        return [values[i] for i in range(values.shape[0])]
    return list(_PrecomputedGradient.apply(values, rows, scale, *views))


# ---------------------------------------------------------------- per-row outputs (reduction='none')
#
# A per-row output's upstream gradient differs between ranks and is known only in the
# backward, so its backward is a collective: rank r's rows of the gradient of
# sum_s <G_s, rows_s> (every rank s's upstream G_s) need every rank's G_s.


def backward_collectives(local_grads: Callable[[], torch.Tensor], layout: Layout, params, group, function: str):
    """The backward's collectives for a per-row output: `local_grads()` (this rank's part
    of the gradient with respect to every gathered row, [N, V*d]) under a Failure, a
    status exchange (a failure on one rank raises on every rank before the
    reduce-scatter), then the reduce-scatter; returns this rank's [N_r, V*d] rows."""
    failure, send = Failure(), None
    with failure:
        send = scatter_buffer(local_grads(), layout)
    ok = torch.zeros(1, dtype=torch.float64, device=layout.group_device)
    exchange_status(ok, failure, layout, params, True, group, function, width=1)
    received = reduce_scatter_rows(send, layout, group)
    # Waited for here: a gradient that autograd would store as it is (a .grad of the
    # views' own dtype) must be a plain tensor, not the collective's asynchronous wrapper.
    return received.wait() if isinstance(received, funcol.AsyncCollectiveTensor) else received


class _CollectiveBackward(torch.autograd.Function):
    """Outputs `values` (this rank's rows); the backward is `backward(grad)`, which issues
    collectives and returns one gradient per input (None for those without one)."""

    @staticmethod
    def forward(ctx, values, backward, *inputs):
        ctx.backward = backward
        return values.clone()

    @staticmethod
    def backward(ctx, grad):
        if torch.is_grad_enabled():
            raise RuntimeError(_SECOND_ORDER_MESSAGE)
        return (None, None, *ctx.backward(grad))


def attach_collective_backward(values: torch.Tensor, backward, inputs) -> torch.Tensor:
    """`values`, differentiable with respect to `inputs` through `backward(grad)` (a
    collective: every rank must run the backward of its output, as DDP's)."""
    return _CollectiveBackward.apply(values, backward, *inputs)


def per_row_output(values, rows, z, views, layout: Layout, params, group, function: str, weight=None, learned=(), *,
                   dtype: torch.dtype):
    """reduction='none': `values` (this rank's anchors' losses, weighted) in `dtype` (the
    loss's: ops/_common.loss_dtype, float32 under autocast), whose backward,
    for this rank's upstream gradient G_r, differentiates sum_i G_ri w_i rows_i (`rows`:
    a graph kept from the forward) with respect to every gathered row `z` and one
    reduce-scatter sums the ranks' parts: rank r gets its rows of the single-process
    gradient of sum_s <G_s, rows_s>.  `learned`: (leaf, parameter) pairs of scalars that
    `rows` also depends on (leaf: the forward's stand-in); each parameter gets this
    rank's own rows' part of its gradient (the parts sum to the whole over ranks)."""
    values = values.to(device=layout.device, dtype=dtype)
    if not z.requires_grad:
        return values
    learned = [(leaf, param) for leaf, param in learned if param is not None]
    d = layout.dim

    def backward(upstream):
        leaf_grads = []

        def local_grads():
            g = upstream.to(device=z.device, dtype=z.dtype)
            grads = torch.autograd.grad(rows, [z, *(leaf for leaf, _ in learned)],
                                        g if weight is None else g * weight, retain_graph=True)
            leaf_grads.extend(grads[1:])
            return grads[0]

        received = backward_collectives(local_grads, layout, params, group, function)
        grads = [received[:, v * d : (v + 1) * d].to(view.dtype) for v, view in enumerate(views)]
        return grads + [g.to(device=p.device, dtype=p.dtype).reshape(p.shape) for g, (_, p) in zip(leaf_grads, learned)]

    return attach_collective_backward(values, backward, [*views, *(p for _, p in learned)])
