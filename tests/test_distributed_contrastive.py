"""pyhypersphere.distributed.nt_xent_loss, clip_loss and info_nce_loss in real multi-process runs (gloo,
CPU): values and gradients of the global batch against the single-process losses on the
concatenated batch and against the dense float64 formulas (tests/dense_contrastive.py),
the DDP gradient convention, a learned temperature, inputs that disagree, and the
no-sync path (equal_shards=True); reduction 'mean', 'sum' and 'none' with and without
per-anchor weights (issue 25), including the order of 'none''s rows, its collective
backward and a failure there.

One spawn of 3 ranks runs every scenario (2 ranks on a subgroup, world size 1 on
one-rank groups): starting processes costs more than the scenarios.
"""

import re
import types

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

import pyhypersphere
from pyhypersphere import distributed
from pyhypersphere.ops import contrastive as contrastive_ops
from pyhypersphere.ops import contrastive_distributed

from dense_contrastive import (
    dense_clip, dense_clip_rows, dense_info_nce, dense_info_nce_rows, dense_nt_xent, dense_nt_xent_rows, dense_reduce,
    exact_loss, value_and_grads,
)
from dist_harness import (
    global_batch,
    on_subgroups,
    raise_after_metadata_only,
    recorded_collectives,
    run,
    same_on_every_rank,
    shard,
)
from helpers import RecordedOps

D = 8
D_IN = 6
# MoCo's queue, the same on every rank; exactly representable in bf16, so that the
# low-precision checks compare against the same numbers.
QUEUE = torch.nn.functional.normalize(torch.randn(11, D, generator=torch.Generator().manual_seed(99),
                                                  dtype=torch.float64), dim=1).bfloat16().double()


def _with_queue(fn, in_batch):
    """InfoNCE with the queue (in x's dtype) as a function of (x, y, tau, **options)."""

    def call(x, y, tau, **options):
        return fn(x, y, tau, queue=QUEUE.to(x.dtype), in_batch=in_batch, **options)

    return call


PAIR_LOSSES = (
    # (distributed loss, single-process loss, dense float64 formula, a tau)
    (distributed.nt_xent_loss, pyhypersphere.nt_xent_loss, dense_nt_xent, 0.5),
    (distributed.clip_loss, pyhypersphere.clip_loss, dense_clip, 0.07),
)
LOSSES = PAIR_LOSSES + (
    (distributed.info_nce_loss, pyhypersphere.info_nce_loss, dense_info_nce, 0.1),  # in-batch keys only
    *[(_with_queue(distributed.info_nce_loss, b), _with_queue(pyhypersphere.info_nce_loss, b),
       _with_queue(dense_info_nce, b), 0.2) for b in (True, False)],  # MoCo: keys and queue, the queue alone
)
UPSTREAM = 1.5  # the same upstream gradient on every rank
_LSE_OPS = ("contrastive_lse", "contrastive_lse_row_grad")  # the operators a rank's log-sum-exps come from


def _decoupled(fn):
    """fn with decoupled=True."""

    def call(x, y, tau, **options):
        return fn(x, y, tau, decoupled=True, **options)

    return call


ROW_LOSSES = (
    # (distributed loss, single-process loss, dense float64 per-anchor formula, a tau, anchors per row of x)
    (distributed.nt_xent_loss, pyhypersphere.nt_xent_loss, dense_nt_xent_rows, 0.5, 2),
    (distributed.clip_loss, pyhypersphere.clip_loss, dense_clip_rows, 0.07, 2),
    (distributed.info_nce_loss, pyhypersphere.info_nce_loss, dense_info_nce_rows, 0.1, 1),
    *[(_with_queue(distributed.info_nce_loss, b), _with_queue(pyhypersphere.info_nce_loss, b),
       _with_queue(dense_info_nce_rows, b), 0.2, 1) for b in (True, False)],
    (_decoupled(distributed.nt_xent_loss), _decoupled(pyhypersphere.nt_xent_loss), _decoupled(dense_nt_xent_rows),
     0.3, 2),
    (_decoupled(_with_queue(distributed.info_nce_loss, True)), _decoupled(_with_queue(pyhypersphere.info_nce_loss, True)),
     _decoupled(_with_queue(dense_info_nce_rows, True)), 0.2, 1),
)


def _views(rows, seed, dtype=torch.float64):
    """The global batch's two views: unit rows times norms in [0.5, 1.5] (the losses do
    not assume normalized inputs)."""
    g = torch.Generator().manual_seed(seed)
    scales = 0.5 + torch.rand(sum(rows), 1, generator=g, dtype=torch.float64)
    return [(global_batch(rows, D, seed + v) * scales).to(dtype) for v in range(2)]


