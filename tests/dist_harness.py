"""Real multi-process runs for the distributed tests: W ranks of one backend, spawned.

``run(scenario, world)`` runs ``scenario(rank, world)`` in W fresh processes; a raise
or a hang in any rank fails the test.  Helpers build a global batch every rank agrees
on, and record the collectives the global-batch layer issues.
"""

import contextlib
import datetime
import os
import sys
import tempfile
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from pyhypersphere import _global_batch

COLLECTIVE_TIMEOUT_S = 60  # a rank left waiting in a collective fails after this
SPAWN_TIMEOUT_S = 180  # the whole spawn (process start-up on a loaded 2-core machine included)


def _entry(rank, world, store_path, backend, scenario):
    torch.set_num_threads(1)  # W ranks share the machine's cores
    if backend == "nccl":
        torch.cuda.set_device(rank)
    # A file rendezvous: no TCP port that a concurrent job could take between picking and binding.
    dist.init_process_group(
        backend,
        init_method=f"file://{store_path}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S),
    )
    try:
        scenario(rank, world)
        dist.barrier()  # no rank tears the group down while another still uses it
    finally:
        dist.destroy_process_group()
    leave_without_finalizing()


def leave_without_finalizing() -> None:
    """Ends a worker that succeeded.  A gloo worker thread can still be releasing the last
    collective's work when destroy_process_group returns; if that happens during
    interpreter finalization its ~AsyncWork needs the GIL and the process aborts
    ("terminate called without an active exception": seen about 1 run in 15 of the
    trainer's DDP test, diagnosed from a core dump).  The work is done: skip finalizing."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run(scenario, world: int, backend: str = "gloo") -> None:
    """Run scenario(rank, world) on `world` ranks; a failure or a hang fails the test."""
    with tempfile.TemporaryDirectory(prefix="pyhs-dist-") as store_dir:
        store_path = os.path.join(store_dir, "store")
        context = mp.start_processes(
            _entry, args=(world, store_path, backend, scenario), nprocs=world, join=False, start_method="spawn"
        )
        deadline = time.monotonic() + SPAWN_TIMEOUT_S
        # join() raises (and stops the other ranks) as soon as one rank raised.
        while not context.join(timeout=1.0):
            if time.monotonic() > deadline:
                for process in context.processes:
                    if process.is_alive():
                        process.kill()
                pytest.fail(f"{scenario.__name__} on {world} ranks did not finish in {SPAWN_TIMEOUT_S} s")


def global_batch(rows, dim, seed, dtype=torch.float64) -> torch.Tensor:
    """Unit rows of the whole batch, the same on every rank (a fixed seed)."""
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(sum(rows), dim, generator=g, dtype=torch.float64), dim=1).to(dtype)


def shard(full: torch.Tensor, rows, rank: int) -> torch.Tensor:
    start = sum(rows[:rank])
    return full[start : start + rows[rank]]


@contextlib.contextmanager
def recorded_collectives():
    """Every collective of the global-batch layer, as (op, numel, dtype, device type)."""
    calls = []
    original = _global_batch._collective

    def record(name, tensor, group):
        calls.append((name, tensor.numel(), str(tensor.dtype), tensor.device.type))
        return original(name, tensor, group)

    _global_batch._collective = record
    try:
        yield calls
    finally:
        _global_batch._collective = original


def same_on_every_rank(value, group=None) -> list:
    """All ranks' `value` (a picklable object), asserted equal."""
    world = dist.get_world_size(group)
    values = [None] * world
    dist.all_gather_object(values, value, group=group)
    assert all(v == values[0] for v in values), values
    return values[0]


def on_subgroups(rank, world, two_ranks, world_of_one) -> None:
    """In a 3-rank run: ``two_ranks(group rank, 2, group)`` on the subgroup of global ranks
    {1, 2} (group ranks differ from global ranks), then ``world_of_one(rank, group)`` on
    one-rank groups."""
    assert world == 3
    pair = dist.new_group([1, 2])  # every rank takes part in creating every group
    solos = [dist.new_group([r]) for r in range(world)]
    if rank != 0:
        two_ranks(dist.get_rank(pair), 2, pair)
    world_of_one(rank, solos[rank])
    dist.barrier()


def raise_after_metadata_only(cases) -> None:
    """Each (regex, call) raises a ValueError matching regex on this rank after exactly the
    metadata exchange, the same collectives on every rank."""
    for match, call in cases:
        with recorded_collectives() as calls:
            with pytest.raises(ValueError, match=match):
                call()
        assert [c[0] for c in calls] == ["all_gather"], (match, calls)  # the metadata row only
        same_on_every_rank(calls)
