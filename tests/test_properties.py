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


ISA_CHECK = """
import json, torch, pyhypersphere
from pyhypersphere import uniform_loss
g = torch.Generator().manual_seed(5)
out = {"isa": pyhypersphere.build_info()["cpu_tile_isa"]}
for n, d in [(2, 1), (67, 5), (300, 19)]:
    x = torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    x32 = x.float().requires_grad_()
    loss = uniform_loss(x32)
    loss.backward()
    out[f"{n}x{d}"] = [loss.item(), x32.grad.double().tolist(), x.tolist()]
print(json.dumps(out))
"""


def _isa_run(isa):
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYHYPERSPHERE_CPU_ISA=isa, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", ISA_CHECK], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def test_every_float_isa_path_matches_float64():
    # The float tile loops are compiled per ISA and picked at run time; this machine runs
    # only its best one unless PYHYPERSPHERE_CPU_ISA forces a lower one.
    levels = ["baseline", "avx2", "avx512"]
    best = _C.build_info()["cpu_tile_isa"]
    for isa in ["baseline", "avx2"]:
        got = _isa_run(isa)
        assert got.pop("isa") == min(isa, best, key=levels.index)
        for key, (loss, grad, rows) in got.items():
            x = torch.tensor(rows, dtype=torch.float64, requires_grad=True)
            want = dense_uniform_loss(x, 2.0)
            want.backward()
            assert math.isclose(loss, want.item(), rel_tol=2e-5, abs_tol=2e-6), (isa, key)
            scale = x.grad.abs().max().item() or 1.0
            torch.testing.assert_close(torch.tensor(grad, dtype=torch.float64) / scale, x.grad / scale, rtol=1e-4, atol=1e-5)
