"""uniform_loss values against the paper's formula and a log-sum-exp form, in float64."""

import math

import pytest
import torch

from conftest import ATOL, RTOL, unit_rows
from pyhypersphere import PrecisionWarning, uniform_loss
from pyhypersphere.reference import logsumexp_uniform_loss, reference_uniform_loss

# Row counts around the CPU block sizes (64 / 128 / 256 rows) and their tails.
SHAPES = [(2, 1), (2, 3), (3, 2), (17, 5), (63, 8), (64, 8), (65, 8), (129, 31), (300, 7), (511, 64), (1000, 128), (2100, 3), (2049, 200)]


def ref64(x, t):
    return reference_uniform_loss(x.detach().cpu().double(), t)


@pytest.mark.parametrize("n,d", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_reference_unit_rows(device, n, d, dtype):
    x = unit_rows(n, d, dtype=dtype, device=device, seed=n * 1000 + d)
    got = uniform_loss(x)
    assert got.dtype == dtype and got.shape == ()
    torch.testing.assert_close(got.cpu().double(), ref64(x, 2.0), rtol=RTOL[dtype], atol=ATOL[dtype])


@pytest.mark.parametrize("t", [0.1, 1.0, 2.0, 5.0, 17.5])
@pytest.mark.parametrize("n", [10, 200, 700])
def test_matches_reference_several_t(device, t, n):
    x = unit_rows(n, 16, device=device, seed=n)
    torch.testing.assert_close(uniform_loss(x, t).cpu(), ref64(x, t), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("scale", [0.01, 3.0, 30.0])
def test_unnormalized_rows(device, scale):
    # The log-sum-exp form stays finite where the reference's exp underflows.
    x = unit_rows(300, 12, device=device, seed=7, scale=scale) + 5.0
    want = logsumexp_uniform_loss(x.cpu().double(), 2.0)
    torch.testing.assert_close(uniform_loss(x).cpu(), want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(uniform_loss(x.float()).cpu().double(), want, rtol=5e-5, atol=1e-5)


def test_finite_where_reference_underflows(device):
    x = unit_rows(100, 8, device=device, seed=3, scale=20.0)
    assert reference_uniform_loss(x.float().cpu()).item() == -math.inf
    got = uniform_loss(x.float()).item()
    want = logsumexp_uniform_loss(x.cpu().double(), 2.0).item()
    assert math.isfinite(got)
    assert got == pytest.approx(want, rel=1e-5)


def test_large_t_is_finite(device):
    x = unit_rows(257, 32, device=device, seed=11)
    want = logsumexp_uniform_loss(x.cpu(), 400.0)
    torch.testing.assert_close(uniform_loss(x, 400.0).cpu(), want, rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(uniform_loss(x.float(), 400.0).cpu().double(), want, rtol=2e-5, atol=1e-4)


def test_duplicate_rows(device):
    # Coincident rows: distance 0, weight 1; the Gram form must not go negative.
    base = unit_rows(40, 6, device=device, seed=5)
    x = torch.cat([base, base, base[:3]])
    torch.testing.assert_close(uniform_loss(x).cpu(), ref64(x, 2.0), rtol=1e-10, atol=1e-12)


def test_all_rows_equal(device):
    x = torch.ones(70, 4, dtype=torch.float64, device=device)
    assert uniform_loss(x).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("layout", ["transposed", "strided", "expanded_cols"])
def test_non_contiguous(device, layout):
    base = unit_rows(300, 40, device=device, seed=2)
    if layout == "transposed":
        x = base.T.contiguous().T
    elif layout == "strided":
        x = unit_rows(600, 40, device=device, seed=2)[::2]
    else:
        x = base[:, :20]
    assert not x.is_contiguous() or layout == "transposed"
    torch.testing.assert_close(uniform_loss(x).cpu(), ref64(x, 2.0), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs(device, dtype):
    x = unit_rows(500, 64, device=device, seed=4).to(dtype)
    got = uniform_loss(x)
    assert got.dtype == dtype
    # Reference on the same rounded inputs, in float64: only output rounding remains.
    torch.testing.assert_close(got.cpu().double(), ref64(x, 2.0), rtol=RTOL[dtype], atol=ATOL[dtype])


def test_nan_and_inf_give_nan(device):
    for bad in (float("nan"), float("inf"), -float("inf")):
        x = unit_rows(50, 4, device=device, seed=1)
        x[13, 2] = bad
        assert torch.isnan(uniform_loss(x)).item()


def test_large_n_against_chunked_reference():
    # Many blocks and rounds of the tile schedule; the reference sums ordered pairs in
    # float64 chunks.
    # 8000 rows: 125 blocks of 64, 7875 tiles.
    x = unit_rows(8000, 3, seed=9)
    want = torch.stack([
        torch.logsumexp(torch.cdist(x[i:i + 2000], x).pow(2).mul(-2.0).flatten(), 0)
        for i in range(0, 8000, 2000)
    ]).logsumexp(0)
    # remove the self pairs (exponent 0, 8000 of them), halve the ordered pairs
    want = torch.log(torch.exp(want) - 8000) - math.log(2) - math.log(8000 * 7999 / 2)
    torch.testing.assert_close(uniform_loss(x), want, rtol=1e-9, atol=1e-9)


def test_float32_rows_far_apart_are_computed_in_float64(device):
    # Rows spread far (radius ~100, t = 2) with a close pair: float32's Gram-form distance
    # would be off by ~1e-2 in the exponent, so the kernel recomputes in float64.
    x = unit_rows(200, 8, dtype=torch.float64, device=device, seed=13, scale=100.0)
    x[1] = x[0] + 0.05
    want = logsumexp_uniform_loss(x.cpu(), 2.0)
    got = uniform_loss(x.float())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.cpu().double(), want, rtol=2e-6, atol=2e-6)


def test_spread_beyond_float64_warns(device):
    # Far beyond what the Gram form can resolve even in float64: a warning, not silence
    # (tests/test_precision_warning.py covers how it is issued).
    x = torch.tensor([[0.0, 0, 0, 0], [1e19] * 4, [1.0, 0, 0, 0]], dtype=torch.float64, device=device)
    with pytest.warns(PrecisionWarning, match="normalize or rescale the features"):
        uniform_loss(x)
