"""pyhypersphere.distributed.uniform_loss when ranks disagree or fail (gloo, CPU, real
processes): the collective sequence is the same on every rank, and every rank raises,
quickly, instead of waiting in a collective until the process-group timeout."""

import contextlib
import time

import pytest
import torch
import torch.distributed as dist

from pyhypersphere import _global_batch, distributed
from pyhypersphere.ops import uniform as uniform_ops
from pyhypersphere.ops import uniform_distributed
from pyhypersphere.reference import logsumexp_uniform_loss

from conftest import HAS_CUDA
from dist_harness import (
    COLLECTIVE_TIMEOUT_S,
    global_batch,
    raise_after_metadata_only,
    recorded_collectives,
    run,
    same_on_every_rank,
    shard,
)

D = 16
T = 2.0
# "Quickly" means: not by waiting in a collective until the process-group timeout.  A
# fraction of that timeout tells the two apart on a loaded machine too, where a fixed 2 s
# is a timing assertion (3 ranks on 2 cores beside another test run) that load alone can break.
RAISE_WITHIN_S = COLLECTIVE_TIMEOUT_S / 4


# ---------------------------------------------------------------- helpers (run in every rank)


def _step_calls(rank, rows, views=2, **kw):
    """The collectives of one forward + backward, with the forward's count."""
    fulls = [global_batch(rows, D, seed=40 + v) for v in range(views)]
    xs = [shard(f, rows, rank).clone().requires_grad_(True) for f in fulls]
    with recorded_collectives() as calls:
        losses = distributed.uniform_loss(xs, T, **kw)
        forward = list(calls)
        sum(losses).backward()
    assert calls == forward, "the backward issued a collective"
    return forward


@contextlib.contextmanager
def _injected_op_error(active: bool):
    """Make the operator raise on this rank (a stand-in for an out-of-memory error or a
    kernel that cannot run on this GPU)."""
    original = uniform_ops.uniform_lse

    def failing(*args, **kwargs):
        raise RuntimeError("injected failure inside the operator")

    if active:
        uniform_ops.uniform_lse = failing
    try:
        yield
    finally:
        uniform_ops.uniform_lse = original


def _raises_quickly(expected_error, match, call):
    start = time.monotonic()
    with pytest.raises(expected_error, match=match):
        call()
    elapsed = time.monotonic() - start
    assert elapsed < RAISE_WITHIN_S, f"raised after {elapsed:.1f} s"


def _group_still_works(rank, world):
    rows = [3] * world
    full = global_batch(rows, D, seed=3)
    with torch.no_grad():
        loss = distributed.uniform_loss(shard(full, rows, rank), T, split=True)
    torch.testing.assert_close(loss, logsumexp_uniform_loss(full, T), rtol=1e-12, atol=0)


# ---------------------------------------------------------------- scenarios


