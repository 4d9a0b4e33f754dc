"""pyhypersphere.distributed.uniform_loss in real multi-process runs (gloo, CPU).

Every rank builds the same global batch from a fixed seed, keeps its shard, and checks
the distributed loss and gradients against the float64 log-sum-exp reference on the
whole batch.  One spawn of 3 ranks runs every scenario (the 2-rank ones on a subgroup),
because starting processes (importing torch) costs more than the scenarios themselves.
"""

import datetime
import os
import tempfile
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from pyhypersphere import distributed
from pyhypersphere.reference import logsumexp_uniform_loss

COLLECTIVE_TIMEOUT_S = 30  # a rank left waiting in a collective fails after this
SPAWN_TIMEOUT_S = 120  # the whole spawn (process start-up on a loaded 2-core machine included)
D = 16
D_IN = 12
T = 2.0


# ---------------------------------------------------------------- process harness


def _entry(rank, world, store_path, scenario):
    torch.set_num_threads(1)  # W ranks share the machine's cores
    # A file rendezvous: no TCP port that a concurrent job could take between picking and binding.
    dist.init_process_group(
        "gloo",
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


def _run(scenario, world: int) -> None:
    """Run scenario(rank, world) on `world` gloo ranks; a failure or a hang fails the test."""
    with tempfile.TemporaryDirectory(prefix="pyhs-dist-") as store_dir:
        store_path = os.path.join(store_dir, "store")
        context = mp.start_processes(
            _entry, args=(world, store_path, scenario), nprocs=world, join=False, start_method="spawn"
        )
        deadline = time.monotonic() + SPAWN_TIMEOUT_S
        # join() raises (and stops the other ranks) as soon as one rank raised.
        while not context.join(timeout=1.0):
            if time.monotonic() > deadline:
                for process in context.processes:
                    if process.is_alive():
                        process.kill()
                pytest.fail(f"{scenario.__name__} on {world} ranks did not finish in {SPAWN_TIMEOUT_S} s")


# ---------------------------------------------------------------- scenarios (run in every rank)


def _global_batch(rows: list[int], dim: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(sum(rows), dim, generator=g, dtype=torch.float64), dim=1).to(dtype)


def _shard(full: torch.Tensor, rows: list[int], rank: int) -> torch.Tensor:
    start = sum(rows[:rank])
    return full[start : start + rows[rank]]


def _check_loss_and_input_grad(rank, world, rows, group=None, dtype=torch.float64, rtol=1e-12, atol=1e-14):
    full = _global_batch(rows, D, seed=sum(rows), dtype=dtype)
    x = _shard(full, rows, rank).clone().requires_grad_(True)
    loss = distributed.uniform_loss(x, T, group=group)
    loss.backward()

    reference = full.double().clone().requires_grad_(True)
    expected = logsumexp_uniform_loss(reference, T)
    expected.backward()
    assert loss.dtype == dtype
    torch.testing.assert_close(loss.double(), expected.detach(), rtol=rtol, atol=0)
    # The documented convention: W * dL/dx_r (DDP's averaging divides by W).
    torch.testing.assert_close(
        x.grad.double(), world * _shard(reference.grad, rows, rank), rtol=rtol, atol=atol
    )
    # The same value on every rank, bit for bit.
    losses = [torch.empty_like(loss.detach()) for _ in range(world)]
    dist.all_gather(losses, loss.detach(), group=group)
    assert all(torch.equal(v, losses[0]) for v in losses), losses


def _check_ddp_parameter_grads(rank, world, rows, group=None):
    inputs = _global_batch(rows, D_IN, seed=7 + sum(rows))
    torch.manual_seed(0)
    model = torch.nn.Linear(D_IN, D, dtype=torch.float64)
    single = torch.nn.Linear(D_IN, D, dtype=torch.float64)
    single.load_state_dict(model.state_dict())

    ddp = torch.nn.parallel.DistributedDataParallel(model, process_group=group)
    loss = distributed.uniform_loss(F.normalize(ddp(_shard(inputs, rows, rank)), dim=1), T, group=group)
    loss.backward()

    expected = logsumexp_uniform_loss(F.normalize(single(inputs), dim=1), T)
    expected.backward()
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(model.weight.grad, single.weight.grad, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(model.bias.grad, single.bias.grad, rtol=1e-10, atol=1e-13)


def _check_no_grad_path(rank, world, rows, group=None):
    full = _global_batch(rows, D, seed=3)
    with torch.no_grad():
        loss = distributed.uniform_loss(_shard(full, rows, rank).requires_grad_(True), T, group=group)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, logsumexp_uniform_loss(full, T), rtol=1e-12, atol=0)


def _check_disagreements(rank, world, group=None):
    """Every rank raises the same error (none is left waiting), and the group still works."""
    x = torch.randn(4, D, dtype=torch.float64)
    with pytest.raises(ValueError, match="disagree on the feature dimension d"):
        distributed.uniform_loss(x[:, : D - rank], group=group)
    with pytest.raises(ValueError, match="disagree on the dtype of x"):
        distributed.uniform_loss(x if rank == 0 else x.float(), group=group)
    with pytest.raises(ValueError, match="disagree on t"):
        distributed.uniform_loss(x, t=2.0 + rank, group=group)
    with pytest.raises(ValueError, match="needs a gradient on rank"):
        distributed.uniform_loss(x.clone().requires_grad_(rank == 0), group=group)
    with pytest.raises(ValueError, match=r"2-D floating-point tensor .* rank\(s\) \[1\]"):
        distributed.uniform_loss(x if rank == 0 else x[0], group=group)
    with pytest.raises(ValueError, match="at least 2 rows across all ranks"):
        distributed.uniform_loss(x[: 1 if rank == 0 else 0], group=group)
    # No collective is left half-done: a valid call still agrees with the reference.
    _check_no_grad_path(rank, world, [3] * world, group=group)


def three_ranks(rank, world):
    _check_loss_and_input_grad(rank, world, [70, 45, 100])  # unequal shards, several tiles
    _check_loss_and_input_grad(rank, world, [2, 0, 1])  # an empty shard
    _check_ddp_parameter_grads(rank, world, [70, 45, 100])
    _check_ddp_parameter_grads(rank, world, [40, 40, 33])  # a short last batch


def two_ranks(rank, world, group):
    """On a subgroup of global ranks {1, 2}: group ranks differ from global ranks."""
    _check_loss_and_input_grad(rank, world, [130, 67], group)
    _check_loss_and_input_grad(rank, world, [64, 64], group)  # equal shards (no padding)
    _check_loss_and_input_grad(rank, world, [3, 2], group)  # one tile: rank 1's part is empty
    _check_loss_and_input_grad(rank, world, [100, 60], group, dtype=torch.float32, rtol=2e-5, atol=1e-6)
    _check_ddp_parameter_grads(rank, world, [130, 67], group)
    _check_no_grad_path(rank, world, [5, 9], group)
    _check_disagreements(rank, world, group)


def two_and_three_ranks(rank, world):
    assert world == 3
    three_ranks(rank, world)
    pair = dist.new_group([1, 2])  # every rank takes part in creating it
    if rank != 0:
        two_ranks(dist.get_rank(pair), 2, pair)
    dist.barrier()


# ---------------------------------------------------------------- tests


def test_two_and_three_ranks_match_single_process():
    # One spawn for both world sizes: process start-up dominates the run time.
    _run(two_and_three_ranks, world=3)


def test_without_a_process_group_raises():
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="no torch.distributed process group is initialized"):
        distributed.uniform_loss(torch.randn(4, 3))