def _shards(fulls, rows, rank):
    return [shard(f, rows, rank).clone().requires_grad_(True) for f in fulls]


# ---------------------------------------------------------------- scenarios (run in every rank)


def _check_values_and_grads(rank, world, rows, group=None, dtype=torch.float64, rtol=1e-12, atol=1e-13,
                            **options):
    """The loss and W * g * dL/dx_r, dL/dy_r against the dense float64 formula and the
    single-process loss on the concatenated batch; the same loss on every rank."""
    for loss_fn, local_fn, dense_fn, tau in LOSSES:
        fulls = _views(rows, seed=sum(rows), dtype=dtype)
        x, y = _shards(fulls, rows, rank)
        with recorded_collectives() as calls:
            loss = loss_fn(x, y, tau, group=group, **options)
            forward_calls = len(calls)
            (UPSTREAM * loss).backward()
        assert len(calls) == forward_calls, "the backward issued a collective"
        assert loss.dtype == dtype
        expected, (gx, gy) = value_and_grads(dense_fn, *fulls, tau=tau)
        # (atol: at N = 1 the loss is 0 up to the rounding of the positive logit)
        torch.testing.assert_close(loss.double(), expected, rtol=rtol, atol=atol / 100)
        scale = world * UPSTREAM  # the documented convention (DDP's averaging divides by W)
        torch.testing.assert_close(x.grad.double(), scale * shard(gx, rows, rank), rtol=rtol, atol=atol)
        torch.testing.assert_close(y.grad.double(), scale * shard(gy, rows, rank), rtol=rtol, atol=atol)
        torch.testing.assert_close(loss, local_fn(*fulls, tau), rtol=rtol, atol=atol / 100)
        same_on_every_rank(loss.item(), group)  # bit for bit


def _my_anchors(every, rows, rank, anchors):
    """This rank's entries of a per-anchor vector of the global batch ([anchors * N]: the
    anchors of x's rows, then of y's): its x rows' anchors, then its y rows'."""
    n = sum(rows)
    return torch.cat([shard(every[a * n : (a + 1) * n], rows, rank) for a in range(anchors)])


