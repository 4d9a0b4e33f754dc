"""Contrastive losses: values and gradients against the dense float64 formulas."""

import pytest
import torch

from conftest import unit_rows
from dense_contrastive import dense_clip, dense_info_nce, dense_nt_xent, value_and_grads
from pyhypersphere import clip_loss, info_nce_loss, nt_xent_loss

# (N, d): N = 1 and 2 and d = 1; N across the kernel's 64/128/256-row blocks and 16-lane
# vectors (tails everywhere).
SHAPES = [(1, 3), (2, 1), (2, 5), (7, 3), (65, 17), (130, 33), (300, 8)]
TAUS = [0.02, 0.07, 0.5, 10.0]
TOL64 = dict(rtol=1e-10, atol=1e-11)
TOL32 = dict(rtol=3e-5, atol=3e-5)


def fused_value_and_grads(fn, *tensors, **kwargs):
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    out = fn(*leaves, **kwargs)
    grads = torch.autograd.grad(out, leaves)
    return out.detach(), [g.detach() for g in grads]


def check(fused_fn, dense_fn, tensors, tol, **kwargs):
    got, got_grads = fused_value_and_grads(fused_fn, *tensors, **kwargs)
    want, want_grads = value_and_grads(dense_fn, *tensors, **kwargs)
    assert got.dtype == tensors[0].dtype
    torch.testing.assert_close(got.double(), want, **tol)
    for g, w in zip(got_grads, want_grads):
        assert g.dtype == tensors[0].dtype
        torch.testing.assert_close(g.double(), w, **tol)


@pytest.mark.parametrize("n,d", SHAPES)
@pytest.mark.parametrize("tau", TAUS)
def test_nt_xent_float64(n, d, tau):
    x, y = unit_rows(n, d, seed=1), unit_rows(n, d, seed=2)
    check(nt_xent_loss, dense_nt_xent, (x, y), TOL64, tau=tau)


@pytest.mark.parametrize("n,d", SHAPES)
@pytest.mark.parametrize("tau", TAUS)
def test_clip_float64(n, d, tau):
    x, y = unit_rows(n, d, seed=3), unit_rows(n, d, seed=4)
    check(clip_loss, dense_clip, (x, y), TOL64, tau=tau)


@pytest.mark.parametrize("n,d", SHAPES)
@pytest.mark.parametrize("tau", [0.02, 0.07, 1.0])
def test_info_nce_in_batch_float64(n, d, tau):
    q, k = unit_rows(n, d, seed=5), unit_rows(n, d, seed=6)
    check(info_nce_loss, dense_info_nce, (q, k), TOL64, tau=tau)


@pytest.mark.parametrize("n,k_rows,d", [(1, 1, 1), (2, 5, 3), (70, 33, 9), (40, 300, 16)])
@pytest.mark.parametrize("in_batch", [True, False])
@pytest.mark.parametrize("tau", [0.05, 0.5])
def test_info_nce_queue_float64(n, k_rows, d, in_batch, tau):
    q, k, queue = unit_rows(n, d, seed=7), unit_rows(n, d, seed=8), unit_rows(k_rows, d, seed=9)

    def fused(q, k, queue, tau):
        return info_nce_loss(q, k, tau, queue=queue, in_batch=in_batch)

    def dense(q, k, queue, tau):
        return dense_info_nce(q, k, tau, queue=queue, in_batch=in_batch)

    check(fused, dense, (q, k, queue), TOL64, tau=tau)


@pytest.mark.parametrize("n,d", [(7, 3), (130, 33), (300, 64)])
def test_float32_against_float64(n, d):
    x, y, queue = unit_rows(n, d, seed=10), unit_rows(n, d, seed=11), unit_rows(50, d, seed=12)
    f32 = (x.float(), y.float())
    check(nt_xent_loss, dense_nt_xent, f32, TOL32, tau=0.1)
    check(clip_loss, dense_clip, f32, TOL32, tau=0.07)
    check(info_nce_loss, dense_info_nce, f32, TOL32, tau=0.07)
    check(lambda q, k, m: info_nce_loss(q, k, 0.2, queue=m), lambda q, k, m: dense_info_nce(q, k, 0.2, queue=m),
          (x.float(), y.float(), queue.float()), TOL32)


