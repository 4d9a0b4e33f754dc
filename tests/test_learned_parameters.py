"""A tensor t (uniformity) or alpha (alignment) that requires grad gets its gradient,
against float64 autograd of the explicit formulas."""


import pytest
import torch

from conftest import explicit_align_loss, explicit_uniform_loss, unit_rows
from pyhypersphere import AlignmentLoss, AlignUniformLoss, UniformityLoss, align_loss, uniform_loss


def leaf(value, dtype=torch.float64):
    return torch.tensor(value, dtype=dtype, requires_grad=True)


def grads(loss, *tensors):
    return torch.autograd.grad(loss, [t for t in tensors if t is not None])


@pytest.mark.parametrize("t0", [0.5, 2.0, 7.0])
def test_uniform_gradient_wrt_t(device, t0):
    x0 = unit_rows(40, 5, seed=1)
    x, t = x0.clone().to(device).requires_grad_(), leaf(t0)
    got = uniform_loss(x, t)
    xr, tr = x0.clone().requires_grad_(), leaf(t0)
    want = explicit_uniform_loss(xr, tr)
    torch.testing.assert_close(got.cpu(), want.detach(), rtol=1e-10, atol=1e-12)
    for g, w in zip(grads(got, x, t), grads(want, xr, tr)):
        torch.testing.assert_close(g.cpu(), w, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("intra_batch", [True, False])
@pytest.mark.parametrize("queue_grad", [True, False], ids=["queue_grad", "detached_queue"])
def test_uniform_gradient_wrt_t_with_queue(intra_batch, queue_grad):
    x0, q0 = unit_rows(30, 4, seed=2), unit_rows(70, 4, seed=3)
    x, t = x0.clone().requires_grad_(), leaf(1.5)
    q = q0.clone().requires_grad_(queue_grad)
    got = uniform_loss(x, t, queue=q, intra_batch=intra_batch)
    xr, tr = x0.clone().requires_grad_(), leaf(1.5)
    qr = q0.clone().requires_grad_(queue_grad)
    want = explicit_uniform_loss(xr, tr, qr, intra_batch)
    torch.testing.assert_close(got, want.detach(), rtol=1e-10, atol=1e-12)
    for g, w in zip(grads(got, x, t, q if queue_grad else None), grads(want, xr, tr, qr if queue_grad else None)):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)


def test_uniform_t_only_requires_grad():
    x0 = unit_rows(25, 3, seed=4)
    t = leaf(2.0)
    (got,) = grads(uniform_loss(x0, t), t)
    tr = leaf(2.0)
    (want,) = grads(explicit_uniform_loss(x0, tr), tr)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_uniform_t_float32_features_and_float64_t():
    x0 = unit_rows(60, 8, seed=5)
    t = leaf(2.0)
    got = uniform_loss(x0.float(), t)
    assert got.dtype == torch.float32
    (g,) = grads(got, t)
    tr = leaf(2.0)
    (w,) = grads(explicit_uniform_loss(x0, tr), tr)
    assert g.dtype == torch.float64
    torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


def test_uniform_second_derivatives_in_t():
    x0 = unit_rows(12, 3, seed=6)
    x, t = x0.clone().requires_grad_(), leaf(2.0)
    g_x, g_t = torch.autograd.grad(uniform_loss(x, t), (x, t), create_graph=True)
    got = torch.autograd.grad(g_t + g_x.pow(2).sum(), (x, t))
    xr, tr = x0.clone().requires_grad_(), leaf(2.0)
    gr_x, gr_t = torch.autograd.grad(explicit_uniform_loss(xr, tr), (xr, tr), create_graph=True)
    want = torch.autograd.grad(gr_t + gr_x.pow(2).sum(), (xr, tr))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11)


def test_t_tensor_without_grad_adds_no_graph():
    x = unit_rows(20, 3, seed=7)
    assert uniform_loss(x, torch.tensor(2.0)).grad_fn is None
    with torch.no_grad():
        assert uniform_loss(x, leaf(2.0)).grad_fn is None


