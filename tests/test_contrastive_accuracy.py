"""The contrastive losses when the positive dominates, under autocast and under torch.func
(issue 26, items 1, 3 and 6).

References: the cancellation-free float64 forms of dense_contrastive.py (exact_loss) and,
as the bar in float32, the dense formula a user writes (naive_loss: F.cross_entropy on
the logit matrix): the package is never worse than it."""

import pytest
import torch
import torch.nn.functional as F

from conftest import unit_rows
from dense_contrastive import dense_info_nce, exact_loss, naive_loss
from pyhypersphere import clip_loss, info_nce_loss, nt_xent_loss

LOSSES = {"nt_xent": nt_xent_loss, "info_nce": info_nce_loss, "clip": clip_loss}


def views(n, d, noise, seed=0):
    """z1 and z2 = normalize(z1 + noise * N(0, I)): each row's positive dominates at small tau."""
    g = torch.Generator().manual_seed(seed)
    z1 = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    z2 = F.normalize(z1 + noise * torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    return z1, z2


def value_and_grad(fn, x, y, tau, dtype):
    xx = x.to(dtype).requires_grad_()
    loss = fn(xx, y.to(dtype), tau)
    (grad,) = torch.autograd.grad(loss, xx)
    return loss.detach().double(), grad.double()


def grad_error(got, want):
    return ((got - want).abs().max() / want.abs().max()).item()


@pytest.mark.parametrize("name", LOSSES)
def test_dominant_positive_at_tiny_tau_is_never_negative(name):
    # The repro: float32 gave -1.5e-5 (NT-Xent, InfoNCE) and -4.2e-7 (CLIP); the
    # exact loss is ~1e-56, which float32 rounds to 0, as the dense formula does.
    x, y = views(512, 128, 0.02)
    exact = exact_loss(name, x, y, 0.005).item()
    naive = naive_loss(name, x.float(), y.float(), 0.005).item()
    got = LOSSES[name](x.float(), y.float(), 0.005).item()
    assert got >= 0
    assert abs(got - exact) <= abs(naive - exact) + 1e-45


@pytest.mark.parametrize("name,n,d,noise,tau", [
    ("nt_xent", 64, 32, 0.07, 0.1),  # loss 0.048: was 60x the dense formula's error
    ("clip", 64, 32, 0.02, 0.07),  # loss 7e-4
    ("info_nce", 256, 64, 0.01, 0.02),  # loss 2.7e-13: was 3.8e-6 off
    ("clip", 128, 16, 0.003, 0.05),
])
def test_float32_never_worse_than_the_dense_formula(name, n, d, noise, tau):
    x, y = views(n, d, noise, seed=1)
    want, want_grad = value_and_grad(lambda a, b, t: exact_loss(name, a, b, t), x, y, tau, torch.float64)
    got, got_grad = value_and_grad(LOSSES[name], x, y, tau, torch.float32)
    naive, naive_grad = value_and_grad(lambda a, b, t: naive_loss(name, a, b, t), x, y, tau, torch.float32)
    assert got >= 0
    # Relative to the loss itself; a loss below float32's range rounds to 0 in both.
    assert abs(got - want) <= max(2 * abs(naive - want), 1e-6 * want, 1e-45)
    assert grad_error(got_grad, want_grad) <= max(2 * grad_error(naive_grad, want_grad), 1e-6)


@pytest.mark.parametrize("name", LOSSES)
def test_float64_gradient_is_not_cancelled(name):
    # N = 2, d = 1, tau = 0.05: the negatives' weight e^-40; (sum_j p_ij b_j) - b_i
    # returned exactly 0 for a gradient of ~1e-16.
    x = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)
    want, want_grad = value_and_grad(lambda a, b, t: exact_loss(name, a, b, t), x, x, 0.05, torch.float64)
    got, got_grad = value_and_grad(LOSSES[name], x, x, 0.05, torch.float64)
    assert want_grad.abs().max() > 0
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-12, atol=0)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_never_negative_and_accurate_across_temperatures(name, dtype):
    x, y = views(96, 24, 0.05, seed=2)
    for tau in (1.0, 0.1, 0.02, 0.005, 0.001):
        want = exact_loss(name, x, y, tau)
        got = LOSSES[name](x.to(dtype), y.to(dtype), tau).double()
        assert got >= 0
        rtol = 1e-12 if dtype == torch.float64 else 2e-5
        assert abs(got - want) <= rtol * want + (1e-300 if dtype == torch.float64 else 1e-44), tau


