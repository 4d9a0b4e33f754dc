"""SigLIP's one pass with K-major TF32 operands (triton_kernels/siglip_kmajor.py, the
launcher's path for float32 on sm_90: TF32 when torch allows it, else 3xTF32 up to
d = 64) against the dense float64 formula of test_siglip: row losses, the weighted
total, d/dx, d/dy and d/dt, d/db, at each feature block (16, 32, 64, 128) with row and
column counts that are no multiple of the tiles (64 rows against 32-, 64- or 128-column
tiles), N_x > N_y and N_x < N_y.  On CPU tensors through the interpreter (no TMA reduce,
no inline assembly: their plain forms), where the products are float32; compiled on a
GPU they are TF32 (3xTF32: float32's accuracy)."""

import math

import pytest
import torch

triton = pytest.importorskip("triton")

from pyhypersphere._matmul_precision import cuda_fp32_matmul  # noqa: E402
from test_siglip import assert_close, dense_rows, inputs, triton_kernels  # noqa: E402,F401  (a fixture)
from triton_device import INTERPRET  # noqa: E402

# The interpreter multiplies in float32; TF32 rounds the operands to 11 bits: logit
# errors ~ t |x||y| 2^-11 (3xTF32 carries them to about 2^-22).
TOL = {"tf32": 2e-5 if INTERPRET else 5e-3, "ieee": 2e-5}


@pytest.fixture
def kmajor_runs(triton_kernels, monkeypatch):  # noqa: F811
    """(launcher, device, calls): the launcher with the two sweeps disabled; calls counts
    the K-major launcher's runs."""
    launcher, device = triton_kernels
    import pyhypersphere.triton_kernels.siglip as module
    import pyhypersphere.triton_kernels.siglip_kmajor as kmajor

    calls = []
    run = kmajor.one_pass_kmajor

    def counted(*args, **kwargs):
        calls.append(args[0].shape)
        return run(*args, **kwargs)

    def no_sweep(*args, **kwargs):
        raise AssertionError("the two-sweep path ran where the K-major one pass should")

    monkeypatch.setattr(module, "one_pass_kmajor", counted)  # where the launcher looks it up
    monkeypatch.setattr(module, "_sweep", no_sweep)
    return launcher, device, calls


