"""Second and higher derivatives of the losses, through every autograd route, against
independent float64 formulas built from explicit pair differences (twice
differentiable; pdist has no double backward)."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.autograd.functional import hessian

from conftest import explicit_align_loss, explicit_uniform_loss, unit_rows
from pyhypersphere import align_loss, uniform_loss
from pyhypersphere.ops import uniform as uniform_ops


def rows(n, d, seed, scale=1.0):
    return unit_rows(n, d, seed=seed, scale=scale)


@pytest.mark.parametrize("t", [0.7, 2.0])
def test_hessian_uniform(t):
    x = rows(7, 3, seed=1)
    got = hessian(lambda v: uniform_loss(v, t), x)
    want = hessian(lambda v: explicit_uniform_loss(v, t), x)
    assert want.abs().max() > 0.1
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("intra_batch", [True, False])
def test_hessian_uniform_with_queue(intra_batch):
    x, q = rows(5, 3, seed=2), rows(6, 3, seed=3)
    got = hessian(lambda a, b: uniform_loss(a, 2.0, queue=b, intra_batch=intra_batch), (x, q))
    want = hessian(lambda a, b: explicit_uniform_loss(a, 2.0, b, intra_batch), (x, q))
    for got_row, want_row in zip(got, want):
        for g, w in zip(got_row, want_row):
            torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11)


def test_hessian_uniform_detached_queue():
    x, q = rows(6, 4, seed=4), rows(9, 4, seed=5)
    got = hessian(lambda a: uniform_loss(a, queue=q), x)
    want = hessian(lambda a: explicit_uniform_loss(a, 2.0, q), x)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


def test_hessian_uniform_float32_rounds_once():
    x = rows(8, 3, seed=6)
    got = hessian(lambda v: uniform_loss(v), x.float())
    want = hessian(lambda v: explicit_uniform_loss(v), x)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("alpha", [2.0, 1.0, 3.0])
def test_hessian_align(alpha):
    x, y = rows(5, 3, seed=7), rows(5, 3, seed=8)
    got = hessian(lambda a, b: align_loss(a, b, alpha), (x, y))
    want = hessian(lambda a, b: explicit_align_loss(a, b, alpha), (x, y))
    for got_row, want_row in zip(got, want):
        for g, w in zip(got_row, want_row):
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_hessian_align_at_coincident_rows_alpha_2():
    # ||x - y||^2 is a polynomial: its Hessian is 2I/N also where x_i == y_i.
    x = rows(4, 3, seed=9)
    y = x.clone()
    y[1:] = rows(3, 3, seed=10)
    got = hessian(lambda a: align_loss(a, y), x)
    want = hessian(lambda a: explicit_align_loss(a, y), x)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


def _encoder_hvp(loss_fn, seed=0):
    torch.manual_seed(seed)
    enc = torch.nn.Linear(5, 4).double()
    inp = torch.randn(12, 5, dtype=torch.float64)
    inp2 = torch.randn(12, 5, dtype=torch.float64)
    params = list(enc.parameters())
    vs = [torch.randn_like(p) for p in params]
    loss = loss_fn(F.normalize(enc(inp), dim=1), F.normalize(enc(inp2), dim=1))
    grads = torch.autograd.grad(loss, params, create_graph=True)
    dot = sum((g * v).sum() for g, v in zip(grads, vs))
    return torch.autograd.grad(dot, params)


@pytest.mark.parametrize(
    "fused,explicit",
    [
        (lambda a, b: uniform_loss(a), lambda a, b: explicit_uniform_loss(a)),
        (lambda a, b: align_loss(a, b), lambda a, b: explicit_align_loss(a, b)),
        (lambda a, b: align_loss(a, b, 1.0), lambda a, b: explicit_align_loss(a, b, 1.0)),
        (lambda a, b: uniform_loss(a, queue=b.detach()), lambda a, b: explicit_uniform_loss(a, 2.0, b.detach())),
        (lambda a, b: uniform_loss(a, queue=b, intra_batch=False), lambda a, b: explicit_uniform_loss(a, 2.0, b, False)),
    ],
    ids=["uniform", "align", "align_alpha1", "uniform_detached_queue", "uniform_queue_no_intra"],
)
def test_hessian_vector_product_wrt_encoder(fused, explicit):
    got = _encoder_hvp(fused)
    want = _encoder_hvp(explicit)
    for g, w in zip(got, want):
        assert w.abs().max() > 1e-3
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11)


def test_grad_of_gradient_sum():
    x = rows(9, 4, seed=11).requires_grad_()
    (g,) = torch.autograd.grad(uniform_loss(x), x, create_graph=True)
    (got,) = torch.autograd.grad(g.sum() + g.pow(2).sum(), x)
    xr = x.detach().clone().requires_grad_()
    (gr,) = torch.autograd.grad(explicit_uniform_loss(xr), xr, create_graph=True)
    (want,) = torch.autograd.grad(gr.sum() + gr.pow(2).sum(), xr)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


def test_gradient_penalty_backward_mixed_with_other_terms():
    # A gradient penalty through .backward(), with our loss next to another term.
    x = rows(10, 3, seed=12).requires_grad_()
    (g,) = torch.autograd.grad(uniform_loss(x) + x.pow(3).sum(), x, create_graph=True)
    g.pow(2).sum().backward()
    xr = x.detach().clone().requires_grad_()
    (gr,) = torch.autograd.grad(explicit_uniform_loss(xr) + xr.pow(3).sum(), xr, create_graph=True)
    gr.pow(2).sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-9, atol=1e-11)


def test_third_derivative():
    # The differentiable gradient differentiates through the fused op's lse, whose
    # backward is again differentiable: every order is exact.
    x = rows(6, 2, seed=13)
    v = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def third(fn):
        xx = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(fn(xx), xx, create_graph=True)
        (h,) = torch.autograd.grad((g * v).sum(), xx, create_graph=True)
        (k,) = torch.autograd.grad((h * v).sum(), xx)
        return k

    torch.testing.assert_close(third(uniform_loss), third(explicit_uniform_loss), rtol=1e-8, atol=1e-10)


def test_func_grad_and_grad_of_grad():
    x = rows(8, 3, seed=14)
    got = torch.func.grad(uniform_loss)(x)
    want = torch.func.grad(explicit_uniform_loss)(x)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)

    def penalty(fn):
        return lambda v: torch.func.grad(fn)(v).pow(2).sum()

    got2 = torch.func.grad(penalty(uniform_loss))(x)
    want2 = torch.func.grad(penalty(explicit_uniform_loss))(x)
    torch.testing.assert_close(got2, want2, rtol=1e-9, atol=1e-11)
    got_a = torch.func.grad(penalty(lambda v: align_loss(v, x.flip(0), 1.5)))(x)
    want_a = torch.func.grad(penalty(lambda v: explicit_align_loss(v, x.flip(0), 1.5)))(x)
    torch.testing.assert_close(got_a, want_a, rtol=1e-9, atol=1e-11)


def test_vmap_without_performance_warning():
    batch = torch.stack([rows(7, 3, seed=s) for s in range(4)])
    y = torch.stack([rows(7, 3, seed=10 + s) for s in range(4)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got_u = torch.func.vmap(uniform_loss)(batch)
        got_a = torch.func.vmap(align_loss)(batch, y)
        got_g = torch.func.vmap(torch.func.grad(uniform_loss))(batch)
    torch.testing.assert_close(got_u, torch.stack([explicit_uniform_loss(b) for b in batch]), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got_a, torch.stack([explicit_align_loss(a, b) for a, b in zip(batch, y)]), rtol=1e-10, atol=1e-12)
    want_g = torch.stack([torch.func.grad(explicit_uniform_loss)(b) for b in batch])
    torch.testing.assert_close(got_g, want_g, rtol=1e-10, atol=1e-12)


def test_forward_mode_raises_instead_of_a_number():
    # Forward mode (jvp, jacfwd, torch.func.hessian = jacfwd(jacrev)) is not provided:
    # a clear error, never a zero tangent.
    x = rows(5, 2, seed=15)
    y = x.flip(0)
    routes = [
        lambda: torch.func.hessian(uniform_loss)(x),
        lambda: torch.func.jacfwd(lambda v: align_loss(v, y))(x),
        lambda: torch.func.jvp(uniform_loss, (x,), (torch.ones_like(x),)),
        lambda: torch.func.jvp(lambda v: align_loss(v, y, 1.5), (x,), (torch.ones_like(x),)),
    ]
    for route in routes:
        with pytest.raises(RuntimeError, match="forward-mode AD .* is not supported"):
            route()


def test_jacrev_of_jacrev_is_the_hessian():
    x = rows(6, 2, seed=18)
    got = torch.func.jacrev(torch.func.jacrev(uniform_loss))(x)
    want = hessian(explicit_uniform_loss, x)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


def test_second_order_of_a_pair_slice_raises():
    x = rows(70, 3, seed=16).requires_grad_()
    lse, _, _ = uniform_ops.uniform_lse(x, None, 2.0, True, 0, 2, True, False)
    (g,) = torch.autograd.grad(lse, x, create_graph=False)
    lse, _, _ = uniform_ops.uniform_lse(x, None, 2.0, True, 0, 2, True, False)
    with pytest.raises(RuntimeError, match="num_parts > 1"):
        torch.autograd.grad(lse, x, create_graph=True)


def test_first_order_backward_keeps_the_kernel_gradient():
    # Without create_graph the kernel's gradient is used as is (bitwise).
    x = rows(50, 4, seed=17).float().requires_grad_()
    lse, gx, _ = uniform_ops.uniform_lse(x, None, 2.0, True, 0, 1, True, False)
    lse.backward()
    assert torch.equal(x.grad, gx.float())
