"""The contrastive_mean_lse operator (csrc/ops.h) on the CPU: in-batch InfoNCE's mean cross
entropy (b_i a_i's positive) and its gradients from one pass (row strips, csrc/cpu/mean_lse_strips.h), the two-pass
fallback for queues too long for a strip, and in-batch info_nce_loss through it.

References: explicit float64 logit matrices, torch.logsumexp and autograd; the dense
InfoNCE formula of dense_contrastive.py."""

import pytest
import torch

from conftest import unit_rows
from dense_contrastive import dense_info_nce, mean_cross_entropy_and_grads, value_and_grads
from pyhypersphere import _C, info_nce_loss

ops = torch.ops.pyhypersphere

BUDGET_VAR = "PYHYPERSPHERE_STRIP_BUDGET_BYTES"


def reference(a, b, scale):
    """The mean cross entropy (b_i a_i's positive) in float64 and its gradients (autograd)."""
    return mean_cross_entropy_and_grads(a, b, scale)


def assert_matches(got, want, rtol, atol):
    mean, ga, gb = got
    want_mean, want_ga, want_gb = want
    torch.testing.assert_close(mean.double(), want_mean, rtol=rtol, atol=atol)
    for g, w in ((ga, want_ga), (gb, want_gb)):
        torch.testing.assert_close(g.double(), w, rtol=0, atol=atol + rtol * w.abs().max())


# The strips' machinery (small shapes, dtypes, flags: test_implementations.py).
CASES = [  # na, nb, d, scale, dtype
    (300, 700, 19, 10.0, torch.float32),  # several strips and column blocks, ragged edges
    (16, 2000, 8, 1 / 0.2, torch.float64),  # MoCo's shape: few queries, a long queue
]


@pytest.mark.parametrize("na,nb,d,scale,dtype", CASES)
def test_values_and_gradients_against_float64(na, nb, d, scale, dtype):
    a, b = unit_rows(na, d, dtype=dtype, seed=1), unit_rows(nb, d, dtype=dtype, seed=2)
    got = ops.contrastive_mean_lse(a, b, scale, True, True)
    assert got[0].shape == () and got[0].dtype == dtype
    assert got[1].shape == a.shape and got[2].shape == b.shape
    tol = 1e-11 if dtype == torch.float64 else 2e-5
    assert_matches(got, reference(a, b, scale), rtol=tol, atol=tol * scale)


def test_value_is_bitwise_the_same_whatever_gradients_are_asked_for():
    a, b = unit_rows(90, 5, seed=7), unit_rows(130, 5, seed=8)
    both = ops.contrastive_mean_lse(a, b, 3.0, True, True)[0]
    for grad_a, grad_b in [(True, False), (False, True), (False, False)]:
        assert torch.equal(ops.contrastive_mean_lse(a, b, 3.0, grad_a, grad_b)[0], both)