def _case(launcher, device, precision, n, ny, d, grad_x=True, t=5.0, b=-3.0, seed=0):
    """Inputs, the launcher's outputs with torch's float32 matmul setting `precision`
    ("tf32": TF32 products; "ieee": float32, 3xTF32 here) and the dense reference."""
    x, y = inputs(n, d, torch.float32, seed=seed + n + ny + d, ny=ny)
    coef = torch.rand(n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 4)) - 0.25
    t, b = torch.tensor(t, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    with cuda_fp32_matmul(precision):
        out = launcher(*(v.to(device) for v in (x, y, t, b, coef)), grad_x, True, True)
    refs = [v.double().requires_grad_(True) for v in (x, y, t, b)]
    want_rows = dense_rows(*refs)
    (want_rows * coef).sum().backward()
    return coef, want_rows.detach(), refs, out


CASES = [
    (70, 45, 16),     # TF32 64 x 128 tiles: one column tile, partly padding, meets both row blocks
    (100, 130, 24),   # d padded to 32: 64 x 64 (3xTF32 64 x 32), columns past x's rows
    (45, 300, 64),    # 64 x 128 (3xTF32 64 x 32): several column tiles, the diagonal in the first
    (130, 100, 128),  # TF32 64 x 64: three row blocks, rows past y's (no diagonal there)
    (150, 97, 33),    # d padded to 64
]


@pytest.mark.parametrize("precision,n,ny,d", [("tf32", *c) for c in CASES] + [("ieee", *c) for c in CASES
                                                                                if c[2] <= 64])
def test_kmajor_one_pass_against_the_dense_formula(kmajor_runs, precision, n, ny, d):
    _assert_kmajor_matches_dense(kmajor_runs, precision, n, ny, d)


def _assert_kmajor_matches_dense(kmajor_runs, precision, n, ny, d):
    """One K-major launch (and only it) against the dense formula: values, both
    gradients (contiguous, as the other paths'), d/dt and d/db."""
    launcher, device, calls = kmajor_runs
    tol = TOL[precision]
    calls.clear()
    coef, want_rows, refs, (total, rows, gx, gy, gtb) = _case(launcher, device, precision, n, ny, d)
    assert calls == [torch.Size([n, d])]
    assert_close(rows.cpu(), want_rows, tol, "rows")
    assert_close(total.cpu(), (want_rows * coef).sum(), tol, "total")
    for got, ref, name in ((gx, refs[0], "x"), (gy, refs[1], "y")):
        assert got.shape == ref.shape and got.is_contiguous()  # as the other paths' (gy^T transposed back)
        assert_close(got.cpu(), ref.grad, 5 * tol, f"d/d{name}")
    assert_close(gtb.cpu(), torch.stack([refs[2].grad, refs[3].grad]), 5 * tol, "d/dt, d/db")


@pytest.mark.parametrize("precision", ["tf32", "ieee"])
def test_kmajor_one_pass_without_the_gradient_of_x(kmajor_runs, precision):
    launcher, device, calls = kmajor_runs
    coef, want_rows, refs, (total, rows, gx, gy, gtb) = _case(launcher, device, precision, 90, 70, 48, grad_x=False)
    assert len(calls) == 1 and gx.numel() == 0
    assert_close(gy.cpu(), refs[1].grad, 5 * TOL[precision], "d/dy")
    assert_close(gtb.cpu(), torch.stack([refs[2].grad, refs[3].grad]), 5 * TOL[precision], "d/dt, d/db")


def test_kmajor_one_pass_at_zero_logits(kmajor_runs):
    # t = b = 0: every e^-|l| = 1, a 128-column tile's prod (1 + e) overflows float32 (the
    # tile's sum, 128 log 2, is taken); d/dx = d/dy = 0, d/db = sum_ij -z_ij / 2.
    launcher, device, calls = kmajor_runs
    coef, want_rows, refs, (total, rows, gx, gy, gtb) = _case(launcher, device, "tf32", 100, 260, 16, t=0.0, b=0.0)
    assert len(calls) == 1
    assert torch.allclose(rows.cpu().double(), torch.full((100,), 260 * math.log(2), dtype=torch.float64), rtol=1e-6)
    assert torch.all(gx == 0) and torch.all(gy == 0)
    assert gtb[1].item() == pytest.approx(coef.sum().item() * (259 - 1) * 0.5, rel=1e-5)


def test_kmajor_one_pass_on_older_tritons_tiles(kmajor_runs, monkeypatch):
    # Triton 3.6's TF32 tiles (KMAJOR_TILES_OLDER_TRITON): 64 x 16 at d = 128, 64 x 64 at 16 and 64.
    from pyhypersphere.triton_kernels import siglip_kmajor

    monkeypatch.setattr(siglip_kmajor, "triton_before_newest", lambda: True)
    assert siglip_kmajor.kmajor_config("tf32", 128, 90)["BLOCK_N"] == 16
    for n, ny, d in ((130, 100, 128), (70, 45, 16), (45, 150, 64)):
        _assert_kmajor_matches_dense(kmajor_runs, "tf32", n, ny, d)


@pytest.mark.parametrize("older", [False, True])
def test_kmajor_config_covers_float32_on_sm90_only(monkeypatch, older):
    from pyhypersphere.triton_kernels import siglip_kmajor

    monkeypatch.setattr(siglip_kmajor, "triton_before_newest", lambda: older)
    kmajor_config = siglip_kmajor.kmajor_config
    for d in (1, 16, 17, 32, 64, 100, 128):
        cfg = kmajor_config("tf32", d, 90)
        assert cfg is not None and cfg["BLOCK_D"] >= max(d, 16)
    assert kmajor_config("tf32", 129, 90) is None
    for d in (16, 32, 64):
        cfg = kmajor_config("tf32x3", d, 90)
        assert cfg is not None and cfg["SPLIT_OPERANDS"]
    assert kmajor_config("tf32x3", 65, 90) is None
    for fmt, arch in (("tf32", 80), ("tf32x3", 80), ("bf16", 90), ("fp64", 90)):
        assert kmajor_config(fmt, 64, arch) is None
