"""Uniformity in float32 when t * ||z_i - z_j||^2 is small: the loss lse - log |P| is then
small next to log |P|, and must still be accurate relative to itself (issue 26, item 2).

The truth is float64 in a form with no cancellation, log1p(mean(expm1(-t d^2))) over the
explicit pair differences; the bar is the paper's reference formula evaluated in float32
on the same inputs (its own error), or one float32 rounding of the loss, whichever is
larger: the fused loss must never be less accurate than the two-line formula.
"""

import pytest
import torch

from conftest import unit_rows
from pyhypersphere import _C, metrics, uniform_loss
from pyhypersphere.reference import reference_uniform_loss

# One rounding of a float32 result, relative (2^-24), with a factor 2 for the kernel's
# own float64-to-float32 step.
FLOAT32_ROUNDING = 2.0**-23


def pair_sq_distances(x, queue=None, intra_batch=True):
    x = x.detach().cpu().double()
    parts = []
    if intra_batch:
        parts.append(torch.pdist(x).pow(2))
    if queue is not None:
        parts.append(torch.cdist(x, queue.detach().cpu().double()).pow(2).flatten())
    return torch.cat(parts)


def exact_loss(x, t, queue=None, intra_batch=True):
    return torch.log1p(torch.expm1(-t * pair_sq_distances(x, queue, intra_batch)).mean()).item()


def relative_error(got, want):
    return abs(got - want) / abs(want)


# The cases (N = 1024 unit rows at small t, rows of small norm at t = 2), points
# on either side of the float64 switch (t * mean d^2 = 1/8), and the common regime.
CASES = [
    ("unit rows, t = 1e-6", 1024, 128, 1.0, 1e-6),
    ("unit rows, t = 1e-4", 1024, 128, 1.0, 1e-4),
    ("unit rows, t = 0.01", 1024, 128, 1.0, 0.01),
    ("unit rows, t = 0.05 (below the switch)", 1024, 128, 1.0, 0.05),
    ("unit rows, t = 0.1 (above the switch)", 1024, 128, 1.0, 0.1),
    ("unit rows, t = 2", 1024, 128, 1.0, 2.0),
    ("circle, t = 1e-4", 1024, 2, 1.0, 1e-4),
    ("circle, t = 8", 1024, 2, 1.0, 8.0),
    ("rows of norm 1e-3, t = 2", 1024, 128, 1e-3, 2.0),
    ("rows of norm 1e-2, t = 2", 1024, 128, 1e-2, 2.0),
]


@pytest.mark.parametrize("name,n,d,scale,t", CASES, ids=[c[0] for c in CASES])
def test_float32_loss_is_never_less_accurate_than_the_reference(device, name, n, d, scale, t):
    x = unit_rows(n, d, dtype=torch.float32, seed=n + d, scale=scale)
    want = exact_loss(x, t)
    reference_error = relative_error(reference_uniform_loss(x, t).item(), want)
    got = uniform_loss(x.to(device), t)
    assert got.dtype == torch.float32
    error = relative_error(got.item(), want)
    assert error <= max(reference_error, FLOAT32_ROUNDING), (error, reference_error)


@pytest.mark.parametrize("t,scale", [(1e-6, 1.0), (1e-4, 1.0), (2.0, 1e-3)])
def test_small_losses_are_accurate_to_float32_rounding(device, t, scale):
    # Where the reference formula loses 3-5% (t = 1e-6, norm 1e-3), the fused loss keeps
    # the float32 result's own precision.
    x = unit_rows(1024, 128, dtype=torch.float32, seed=3, scale=scale)
    want = exact_loss(x, t)
    assert relative_error(uniform_loss(x.to(device), t).item(), want) <= FLOAT32_ROUNDING


@pytest.mark.parametrize("scale,t", [(1e-2, 2.0), (1.0, 1e-6), (1.0, 2.0)])
def test_metrics_uniformity_is_accurate_relative_to_itself(scale, t):
    # The case: -3.9955e-4 for -4.0001e-4 on rows of norm 1e-2.  metrics returns a
    # Python float formed from the float64 lse.
    x = unit_rows(1024, 128, dtype=torch.float32, seed=4, scale=scale)
    want = exact_loss(x, t)
    assert relative_error(metrics.uniformity(x, t), want) <= 1e-6


def test_metrics_uniformity_in_slices_is_accurate():
    x = unit_rows(700, 32, dtype=torch.float32, seed=5, scale=1e-2)
    pytest.importorskip("tqdm")
    want = exact_loss(x, 2.0)
    assert relative_error(metrics.uniformity(x, 2.0, progress=True), want) <= 1e-6