def test_autograd_recomputes_what_the_call_did_not_ask_for():
    a, b = unit_rows(20, 4, seed=9).requires_grad_(), unit_rows(30, 4, seed=10).requires_grad_()
    mean, _, _ = ops.contrastive_mean_lse(a, b, 2.0, False, False)
    (3.0 * mean).backward()
    _, want_ga, want_gb = reference(a, b, 2.0)
    torch.testing.assert_close(a.grad, 3.0 * want_ga, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(b.grad, 3.0 * want_gb, rtol=1e-10, atol=1e-13)


def test_opcheck():
    a, b = unit_rows(33, 5, seed=11), unit_rows(70, 5, seed=12)
    for args in [
        (a, b, 2.0, True, True),
        (a.clone().requires_grad_(), b.clone().requires_grad_(), 2.0, True, True),
        (a.clone().requires_grad_(), b, 1.5, True, False),
        (a.float(), b.float(), 2.0, False, True),
        (a, b, 2.0, False, False),
    ]:
        torch.library.opcheck(ops.contrastive_mean_lse.default, args)


def test_bitwise_reproducible_across_runs_and_threads():
    # 1000 x 1300: 16 strips of 64 rows against 21 column blocks, the last ones ragged.
    a, b = unit_rows(1000, 24, dtype=torch.float32, seed=13), unit_rows(1300, 24, dtype=torch.float32, seed=14)
    threads = torch.get_num_threads()
    results = []
    try:
        for n_threads in (threads, 1, 3, threads):
            torch.set_num_threads(n_threads)
            results.append(ops.contrastive_mean_lse(a, b, 10.0, True, True))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for u, v in zip(results[0], other):
            assert torch.equal(u, v)


def test_strip_rows_depend_on_the_shape_and_the_budget(monkeypatch):
    assert _C._mean_lse_strip_rows(16384, 16384, 4) == 256
    assert _C._mean_lse_strip_rows(256, 65536, 4) == 32  # eight strips for few queries
    assert _C._mean_lse_strip_rows(16384, 2**20, 4) == 16  # a 1M queue: 16-row strips (64 MiB)
    assert _C._mean_lse_strip_rows(16384, 2**21, 4) == 0  # 2M: the two-pass fallback
    monkeypatch.setenv(BUDGET_VAR, str(32 * 1000 * 8))
    assert _C._mean_lse_strip_rows(1000, 1000, 8) == 32  # the budget halves the strip
    monkeypatch.setenv(BUDGET_VAR, "0")
    assert _C._mean_lse_strip_rows(2, 2, 4) == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fallback_when_no_strip_fits_the_budget(monkeypatch, dtype):
    a, b = unit_rows(300, 9, dtype=dtype, seed=15), unit_rows(500, 9, dtype=dtype, seed=16)
    strips = ops.contrastive_mean_lse(a, b, 5.0, True, True)
    monkeypatch.setenv(BUDGET_VAR, "0")
    assert _C._mean_lse_strip_rows(300, 500, a.element_size()) == 0
    fallback = ops.contrastive_mean_lse(a, b, 5.0, True, True)
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    for u, v in zip(fallback, strips):
        torch.testing.assert_close(u, v, rtol=tol, atol=tol)
    assert_matches(fallback, reference(a, b, 5.0), rtol=tol * 10, atol=tol * 10)
    only_a = ops.contrastive_mean_lse(a, b, 5.0, True, False)
    assert only_a[2].shape == (0,)
    torch.testing.assert_close(only_a[1], fallback[1], rtol=0, atol=0)


@pytest.mark.parametrize("where", ["a", "b"])
def test_nonfinite_inputs_give_nan(where, monkeypatch):
    for budget in (None, "0"):  # strips and the fallback
        if budget is not None:
            monkeypatch.setenv(BUDGET_VAR, budget)
        a, b = unit_rows(10, 4, seed=17), unit_rows(12, 4, seed=18)
        (a if where == "a" else b)[3, 1] = float("nan" if where == "a" else "inf")
        mean, ga, gb = ops.contrastive_mean_lse(a, b, 1.0, True, True)
        assert torch.isnan(mean) and torch.isnan(ga).all() and torch.isnan(gb).all()


def test_devices_differ():
    # A mixed-device call reaches the fake kernel (the other errors, on every
    # implementation: test_implementations.py).
    with pytest.raises(ValueError, match="contrastive_mean_lse: b must be on the same device"):
        ops.contrastive_mean_lse(torch.zeros(4, 3), torch.zeros(4, 3).to("meta"), 1.0, True, True)


def test_second_derivatives_match_float64():
    # create_graph=True: the backward's differentiable form (it raised before).
    a, b = unit_rows(10, 3, seed=19).requires_grad_(), unit_rows(12, 3, seed=20).requires_grad_()
    mean, _, _ = ops.contrastive_mean_lse(a, b, 2.0, True, False)
    ga, gb = torch.autograd.grad(mean, (a, b), create_graph=True)
    got = torch.autograd.grad(ga.sum() + (gb * gb).sum(), (a, b))
    ar, br = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    logits = 2.0 * ar @ br.T
    want_ga, want_gb = torch.autograd.grad((logits.logsumexp(1) - logits[:, :10].diagonal()).mean(), (ar, br),
                                           create_graph=True)
    want = torch.autograd.grad(want_ga.sum() + (want_gb * want_gb).sum(), (ar, br))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------- in-batch info_nce_loss


@pytest.mark.parametrize("with_queue", [False, True])
def test_info_nce_gradient_to_q_only(with_queue):
    # MoCo: keys and queue without gradients (the op skips grad_b).
    q, k = unit_rows(70, 6, seed=21).requires_grad_(), unit_rows(70, 6, seed=22)
    queue = unit_rows(90, 6, seed=23) if with_queue else None
    loss = info_nce_loss(q, k, 0.1, queue=queue)
    (got,) = torch.autograd.grad(loss, q)
    want, (want_q,) = value_and_grads(lambda q: dense_info_nce(q, k, 0.1, queue=queue), q)
    torch.testing.assert_close(loss.detach(), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got, want_q, rtol=1e-10, atol=1e-13)


def test_info_nce_compiles_fullgraph_with_a_queue_gradient():
    torch._dynamo.reset()
    compiled = torch.compile(lambda q, k, queue: info_nce_loss(q, k, 0.2, queue=queue), fullgraph=True,
                             backend="aot_eager")
    q, k, queue = unit_rows(40, 5, seed=24), unit_rows(40, 5, seed=25), unit_rows(25, 5, seed=26)
    leaves = [t.clone().requires_grad_() for t in (q, k, queue)]
    got = compiled(*leaves)
    got_grads = torch.autograd.grad(got, leaves)
    want, want_grads = value_and_grads(lambda *t: dense_info_nce(*t[:2], 0.2, queue=t[2]), q, k, queue)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-13)
