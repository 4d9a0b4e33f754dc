"""uniform_lse on the CPU gives bitwise the same loss in every flag combination (grad_x /
grad_queue), and uniform_loss asks for only the gradients autograd needs.  Each flag's
values and gradients against float64, on every implementation: test_implementations.py.

The shapes put several 64-row blocks in x and in the queue, so that x-by-x tiles,
x-by-queue tiles and diagonal tiles all occur, and the parts split the tiles."""

import itertools

import pytest
import torch

from conftest import unit_rows
from pyhypersphere import uniform_loss
from pyhypersphere.ops import uniform as uniform_ops

FLAGS = list(itertools.product([True, False], repeat=2))  # (grad_x, grad_queue)


@pytest.mark.parametrize("num_parts", [1, 3])
@pytest.mark.parametrize("intra_batch", [True, False])
def test_loss_is_bitwise_the_same_in_every_flag_combination_and_run(intra_batch, num_parts):
    x = unit_rows(300, 16, seed=3, dtype=torch.float32)
    q = unit_rows(500, 16, seed=4, dtype=torch.float32)
    for part in range(num_parts):
        first = {f: uniform_ops.uniform_lse(x, q, 2.0, intra_batch, part, num_parts, *f) for f in FLAGS}
        again = {f: uniform_ops.uniform_lse(x, q, 2.0, intra_batch, part, num_parts, *f) for f in FLAGS}
        for f in FLAGS:
            assert torch.equal(first[f][0], first[FLAGS[0]][0])
            for a, b in zip(first[f], again[f]):
                assert torch.equal(a, b)
        # The gradient of one set of rows does not depend on whether the other's is asked.
        both = first[(True, True)]
        assert torch.equal(first[(True, False)][1], both[1])
        assert torch.equal(first[(False, True)][2], both[2])


@pytest.mark.parametrize("x_grad,queue_grad", [(True, False), (False, True), (True, True)])
def test_uniform_loss_asks_only_for_what_autograd_needs(monkeypatch, x_grad, queue_grad):
    calls = []
    real = uniform_ops.uniform_loss_value  # uniform_loss's call of the op, on every route

    def spy(x, queue, t, intra_batch, grad_x, grad_queue, *rest, **kwargs):
        calls.append((grad_x, grad_queue))
        return real(x, queue, t, intra_batch, grad_x, grad_queue, *rest, **kwargs)

    monkeypatch.setattr(uniform_ops, "uniform_loss_value", spy)
    x = unit_rows(20, 3, seed=6).requires_grad_(x_grad)
    q = unit_rows(30, 3, seed=7).requires_grad_(queue_grad)
    uniform_loss(x, queue=q).backward()
    assert calls == [(x_grad, queue_grad)]
    assert (x.grad is not None) == x_grad and (q.grad is not None) == queue_grad
