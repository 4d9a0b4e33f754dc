"""align_loss against the paper's formula in float64."""

import pytest
import torch

from conftest import unit_rows
from pyhypersphere import align_loss
from pyhypersphere.reference import reference_align_loss


def pair(n, d, device, dtype=torch.float64, seed=0):
    x = unit_rows(n, d, dtype=dtype, device=device, seed=seed)
    y = unit_rows(n, d, dtype=dtype, device=device, seed=seed + 1)
    return x, y


@pytest.mark.parametrize("n,d", [(1, 2), (2, 3), (257, 64), (1000, 7)])
@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 3.0])
def test_value_and_gradients(device, n, d, alpha):
    x, y = pair(n, d, device, seed=n)
    xr, yr = x.cpu().clone().requires_grad_(), y.cpu().clone().requires_grad_()
    want = reference_align_loss(xr, yr, alpha)
    want.backward()
    xf, yf = x.clone().requires_grad_(), y.clone().requires_grad_()
    got = align_loss(xf, yf, alpha)
    got.backward()
    torch.testing.assert_close(got.cpu(), want.detach(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(xf.grad.cpu(), xr.grad, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(yf.grad.cpu(), yr.grad, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2), (torch.float16, 2e-3)])
def test_low_precision(device, dtype, rtol):
    x, y = pair(300, 32, device, dtype=dtype, seed=3)
    got = align_loss(x, y)
    assert got.dtype == dtype
    want = reference_align_loss(x.cpu().double(), y.cpu().double())
    torch.testing.assert_close(got.cpu().double(), want, rtol=rtol, atol=rtol)


def test_identical_rows_zero_gradient(device):
    x = unit_rows(10, 4, device=device).requires_grad_()
    y = x.detach().clone()
    align_loss(x, y, 2.0).backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    # alpha < 1: the derivative is unbounded at 0; the convention is 0, never NaN.
    x.grad = None
    align_loss(x, y, 0.5).backward()
    assert torch.isfinite(x.grad).all()


def test_gradcheck_float64(device):
    x, y = pair(20, 5, device, seed=9)
    x.requires_grad_()
    y.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: align_loss(a, b, 1.5), (x, y))


def test_non_contiguous(device):
    x, y = pair(100, 16, device, seed=5)
    xs, ys = x.T.contiguous().T, y[:, :8]
    torch.testing.assert_close(align_loss(xs, x), reference_align_loss(xs, x))
    torch.testing.assert_close(align_loss(ys, x[:, 8:]), reference_align_loss(ys, x[:, 8:]))


def test_nan_propagates(device):
    x, y = pair(10, 3, device)
    x[4, 1] = float("nan")
    assert torch.isnan(align_loss(x, y)).item()
