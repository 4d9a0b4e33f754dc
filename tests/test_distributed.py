"""pyhypersphere.distributed.uniform_loss in real multi-process runs (gloo, CPU): values
and gradients.

Every rank builds the same global batch from a fixed seed, keeps its shard, and checks
the distributed loss and gradients against the float64 log-sum-exp reference on the
whole batch.  One spawn of 3 ranks runs most scenarios (the 2-rank ones on a subgroup,
world size 1 on one-rank groups), because starting processes costs more than the
scenarios themselves.
"""

import inspect
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

import pyhypersphere
from pyhypersphere import distributed
from pyhypersphere.reference import logsumexp_uniform_loss

from dist_harness import global_batch, on_subgroups, recorded_collectives, run, same_on_every_rank, shard

D = 16
D_IN = 12
T = 2.0
MODES = (
    {"split": True},
    {"split": False},  # every rank computes the whole loss
    {},  # by size (these sizes are below the split threshold: whole)
)


# ---------------------------------------------------------------- scenarios (run in every rank)


def _check_loss_and_input_grad(rank, world, rows, group=None, views=1, dtype=torch.float64, rtol=1e-12, atol=1e-14, **kw):
    fulls = [global_batch(rows, D, seed=sum(rows) + v, dtype=dtype) for v in range(views)]
    xs = [shard(f, rows, rank).clone().requires_grad_(True) for f in fulls]
    out = distributed.uniform_loss(xs if views > 1 else xs[0], T, group=group, **kw)
    losses = out if views > 1 else [out]
    sum((v + 1) * loss for v, loss in enumerate(losses)).backward()  # distinct upstream gradients per view
    for v, (full, x, loss) in enumerate(zip(fulls, xs, losses)):
        reference = full.double().clone().requires_grad_(True)
        expected = logsumexp_uniform_loss(reference, T)
        ((v + 1) * expected).backward()
        assert loss.dtype == dtype
        torch.testing.assert_close(loss.double(), expected.detach(), rtol=rtol, atol=0)
        # The documented convention: W * dL/dx_r (DDP's averaging divides by W).
        torch.testing.assert_close(x.grad.double(), world * shard(reference.grad, rows, rank), rtol=rtol, atol=atol)
        same_on_every_rank(loss.item(), group)  # the same value on every rank, bit for bit


