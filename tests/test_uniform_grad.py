"""uniform_loss gradients: against float64 references, gradcheck, autograd behaviour."""

import pytest
import torch

from conftest import dense_uniform_loss, unit_rows
from pyhypersphere import uniform_loss
from pyhypersphere.ops import uniform as uniform_ops
from pyhypersphere.reference import logsumexp_uniform_loss, reference_uniform_loss


def ref_grad(x, t, upstream=1.0, fn=reference_uniform_loss):
    x64 = x.detach().cpu().double().requires_grad_()
    (fn(x64, t) * upstream).backward()
    return x64.grad


def fused_grad(x, t, upstream=1.0):
    xx = x.detach().clone().requires_grad_()
    (uniform_loss(xx, t) * upstream).backward()
    return xx.grad


@pytest.mark.parametrize("n,d", [(2, 1), (3, 4), (65, 3), (130, 17), (257, 64), (1000, 128), (2100, 5)])
@pytest.mark.parametrize("dtype,rtol,atol", [(torch.float64, 1e-9, 1e-12), (torch.float32, 1e-4, 1e-7)])
def test_gradient_matches_reference(device, n, d, dtype, rtol, atol):
    x = unit_rows(n, d, dtype=dtype, device=device, seed=n + d)
    # d = 1 unit rows are +-1: coincident rows, where pdist's own backward is NaN.
    want = ref_grad(x, 2.0, fn=dense_uniform_loss if d == 1 else reference_uniform_loss)
    got = fused_grad(x, 2.0)
    assert got.dtype == dtype and got.shape == x.shape
    scale = want.abs().max().item() or 1.0  # all zero for coincident rows
    torch.testing.assert_close(got.cpu().double() / scale, want / scale, rtol=rtol, atol=atol * 10)


@pytest.mark.parametrize("t", [0.5, 2.0, 9.0])
def test_gradient_unnormalized_lse_form(device, t):
    x = unit_rows(200, 10, device=device, seed=3, scale=4.0) - 2.0
    want = ref_grad(x, t, fn=logsumexp_uniform_loss)
    got = fused_grad(x, t)
    torch.testing.assert_close(got.cpu(), want, rtol=1e-8, atol=1e-12)


def test_gradient_bfloat16_against_float32_run(device):
    # As flash-attention does: the low-precision result must be about as close to the
    # float64 truth as a plain float32 PyTorch computation on the same inputs.
    x = unit_rows(400, 32, device=device, seed=8).to(torch.bfloat16)
    want = ref_grad(x, 2.0)
    got = fused_grad(x, 2.0).cpu().double()
    x32 = x.detach().cpu().float().requires_grad_()
    reference_uniform_loss(x32).backward()
    err_fused = (got - want).abs().max().item()
    err_f32 = (x32.grad.double() - want).abs().max().item()
    bf16_rounding = want.abs().max().item() * 2**-8
    assert err_fused <= max(2 * err_f32, bf16_rounding)


def test_gradcheck_float64(device):
    x = unit_rows(70, 5, device=device, seed=1).requires_grad_()
    assert torch.autograd.gradcheck(lambda v: uniform_loss(v, 2.0), (x,), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_gradcheck_unnormalized_float64(device):
    x = (unit_rows(40, 3, device=device, seed=2, scale=3.0) + 1.0).requires_grad_()
    assert torch.autograd.gradcheck(lambda v: uniform_loss(v, 1.5), (x,), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_upstream_gradient_and_retain_graph(device):
    x = unit_rows(150, 9, device=device, seed=4).requires_grad_()
    loss = uniform_loss(x)
    loss.backward(torch.tensor(3.0, dtype=x.dtype, device=device), retain_graph=True)
    first = x.grad.clone()
    loss.backward(torch.tensor(-0.5, dtype=x.dtype, device=device))
    want = ref_grad(x, 2.0)
    torch.testing.assert_close(first.cpu(), 3.0 * want, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(x.grad.cpu(), 2.5 * want, rtol=1e-9, atol=1e-12)


def test_gradients_sum_to_zero(device):
    # The loss is translation invariant, so its gradient sums to zero over the rows.
    x = unit_rows(333, 7, device=device, seed=6)
    g = fused_grad(x, 2.0)
    assert g.sum(0).abs().max().item() < 1e-12 * g.abs().max().item() * x.shape[0]


def test_gradient_through_a_graph(device):
    torch.manual_seed(0)
    lin = torch.nn.Linear(6, 4).double().to(device)
    inp = torch.randn(90, 6, dtype=torch.float64, device=device)
    uniform_loss(torch.nn.functional.normalize(lin(inp), dim=1)).backward()
    got = lin.weight.grad.clone()
    lin.zero_grad()
    reference_uniform_loss(torch.nn.functional.normalize(lin(inp), dim=1)).backward()
    torch.testing.assert_close(got, lin.weight.grad, rtol=1e-9, atol=1e-12)


def test_no_grad_needed_skips_gradient_work(device):
    x = unit_rows(100, 4, device=device)
    lse, gx, gq = uniform_ops.uniform_lse(x, None, 2.0, True, 0, 1, False, False)
    assert gx.numel() == 0 and gq.numel() == 0
    out = uniform_loss(x)  # x does not require grad
    assert out.grad_fn is None
    with torch.no_grad():
        assert uniform_loss(x.clone().requires_grad_()).grad_fn is None


def test_backward_without_forward_gradient_recomputes(device):
    # Called directly with compute_grad=False but differentiated anyway: still right.
    x = unit_rows(120, 6, device=device, seed=12).requires_grad_()
    lse, _, _ = uniform_ops.uniform_lse(x, None, 2.0, True, 0, 1, False, False)
    lse.backward()
    want = ref_grad(x, 2.0)
    torch.testing.assert_close(x.grad.cpu(), want, rtol=1e-9, atol=1e-12)


def test_double_backward_is_exact(device):
    # create_graph=True switches to the differentiable gradient (tests/test_second_order.py
    # covers every route); here on each device, through .backward() of a penalty.
    x = unit_rows(30, 3, device=device).requires_grad_()
    (g,) = torch.autograd.grad(uniform_loss(x), x, create_graph=True)
    g.pow(2).sum().backward()
    xr = x.detach().cpu().clone().requires_grad_()
    (gr,) = torch.autograd.grad(dense_uniform_loss(xr), xr, create_graph=True)
    gr.pow(2).sum().backward()
    torch.testing.assert_close(x.grad.cpu(), xr.grad, rtol=1e-9, atol=1e-11)


def test_second_order_through_other_terms_is_exact(device):
    # A gradient penalty mixing our loss with another term keeps our loss's terms.
    x = unit_rows(30, 3, device=device).requires_grad_()
    (g,) = torch.autograd.grad(uniform_loss(x) + x.pow(2).sum(), x, create_graph=True)
    g.pow(2).sum().backward()
    xr = x.detach().cpu().clone().requires_grad_()
    (gr,) = torch.autograd.grad(dense_uniform_loss(xr) + xr.pow(2).sum(), xr, create_graph=True)
    gr.pow(2).sum().backward()
    torch.testing.assert_close(x.grad.cpu(), xr.grad, rtol=1e-9, atol=1e-11)


def test_deterministic_bitwise(device):
    x = unit_rows(3000, 64, dtype=torch.float32, device=device, seed=21)
    a = fused_grad(x, 2.0)
    la = uniform_loss(x)
    for _ in range(2):
        b = fused_grad(x, 2.0)
        assert torch.equal(a, b)
        assert torch.equal(la, uniform_loss(x))
