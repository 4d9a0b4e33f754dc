"""Property tests (hypothesis) and the CPU kernel's building blocks."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import dense_uniform_loss
from pyhypersphere import _C, align_loss, uniform_loss
from pyhypersphere.reference import logsumexp_uniform_loss, reference_align_loss

SETTINGS = settings(max_examples=40, deadline=None)


@st.composite
def feature_matrices(draw, min_rows=2, max_rows=300, max_d=40):
    n = draw(st.integers(min_rows, max_rows))
    d = draw(st.integers(1, max_d))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([1e-3, 0.1, 1.0, 4.0]))
    shift = draw(st.sampled_from([0.0, 1.0, -30.0]))
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * scale + shift


@SETTINGS
@given(x=feature_matrices(), t=st.floats(0.05, 20.0))
def test_value_matches_lse_reference(x, t):
    torch.testing.assert_close(uniform_loss(x, t), logsumexp_uniform_loss(x, t), rtol=1e-9, atol=1e-9)


@SETTINGS
@given(x=feature_matrices(max_rows=150, max_d=12), t=st.floats(0.05, 10.0))
def test_gradient_matches_dense_reference(x, t):
    a = x.clone().requires_grad_()
    uniform_loss(a, t).backward()
    b = x.clone().requires_grad_()
    dense_uniform_loss(b, t).backward()
    scale = b.grad.abs().max().item() or 1.0
    torch.testing.assert_close(a.grad / scale, b.grad / scale, rtol=1e-7, atol=1e-9)


@SETTINGS
@given(x=feature_matrices(max_rows=200), offset=st.floats(-100, 100), perm_seed=st.integers(0, 1000))
def test_invariances(x, offset, perm_seed):
    # translation and row permutation leave the loss unchanged
    base = uniform_loss(x).item()
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(perm_seed))
    assert math.isclose(uniform_loss(x + offset).item(), base, rel_tol=1e-9, abs_tol=1e-9)
    assert math.isclose(uniform_loss(x[perm]).item(), base, rel_tol=1e-10, abs_tol=1e-10)


@SETTINGS
@given(x=feature_matrices(max_rows=60), t=st.floats(0.1, 10.0))
def test_bounds(x, t):
    # every pair weight is in (0, 1]: the mean is too, so the loss is <= 0, and it is at
    # least -t times the largest squared distance
    loss = uniform_loss(x, t).item()
    assert loss <= 1e-12
    assert loss >= -t * torch.cdist(x, x).pow(2).max().item() - 1e-9


@SETTINGS
@given(x=feature_matrices(min_rows=1, max_rows=100), alpha=st.floats(0.25, 4.0))
def test_align_matches_reference(x, alpha):
    y = x.flip(0) + 0.5
    torch.testing.assert_close(align_loss(x, y, alpha), reference_align_loss(x, y, alpha), rtol=1e-10, atol=1e-12)


def test_exp_fast_accuracy():
    # The float exp of the CPU kernel, over the range it is used on, within 2 ulp.
    x = torch.linspace(-87.0, 30.0, 200001, dtype=torch.float32)
    got = _C._exp_fast_for_testing(x).double()
    want = torch.exp(x.double())
    rel = ((got - want) / want).abs().max().item()
    assert rel < 2.5e-7, rel
    # clamped below: tiny, never 0 or negative, never NaN
    low = _C._exp_fast_for_testing(torch.tensor([-1e4, -200.0, -float("inf")]))
    assert (low > 0).all() and (low < 1e-37).all()