def test_moco_queue_with_dominant_positive():
    q, k = views(64, 32, 0.01, seed=3)
    queue = unit_rows(500, 32, seed=4)
    for dtype, rtol in ((torch.float64, 1e-12), (torch.float32, 2e-5)):
        got = info_nce_loss(q.to(dtype), k.to(dtype), 0.02, queue=queue.to(dtype), in_batch=False).double()
        positive = (q * k).sum(1) / 0.02
        u = (q @ queue.T / 0.02 - positive[:, None]).logsumexp(1)
        want = torch.logaddexp(u, torch.zeros_like(u)).mean()
        assert got >= 0 and abs(got - want) <= rtol * want


# ------------------------------------------------------------------------ autocast


def test_info_nce_under_cpu_autocast_takes_float32_positives():
    # The case: error 9.8e-3 (positive in bf16) where the dense formula under the
    # same autocast errs by 8.1e-4.
    q, k = unit_rows(256, 64, seed=5).float(), unit_rows(256, 64, seed=6).float()
    want = dense_info_nce(q.double(), k.double(), 0.07)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = info_nce_loss(q, k, 0.07)
        dense = F.cross_entropy(q @ k.T / 0.07, torch.arange(256))
    assert got.dtype == torch.float32
    assert abs(got.item() - want.item()) <= 1e-5 * want.item()
    assert abs(got.item() - want.item()) < abs(dense.item() - want.item())


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_losses_are_float32_under_cpu_autocast(name, dtype):
    x = unit_rows(100, 16, seed=7).to(dtype).requires_grad_()
    y = unit_rows(100, 16, seed=8).to(dtype)
    want = exact_loss(name, x.detach().double(), y.double(), 0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = LOSSES[name](x, y, 0.1)
    assert loss.dtype == torch.float32
    assert abs(loss.item() - want.item()) <= 2e-5 * want.item()
    loss.backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad).all()
    assert LOSSES[name](x.detach(), y, 0.1).dtype == dtype  # without autocast: the input's


# ------------------------------------------------------------------------ torch.func


def _func_cases():
    queue = unit_rows(30, 6, seed=11)
    return {
        "nt_xent": lambda a, b: nt_xent_loss(a, b, 0.3),
        "clip": lambda a, b: clip_loss(a, b, 0.2),
        "info_nce": lambda a, b: info_nce_loss(a, b, 0.2),
        "info_nce queue": lambda a, b: info_nce_loss(a, b, 0.2, queue=queue),
        "moco": lambda a, b: info_nce_loss(a, b, 0.2, queue=queue, in_batch=False),
    }


@pytest.mark.parametrize("case", list(_func_cases()))
def test_torch_func_grad_and_vmap(case):
    fn = _func_cases()[case]
    x, y = unit_rows(20, 6, seed=9), unit_rows(20, 6, seed=10)
    leaf = x.clone().requires_grad_()
    (want,) = torch.autograd.grad(fn(leaf, y), leaf)
    got = torch.func.grad(lambda a: fn(a, y))(x)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    # vmap over a batch of inputs, and of gradients.
    xs = torch.stack([x, x.flip(0), x.roll(1, 1)])
    values = torch.func.vmap(lambda a: fn(a, y))(xs)
    torch.testing.assert_close(values, torch.stack([fn(v, y) for v in xs]), rtol=1e-12, atol=0)
    grads = torch.func.vmap(torch.func.grad(lambda a: fn(a, y)))(xs)
    torch.testing.assert_close(grads[0], want, rtol=1e-12, atol=1e-14)
