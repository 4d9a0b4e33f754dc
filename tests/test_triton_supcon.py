"""The Triton supervised contrastive kernels (pyhypersphere/triton_kernels/supcon.py)
against float64 formulas written here and against the CPU operator.  Under
TRITON_INTERPRET=1 (conftest.py) on CPU tensors; compiled on CUDA with TRITON_INTERPRET=0."""

import pytest
import torch

triton = pytest.importorskip("triton")

from dense_contrastive import dense_supcon_rows  # noqa: E402
from pyhypersphere.triton_kernels import supcon as tk  # noqa: E402
from triton_device import DEVICE, RUNNABLE, assert_same_value_error  # noqa: E402

ops = torch.ops.pyhypersphere
pytestmark = RUNNABLE


def rows(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)


def reference(x, labels, scale, g, h):
    """(lse, positive sums, counts, d/dx of sum g lse + h positive), dense float64."""
    n = x.shape[0]
    x = x.clone().requires_grad_()
    s = scale * x @ x.T
    eye = torch.eye(n, dtype=torch.bool)
    lse = s.masked_fill(eye, float("-inf")).logsumexp(1)
    same = (labels[:, None] == labels[None, :]) & ~eye
    positive = (s * same).sum(1)
    (grad,) = torch.autograd.grad((g * lse + h * positive).sum(), x)
    return lse.detach(), positive.detach(), same.sum(1), grad


@pytest.mark.parametrize("n,d,classes", [(5, 3, 2), (70, 20, 7), (130, 33, 40)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_forward_and_backward_against_float64(n, d, classes, dtype):
    x = rows(n, d, seed=n)
    labels = torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(d))
    g, h = torch.rand(n, dtype=torch.float64), torch.randn(n, dtype=torch.float64)
    want = reference(x, labels, 5.0, g, h)
    xd, ld = x.to(dtype).to(DEVICE), labels.to(DEVICE)
    lse, positive, count = tk.supcon_lse(xd, ld, 5.0)
    grad = tk.supcon_lse_backward(xd, ld, 5.0, lse, g.to(DEVICE), h.to(DEVICE))
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(lse.cpu().double(), want[0], rtol=tol, atol=tol)
    torch.testing.assert_close(positive.cpu().double(), want[1], rtol=tol, atol=tol * n)
    assert torch.equal(count.cpu(), want[2])
    torch.testing.assert_close(grad.cpu().double(), want[3], rtol=tol, atol=tol * n)


def test_matches_the_cpu_operator_and_parts_combine():
    x = rows(90, 10, seed=1)
    labels = torch.randint(0, 5, (90,), generator=torch.Generator().manual_seed(2))
    want = ops.supcon_lse(x, labels, 3.0)
    parts = [tk.supcon_lse(x.to(DEVICE), labels.to(DEVICE), 3.0, p, 3) for p in range(3)]
    torch.testing.assert_close(torch.stack([p[0].cpu() for p in parts]).logsumexp(0), want[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sum(p[1].cpu() for p in parts), want[1], rtol=1e-12, atol=1e-10)
    assert torch.equal(sum(p[2].cpu() for p in parts), want[2])
    g, h = torch.rand(90, dtype=torch.float64), torch.rand(90, dtype=torch.float64)
    whole = ops.supcon_lse_backward(x, labels, 3.0, want[0], g, h)
    args = [t.to(DEVICE) for t in (x, labels)] + [3.0] + [t.to(DEVICE) for t in (want[0], g, h)]
    got = sum(tk.supcon_lse_backward(*args, p, 3).cpu() for p in range(3))
    torch.testing.assert_close(got, whole, rtol=1e-10, atol=1e-12)


def test_the_loss_through_the_kernels_matches_the_dense_definition():
    x = rows(40, 8, seed=3)
    labels = torch.arange(40) % 6
    lse, positive, count = tk.supcon_lse(x.to(DEVICE), labels.to(DEVICE), 10.0)
    per_anchor = (lse - positive / count).cpu()
    want, _ = dense_supcon_rows(x, labels, 0.1)
    torch.testing.assert_close(per_anchor, want, rtol=1e-12, atol=1e-12)


def test_nonfinite_inputs_give_nan():
    x = rows(10, 4, seed=4)
    x[2, 1] = float("inf")
    labels = torch.arange(10) % 2
    lse, positive, count = tk.supcon_lse(x.to(DEVICE), labels.to(DEVICE), 1.0)
    assert torch.isnan(lse).all() and torch.isnan(positive).all()
    assert torch.equal(count.cpu(), torch.full((10,), 4))


@pytest.mark.parametrize("case", ["labels shape", "labels dtype", "part", "num_parts"])
def test_bad_input_gets_the_operators_error(case):
    x, labels = rows(6, 3, seed=5), torch.arange(6) % 3
    args = {
        "labels shape": (x, labels[:5], 1.0, 0, 1),
        "labels dtype": (x, labels.int(), 1.0, 0, 1),
        "part": (x, labels, 1.0, 3, 3),
        "num_parts": (x, labels, 1.0, 0, 0),
    }[case]
    assert_same_value_error(ops.supcon_lse, tk.supcon_lse, args)