def _check_reductions_and_weights(rank, world, rows, group=None, reductions=("mean", "sum", "none"), learned_tau=False,
                                  dtype=torch.float64, rtol=1e-12, atol=1e-13, grad_rtol=1e-10, grad_atol=1e-12,
                                  grad_of_max=0.0, **options):
    """reduction 'mean', 'sum' and 'none', without and with weights (each rank passing its
    own anchors'): values and gradients against the dense float64 per-anchor formulas and
    the single-process loss on the gathered batch.  'mean' and 'sum' are over the global
    batch, the same on every rank, with the DDP convention; 'none' gives each rank its own
    anchors in the documented order (the ranks' outputs reassembled are the single
    process's), and its backward, for each rank's own upstream gradient, gives each rank
    its rows of the single-process gradient for the concatenated upstream gradient.  A
    learned tau: the ranks' parts of its gradient sum to W (mean, sum) or 1 ('none') times
    the single process's, as for x and y.  In float32: the dense formula on the rounded
    inputs, within the tolerances given (gradients: plus `grad_of_max` of their largest
    element, as in _check_low_precision)."""
    n = sum(rows)
    fulls = _views(rows, seed=31 + n, dtype=dtype)
    g = torch.Generator().manual_seed(n)
    for loss_fn, local_fn, dense_rows, tau, anchors in ROW_LOSSES:
        weight = 0.2 + torch.rand(anchors * n, generator=g, dtype=torch.float64)
        weight[-1] = 0.0  # a zero weight counts in no mean
        upstream = torch.randn(anchors * n, generator=g, dtype=torch.float64)  # 'none': one per anchor
        for reduction in reductions:
            per_row = reduction == "none"
            seed, scale = (upstream, 1) if per_row else (UPSTREAM, world)
            for w in (None, weight):
                x, y = _shards(fulls, rows, rank)
                mine_w = None if w is None else _my_anchors(w, rows, rank, anchors)
                t = torch.tensor(tau, dtype=torch.float64, requires_grad=True) if learned_tau else tau
                with recorded_collectives() as calls:
                    out = loss_fn(x, y, t, group=group, reduction=reduction, weight=mine_w, **options)
                    forward_calls = len(calls)
                    (out * (_my_anchors(seed, rows, rank, anchors) if per_row else seed)).sum().backward()
                backward_ops = [c[0] for c in calls[forward_calls:]]
                assert backward_ops == (["all_gather", "reduce_scatter"] if per_row else []), backward_ops
                assert type(x.grad) is type(y.grad) is torch.Tensor  # not a collective's asynchronous wrapper
                assert out.dtype == dtype and out.shape == ((anchors * rows[rank],) if per_row else ())

                def dense(a, b, t):
                    return (dense_reduce(dense_rows(a, b, t), reduction, w) * seed).sum()

                def single(a, b):
                    return (local_fn(a, b, tau, reduction=reduction, weight=w) * seed).sum()

                _, (gx, gy, gt) = value_and_grads(dense, *fulls, torch.tensor(tau, dtype=torch.float64))
                if learned_tau:
                    total = t.grad.clone()
                    dist.all_reduce(total, group=group)
                    torch.testing.assert_close(total.double(), scale * gt, rtol=grad_rtol, atol=grad_atol)
                _, (sx, sy) = value_and_grads(single, *fulls)
                want = dense_reduce(dense_rows(*(f.double() for f in fulls), tau), reduction, w)
                got_single = local_fn(*fulls, tau, reduction=reduction, weight=w)
                if per_row:
                    want, got_single = (_my_anchors(v, rows, rank, anchors) for v in (want, got_single))
                    # Concatenated in the documented order, the ranks' rows are the single process's.
                    every = [torch.tensor(r, dtype=dtype).view(anchors, len(r) // anchors)
                             for r in _every_rank(out.tolist(), group)]
                    torch.testing.assert_close(torch.cat(every, 1).reshape(-1), local_fn(*fulls, tau, reduction="none",
                                                                                         weight=w), rtol=rtol, atol=atol)
                else:
                    same_on_every_rank(out.item(), group)
                torch.testing.assert_close(out.double(), want, rtol=rtol, atol=atol)
                torch.testing.assert_close(out, got_single, rtol=rtol, atol=atol)
                for grad, dense_grad, single_grad in ((x.grad, gx, sx), (y.grad, gy, sy)):
                    for reference in (dense_grad, single_grad):
                        target = scale * shard(reference.double(), rows, rank)
                        largest = float(target.abs().max()) if target.numel() else 0.0
                        torch.testing.assert_close(grad.double(), target, rtol=grad_rtol,
                                                   atol=grad_atol + grad_of_max * largest)


def _every_rank(value, group=None) -> list:
    """Every rank's `value` (a picklable object), in group rank order."""
    values = [None] * dist.get_world_size(group)
    dist.all_gather_object(values, value, group=group)
    return values


def _check_saved_tensor_bound(rank, world, rows):
    """Saved for the backward: this rank's gradient rows of x and y (2 N_r d elements),
    nothing of global size."""
    x, y = _shards(_views(rows, seed=23), rows, rank)
    for loss_fn, _, _, tau in LOSSES:
        saved = []

        def pack(tensor):
            saved.append(tensor.numel())
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            loss = loss_fn(x, y, tau)
        assert sum(saved) <= 2 * rows[rank] * D, (saved, rows[rank])
        loss.backward()


def _check_grads_sum_to_single_process(rank, world, rows, group=None):
    """Sum over ranks of the returned gradients / W: the single process's gradient of the
    whole batch (every row, as DDP's averaging of parameter gradients sees it)."""
    for loss_fn, local_fn, _, tau in LOSSES:
        fulls = _views(rows, seed=3 + sum(rows))
        x, y = _shards(fulls, rows, rank)
        loss_fn(x, y, tau, group=group).backward()
        summed = [torch.zeros_like(f) for f in fulls]
        start = sum(rows[:rank])
        for total, part in zip(summed, (x.grad, y.grad)):
            total[start : start + rows[rank]] = part
            dist.all_reduce(total, group=group)
        _, single_grads = value_and_grads(local_fn, *fulls, tau=tau)
        for total, single in zip(summed, single_grads):
            torch.testing.assert_close(total / world, single, rtol=1e-12, atol=1e-13)


def _check_under_ddp(rank, world, rows, reduction="mean", reduce=lambda loss: loss):
    """A DDP-wrapped encoder of both views: parameter gradients as in one process (the
    global mean).  With reduction='none' and equal shards, `reduce` = each rank's
    `rows.mean()` is that mean too (DDP averages the ranks' gradients)."""
    inputs = [global_batch(rows, D_IN, seed=50 + v) for v in range(2)]
    for loss_fn, _, dense_fn, tau in LOSSES:
        torch.manual_seed(0)
        model = torch.nn.Linear(D_IN, D, dtype=torch.float64)
        single = torch.nn.Linear(D_IN, D, dtype=torch.float64)
        single.load_state_dict(model.state_dict())
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        mine = [shard(i, rows, rank) for i in inputs]
        x, y = F.normalize(ddp(torch.cat(mine)), dim=1).split(rows[rank])
        reduce(loss_fn(x, y, tau, reduction=reduction)).backward()
        z1, z2 = F.normalize(single(torch.cat(inputs)), dim=1).split(sum(rows))
        dense_fn(z1, z2, tau).backward()
        for p, q in zip(model.parameters(), single.parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-13)


def _check_learned_tau(rank, world, rows):
    """tau a tensor that requires grad: each rank gets its share of dL/dtau (summed over
    ranks / W: dL/dtau); ranks may pass a number of the same value instead."""
    for loss_fn, _, dense_fn, tau in LOSSES:
        fulls = _views(rows, seed=7)
        x, y = _shards(fulls, rows, rank)
        t = torch.tensor(tau, dtype=torch.float64, requires_grad=True)
        loss_fn(x, y, t).backward()
        dist.all_reduce(t.grad)  # a replicated tau: DDP averages its gradient over the ranks
        expected, grads = value_and_grads(dense_fn, *fulls, torch.tensor(tau, dtype=torch.float64))
        torch.testing.assert_close(t.grad / world, grads[2], rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(x.grad, world * shard(grads[0], rows, rank), rtol=1e-10, atol=1e-13)
        with torch.no_grad():
            mixed = loss_fn(*[shard(f, rows, rank) for f in fulls], t if rank == 0 else tau)
        torch.testing.assert_close(mixed, expected, rtol=1e-12, atol=0)


MOCO_OPTIONS = (  # per-anchor options; "weight" and "tau" (learned) are filled in by the scenario
    {},
    {"reduction": "sum", "tau": True},
    {"reduction": "none", "weight": True},
    {"decoupled": True, "weight": True, "tau": True},
)


def _check_moco_passes(rank, world, rows, group=None):
    """MoCo across ranks (keys from a momentum encoder: no gradient; MoCo's queue), with the
    queue alone and with every rank's keys too: each rank's forward and backward run one
    pass over its queries' pairs, contrastive_lse_row_grad, and no other operator (no
    gradient pass for the keys); in-batch keys that require grad add
    contrastive_lse_backward (for them alone).  Values and the gradients of q, of k when
    it requires grad and of a learned tau against the dense float64 formula and the
    single-process loss on the concatenated batch, for each reduction, weights and
    decoupled."""
    n = sum(rows)
    fulls = _views(rows, seed=61 + n)
    g = torch.Generator().manual_seed(n)
    weight = 0.2 + torch.rand(n, generator=g, dtype=torch.float64)
    upstream = torch.randn(n, generator=g, dtype=torch.float64)  # 'none': one per query
    tau = 0.2
    for in_batch in (False, True):
        for options in MOCO_OPTIONS:
            for keys_grad in (False, True):
                kw = {"in_batch": in_batch, "decoupled": options.get("decoupled", False),
                      "reduction": options.get("reduction", "mean"),
                      "weight": weight if options.get("weight") else None}
                per_row = kw["reduction"] == "none"
                seed, scale = (upstream, 1) if per_row else (UPSTREAM, world)
                q = shard(fulls[0], rows, rank).clone().requires_grad_(True)
                k = shard(fulls[1], rows, rank).clone().requires_grad_(keys_grad)
                t = torch.tensor(tau, dtype=torch.float64, requires_grad=True) if options.get("tau") else tau
                mine = dict(kw, weight=None if kw["weight"] is None else shard(kw["weight"], rows, rank))
                with RecordedOps() as seen:
                    out = distributed.info_nce_loss(q, k, t, group, queue=QUEUE, **mine)
                    (out * (shard(seed, rows, rank) if per_row else seed)).sum().backward()
                # The keys' pass only for keys among the negatives (in_batch) that require grad.
                keys_pass = ["contrastive_lse_backward"] if keys_grad and in_batch else []
                want_ops = ["contrastive_lse_row_grad"] + keys_pass
                assert seen.names == (want_ops if rows[rank] else []), (in_batch, options, keys_grad, seen.names)
                assert (k.grad is not None) == keys_grad

                def dense(a, b, t):
                    rows_ = dense_info_nce_rows(a, b, t, QUEUE, in_batch, kw["decoupled"])
                    return (dense_reduce(rows_, kw["reduction"], kw["weight"]) * seed).sum()

                def single(a, b, t):
                    return (pyhypersphere.info_nce_loss(a, b, t, queue=QUEUE, **kw) * seed).sum()

                want_out = dense_reduce(dense_info_nce_rows(*fulls, tau, QUEUE, in_batch, kw["decoupled"]),
                                        kw["reduction"], kw["weight"])
                single_out = pyhypersphere.info_nce_loss(*fulls, tau, queue=QUEUE, **kw)
                if per_row:
                    want_out, single_out = shard(want_out, rows, rank), shard(single_out, rows, rank)
                total = t.grad.clone() if options.get("tau") else None
                if total is not None:  # the ranks' parts of dL/dtau
                    dist.all_reduce(total, group=group)
                for reference, reference_out in ((dense, want_out), (single, single_out)):
                    _, (gq, gk, gt) = value_and_grads(reference, *fulls, torch.tensor(tau, dtype=torch.float64))
                    torch.testing.assert_close(out, reference_out, rtol=1e-12, atol=1e-13)
                    torch.testing.assert_close(q.grad, scale * shard(gq, rows, rank), rtol=1e-10, atol=1e-12)
                    if keys_grad:
                        torch.testing.assert_close(k.grad, scale * shard(gk, rows, rank), rtol=1e-10, atol=1e-12)
                    if total is not None:
                        torch.testing.assert_close(total, scale * gt, rtol=1e-10, atol=1e-12)


def _check_no_second_order(rank, world):
    """A backward with create_graph=True raises on every rank (its backward has no
    collective, so none is left waiting)."""
    for loss_fn, _, _, tau in LOSSES:
        x, y = torch.randn(3, D, dtype=torch.float64), torch.randn(3, D, dtype=torch.float64)
        with pytest.raises(RuntimeError, match="second derivatives .* are not supported"):
            torch.autograd.functional.hessian(lambda v: loss_fn(v, y, tau), x)


def _check_low_precision(rank, world, rows, dtype, loss_rtol, grad_tol):
    """float32 and bf16 shards against the dense float64 formula on the same rounded
    inputs: the loss (in x's dtype) within `loss_rtol` relative, the gradients within
    `grad_tol` of their largest element (float32 accumulation, one rounding to bf16)."""
    for loss_fn, _, dense_fn, tau in LOSSES:
        fulls = _views(rows, seed=11, dtype=dtype)
        x, y = _shards(fulls, rows, rank)
        loss = loss_fn(x, y, tau)
        loss.backward()
        expected, grads = value_and_grads(dense_fn, *fulls, tau=tau)
        assert loss.dtype == x.grad.dtype == dtype
        torch.testing.assert_close(loss.double(), expected, rtol=loss_rtol, atol=0)
        for mine, full in zip((x.grad, y.grad), grads):
            target = world * shard(full, rows, rank)
            assert (mine.double() - target).abs().max() <= grad_tol * target.abs().max(), (dtype, loss_fn)


def _check_no_grad(rank, world, rows):
    fulls = _views(rows, seed=17)
    for loss_fn, _, dense_fn, tau in LOSSES:
        with torch.no_grad():
            loss = loss_fn(*_shards(fulls, rows, rank), tau)
        assert not loss.requires_grad
        torch.testing.assert_close(loss, dense_fn(*fulls, tau), rtol=1e-12, atol=0)


def _check_disagreements(rank, world):
    """Invalid or disagreeing inputs on one rank: the same ValueError on every rank after
    the metadata exchange alone, and the group goes on."""
    x = torch.randn(4, D, dtype=torch.float64)
    here = r" \(here: y must have the same shape" if rank == 1 else "$"  # only the rank at fault says why
    learned_on_rank_2 = torch.tensor(0.5, requires_grad=rank == 2)
    for loss_fn, local_fn, _, _ in PAIR_LOSSES:
        raise_after_metadata_only(_per_anchor_option_cases(rank, loss_fn, local_fn, x))
        cases = [
            ("disagree on the feature dimension d", lambda: loss_fn(x[:, : D - rank], x[:, : D - rank])),
            ("disagree on tau", lambda: loss_fn(x, x, 0.5 + 0.1 * (rank == 2))),
            ("disagree on the dtype of x", lambda: loss_fn(*[x if rank == 0 else x.float()] * 2)),
            (r"invalid parameter on rank\(s\) \[0\]", lambda: loss_fn(x, x, -1.0 if rank == 0 else 0.5)),
            (r"invalid parameter on rank\(s\) \[1\]", lambda: loss_fn(x, x, torch.ones(2) if rank == 1 else 0.5)),
            (r"rank\(s\) \[1\] passed something else" + here, lambda: loss_fn(x, x[: 3 if rank == 1 else 4])),
            (r"rank\(s\) \[2\] passed something else", lambda: loss_fn(x, "y" if rank == 2 else x)),
            (r"needs a gradient on rank\(s\) \[0\]", lambda: loss_fn(x, x.clone().requires_grad_(rank == 0))),
            (r"x, y or tau needs a gradient on rank\(s\) \[2\]", lambda: loss_fn(x, x, learned_on_rank_2)),
            (r"needs at least 1 row across all ranks, got shards of \[0, 0, 0\]", lambda: loss_fn(x[:0], x[:0])),
        ]
        raise_after_metadata_only(cases)
    info_nce = distributed.info_nce_loss
    raise_after_metadata_only([
        (r"disagree on queue rows", lambda: info_nce(x, x, queue=QUEUE[: 5 + rank])),
        (r"disagree on in_batch", lambda: info_nce(x, x, queue=QUEUE, in_batch=rank != 1)),
        # Each rank's queries give every rank's keys part of their gradient: all or none compute it.
        (r"disagree on k requires_grad \(rank 0: 1\.0, rank 1: 0\.0",
         lambda: info_nce(x.clone().requires_grad_(), x.clone().requires_grad_(rank == 0))),
        (r"rank\(s\) \[0, 1, 2\] passed something else.*in_batch=False needs a queue",
         lambda: info_nce(x, x, in_batch=False)),
        (r"rank\(s\) \[0\] passed something else" + (r" \(here: queue must not require grad" if rank == 0 else "$"),
         lambda: info_nce(x, x, queue=QUEUE.clone().requires_grad_(rank == 0))),
        (r"rank\(s\) \[2\] passed something else" + (r" \(here: queue must have the same dtype" if rank == 2 else "$"),
         lambda: info_nce(x, x, queue=QUEUE.float() if rank == 2 else QUEUE)),
    ])  # fmt: skip
    _check_no_grad(rank, world, [2, 3, 1])  # the group still works


def _single_process_words(call) -> str:
    """The single-process loss's message for a bad argument, without the function name, as a regex."""
    with pytest.raises((TypeError, ValueError)) as error:
        call()
    return re.escape(str(error.value).split(": ", 1)[1])


def _per_anchor_option_cases(rank, loss_fn, local_fn, x):
    """A bad reduction or weight on one rank: every rank raises, the rank at fault with the
    single-process loss's words; ranks that disagree on the reduction or on passing
    weights raise together.  (x: [4, d] on every rank, so 8 anchors per rank and in the
    single-process call alike.)"""
    def at_fault(bad_rank, bad, good, **fixed):
        """(regex, call): rank `bad_rank` passes the options `bad`, the others `good`."""
        here = rf" \(here: {_single_process_words(lambda: local_fn(x, x, **bad, **fixed))}\)$"
        options = bad if rank == bad_rank else good
        return rf"rank\(s\) \[{bad_rank}\] passed something else" + (here if rank == bad_rank else "$"), \
            lambda: loss_fn(x, x, **options, **fixed)

    weights = torch.rand(8, dtype=torch.float64)
    return [
        at_fault(1, {"reduction": "avg"}, {"reduction": "mean"}),
        at_fault(2, {"weight": weights[:7]}, {"weight": weights}),  # one per anchor: 2 * 4
        at_fault(0, {"weight": torch.ones(8, dtype=torch.int64)}, {"weight": weights}, reduction="none"),
        at_fault(1, {"weight": weights.to("meta")}, {"weight": weights}, reduction="sum"),
        at_fault(2, {"weight": [1.0] * 8}, {"weight": weights}),
        (r"rank\(s\) \[1\] passed something else" + (r" \(here: weight must not require grad across ranks" if rank == 1
                                                       else "$"),
         lambda: loss_fn(x, x, weight=weights.clone().requires_grad_(rank == 1))),
        ("the ranks disagree on weighted", lambda: loss_fn(x, x, weight=weights if rank == 0 else None)),
        ("the ranks disagree on reduction", lambda: loss_fn(x, x, reduction="sum" if rank == 2 else "none")),
    ]


def _check_dominant_positive(rank, world, rows):
    """Each row's positive dominating (issue 26): the global loss and gradient against the
    cancellation-free float64 formula; in float32 never negative (-1.5e-5 before)."""
    z1 = global_batch(rows, D, 7)
    noise = global_batch(rows, D, 8)
    z2 = F.normalize(z1 + 0.02 * noise, dim=1)
    for loss_fn, name in ((distributed.nt_xent_loss, "nt_xent"), (distributed.clip_loss, "clip"),
                          (distributed.info_nce_loss, "info_nce")):
        for tau in (0.05, 0.005):
            x, y = _shards([z1, z2], rows, rank)
            loss = loss_fn(x, y, tau)
            loss.backward()
            expected, (gx, gy) = value_and_grads(lambda a, b: exact_loss(name, a, b, tau), z1, z2)
            torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)
            for got, want in ((x.grad, gx), (y.grad, gy)):
                atol = 1e-12 * world * want.abs().max().item()
                torch.testing.assert_close(got, world * shard(want, rows, rank), rtol=1e-10, atol=atol)
            low = loss_fn(*(shard(z, rows, rank).float() for z in (z1, z2)), tau)
            assert low >= 0 and abs(low.item() - expected.item()) <= 2e-5 * expected.item() + 1e-44


def _check_failure_inside_the_loss(rank, world):
    """The operator fails on rank 1 only: it raises its error, every other rank a
    RuntimeError naming it, and nobody waits in a collective."""
    original = contrastive_distributed.contrastive_lse

    def failing(*args, **kwargs):
        raise RuntimeError("injected failure inside the operator")

    x = torch.randn(3, D, dtype=torch.float64, requires_grad=True)
    if rank == 1:
        contrastive_distributed.contrastive_lse = failing
    try:
        match = "injected failure" if rank == 1 else r"rank\(s\) \[1\] failed inside the loss"
        with pytest.raises(RuntimeError, match=match):
            distributed.clip_loss(x, x.detach())
    finally:
        contrastive_distributed.contrastive_lse = original


def _check_failure_in_a_per_row_backward(rank, world):
    """reduction='none': the backward is a collective; the operator's backward fails on
    rank 1 only: it raises its error, every other rank a RuntimeError naming it, nobody
    waits in the reduce-scatter, and the group goes on."""
    original = contrastive_ops._lib_ops

    def failing(*args):
        raise RuntimeError("injected failure inside the operator's backward")

    x = torch.randn(3, D, dtype=torch.float64, requires_grad=True)
    rows = distributed.clip_loss(x, x.detach() + 1, reduction="none")
    if rank == 1:
        contrastive_ops._lib_ops = types.SimpleNamespace(
            contrastive_lse=original.contrastive_lse, contrastive_mean_lse=original.contrastive_mean_lse,
            contrastive_lse_backward=failing)
    try:
        match = "injected failure" if rank == 1 else r"rank\(s\) \[1\] failed inside the loss"
        with pytest.raises(RuntimeError, match=match):
            rows.sum().backward()
    finally:
        contrastive_ops._lib_ops = original
    _check_no_grad(rank, world, [3, 4, 2])


def _check_no_sync_path(rank, world):
    """equal_shards=True: the same values and gradients; no metadata exchange (one
    all-gather of the features, one of the status, the reduce-scatter); a failure, an
    invalid or a disagreeing tau make the loss (and gradient) NaN on every rank instead
    of raising everywhere, the rank at fault raising after its last collective."""
    _check_values_and_grads(rank, world, [5, 5, 5], equal_shards=True)
    _check_values_and_grads(rank, world, [1, 1, 1], equal_shards=True)
    _check_reductions_and_weights(rank, world, [3, 3, 3], reductions=("mean", "sum"), equal_shards=True)
    x = torch.randn(4, D, dtype=torch.float64, requires_grad=True)
    for loss_fn, _, _, tau in LOSSES:
        with recorded_collectives() as calls:
            loss_fn(x, x.detach(), tau, equal_shards=True).backward()
        assert [c[0] for c in same_on_every_rank(calls)] == ["all_gather", "all_gather", "reduce_scatter"], calls
        x.grad = None
        # The operator fails on rank 1 only (InfoNCE's, with q's gradient to come, is the row-gradient op).
        originals = {name: getattr(contrastive_distributed, name) for name in _LSE_OPS}
        if rank == 1:
            for name in _LSE_OPS:
                setattr(contrastive_distributed, name, lambda *a, **k: (_ for _ in ()).throw(RuntimeError("injected")))
        try:
            with recorded_collectives() as calls:
                if rank == 1:
                    with pytest.raises(RuntimeError, match="injected"):
                        loss_fn(x, x.detach(), tau, equal_shards=True)
                else:
                    loss = loss_fn(x, x.detach(), tau, equal_shards=True)
                    assert torch.isnan(loss)
                    loss.backward()
                    assert torch.isnan(x.grad).all()
                    x.grad = None
            same_on_every_rank(calls)
        finally:
            for name, op in originals.items():
                setattr(contrastive_distributed, name, op)
        # An invalid tau on rank 2: it raises, the others get NaN.
        if rank == 2:
            with pytest.raises(ValueError, match="tau must be a positive finite number"):
                loss_fn(x.detach(), x.detach(), -1.0, equal_shards=True)
        else:
            assert torch.isnan(loss_fn(x.detach(), x.detach(), tau, equal_shards=True))
        # Ranks that disagree on tau (each valid): NaN everywhere rather than a wrong
        # number, the gradient too.
        loss = loss_fn(x, x.detach(), tau * (1 + rank), equal_shards=True)
        assert torch.isnan(loss)
        loss.backward()
        assert torch.isnan(x.grad).all()
        x.grad = None
        # An input the rank's own check refuses raises there before any collective; the
        # others would wait (as for the uniformity's no-sync path), so all refuse here.
        with pytest.raises(ValueError, match="must have the same shape as"):
            loss_fn(x, x[:3], tau, equal_shards=True)
        # 'none' has a collective backward: the checked path only (no collective issued).
        with recorded_collectives() as calls, pytest.raises(ValueError, match="reduction='none' needs equal_shards=False"):
            loss_fn(x, x.detach(), tau, equal_shards=True, reduction="none")
        assert calls == []
    _check_no_grad(rank, world, [3, 4, 2])  # the group still works


def _check_world_of_one(rank, solo):
    """A one-rank group: the single-process loss (its reduction and weight too), no collectives."""
    fulls = _views([6], seed=19)
    for loss_fn, local_fn, _, tau in LOSSES:
        with recorded_collectives() as calls:
            loss = loss_fn(*fulls, tau, group=solo)
        assert calls == []
        torch.testing.assert_close(loss, local_fn(*fulls, tau), rtol=0, atol=0)
    for loss_fn, local_fn, _, tau, anchors in ROW_LOSSES:
        weight = torch.rand(anchors * 6, dtype=torch.float64)
        for reduction in ("sum", "none"):
            with recorded_collectives() as calls:
                loss = loss_fn(*fulls, tau, group=solo, reduction=reduction, weight=weight)
            assert calls == []
            torch.testing.assert_close(loss, local_fn(*fulls, tau, reduction=reduction, weight=weight), rtol=0, atol=0)


def three_ranks(rank, world):
    _check_reductions_and_weights(rank, world, [4, 0, 3])  # an empty shard
    _check_values_and_grads(rank, world, [6, 4, 9])  # unequal shards
    _check_values_and_grads(rank, world, [5, 0, 7])  # an empty shard
    _check_values_and_grads(rank, world, [1, 1, 1])  # one row per rank
    _check_values_and_grads(rank, world, [0, 1, 0])  # N = 1: the loss has no negatives
    _check_grads_sum_to_single_process(rank, world, [6, 3, 8])
    _check_saved_tensor_bound(rank, world, [20, 9, 16])
    _check_under_ddp(rank, world, [5, 4, 6])
    _check_under_ddp(rank, world, [3, 3, 3], "none", lambda rows: rows.mean())  # equal shards
    _check_learned_tau(rank, world, [4, 0, 5])
    _check_moco_passes(rank, world, [5, 0, 7])
    _check_low_precision(rank, world, [30, 17, 25], torch.float32, 1e-5, 1e-5)
    _check_low_precision(rank, world, [12, 10, 14], torch.bfloat16, 2 * 2**-8, 1.1 * 2**-8)
    _check_no_grad(rank, world, [3, 4, 2])
    _check_dominant_positive(rank, world, [40, 25, 33])
    _check_no_second_order(rank, world)
    _check_disagreements(rank, world)
    _check_failure_inside_the_loss(rank, world)
    _check_failure_in_a_per_row_backward(rank, world)
    _check_no_sync_path(rank, world)


def two_ranks(rank, world, group):
    """On a subgroup of global ranks {1, 2}: group ranks differ from global ranks."""
    _check_values_and_grads(rank, world, [7, 3], group)
    _check_values_and_grads(rank, world, [0, 5], group)
    _check_values_and_grads(rank, world, [20, 13], group, dtype=torch.float32, rtol=2e-5, atol=1e-6)
    _check_grads_sum_to_single_process(rank, world, [4, 9], group)
    _check_moco_passes(rank, world, [6, 4], group)
    _check_reductions_and_weights(rank, world, [2, 5], group, learned_tau=True)
    _check_reductions_and_weights(rank, world, [9, 6], group, reductions=("mean", "none"), dtype=torch.float32,
                                  rtol=2e-5, atol=1e-6, grad_rtol=2e-5, grad_atol=0.0, grad_of_max=1e-5)


def all_scenarios(rank, world):
    three_ranks(rank, world)
    on_subgroups(rank, world, two_ranks, _check_world_of_one)


# ---------------------------------------------------------------- tests


def test_two_and_three_ranks_match_single_process_and_dense_formulas():
    run(all_scenarios, world=3)


def test_without_a_process_group_raises():
    assert not dist.is_initialized()
    for loss_fn in (distributed.nt_xent_loss, distributed.clip_loss, distributed.info_nce_loss):
        with pytest.raises(RuntimeError, match="no torch.distributed process group is initialized"):
            loss_fn(torch.randn(4, 3), torch.randn(4, 3))