def _check_sequences(rank, world):
    """(op, numel, dtype, device) identical on all ranks for equal, unequal and empty
    shards; chunks 16-byte aligned; the no-sync path skips the metadata exchange and
    the whole-loss mode the reduce-scatter."""
    for rows in ([5, 5, 5], [7, 3, 5], [4, 0, 2]):
        calls = same_on_every_rank(_step_calls(rank, rows, split=True))
        assert [c[0] for c in calls] == ["all_gather"] * 3 + ["reduce_scatter"], calls
        features, scatter = calls[1], calls[3]
        assert features[2] == scatter[2] == "torch.float64"
        assert (features[1] * 8) % 16 == 0 and (scatter[1] // world * 8) % 16 == 0
    calls = same_on_every_rank(_step_calls(rank, [6, 6, 6], equal_shards=True, split=True))
    assert [c[0] for c in calls] == ["all_gather", "all_gather", "reduce_scatter"], calls
    calls = same_on_every_rank(_step_calls(rank, [7, 3, 5], split=False))
    assert [c[0] for c in calls] == ["all_gather"] * 3, calls
    # An odd width (one view, d = 3, float32): chunks padded to 16 bytes.
    x = torch.randn(5 + rank, 3).requires_grad_(True)
    with recorded_collectives() as calls:
        distributed.uniform_loss(x, T, split=True).backward()
    calls = same_on_every_rank(calls)
    assert all(numel // (world if op == "reduce_scatter" else 1) * 4 % 16 == 0 for op, numel, _, _ in calls[1::2])


def _check_disagreements(rank, world):
    """Every rank raises the same error after exactly the metadata exchange."""
    x = torch.randn(4, D, dtype=torch.float64)
    cases = [
        ("disagree on the feature dimension d", lambda: distributed.uniform_loss(x[:, : D - rank])),
        ("disagree on the dtype of x", lambda: distributed.uniform_loss(x if rank == 0 else x.float())),
        ("disagree on t", lambda: distributed.uniform_loss(x, t=2.0 + rank)),
        ("disagree on the number of views", lambda: distributed.uniform_loss([x] * (1 + (rank == 1)))),
        (r"needs a gradient on rank\(s\) \[0\]", lambda: distributed.uniform_loss(x.clone().requires_grad_(rank == 0))),
        (r"2-D floating-point tensor .* rank\(s\) \[1\]", lambda: distributed.uniform_loss(x if rank != 1 else x[0])),
        (r"rank\(s\) \[2\] passed something else", lambda: distributed.uniform_loss(x if rank != 2 else "x")),
        (r"invalid parameter on rank\(s\) \[1\]", lambda: distributed.uniform_loss(x, t=-1.0 if rank == 1 else T)),
        (r"invalid parameter on rank\(s\) \[0\]", lambda: distributed.uniform_loss(x, t="2" if rank == 0 else T)),
        ("at least 2 rows across all ranks", lambda: distributed.uniform_loss(x[: 1 if rank == 0 else 0])),
    ]
    raise_after_metadata_only(cases)
    _group_still_works(rank, world)


def _check_failures(rank, world):
    """One rank fails: every rank raises within RAISE_WITHIN_S, and the group goes on."""
    rows = [6, 5, 4]
    x = shard(global_batch(rows, D, seed=9), rows, rank).clone().requires_grad_(True)
    # The ranks start each case together (a barrier): the time measured is the call's, not the skew.
    # An invalid t on one rank, caught by the metadata exchange.
    dist.barrier()
    _raises_quickly(ValueError, r"rank\(s\) \[1\]", lambda: distributed.uniform_loss(x, t=float("nan") if rank == 1 else T))
    # An error inside the operator on rank 1 only: it raises its own, the others a RuntimeError naming it.
    for split in (True, False):
        dist.barrier()
        with _injected_op_error(rank == 1):
            match = "injected failure" if rank == 1 else r"rank\(s\) \[1\] failed inside the loss"
            _raises_quickly(RuntimeError, match, lambda: distributed.uniform_loss([x, x], T, split=split))
    _group_still_works(rank, world)
    # The no-sync path: no host read, so the peers get NaN; the failed rank raises after
    # its last collective, and every rank issued the same collectives.
    n = torch.randn(4, D, dtype=torch.float64).requires_grad_(True)
    dist.barrier()
    with recorded_collectives() as calls, _injected_op_error(rank == 1):
        if rank == 1:
            _raises_quickly(RuntimeError, "injected failure", lambda: distributed.uniform_loss(n, T, equal_shards=True, split=True))
        else:
            loss = distributed.uniform_loss(n, T, equal_shards=True, split=True)
            assert torch.isnan(loss)
            loss.backward()
            assert torch.isnan(n.grad).all()
    same_on_every_rank(calls)
    # The no-sync path with an invalid t on one rank: NaN everywhere, that rank raises.
    dist.barrier()
    if rank == 2:
        _raises_quickly(ValueError, "t must be a positive finite number", lambda: distributed.uniform_loss(n.detach(), -1.0, equal_shards=True))
    else:
        assert torch.isnan(distributed.uniform_loss(n.detach(), T, equal_shards=True))
    # The no-sync path with ranks that disagree on t (each valid): the status row's
    # fingerprint differs, so the loss is NaN on every rank rather than a wrong number.
    assert torch.isnan(distributed.uniform_loss(n.detach(), T + rank, equal_shards=True, split=True))
    # ... and its gradient, in both modes (the whole-loss mode computes it before the exchange).
    for split in (True, False):
        n.grad = None
        distributed.uniform_loss(n, T + rank, equal_shards=True, split=split).backward()
        assert torch.isnan(n.grad).all(), split
    _group_still_works(rank, world)


def failing_ranks(rank, world):
    _check_sequences(rank, world)
    _check_disagreements(rank, world)
    _check_failures(rank, world)


class _OperatorReadAllowed:
    """torch.ops.pyhypersphere with uniform_lse run outside the sync debug mode: syncs
    inside the op (its documented precision read, skipped under CUDA-graph capture:
    tests/test_cuda.py) are let through; everything outside it is checked."""

    def __init__(self, ops):
        self._ops = ops
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self._ops, name)

    def uniform_lse(self, *args):
        self.calls += 1
        mode = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode(0)
        try:
            return self._ops.uniform_lse(*args)
        finally:
            torch.cuda.set_sync_debug_mode(mode)


def no_host_sync_on_cuda(rank, world):
    """A single-process NCCL group: the no-sync path of the global-batch code runs under
    torch.cuda.set_sync_debug_mode("error") (the public function would take the
    world-size-1 shortcut, so its internals are called with a one-rank layout), except
    inside the uniform_lse op, whose precision read is documented (_OperatorReadAllowed)."""
    x = torch.nn.functional.normalize(torch.randn(256, D, device="cuda"), dim=1).requires_grad_(True)
    params = {"t": _global_batch.parse_positive(T, "t")}

    def step():
        layout = _global_batch.assume_equal([x, x], params, None, "test")
        losses = uniform_distributed._global_uniformity([x, x], layout, params, None, False, True, True)
        sum(losses).backward()
        return losses

    expected = step()  # warm-up: lazy initializations may synchronize once
    torch.cuda.synchronize()
    x.grad = None
    operator = _OperatorReadAllowed(uniform_ops._lib_ops)
    real, uniform_ops._lib_ops = uniform_ops._lib_ops, operator
    torch.cuda.set_sync_debug_mode("error")
    try:
        losses = step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
        uniform_ops._lib_ops = real
    assert operator.calls >= 1  # the path went through the operator
    torch.testing.assert_close(losses[0], expected[0])
    torch.testing.assert_close(losses[0], logsumexp_uniform_loss(x.detach().double(), T).float(), rtol=2e-5, atol=0)


# ---------------------------------------------------------------- tests


def test_disagreements_and_failures_raise_on_every_rank_quickly():
    assert COLLECTIVE_TIMEOUT_S >= 60
    run(failing_ranks, world=3)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device, a CUDA build and NCCL")
def test_no_sync_path_has_no_host_sync_on_cuda():
    if not dist.is_nccl_available():
        pytest.skip("NCCL is not available")
    run(no_host_sync_on_cuda, world=1, backend="nccl")
