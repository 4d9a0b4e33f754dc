"""The uniformity kernel's flash-attention paths (pyhypersphere/triton_kernels/uniform.py)
under the interpreter: the static shift against the online max, the choice between them,
d = 256 in one chunk, the diagonal stage under column splits, and float32's product
format following torch's matmul setting.  References: float64 explicit pair differences
(conftest.explicit_uniform_lse_and_grads)."""

import pytest
import torch

triton = pytest.importorskip("triton")

from conftest import explicit_uniform_lse_and_grads  # noqa: E402
from implementations import UNIFORM_GRAD_TOL, UNIFORM_TOL  # noqa: E402
from implementations import rows as cpu_rows  # noqa: E402
from pyhypersphere import triton_kernels as tk  # noqa: E402
from pyhypersphere._matmul_precision import cuda_fp32_matmul  # noqa: E402
from triton_device import DEVICE, RUNNABLE  # noqa: E402

uniform = tk.uniform
pytestmark = RUNNABLE


def rows(n, d, dtype, seed, scale=1.0):
    return cpu_rows(n, d, dtype, seed, scale).to(DEVICE)


def _check(got, x, queue, t, intra, dtype):
    lse, gx, gq = got
    ref_lse, ref_gx, ref_gq = explicit_uniform_lse_and_grads(x, queue, t, intra)
    tol, grad_tol = UNIFORM_TOL[dtype], UNIFORM_GRAD_TOL[dtype]
    torch.testing.assert_close(lse.double().cpu(), ref_lse, rtol=tol, atol=tol)
    torch.testing.assert_close(gx.double().cpu(), ref_gx, rtol=0, atol=grad_tol * ref_gx.abs().max())
    if queue is not None:
        torch.testing.assert_close(gq.double().cpu(), ref_gq, rtol=0, atol=grad_tol * ref_gq.abs().max())