@pytest.mark.parametrize("bad", [-1.0, 0.0, float("nan")])
def test_learned_t_is_still_validated(bad):
    with pytest.raises(ValueError, match="t"):
        uniform_loss(unit_rows(5, 2), leaf(bad))


@pytest.mark.parametrize("alpha0", [0.5, 1.0, 2.0, 3.0])
def test_align_gradient_wrt_alpha(device, alpha0):
    x0, y0 = unit_rows(30, 4, seed=8), unit_rows(30, 4, seed=9)
    x, y, a = x0.clone().to(device).requires_grad_(), y0.clone().to(device).requires_grad_(), leaf(alpha0)
    got = align_loss(x, y, a)
    xr, yr, ar = x0.clone().requires_grad_(), y0.clone().requires_grad_(), leaf(alpha0)
    want = explicit_align_loss(xr, yr, ar)
    torch.testing.assert_close(got.cpu(), want.detach(), rtol=1e-12, atol=1e-14)
    for g, w in zip(grads(got, x, y, a), grads(want, xr, yr, ar)):
        torch.testing.assert_close(g.cpu(), w, rtol=1e-10, atol=1e-13)


def test_align_alpha_gradient_at_coincident_rows_is_finite():
    # ||x_i - y_i||^alpha log ||x_i - y_i|| -> 0 as the rows meet.
    x = unit_rows(6, 3, seed=10)
    y = x.clone()
    y[3:] = unit_rows(3, 3, seed=11)
    a = leaf(1.5)
    (got,) = grads(align_loss(x, y, a), a)
    r = (x[3:] - y[3:]).norm(dim=1)
    want = (r.pow(1.5) * r.log()).sum() / 6
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


def test_align_learned_alpha_low_precision_and_validation():
    x, y = unit_rows(40, 8, seed=12), unit_rows(40, 8, seed=13)
    a = leaf(2.0, torch.float32)
    got = align_loss(x.bfloat16(), y.bfloat16(), a)
    assert got.dtype == torch.bfloat16
    (g,) = grads(got, a)
    ar = leaf(2.0)
    (w,) = grads(explicit_align_loss(x.bfloat16().double(), y.bfloat16().double(), ar), ar)
    torch.testing.assert_close(g.double(), w, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="alpha"):
        align_loss(x, y, leaf(-1.0))
    with pytest.raises(ValueError, match="same shape"):
        align_loss(x, y[:5], leaf(2.0))


def test_modules_learn_t_and_alpha():
    x0, y0 = unit_rows(20, 4, seed=14), unit_rows(20, 4, seed=15)
    unif = UniformityLoss(t=torch.nn.Parameter(torch.tensor(2.0, dtype=torch.float64)))
    align = AlignmentLoss(alpha=torch.nn.Parameter(torch.tensor(1.5, dtype=torch.float64)))
    both = AlignUniformLoss(
        alpha=torch.nn.Parameter(torch.tensor(1.5, dtype=torch.float64)),
        t=torch.nn.Parameter(torch.tensor(2.0, dtype=torch.float64)),
    )
    assert [n for n, _ in unif.named_parameters()] == ["t"]
    assert sorted(n for n, _ in both.named_parameters()) == ["alpha", "t"]
    (unif(x0) + align(x0, y0) + both(x0, y0)).backward()

    tr, ar = leaf(2.0), leaf(1.5)
    explicit_uniform_loss(x0, tr).backward()
    explicit_align_loss(x0, y0, ar).backward()
    torch.testing.assert_close(unif.t.grad, tr.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(align.alpha.grad, ar.grad, rtol=1e-10, atol=1e-12)

    tb, ab = leaf(2.0), leaf(1.5)
    (explicit_align_loss(x0, y0, ab) + (explicit_uniform_loss(x0, tb) + explicit_uniform_loss(y0, tb)) / 2).backward()
    torch.testing.assert_close(both.t.grad, tb.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(both.alpha.grad, ab.grad, rtol=1e-10, atol=1e-12)
    assert "t=2.0" in repr(unif) and "alpha=1.5" in repr(align)