def test_unnormalized_large_logits_are_stable():
    # Logits up to ~1e3: exp overflows unless every row is shifted by its own max.
    x = unit_rows(90, 6, seed=13, scale=6.0)
    y = unit_rows(90, 6, seed=14, scale=5.0)
    check(nt_xent_loss, dense_nt_xent, (x, y), TOL64, tau=0.03)
    check(clip_loss, dense_clip, (x, y), TOL64, tau=0.03)
    got = clip_loss(x.float(), y.float(), 0.03)
    assert torch.isfinite(got)
    torch.testing.assert_close(got.double(), dense_clip(x, y, 0.03), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_accumulate_in_float32(dtype):
    x, y = unit_rows(70, 16, seed=15).to(dtype), unit_rows(70, 16, seed=16).to(dtype)
    for fused, dense in [(nt_xent_loss, dense_nt_xent), (clip_loss, dense_clip), (info_nce_loss, dense_info_nce)]:
        got, got_grads = fused_value_and_grads(fused, x, y, tau=0.1)
        want, want_grads = value_and_grads(dense, x, y, tau=0.1)  # on the same rounded inputs
        assert got.dtype == dtype and all(g.dtype == dtype for g in got_grads)
        torch.testing.assert_close(got.double(), want, rtol=1e-2, atol=1e-2)
        for g, w in zip(got_grads, want_grads):
            torch.testing.assert_close(g.double(), w, rtol=2e-2, atol=2e-3)


def test_tau_tensor_gets_its_gradient():
    x, y, queue = unit_rows(40, 6, seed=17), unit_rows(40, 6, seed=18), unit_rows(25, 6, seed=19)
    tau = torch.tensor(0.09, dtype=torch.float64)
    cases = [
        (clip_loss, dense_clip, (x, y)),
        (nt_xent_loss, dense_nt_xent, (x, y)),
        (info_nce_loss, dense_info_nce, (x, y)),
        (lambda q, k, m, tau: info_nce_loss(q, k, tau, queue=m, in_batch=False),
         lambda q, k, m, tau: dense_info_nce(q, k, tau, queue=m, in_batch=False), (x, y, queue)),
    ]
    for fused, dense, tensors in cases:
        got, got_grads = fused_value_and_grads(lambda *a: fused(*a[:-1], tau=a[-1]), *tensors, tau)
        want, want_grads = value_and_grads(lambda *a: dense(*a[:-1], tau=a[-1]), *tensors, tau)
        torch.testing.assert_close(got, want, **TOL64)
        for g, w in zip(got_grads, want_grads):
            torch.testing.assert_close(g, w, **TOL64)
        assert got_grads[-1].abs() > 0  # d loss / d tau really flows


def test_tau_tensor_float32_features():
    x, y = unit_rows(50, 8, seed=20).float(), unit_rows(50, 8, seed=21).float()
    tau = torch.tensor(0.07, requires_grad=True)
    loss = clip_loss(x, y, tau)
    loss.backward()
    want, want_grads = value_and_grads(lambda x, y, t: dense_clip(x, y, t), x, y, tau)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), want, **TOL32)
    torch.testing.assert_close(tau.grad.double(), want_grads[2], rtol=1e-4, atol=1e-4)


def test_only_needed_gradients():
    # MoCo: keys and queue come from the momentum encoder and need no gradient.
    q = unit_rows(60, 7, seed=22).requires_grad_(True)
    k, queue = unit_rows(60, 7, seed=23), unit_rows(80, 7, seed=24)
    info_nce_loss(q, k, 0.1, queue=queue).backward()
    _, (want,) = value_and_grads(lambda q: dense_info_nce(q, k, 0.1, queue=queue), q)
    torch.testing.assert_close(q.grad, want, **TOL64)
    assert k.grad is None and queue.grad is None


def test_nan_input_gives_nan():
    x, y = unit_rows(20, 4, seed=25), unit_rows(20, 4, seed=26)
    x[3, 1] = float("nan")
    for fn in (nt_xent_loss, clip_loss, info_nce_loss):
        assert torch.isnan(fn(x, y))
    y[0, 0] = float("inf")
    assert torch.isnan(clip_loss(x.abs().nan_to_num(0.1), y))


def test_matches_trainer_formula_and_cross_entropy_form():
    # NT-Xent as SimCLR writes it: cross entropy over the 2N x 2N logits, self masked.
    x, y = unit_rows(33, 12, seed=27), unit_rows(33, 12, seed=28)
    z = torch.cat([x, y])
    logits = (z @ z.T / 0.5).masked_fill(torch.eye(66, dtype=torch.bool), float("-inf"))
    target = torch.cat([torch.arange(33, 66), torch.arange(0, 33)])
    want = torch.nn.functional.cross_entropy(logits, target)
    torch.testing.assert_close(nt_xent_loss(x, y), want, **TOL64)