@pytest.mark.parametrize("intra_batch", [True, False])
def test_queue_at_small_t(device, intra_batch):
    # MoCo's shape: the pairs (x_i, queue_k), with or without those within x.
    x = unit_rows(64, 32, dtype=torch.float32, seed=6)
    queue = unit_rows(700, 32, dtype=torch.float32, seed=7)
    t = 1e-5
    want = exact_loss(x, t, queue, intra_batch)
    got = uniform_loss(x.to(device), t, queue=queue.to(device), intra_batch=intra_batch).item()
    assert relative_error(got, want) <= FLOAT32_ROUNDING


def test_gradient_at_small_t(device):
    x = unit_rows(300, 16, dtype=torch.float32, seed=8, scale=1e-2)
    xr = x.double().requires_grad_()
    reference_uniform_loss(xr, 2.0).backward()
    xg = x.to(device).requires_grad_()
    uniform_loss(xg, 2.0).backward()
    err = (xg.grad.cpu().double() - xr.grad).norm() / xr.grad.norm()
    assert err <= 1e-6


def test_lse_is_float64_for_every_input_dtype():
    # The loss is lse - log |P|: a float32 lse (near 13 at N = 1024) would cap the loss's
    # absolute accuracy at 5e-7 whatever the kernel computed.
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        x = unit_rows(50, 8, dtype=dtype, seed=9)
        lse, gx, _ = torch.ops.pyhypersphere.uniform_lse(x, None, 2.0, True, 0, 1, True, False)
        assert lse.dtype == torch.float64
        assert gx.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)


# ------------------------------------------------------------ the decision (plan_uniform_rows)


def policy(x, queue=None, t=2.0, intra_batch=True):
    return _C._uniform_rows_policy(x, queue, t, _C.FLOAT32_UNIT_ROUNDOFF, False, True, intra_batch)


@pytest.mark.parametrize("intra_batch,with_queue", [(True, False), (True, True), (False, True)])
def test_mean_pair_distance_fact(intra_batch, with_queue):
    # The fact the switch reads, against the mean over the explicit pairs; rows off the
    # origin and a queue off-center, so the centering terms matter.
    x = unit_rows(90, 5, dtype=torch.float32, seed=10) + 0.3
    queue = unit_rows(40, 5, dtype=torch.float32, seed=11) - 0.7 if with_queue else None
    got = policy(x, queue, intra_batch=intra_batch)["mean_pair_sq_distance"]
    want = pair_sq_distances(x, queue, intra_batch).mean().item()
    assert got == pytest.approx(want, rel=1e-5)


def test_float64_exactly_below_the_switch():
    # t * mean d^2 < 1/8 bounds |loss| < 1/8 (Jensen): float64 rows there, float32 above.
    x = unit_rows(200, 16, dtype=torch.float32, seed=12)
    mean_d2 = policy(x)["mean_pair_sq_distance"]
    switch = 1.0 / 8
    assert policy(x, t=0.99 * switch / mean_d2)["dtype"] == "Double"
    assert policy(x, t=1.01 * switch / mean_d2)["dtype"] == "Float"
    assert policy(x.double(), t=1e-6)["dtype"] == "Double"
    # The common regime stays on the float32 path: unit rows at t = 2.
    assert policy(x, t=2.0)["dtype"] == "Float"


# ------------------------------------------------------------ the single pass for small CPU inputs


def plan(x, queue=None, host_read=True):
    return _C._plan_uniform_rows(x, queue, 2.0, _C.FLOAT32_UNIT_ROUNDOFF, host_read=host_read)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("with_queue", [False, True])
def test_small_input_pass_gives_the_general_paths_rows(dtype, with_queue):
    # Small CPU inputs are prepared in one C++ pass (csrc/cpu/small_rows.cpp); the general
    # ATen path (taken without a host read) must give the same centered rows and norms.
    x = (unit_rows(40, 12, seed=13) * 3 + 0.5).to(dtype)
    queue = (unit_rows(25, 12, seed=14) - 0.25).to(dtype) if with_queue else None
    z, sq, finite, *_ = plan(x, queue)
    z_general, sq_general, *_ = plan(x, queue, host_read=False)
    assert finite and z.dtype == z_general.dtype
    torch.testing.assert_close(z, z_general, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(sq, sq_general, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_small_input_pass_flags_nonfinite_rows(bad):
    x = unit_rows(30, 4, dtype=torch.float32, seed=15)
    x[7, 2] = bad
    assert not plan(x)[2]
    # Large finite values are not mistaken for overflow (their squares overflow in float32).
    big = unit_rows(30, 4, dtype=torch.float32, seed=16) * 1e30
    assert plan(big)[2]


def test_mean_pair_distance_fact_above_the_single_pass_size():
    # (n + k) d past kSmallRowsElements: the general path's fact.
    x = unit_rows(300, 128, dtype=torch.float32, seed=17) + 0.1
    queue = unit_rows(300, 128, dtype=torch.float32, seed=18)
    got = policy(x, queue)["mean_pair_sq_distance"]
    assert got == pytest.approx(pair_sq_distances(x, queue).mean().item(), rel=1e-5)