def _check_ddp_parameter_grads(rank, world, rows, group=None, **kw):
    inputs = global_batch(rows, D_IN, seed=7 + sum(rows))
    torch.manual_seed(0)
    model = torch.nn.Linear(D_IN, D, dtype=torch.float64)
    single = torch.nn.Linear(D_IN, D, dtype=torch.float64)
    single.load_state_dict(model.state_dict())

    ddp = torch.nn.parallel.DistributedDataParallel(model, process_group=group)
    loss = distributed.uniform_loss(F.normalize(ddp(shard(inputs, rows, rank)), dim=1), T, group=group, **kw)
    loss.backward()

    expected = logsumexp_uniform_loss(F.normalize(single(inputs), dim=1), T)
    expected.backward()
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(model.weight.grad, single.weight.grad, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(model.bias.grad, single.bias.grad, rtol=1e-10, atol=1e-13)


def _check_no_sync_accumulation(rank, world):
    """Two micro-batches, the first under DDP's no_sync: the accumulated gradient is the
    single-process sum of both global batches' gradients."""
    batches = [([6, 4, 5], 11), ([5, 5, 5], 12)]
    torch.manual_seed(1)
    model = torch.nn.Linear(D_IN, D, dtype=torch.float64)
    single = torch.nn.Linear(D_IN, D, dtype=torch.float64)
    single.load_state_dict(model.state_dict())
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    for i, (rows, seed) in enumerate(batches):
        inputs = global_batch(rows, D_IN, seed)
        step = ddp.no_sync() if i == 0 else torch.enable_grad()
        with step:
            distributed.uniform_loss(F.normalize(ddp(shard(inputs, rows, rank)), dim=1), T, split=True).backward()
        logsumexp_uniform_loss(F.normalize(single(inputs), dim=1), T).backward()
    torch.testing.assert_close(model.weight.grad, single.weight.grad, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(model.bias.grad, single.bias.grad, rtol=1e-10, atol=1e-13)


class _SideHeadNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = torch.nn.Linear(D_IN, 20, dtype=torch.float64)
        self.projection = torch.nn.Linear(20, D, dtype=torch.float64)
        self.side = torch.nn.Linear(20, 3, dtype=torch.float64)

    def forward(self, x):
        h = torch.tanh(self.trunk(x))
        return F.normalize(self.projection(h), dim=1), self.side(h)


def _check_ddp_side_head(rank, world):
    """A side head's per-rank loss next to the global-batch loss under DDP: gradients as
    in one process, and the same collectives, in the same order, on every rank (none in
    the backward, so they cannot interleave with DDP's bucket all-reduces)."""
    rows = [8, 8, 8]
    inputs = global_batch(rows, D_IN, seed=21)
    torch.manual_seed(2)
    model, single = _SideHeadNet(), _SideHeadNet()
    single.load_state_dict(model.state_dict())
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    with recorded_collectives() as calls:
        z, side = ddp(shard(inputs, rows, rank))
        u1, u2 = distributed.uniform_loss([z, z.flip(0)], T, split=True)
        forward_calls = len(calls)
        (u1 + 0.5 * u2 + side.pow(2).mean()).backward()
    assert len(calls) == forward_calls, "the backward issued a collective"
    same_on_every_rank(calls)
    z_all, side_all = single(inputs)
    expected = 1.5 * logsumexp_uniform_loss(z_all, T) + side_all.pow(2).mean()  # equal shards: mean of means
    expected.backward()
    for (name, p), q in zip(model.named_parameters(), single.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-13, msg=name)


def _check_low_precision(rank, world, dtype):
    """bf16/fp16 shards: the part gradients are summed in float32 and rounded to the input
    dtype once, so each element of x.grad is W * dL/dx (float64, on the same rounded
    inputs) within half an ulp plus float32 accumulation error (rounding each part first
    exceeds that by 1e-4 of the largest element here), and the error is no larger than
    the single process's."""
    rows = [90, 60, 106]
    full = global_batch(rows, D, seed=5, dtype=dtype)
    x = shard(full, rows, rank).clone().requires_grad_(True)
    distributed.uniform_loss(x, T, split=True).backward()
    reference = full.double().requires_grad_(True)
    logsumexp_uniform_loss(reference, T).backward()
    target = world * shard(reference.grad, rows, rank)
    half_ulp = torch.finfo(dtype).eps / 2 * target.abs()
    excess = ((x.grad.double() - target).abs() - half_ulp).max() / target.abs().max()
    assert excess <= 1e-5, (dtype, excess)
    single = full.clone().requires_grad_(True)
    pyhypersphere.uniform_loss(single, T).backward()
    err_single = (world * shard(single.grad.double(), rows, rank) - target).abs().max()
    assert (x.grad.double() - target).abs().max() <= 1.25 * err_single, dtype


def _check_saved_tensor_bound(rank, world, rows):
    """Tensors saved for the backward: at most 2 * N_r * d elements for two views (this
    rank's rows of each view's gradient; nothing of global size)."""
    fulls = [global_batch(rows, D, seed=30 + v) for v in range(2)]
    xs = [shard(f, rows, rank).clone().requires_grad_(True) for f in fulls]
    saved = []

    def pack(tensor):
        saved.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        u1, u2 = distributed.uniform_loss(xs, T, split=True)
    assert sum(saved) <= 2 * rows[rank] * D, (saved, rows[rank])
    (u1 + u2).backward()
    reference = fulls[0].clone().requires_grad_(True)
    logsumexp_uniform_loss(reference, T).backward()
    torch.testing.assert_close(xs[0].grad, world * shard(reference.grad, rows, rank), rtol=1e-12, atol=1e-14)


def _check_world_of_one(rank, solo):
    """A one-rank group: the local loss, no collectives."""
    x = global_batch([9], D, seed=4).requires_grad_(True)
    with recorded_collectives() as calls:
        loss = distributed.uniform_loss(x, T, group=solo)
        u1, u2 = distributed.uniform_loss([x, x], T, group=solo)
    assert calls == []
    torch.testing.assert_close(loss, logsumexp_uniform_loss(x.detach(), T), rtol=1e-12, atol=0)
    torch.testing.assert_close(u1, loss)


def _check_no_grad_path(rank, world, rows, group=None):
    full = global_batch(rows, D, seed=3)
    with torch.no_grad():
        loss = distributed.uniform_loss(shard(full, rows, rank).requires_grad_(True), T, group=group)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, logsumexp_uniform_loss(full, T), rtol=1e-12, atol=0)


def _check_agrees_with_single_process(rank, world, rows, group=None):
    """The documented guarantee: the single process's value up to rounding, within
    4 eps |L| (benchmarks/distributed_agreement.py measures the actual differences)."""
    for dtype in (torch.float32, torch.float64):
        full = global_batch(rows, D, seed=11 + sum(rows), dtype=dtype)
        loss = distributed.uniform_loss(shard(full, rows, rank), T, group=group, split=True)
        single = pyhypersphere.uniform_loss(full, T)
        bound = 4 * torch.finfo(dtype).eps * abs(single.item())
        assert abs(loss.item() - single.item()) <= bound, (dtype, loss.item(), single.item())


def _check_learned_t_and_no_second_order(rank, world, rows, **kw):
    full = global_batch(rows, D, seed=11)
    x = shard(full, rows, rank).clone().requires_grad_(True)
    t = torch.tensor(T, dtype=torch.float64, requires_grad=True)
    distributed.uniform_loss(x, t, **kw).backward()
    dist.all_reduce(t.grad)  # a replicated t: DDP averages its gradient over the ranks
    tr = torch.tensor(T, dtype=torch.float64, requires_grad=True)
    logsumexp_uniform_loss(full, tr).backward()
    torch.testing.assert_close(t.grad / world, tr.grad, rtol=1e-10, atol=1e-13)
    # Every rank raises in its backward (which has no collective): none is left waiting.
    with pytest.raises(RuntimeError, match="second derivatives .* are not supported"):
        torch.autograd.functional.hessian(lambda v: distributed.uniform_loss(v, T, **kw), shard(full, rows, rank).clone())


def _check_precision_warning_points_at_the_caller(rank, world):
    x = torch.zeros(2, 4, dtype=torch.float64)
    if rank == 0:
        x[1] = 1e19  # beyond what float64 Gram-form distances resolve
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        distributed.uniform_loss(x, T, split=False)
        line = inspect.currentframe().f_lineno - 1
    ours = [w for w in caught if issubclass(w.category, pyhypersphere.PrecisionWarning)]
    assert ours and all((w.filename, w.lineno) == (__file__, line) for w in ours), ours


def three_ranks(rank, world):
    for mode in MODES:
        _check_loss_and_input_grad(rank, world, [70, 45, 100], **mode)  # unequal shards, several tiles
        _check_loss_and_input_grad(rank, world, [2, 0, 1], **mode)  # an empty shard
        _check_loss_and_input_grad(rank, world, [33, 40, 20], views=2, **mode)  # two views, one set of collectives
    _check_loss_and_input_grad(rank, world, [24, 24, 24], views=2, equal_shards=True, split=True)  # the no-sync path
    _check_loss_and_input_grad(rank, world, [24, 24, 24], equal_shards=True, split=False)
    # N = 2400: rank 0's operator call holds all 2400 rows (CPU blocks of 128), rank 2's
    # about 1385 (blocks of 64): the parts stay complementary whatever each kernel's block size.
    _check_loss_and_input_grad(rank, world, [800, 800, 800], split=True)
    _check_ddp_parameter_grads(rank, world, [70, 45, 100], split=True)
    _check_ddp_parameter_grads(rank, world, [40, 40, 33])  # a short last batch
    _check_no_sync_accumulation(rank, world)
    _check_ddp_side_head(rank, world)
    _check_low_precision(rank, world, torch.bfloat16)
    _check_low_precision(rank, world, torch.float16)
    _check_saved_tensor_bound(rank, world, [16, 16, 16])
    _check_saved_tensor_bound(rank, world, [20, 9, 16])
    _check_no_grad_path(rank, world, [5, 9, 4])
    _check_agrees_with_single_process(rank, world, [400, 300, 350])
    _check_learned_t_and_no_second_order(rank, world, [30, 20, 25], split=True)
    _check_learned_t_and_no_second_order(rank, world, [30, 20, 25], split=False)
    _check_precision_warning_points_at_the_caller(rank, world)


def two_ranks(rank, world, group):
    """On a subgroup of global ranks {1, 2}: group ranks differ from global ranks."""
    _check_loss_and_input_grad(rank, world, [130, 67], group, split=True)
    _check_loss_and_input_grad(rank, world, [64, 64], group, split=True)  # equal shards (no padding)
    _check_loss_and_input_grad(rank, world, [3, 2], group, split=True)  # rank 1 sums few pairs
    _check_loss_and_input_grad(rank, world, [100, 60], group, dtype=torch.float32, rtol=2e-5, atol=1e-6, split=True)
    _check_ddp_parameter_grads(rank, world, [130, 67], group, split=True)
    _check_no_grad_path(rank, world, [5, 9], group)
    _check_agrees_with_single_process(rank, world, [500, 520], group)


def two_and_three_ranks(rank, world):
    three_ranks(rank, world)
    on_subgroups(rank, world, two_ranks, _check_world_of_one)


def compiled_changing_shards(rank, world):
    """torch.compile(fullgraph=True) of the no-sync path, the shard size changing between calls."""
    loss_fn = torch.compile(
        lambda a, b: distributed.uniform_loss([a, b], T, equal_shards=True, split=True),
        fullgraph=True,
        backend="aot_eager",
    )
    for n in (8, 13):
        rows = [n] * world
        full = global_batch(rows, D, seed=n)
        x = shard(full, rows, rank).clone().requires_grad_(True)
        u1, u2 = loss_fn(x, 2.0 * x)
        (u1 + u2).backward()
        reference = full.clone().requires_grad_(True)
        expected = logsumexp_uniform_loss(reference, T) + logsumexp_uniform_loss(2.0 * reference, T)
        expected.backward()
        torch.testing.assert_close(u1 + u2, expected.detach(), rtol=1e-12, atol=0)
        torch.testing.assert_close(x.grad, world * shard(reference.grad, rows, rank), rtol=1e-11, atol=1e-13)


# ---------------------------------------------------------------- tests


def test_two_and_three_ranks_match_single_process():
    # One spawn for all world sizes: process start-up dominates the run time.
    run(two_and_three_ranks, world=3)


def test_compile_fullgraph_with_changing_shard_sizes():
    run(compiled_changing_shards, world=2)


def test_without_a_process_group_raises():
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="no torch.distributed process group is initialized"):
        distributed.uniform_loss(torch.randn(4, 3))


@pytest.mark.parametrize("world", [1, 2, 3, 4, 7, 64])
@pytest.mark.parametrize("total", [0, 1, 2, 3, 10, 257, 4096])
def test_pair_rows_cover_every_pair_once_and_balance(total, world):
    bounds = [distributed.pair_rows(total, world, r) for r in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == total
    assert all(bounds[r][1] == bounds[r + 1][0] for r in range(world - 1))  # contiguous, in order
    counts = [sum(total - 1 - i for i in range(lo, hi)) for lo, hi in bounds]
    assert sum(counts) == total * (total - 1) // 2
    # Balanced up to one row's pairs: each part within N of the mean.
    mean = total * (total - 1) / 2 / world
    assert all(abs(c - mean) <= total for c in counts), counts


def test_split_threshold_follows_the_documented_rule():
    # CUDA: split when N >= 128 * sqrt(264 W).
    for world in (2, 8, 64):
        edge = 128 * (264 * world) ** 0.5
        assert distributed.split_pays_off(int(edge) + 1, world, "cuda")
        assert not distributed.split_pays_off(int(edge) - 1, world, "cuda")
    assert distributed.split_pays_off(4096, 8, "cuda") is False  # the example: 66 CTAs for 132 SMs
