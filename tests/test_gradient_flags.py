"""uniform_lse computes exactly the gradients asked for (grad_x / grad_queue), with the
same loss in every flag combination, against float64 references.

The shapes put several 64-row blocks in x and in the queue, so that x-by-x tiles,
x-by-queue tiles and diagonal tiles all occur, and the parts split the tiles."""

import itertools

import pytest
import torch

from conftest import unit_rows
from pyhypersphere import uniform_loss
from pyhypersphere.ops import uniform as uniform_ops
from pyhypersphere.ops._common import accumulate_dtype

FLAGS = list(itertools.product([True, False], repeat=2))  # (grad_x, grad_queue)


def reference_lse(x, queue, t, intra_batch):
    """log sum over the pair set of exp(-t ||a - b||^2) and its gradients, float64."""
    x = x.detach().double().requires_grad_()
    queue = queue.detach().double().requires_grad_()
    terms = [(x[:, None, :] - queue[None, :, :]).pow(2).sum(-1).reshape(-1)]
    if intra_batch:
        iu = torch.triu_indices(x.shape[0], x.shape[0], offset=1)
        terms.append((x[iu[0]] - x[iu[1]]).pow(2).sum(1))
    lse = torch.logsumexp(torch.cat(terms) * -t, 0)
    gx, gq = torch.autograd.grad(lse, (x, queue))
    return lse.detach(), gx, gq


def combine_parts(results):
    """Whole-set lse and gradients from the parts: lse = logsumexp_p lse_p and
    grad = sum_p exp(lse_p - lse) grad_p (the distributed loss's reduction)."""
    lses = torch.stack([r[0].double() for r in results])
    lse = torch.logsumexp(lses, 0)
    weights = (lses - lse).exp()

    def total(i):
        if results[0][i].numel() == 0:
            return results[0][i]
        return sum(w * r[i].double() for w, r in zip(weights, results))

    return lse, total(1), total(2)


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
@pytest.mark.parametrize("num_parts", [1, 3])
@pytest.mark.parametrize("intra_batch", [True, False])
@pytest.mark.parametrize("grad_x,grad_queue", FLAGS)
def test_flags_values_and_gradients(grad_x, grad_queue, intra_batch, num_parts, dtype, rtol):
    n, k, d, t = 150, 200, 6, 2.0
    x = unit_rows(n, d, seed=1, dtype=dtype)
    q = unit_rows(k, d, seed=2, dtype=dtype)
    runs = [
        uniform_ops.uniform_lse(x, q, t, intra_batch, p, num_parts, grad_x, grad_queue) for p in range(num_parts)
    ]
    for lse_p, gx_p, gq_p in runs:
        assert gx_p.shape == ((n, d) if grad_x else (0,))
        assert gq_p.shape == ((k, d) if grad_queue else (0,))
        assert gx_p.dtype == gq_p.dtype == accumulate_dtype(dtype)
        assert lse_p.dtype == torch.float64  # whatever the inputs (ops.h)
    lse, gx, gq = combine_parts(runs)
    want_lse, want_gx, want_gq = reference_lse(x, q, t, intra_batch)
    torch.testing.assert_close(lse, want_lse, rtol=rtol, atol=0)
    if grad_x:
        torch.testing.assert_close(gx, want_gx, rtol=rtol * 10, atol=rtol * want_gx.abs().max().item())
    if grad_queue:
        torch.testing.assert_close(gq, want_gq, rtol=rtol * 10, atol=rtol * want_gq.abs().max().item())


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


def test_no_queue_gradient_without_queue_flags():
    x = unit_rows(100, 5, seed=5)
    lse, gx, gq = uniform_ops.uniform_lse(x, None, 2.0, True, 0, 1, True, False)
    assert gq.numel() == 0 and gx.shape == x.shape
    with pytest.raises(ValueError, match="grad_queue=True needs a queue"):
        uniform_ops.uniform_lse(x, None, 2.0, True, 0, 1, False, True)


@pytest.mark.parametrize("x_grad,queue_grad", [(True, False), (False, True), (True, True)])
def test_uniform_loss_asks_only_for_what_autograd_needs(monkeypatch, x_grad, queue_grad):
    calls = []
    real = uniform_ops._uniform  # every differentiable call of the op goes through it

    def spy(args, *rest):
        calls.append(args[-2:])
        return real(args, *rest)

    monkeypatch.setattr(uniform_ops, "_uniform", spy)
    x = unit_rows(20, 3, seed=6).requires_grad_(x_grad)
    q = unit_rows(30, 3, seed=7).requires_grad_(queue_grad)
    uniform_loss(x, queue=q).backward()
    assert calls == [(x_grad, queue_grad)]
    assert (x.grad is not None) == x_grad and (q.grad is not None) == queue_grad
