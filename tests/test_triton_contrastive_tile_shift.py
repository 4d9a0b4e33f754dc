"""The Triton contrastive gradient kernel without the certified static shift (rows not
of unit norm, or a small tau): the tile shift, one exp per pair, and the two-exp step
of a tile whose lse spread is too wide for it (pyhypersphere/triton_kernels/contrastive.py).

The reference is the gradient formula itself in float64, from explicit logit matrices:
W_ij = g_i e^(s_ij - lse_i) + h_j e^(s_ij - lse_j) over the pairs, grad = scale W C, with
the lse the kernel is given (float32, as a forward pass returns it).  Rows with norms
from 0.1 to 10 spread the lse over hundreds of nats; interleaved, every tile holds the
whole spread.  Under TRITON_INTERPRET=1 (conftest.py) on CPU tensors, like
test_triton_contrastive.py.
"""

import math

import pytest
import torch

triton = pytest.importorskip("triton")

from pyhypersphere import triton_kernels as tk  # noqa: E402
from triton_device import DEVICE, RUNNABLE  # noqa: E402

pytestmark = RUNNABLE

EPS32 = 2.0**-24


def rows_with_norms(n, d, norms, seed, dtype=torch.float32):
    """n random directions with the given norms, cycled (neighbours differ: every tile
    holds the whole spread)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    norm = torch.tensor(norms, dtype=torch.float64).repeat(n // len(norms) + 1)[:n]
    return (x * norm[:, None]).to(dtype)


def pair_mask(na, nb, self_pairs, skip):
    """True on the pairs of the lse: stacked rows z = [a; b] without i == j (self pairs),
    or a x b; skip: without the positives (a_i with b_i)."""
    if self_pairs:
        m = na + nb
        keep = ~torch.eye(m, dtype=torch.bool)
        if skip:
            i = torch.arange(min(na, nb))
            keep[i, na + i] = False
            keep[na + i, i] = False
        return keep
    keep = torch.ones(na, nb, dtype=torch.bool)
    if skip:
        i = torch.arange(min(na, nb))
        keep[i, i] = False
    return keep


def dense_lse(a, b, scale, self_pairs, skip):
    """float64 (lse over rows, lse over columns) of the masked logits."""
    a, b = a.double(), b.double()
    z = torch.cat([a, b]) if self_pairs else None
    s = scale * (z @ z.T if self_pairs else a @ b.T)
    s = s.masked_fill(~pair_mask(a.shape[0], b.shape[0], self_pairs, skip), -math.inf)
    if self_pairs:
        lse = s.logsumexp(1)
        return lse[: a.shape[0]], lse[a.shape[0]:]
    return s.logsumexp(1), s.logsumexp(0)


def dense_gradient(a, b, scale, self_pairs, skip, lse_a, lse_b, g, h):
    """float64 gradients of sum_i g_i lse_a[i] + sum_j h_j lse_b[j] at the given lse:
    scale W C with the two-sided weights over the pairs."""
    a, b = a.double(), b.double()
    lse_a, lse_b, g, h = (v.double() for v in (lse_a, lse_b, g, h))
    na = a.shape[0]
    keep = pair_mask(na, b.shape[0], self_pairs, skip)
    if self_pairs:
        z, lse, coef = torch.cat([a, b]), torch.cat([lse_a, lse_b]), torch.cat([g, h])
        s = scale * z @ z.T
        w = coef[:, None] * torch.exp(s - lse[:, None]) + coef[None, :] * torch.exp(s - lse[None, :])
        grad = scale * torch.where(keep, w, 0.0) @ z
        return grad[:na], grad[na:], s[keep]
    s = scale * a @ b.T
    w = g[:, None] * torch.exp(s - lse_a[:, None]) + h[None, :] * torch.exp(s - lse_b[None, :])
    w = torch.where(keep, w, 0.0)
    return scale * w @ b, scale * w.T @ a, s[keep]


def kernel_and_dense(a, b, scale, self_pairs, skip, g_seed=61):
    """(kernel gradients, dense gradients, max |logit|, spread of lse log2 e) at lse rounded to float32."""
    acc = torch.float64 if a.dtype == torch.float64 else torch.float32
    lse_a, lse_b = (v.to(acc) for v in dense_lse(a, b, scale, self_pairs, skip))
    gen = torch.Generator().manual_seed(g_seed)
    g = (0.5 + torch.rand(a.shape[0], generator=gen, dtype=torch.float64)).to(acc)
    h = (0.5 + torch.rand(b.shape[0], generator=gen, dtype=torch.float64)).to(acc)
    got = tk.contrastive_lse_backward(*(v.to(DEVICE) for v in (a, b)), scale, self_pairs,
                                      *(v.to(DEVICE) for v in (lse_a, lse_b, g, h)), 0, 1, True, True, skip)
    want_a, want_b, logits = dense_gradient(a, b, scale, self_pairs, skip, lse_a, lse_b, g, h)
    lse = torch.cat([lse_a, lse_b]).double() * math.log2(math.e)
    return [x.cpu().double() for x in got], (want_a, want_b), logits.abs().max().item(), (lse.max() - lse.min()).item()


def assert_close_to_dense(got, want, tol):
    for x, w in zip(got, want):
        assert torch.isfinite(x).all()
        err = ((x - w).abs().max() / w.abs().max()).item()
        assert err <= tol, (err, tol)


def float32_tolerance(max_logit):
    # The exps' arguments carry float32 rounding of the logits (and of the given lse):
    # relative ~ |s| 2^-24 per weight, plus the accumulation over a few hundred columns.
    return 64 * EPS32 * (1 + max_logit) + 1e-5


@pytest.mark.parametrize("na,nb,self_pairs,skip,scale,norms", [
    (150, 150, True, False, 1 / 0.07, (1.0, 2.0, 0.5)),  # NT-Xent: self pairs, the spans masked
    (150, 100, True, True, 1 / 0.5, (0.1, 1.0, 10.0)),  # decoupled (positives skipped), tau large
    (130, 200, False, False, 1 / 0.02, (0.7, 1.0, 1.3)),  # CLIP's cross pairs, both directions, tails
    (140, 140, False, True, 1 / 0.1, (0.1, 1.0, 3.0, 10.0)),  # skipped positives on the diagonal, tau small
])
def test_uncertified_gradient_against_the_dense_formula(na, nb, self_pairs, skip, scale, norms):
    # Not unit rows (or tau below 0.025): the launcher does not certify the static shift.
    a = rows_with_norms(na, 8, norms, 71)
    b = rows_with_norms(nb, 8, norms[::-1], 72)
    assert tk.contrastive._static_shift(a, b, scale, torch.float32)[1].item() == 0
    got, want, max_logit, _ = kernel_and_dense(a, b, scale, self_pairs, skip)
    assert_close_to_dense(got, want, float32_tolerance(max_logit))


def test_wide_lse_spread_takes_the_two_exp_step_and_needs_it(monkeypatch):
    # Norms 0.1 .. 10 at tau = 0.05: lse from about 4 to 2000 nats, every tile spanning
    # far more than the tile shift's 2 H (log2 units).  The two-exp step keeps the
    # gradient exact; with the headroom made huge, the one-exp step alone on the same
    # data overflows (the test data does need the fallback).
    a = rows_with_norms(150, 8, (0.1, 10.0, 1.0, 3.0), 73)
    b = rows_with_norms(150, 8, (10.0, 0.1, 0.3), 74)
    got, want, max_logit, spread = kernel_and_dense(a, b, 20.0, True, False)
    assert spread > 2 * tk.contrastive.TILE_SHIFT_HEADROOM
    assert_close_to_dense(got, want, float32_tolerance(max_logit))
    monkeypatch.setattr(tk.contrastive, "TILE_SHIFT_HEADROOM", 1e4)
    unsafe, _, _, _ = kernel_and_dense(a, b, 20.0, True, False)
    assert not all(torch.isfinite(x).all() and torch.allclose(x, w, rtol=1e-3, atol=1e-3 * w.abs().max())
                   for x, w in zip(unsafe, want))


def test_every_tile_on_the_two_exp_step_and_float64(monkeypatch):
    # Headroom 0: every tile with any spread takes the two-exp step (the same gradient);
    # float64 (a software exp) takes it on every tile (contrastive_config's TILE_SHIFT).
    a = rows_with_norms(100, 8, (0.5, 2.0), 75)
    b = rows_with_norms(120, 8, (2.0, 0.5, 1.0), 76)
    got, want, max_logit, _ = kernel_and_dense(a, b, 10.0, False, True)
    assert_close_to_dense(got, want, float32_tolerance(max_logit))
    with monkeypatch.context() as patch:
        patch.setattr(tk.contrastive, "TILE_SHIFT_HEADROOM", 0.0)
        fallback, _, _, _ = kernel_and_dense(a, b, 10.0, False, True)
    assert_close_to_dense(fallback, want, float32_tolerance(max_logit))
    assert not tk.contrastive.contrastive_config("fp64", 8, "grad", 90, False)["TILE_SHIFT"]
    a64 = rows_with_norms(70, 8, (0.1, 10.0, 1.0), 77, torch.float64)
    b64 = rows_with_norms(50, 8, (1.0, 10.0, 0.1), 78, torch.float64)
    got, want, _, _ = kernel_and_dense(a64, b64, 30.0, True, True)
    assert_close_to_dense(got, want, 1e-11)


@pytest.mark.parametrize("d,tile_shift", [(16, True), (160, False)])
def test_16bit_rows_without_the_static_shift(d, tile_shift):
    # bf16 inputs at tau = 0.02: the tile shift with the weights scaled and rounded to bf16;
    # past 128 wide one exp per side on every tile (contrastive_config's TILE_SHIFT).
    assert tk.contrastive.contrastive_config("bf16", d, "grad", 90, False)["TILE_SHIFT"] == tile_shift
    a = rows_with_norms(130, d, (1.0, 0.8), 79, torch.bfloat16)
    b = rows_with_norms(130, d, (0.9, 1.1), 80, torch.bfloat16)
    got, want, _, _ = kernel_and_dense(a, b, 50.0, True, True)
    assert_close_to_dense(got, want, 1e-2)


def test_nonfinite_inputs_and_lse_give_nan_without_the_static_shift():
    a = rows_with_norms(40, 8, (0.1, 10.0), 81)
    b = rows_with_norms(30, 8, (10.0, 0.1), 82)
    lse_a, lse_b = (v.float() for v in dense_lse(a, b, 20.0, False, False))
    g, h = torch.ones(40), torch.ones(30)

    def backward(a, b, lse_a, lse_b):
        return tk.contrastive_lse_backward(*(v.to(DEVICE) for v in (a, b)), 20.0, False,
                                           *(v.to(DEVICE) for v in (lse_a, lse_b, g, h)), 0, 1, True, True)

    bad = a.clone()
    bad[3, 1] = math.nan
    assert all(torch.isnan(v).all() for v in backward(bad, b, lse_a, lse_b))
    bad = b.clone()
    bad[0, 0] = math.inf
    assert all(torch.isnan(v).all() for v in backward(a, bad, lse_a, lse_b))
    for value in (math.nan, math.inf):
        bad_lse = lse_b.clone()
        bad_lse[5] = value
        assert all(torch.isnan(v).all() for v in backward(a, b, lse_a, bad_lse))
    # A row without pairs (lse -inf, no upstream term) contributes nothing and stays finite.
    none = lse_a.clone()
    none[7] = -math.inf
    ga, gb = backward(a, b, none, lse_b)
    want_a, want_b, _ = dense_gradient(a, b, 20.0, False, False, none.nan_to_num(neginf=1e300), lse_b,
                                       torch.where(torch.isneginf(none), 0.0, g), h)
    assert_close_to_dense((ga.cpu().double(), gb.cpu().double()), (want_a, want_b), 1e-3)
