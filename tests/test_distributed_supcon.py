"""Issue 25 across processes, in a real 2-rank gloo run: pyhypersphere.distributed.supcon_loss
(values and gradients of the global batch against the dense float64 formula of
tests/dense_contrastive.py and the single-process loss, unequal and empty shards, weights,
every reduction, a learned tau, errors raised on every rank, a failure inside the operator
in the forward and in 'none''s backward), the contrastive losses' decoupled
and reduction options (decoupled=True on a global batch of one pair raising on every
rank), and nn.KeyQueue gathered across ranks.  One spawn runs every scenario."""

import re
import types

import pytest
import torch

import pyhypersphere

from dense_contrastive import (
    dense_clip_rows, dense_info_nce_rows, dense_nt_xent_rows, dense_reduce, dense_supcon, value_and_grads,
)
from dist_harness import global_batch, raise_after_metadata_only, recorded_collectives, run, same_on_every_rank, shard
from pyhypersphere import distributed, nn, supcon_loss
from pyhypersphere.ops import supcon as supcon_ops

D = 6
UPSTREAM = 0.7


def _labels(total):
    return torch.arange(total) % 4  # every class has several members across the ranks


def _check_values_and_grads(rank, world, rows, reduction, weighted, learned_tau):
    """Against the dense float64 formula and the single-process loss on the gathered batch:
    'mean' and 'sum' the same on every rank with the DDP convention (W * g * dL/dx_r),
    'none' this rank's rows, its backward (a collective) the single-process gradient for
    the ranks' upstream gradients concatenated."""
    total = sum(rows)
    full = global_batch(rows, D, seed=total)
    labels = _labels(total)
    g = torch.Generator().manual_seed(5)
    weight = torch.rand(total, dtype=torch.float64, generator=g) if weighted else None
    per_row = reduction == "none"
    seed, scale = (torch.randn(total, dtype=torch.float64, generator=g), 1) if per_row else (UPSTREAM, world)
    tau_value = 0.2
    tau = torch.tensor(tau_value, dtype=torch.float64, requires_grad=True) if learned_tau else tau_value
    x = shard(full, rows, rank).clone().requires_grad_()
    w = shard(weight, rows, rank) if weighted else None
    with recorded_collectives() as calls:
        loss = distributed.supcon_loss(x, shard(labels, rows, rank), tau, reduction=reduction, weight=w)
        forward_calls = len(calls)
        (loss * (shard(seed, rows, rank) if per_row else seed)).sum().backward()
    assert type(x.grad) is torch.Tensor  # not a collective's asynchronous wrapper
    backward_ops = [c[0] for c in calls[forward_calls:]]
    assert backward_ops == (["all_gather"] * 2 + ["reduce_scatter"] if per_row else []), backward_ops
    tau64 = torch.tensor(tau_value, dtype=torch.float64)
    want, grads = value_and_grads(lambda f, t: (dense_supcon(f, labels, t, reduction, weight) * seed).sum(), full, tau64)
    _, single_grads = value_and_grads(lambda f, t: (supcon_loss(f, labels, t, reduction, weight) * seed).sum(), full, tau64)
    values = [dense_supcon(full, labels, tau_value, reduction, weight), supcon_loss(full, labels, tau_value, reduction, weight)]
    for value in values:
        torch.testing.assert_close(loss, shard(value, rows, rank) if per_row else value, rtol=1e-12, atol=1e-12)
    for reference in (grads, single_grads):
        torch.testing.assert_close(x.grad, scale * shard(reference[0], rows, rank), rtol=1e-10, atol=1e-12)
    if learned_tau:  # this rank's share; the shares sum to scale * dL/dtau (DDP averages W * share)
        total_share = torch.tensor([tau.grad.item()], dtype=torch.float64)
        torch.distributed.all_reduce(total_share)
        torch.testing.assert_close(total_share[0], scale * grads[1], rtol=1e-10, atol=1e-12)
    if not per_row:
        same_on_every_rank(loss.item())


def _check_errors_on_every_rank(rank, world):
    x = torch.randn(4, D, dtype=torch.float64)
    # Labels wrong on rank 1 only: every rank raises, naming it.
    labels = torch.zeros(4 if rank == 0 else 3, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"rank\(s\) \[1\] passed something else"):
        distributed.supcon_loss(x, labels)
    # No two rows of the global batch share a label.
    with pytest.raises(ValueError, match="no two rows of the global batch share a label"):
        distributed.supcon_loss(x, torch.arange(4) + 4 * rank)
    # A bad reduction or weight on one rank: the single-process words there, every rank raises.
    zeros = torch.zeros(4, dtype=torch.int64)
    here = r" \(here: reduction must be one of 'mean', 'sum', 'none', got 'avg'\)$" if rank == 0 else "$"
    with pytest.raises(ValueError, match=r"rank\(s\) \[0\] passed something else" + here):
        distributed.supcon_loss(x, zeros, reduction="avg" if rank == 0 else "none")
    here = r" \(here: weight must be a floating-point tensor of shape \(4,\)" if rank == 1 else "$"
    with pytest.raises(ValueError, match=r"rank\(s\) \[1\] passed something else" + here):
        distributed.supcon_loss(x, zeros, weight=torch.ones(4, dtype=torch.int64 if rank == 1 else torch.float64))
    with pytest.raises(ValueError, match="the ranks disagree on reduction"):
        distributed.supcon_loss(x, zeros, reduction="none" if rank == 0 else "sum")