@pytest.mark.parametrize("static", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_static_shift_and_online_max_both_match_float64(monkeypatch, static, dtype):
    # Unit rows and t = 2 are certified for the static shift; force each path.
    monkeypatch.setattr(uniform, "static_shift_certified", lambda *a: static)
    seen = []
    real = uniform._row_pass
    monkeypatch.setattr(uniform, "_row_pass", lambda *a, **k: seen.append(a[8]) or real(*a, **k))
    x, queue = rows(150, 16, dtype, 21), rows(40, 16, dtype, 22)
    _check(tk.uniform_lse(x, queue, 2.0, True, 0, 1, True, True), x, queue, 2.0, True, dtype)
    assert seen == [static, static]  # the x pass and the queue pass


def test_static_shift_certificate():
    # Every exponent lies in [-4 t max|z|^2, 0]: static while that stays above underflow.
    assert uniform.static_shift_certified(2.0, 1.0, torch.float32)
    assert uniform.static_shift_certified(20.0, 1.0, torch.float32)
    assert not uniform.static_shift_certified(21.0, 1.0, torch.float32)
    assert uniform.static_shift_certified(100.0, 1.0, torch.float64)
    assert not uniform.static_shift_certified(200.0, 1.0, torch.float64)


def test_large_t_takes_the_online_max(monkeypatch):
    seen = []
    real = uniform._row_pass
    monkeypatch.setattr(uniform, "_row_pass", lambda *a, **k: seen.append(a[8]) or real(*a, **k))
    x = rows(70, 8, torch.float32, 23)
    # t = 100 on unit rows: the static shift would underflow whole rows.
    _check(tk.uniform_lse(x, None, 100.0, True, 0, 1, True, False), x, None, 100.0, True, torch.float32)
    assert seen == [False]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_d_256(dtype):
    # bf16: one 256-wide chunk (sm_90's blocks under the interpreter); float32: the
    # chunked path (3xTF32 stops at 128), several slices of the gradient.
    cfg = uniform.flash_config(uniform.operand_format(dtype, "tf32x3"), 256, True, 90, True)
    assert cfg["ONE_CHUNK"] == (dtype == torch.bfloat16) and cfg["BLOCK_D"] == (256 if cfg["ONE_CHUNK"] else 32)
    x = rows(140, 256, dtype, 24)
    with cuda_fp32_matmul("ieee"):
        _check(tk.uniform_lse(x, None, 2.0, True, 0, 1, True, False), x, None, 2.0, True, dtype)


@pytest.mark.parametrize("dtype,d", [(torch.bfloat16, 128), (torch.float32, 64)])
def test_sm80_blocks(monkeypatch, dtype, d):
    # The interpreter takes sm_90's blocks; sm_80's differ (flash_config): 128 x 32 tiles
    # with plain loads for the 16-bit gradient at d = 128, 3xTF32's 64 x 16 gradient and
    # plain-load loss tiles.  Run those as on an sm_80 GPU, the loss alone and with the
    # gradient.
    seen = []
    real = uniform.flash_config
    monkeypatch.setattr(uniform, "flash_config", lambda *a, **kw: seen.append(a) or real(*a, **kw))
    monkeypatch.setattr(uniform, "device_arch", lambda device: 80)
    x, queue = rows(150, d, dtype, 29), rows(40, d, dtype, 30)
    with cuda_fp32_matmul("ieee"):
        lse_only = tk.uniform_lse(x, None, 2.0, True, 0, 1, False, False)[0]
        _check(tk.uniform_lse(x, queue, 2.0, True, 0, 1, True, True), x, queue, 2.0, True, dtype)
    ref_lse = explicit_uniform_lse_and_grads(x, None, 2.0, True)[0]
    torch.testing.assert_close(lse_only.double().cpu(), ref_lse, rtol=UNIFORM_TOL[dtype], atol=UNIFORM_TOL[dtype])
    fmt = "bf16" if dtype == torch.bfloat16 else "tf32x3"
    assert {(a[0], a[2]) for a in seen} == {(fmt, False), (fmt, True)}
    assert all(a[3] == 80 and real(*a) != real(*a[:3], 90, a[4]) for a in seen)


@pytest.mark.parametrize("d", [72, 128])
def test_float32_highest_from_tf32_halves(d):
    # Under "highest", past d = 64 on sm_90 (the interpreter's blocks) the kernel takes the
    # launcher's TF32 halves of the rows in one chunk (three TF32 products per GEMM), the
    # queue's pass too.
    cfg = uniform.flash_config("tf32x3", d, True, 90, True)
    assert cfg["ONE_CHUNK"] and cfg["SPLIT_OPERANDS"] and cfg["BLOCK_D"] == 128
    assert not uniform.flash_config("tf32x3", d, True, 80, True)["ONE_CHUNK"]  # sm_80: chunked
    z = torch.randn(7, 5, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    halves = uniform.tf32_halves(z)
    hi, lo = halves[:7], halves[7:]
    # The high half has TF32's 10 mantissa bits, and the halves carry z to float32's 2^-22.
    assert (hi.view(torch.int32) & 0x1FFF).eq(0).all() and (lo.view(torch.int32) & 0x1FFF).eq(0).all()
    assert ((hi + lo - z).abs() <= 2.0 ** -21 * z.abs()).all()
    x, queue = rows(140, d, torch.float32, 28), rows(30, d, torch.float32, 29)
    with cuda_fp32_matmul("ieee"):
        _check(tk.uniform_lse(x, queue, 2.0, True, 0, 1, True, True), x, queue, 2.0, True, torch.float32)


@pytest.mark.parametrize("with_grad", [True, False])
@pytest.mark.parametrize("d", [128, 200, 256])
def test_float64_wide_rows(d, with_grad):
    # float64 in one chunk up to d = 256 for the loss and 128 for the gradient (sm_90's
    # blocks under the interpreter); past 128 the gradient is chunked over the loss's
    # padded width (256: four 64-wide slices, d = 200 leaving padding in the last).
    cfg = uniform.flash_config("fp64", d, with_grad, 90, True)
    assert cfg["ONE_CHUNK"] == (d <= 128 or not with_grad)
    assert uniform.padded_width("fp64", d, 90, True) == (256 if d > 128 else 128)
    x = rows(140, d, torch.float64, 27)
    lse, gx, _ = tk.uniform_lse(x, None, 2.0, True, 0, 1, with_grad, False)
    ref_lse, ref_gx, _ = explicit_uniform_lse_and_grads(x, None, 2.0, True)
    tol = UNIFORM_TOL[torch.float64]
    torch.testing.assert_close(lse.double().cpu(), ref_lse, rtol=tol, atol=tol)
    if with_grad:
        atol = UNIFORM_GRAD_TOL[torch.float64] * ref_gx.abs().max()
        torch.testing.assert_close(gx.double().cpu(), ref_gx, rtol=0, atol=atol)
    else:
        assert gx.numel() == 0


@pytest.mark.parametrize("col_splits", [2, 5])
def test_diagonal_stage_under_column_splits(col_splits):
    # Three row blocks and a tail; the splits cut the columns at tile boundaries inside
    # and around the diagonal blocks, so the diagonal stage runs in some splits only.
    x, queue = rows(2 * 128 + 9, 8, torch.float64, 25), rows(30, 8, torch.float64, 26)
    whole = tk.uniform_lse(x, queue, 1.0, True, 0, 1, True, True, col_splits=1)
    split = tk.uniform_lse(x, queue, 1.0, True, 0, 1, True, True, col_splits=col_splits)
    _check(split, x, queue, 1.0, True, torch.float64)
    for a, b in zip(whole, split):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-13)


def test_float32_follows_torchs_matmul_setting():
    # Rows spread so that TF32 misses the package's error budget but float32 meets it:
    # the budget no longer overrides a user who allowed TF32.
    x = rows(20, 8, torch.float32, 27, scale=8.0)
    roundoff = {"tf32": uniform._C.TF32_UNIT_ROUNDOFF, "ieee": uniform._C.FLOAT32_UNIT_ROUNDOFF}
    t = 2.0
    max_sq = float(x.double().pow(2).sum(1).max())
    assert t * 16 * roundoff["tf32"] * max_sq > 1e-3 > t * 16 * roundoff["ieee"] * max_sq
    for setting, want in (("tf32", "tf32"), ("ieee", "tf32x3")):
        with cuda_fp32_matmul(setting):
            assert uniform.float32_precision() == want
            z, _, gram_p, grad_p, _ = uniform._plan_operands(x, None, t, True, True)
            assert z.dtype == torch.float32 and gram_p == grad_p == want
    # float64 inputs and raw 16-bit inputs are not float32 products: unchanged.
    with cuda_fp32_matmul("tf32"):
        assert uniform._plan_operands(x.double(), None, t, True, True)[2] == "ieee"
        assert uniform._plan_operands(rows(20, 8, torch.bfloat16, 28), None, t, True, True)[2] == "ieee"