def _check_failure_inside_the_operator(rank, world):
    original = supcon_ops._lib_ops

    def failing(*args):
        raise RuntimeError("injected failure inside the operator")

    if rank == 1:
        supcon_ops._lib_ops = types.SimpleNamespace(supcon_lse=original.supcon_lse, supcon_lse_backward=failing)
    try:
        x = torch.randn(4, D, dtype=torch.float64, requires_grad=True)
        match = "injected failure" if rank == 1 else r"rank\(s\) \[1\] failed inside the loss"
        with pytest.raises(RuntimeError, match=match):
            distributed.supcon_loss(x, torch.zeros(4, dtype=torch.int64))
        # reduction='none': the gradient pass runs in the backward (a collective), and fails there.
        rows = distributed.supcon_loss(x, torch.zeros(4, dtype=torch.int64), reduction="none")
        with pytest.raises(RuntimeError, match=match):
            rows.sum().backward()
    finally:
        supcon_ops._lib_ops = original


def _check_key_queue(rank, world):
    queue = nn.KeyQueue(5, 3)
    batches = [torch.full((2 + rank, 3), float(10 * step + rank)) for step in range(2)]
    queue.push(batches[0])  # ranks push 2 and 3 rows: 5 rows, rank order
    want = torch.tensor([0.0, 0, 1, 1, 1])[:, None].expand(5, 3)
    torch.testing.assert_close(queue.queue, want)
    queue.push(batches[1])  # 5 more: the first five dropped
    want = torch.tensor([10.0, 10, 11, 11, 11])[:, None].expand(5, 3)
    torch.testing.assert_close(queue.queue, want)
    same_on_every_rank(queue.queue.tolist())


def _check_contrastive_options(rank, world):
    rows = (5, 9)
    fulls = [global_batch(rows, D, seed=20 + v) for v in range(2)]
    queue = global_batch((7,), D, seed=30)
    cases = [
        (lambda x, y: distributed.nt_xent_loss(x, y, 0.3, decoupled=True),
         lambda x, y: dense_reduce(dense_nt_xent_rows(x, y, 0.3, True), "mean")),
        (lambda x, y: distributed.info_nce_loss(x, y, 0.3, queue=queue, decoupled=True, reduction="sum"),
         lambda x, y: dense_reduce(dense_info_nce_rows(x, y, 0.3, queue, decoupled=True), "sum")),
        (lambda x, y: distributed.clip_loss(x, y, 0.3, reduction="sum"),
         lambda x, y: dense_reduce(dense_clip_rows(x, y, 0.3), "sum")),
    ]
    for fused, dense in cases:
        x, y = (shard(f, rows, rank).clone().requires_grad_() for f in fulls)
        loss = fused(x, y)
        (UPSTREAM * loss).backward()
        want, (gx, gy) = value_and_grads(dense, *fulls)
        torch.testing.assert_close(loss, want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(x.grad, world * UPSTREAM * shard(gx, rows, rank), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(y.grad, world * UPSTREAM * shard(gy, rows, rank), rtol=1e-10, atol=1e-12)
    x = torch.randn(3, D, dtype=torch.float64)
    # Ranks that disagree on an option raise together.
    with pytest.raises(ValueError, match="the ranks disagree on decoupled"):
        distributed.nt_xent_loss(x, x, decoupled=rank == 0)
    # decoupled=True on a global batch of one pair (rank 0's row, none on rank 1): no view
    # has a negative.  Every rank raises the single-process loss's words (the global
    # batch's size is known everywhere) after the metadata exchange alone.
    one = x[: 1 - rank]
    cases = []
    for name in ("nt_xent_loss", "info_nce_loss"):
        with pytest.raises(ValueError) as single:
            getattr(pyhypersphere, name)(x[:1], x[:1], decoupled=True)
        words = str(single.value).removeprefix(f"{name}: ")
        assert words.startswith("decoupled=True needs")
        cases.append((re.escape(f"pyhypersphere.distributed.{name}: {words}") + "$",
                      lambda fn=getattr(distributed, name): fn(one, one, decoupled=True)))
    raise_after_metadata_only(cases)
    # With a queue the one query has negatives: the loss of the dense formula.
    q, k = (shard(f, (1, 0), rank).clone().requires_grad_() for f in (fulls[0][:1], fulls[1][:1]))
    loss = distributed.info_nce_loss(q, k, 0.3, queue=queue, decoupled=True)
    loss.backward()
    want, (gq, _) = value_and_grads(lambda a, b: dense_reduce(dense_info_nce_rows(a, b, 0.3, queue, decoupled=True),
                                                              "mean"), fulls[0][:1], fulls[1][:1])
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(q.grad, world * shard(gq, (1, 0), rank), rtol=1e-10, atol=1e-12)


def scenarios(rank, world):
    for rows, reduction, weighted, learned in [((5, 9), "mean", False, False), ((0, 12), "sum", True, False),
                                               ((7, 7), "mean", True, True), ((5, 9), "none", False, False),
                                               ((0, 12), "none", True, True), ((6, 3), "sum", False, False)]:
        _check_values_and_grads(rank, world, rows, reduction, weighted, learned)
    _check_errors_on_every_rank(rank, world)
    _check_failure_inside_the_operator(rank, world)
    _check_key_queue(rank, world)
    _check_contrastive_options(rank, world)


def test_two_ranks():
    run(scenarios, world=2)
