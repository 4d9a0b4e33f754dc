"""The Triton contrastive kernels' own machinery (pyhypersphere/triton_kernels/contrastive.py).

Under TRITON_INTERPRET=1 (conftest.py) they run on CPU tensors through numpy; on a GPU
machine with TRITON_INTERPRET=0 the same tests run compiled on CUDA tensors.  The
operators' contract (values, gradients, skipped positives, flags, parts, non-finite and
bad input, the losses through dispatch), which every implementation meets, is tested in
test_implementations.py; here what is particular to these kernels: the unmasked main loop
and the static shift, the masked blocks, 16-bit weights, TF32 products, chunked widths,
column splits and their merge.  References: log-sum-exps of explicit float64 logit
matrices with autograd (dense_contrastive.py).  Shapes cross the block sizes (32 rows for
float64, 128 otherwise; 128-wide features, 64 for float64 and 3xTF32) and the 128-row part
blocks (the padding unit); the interpreter is slow, so they stay small.
"""

import pytest
import torch

triton = pytest.importorskip("triton")

from dense_contrastive import dense_contrastive_lse_and_grads as reference  # noqa: E402
from dense_contrastive import mean_cross_entropy_and_grads  # noqa: E402
from implementations import CONTRASTIVE_GRAD_TOL as GRAD_TOL  # noqa: E402
from implementations import CONTRASTIVE_TOL as TOL  # noqa: E402
from pyhypersphere import gpu_backend  # noqa: E402
from pyhypersphere import triton_kernels as tk  # noqa: E402
from pyhypersphere._matmul_precision import cuda_fp32_matmul  # noqa: E402
from triton_device import DEVICE, INTERPRET, RUNNABLE  # noqa: E402

pytestmark = RUNNABLE


def rows(n, d, dtype, seed, norm=1.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    return (norm * x).to(dtype).to(DEVICE)


@pytest.mark.parametrize("na,nb,dtype,self_pairs,skip,col_splits,scale", [
    (150, 150, torch.float32, True, True, 1, 7.0),  # stacked: two blocks per side, the positives' spans
    (100, 100, torch.float32, True, False, 2, 7.0),
    (70, 100, torch.float64, True, True, 1, 7.0),  # N_a != N_b: rows of b without a positive
    (150, 150, torch.bfloat16, False, True, 3, 7.0),  # two row blocks, the positives on the diagonal
    (130, 200, torch.float32, False, False, None, 7.0),  # no special block: the main loop and the tail
    (100, 100, torch.float32, True, True, 1, 50.0),  # 2 scale > 80: no static shift (running max)
    (130, 200, torch.float32, False, True, 1, 50.0),
])
def test_main_loop_and_masked_stage_against_float64(na, nb, dtype, self_pairs, skip, col_splits, scale):
    # Enough blocks that the unmasked main loop (with and without the static shift), the
    # special blocks (diagonal, positives) and the partial tail all occur, with and
    # without a column split.
    a, b = rows(na, 8, dtype, 51), rows(nb, 8, dtype, 52)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    certified = tk.contrastive._static_shift(a, b, scale, acc)[1].item() > 0
    assert certified == (scale < 40)
    got = tk.contrastive_lse(a, b, scale, self_pairs, True, 0, 1, skip, col_splits=col_splits)
    g = torch.rand(na, generator=torch.Generator().manual_seed(53), dtype=torch.float64).to(acc).to(DEVICE)
    h = torch.rand(nb, generator=torch.Generator().manual_seed(54), dtype=torch.float64).to(acc).to(DEVICE)
    want_a, want_b, want_ga, want_gb = reference(a, b, scale, self_pairs, g, h, skip_positives=skip)
    for x, w in zip(got, (want_a, want_b)):
        torch.testing.assert_close(x.cpu().double(), w, rtol=TOL[dtype], atol=TOL[dtype] * scale)
    lse = (want_a.to(acc).to(DEVICE), want_b.to(acc).to(DEVICE))
    ga, gb = tk.contrastive_lse_backward(a, b, scale, self_pairs, *lse, g, h, 0, 1, True, True, skip,
                                         col_splits=col_splits)
    for x, w in ((ga, want_ga), (gb, want_gb)):
        torch.testing.assert_close(x.cpu().double(), w, rtol=0, atol=GRAD_TOL[dtype] * w.abs().max())


def test_16bit_gradient_of_a_mean_loss_keeps_its_small_weights():
    # NT-Xent's upstream gradient is 1/(2N) and its softmax weights ~1/(2N): products near
    # 1/(4N^2) = 2.4e-7 at N = 1024, deep in fp16's subnormals unless scaled first.  Here
    # 256 rows (weights ~1/512) with the upstream gradient of N = 4096, 1/8192: products
    # of 2.4e-7 too (without the scaling the error is 1.4e-2, five times the tolerance).
    # bfloat16 has float32's exponent range: no subnormals to fall into.
    n, dtype = 256, torch.float16
    a, b = rows(n, 16, dtype, 31), rows(n, 16, dtype, 32)
    g = torch.full((n,), 1 / 8192, dtype=torch.float32, device=DEVICE)
    want_a, want_b, want_ga, want_gb = reference(a, b, 2.0, True, g, g)
    lse = (want_a.float().to(DEVICE), want_b.float().to(DEVICE))
    ga, gb = tk.contrastive_lse_backward(a, b, 2.0, True, *lse, g, g, 0, 1, True, True)
    for got, want in ((ga, want_ga), (gb, want_gb)):
        torch.testing.assert_close(got.cpu().double(), want, rtol=0, atol=GRAD_TOL[dtype] * want.abs().max())


def test_tf32_products_when_torch_allows_them():
    # torch's TF32 setting picks the TF32 configuration (3xTF32 otherwise).
    a, b = rows(70, 40, torch.float32, 33), rows(50, 40, torch.float32, 34)
    with cuda_fp32_matmul("tf32"):
        assert tk.contrastive._precision(torch.float32) == "tf32"
        got = tk.contrastive_lse(a, b, 2.0, False, True, 0, 1)
        g, h = torch.full((70,), 0.5, device=DEVICE), torch.full((50,), 0.25, device=DEVICE)
        grads = tk.contrastive_lse_backward(a, b, 2.0, False, *got, g, h, 0, 1, True, True)
    want_a, want_b, want_ga, want_gb = reference(a, b, 2.0, False, g, h)
    # TF32 rounds the operands to 11 bits: logit errors ~ scale |a||b| 2^-11 on a GPU (the
    # interpreter multiplies in float32).
    tol = 4e-3 if not INTERPRET else 2e-5
    torch.testing.assert_close(got[0].cpu().double(), want_a, rtol=tol, atol=tol)
    torch.testing.assert_close(got[1].cpu().double(), want_b, rtol=tol, atol=tol)
    for x, w in zip(grads, (want_ga, want_gb)):
        torch.testing.assert_close(x.cpu().double(), w, rtol=0, atol=10 * tol * w.abs().max())


@pytest.mark.parametrize("dtype,d", [(torch.bfloat16, 272), (torch.float32, 136)])
def test_chunked_width_parts_and_strided_inputs(dtype, d):
    # d past the one-chunk width on every arch (chunked: 64 wide in 16 bits past 256 on
    # sm_90 and 128 on sm_80, d = 272; 32 wide for float32 with 3xTF32 past 128 on sm_90
    # and 64 before it, d = 136),
    # parts, and column slices of a wider tensor (the distributed share's z[:, :d]) as inputs.
    fmt = tk.uniform.operand_format(dtype, tk.contrastive._precision(dtype))
    assert not any(tk.contrastive.contrastive_config(fmt, d, "lse", arch, True)["ONE_CHUNK"] for arch in (80, 90))
    wide = rows(66, 2 * d, dtype, 35)
    a, b = wide[:, :d], wide[:, d:]
    assert not a.is_contiguous()
    g = torch.full((66,), 0.3, device=DEVICE)
    want_a, want_b, want_ga, want_gb = reference(a, b, 1.0, False, g, g)
    whole = tk.contrastive_lse(a, b, 1.0, False, True, 0, 1)
    parts = [tk.contrastive_lse(a, b, 1.0, False, True, p, 2) for p in range(2)]
    for side, want in ((0, want_a), (1, want_b)):
        torch.testing.assert_close(whole[side].cpu().double(), want, rtol=2e-5, atol=2e-5)
        combined = torch.logsumexp(torch.stack([p[side] for p in parts]), 0)
        torch.testing.assert_close(combined.cpu().double(), want, rtol=2e-5, atol=2e-5)
    lse = (want_a.float().to(DEVICE), want_b.float().to(DEVICE))
    grads = [tk.contrastive_lse_backward(a, b, 1.0, False, *lse, g, g, p, 2, True, True) for p in range(2)]
    for side, want in ((0, want_ga), (1, want_gb)):
        got = grads[0][side] + grads[1][side]
        torch.testing.assert_close(got.cpu().double(), want, rtol=0, atol=GRAD_TOL[dtype] * want.abs().max())


@pytest.mark.parametrize("dtype,precision,d,chunked", [
    (torch.float64, "ieee", 128, (False, False, False)),  # one chunk (16 x 16 with the gradient)
    (torch.float64, "ieee", 256, (False, False, True)),  # the gradient chunked over the lse's padded width
    (torch.float32, "ieee", 128, (False, False, False)),  # 3xTF32 ("highest"): one chunk from TF32 halves
    (torch.float32, "tf32", 200, (False, True, True)),  # TF32: CLIP's column sums chunked past 128
])
def test_wide_rows_one_chunk_and_chunked_kernels_of_one_launch(dtype, precision, d, chunked):
    # CLIP's shape (both lse from the column sums, both gradients) at widths where the lse
    # (plain, with column sums) and gradient kernels may differ in chunking but share the
    # padded rows (sm_90's blocks under the interpreter).
    fmt = tk.uniform.operand_format(dtype, "tf32x3" if precision == "ieee" else precision)
    assert chunked == tuple(not tk.contrastive.contrastive_config(fmt, d, k, 90, True)["ONE_CHUNK"]
                            for k in ("lse", "lse_col_sums", "grad"))
    a, b = rows(70, d, dtype, 36), rows(50, d, dtype, 37)
    g, h = torch.full((70,), 0.5, dtype=a.dtype, device=DEVICE), torch.full((50,), 0.25, dtype=a.dtype, device=DEVICE)
    with cuda_fp32_matmul(precision):
        got = tk.contrastive_lse(a, b, 7.0, False, True, 0, 1)
        grads = tk.contrastive_lse_backward(a, b, 7.0, False, *got, g, h, 0, 1, True, True)
    want_a, want_b, want_ga, want_gb = reference(a, b, 7.0, False, g, h)
    # TF32 on a GPU: logit errors ~ scale |a||b| 2^-11 (the interpreter multiplies in float32).
    exact = precision == "ieee" or INTERPRET
    tol, grad_tol = (TOL[dtype], GRAD_TOL[dtype]) if exact else (4e-3, 4e-2)
    for x, w in zip(got, (want_a, want_b)):
        torch.testing.assert_close(x.cpu().double(), w, rtol=tol, atol=tol * 7.0)
    for x, w in zip(grads, (want_ga, want_gb)):
        torch.testing.assert_close(x.cpu().double(), w, rtol=0, atol=grad_tol * w.abs().max())


@pytest.mark.parametrize("scale", [7.0, 50.0])
@pytest.mark.parametrize("d", [72, 128])
def test_float32_highest_from_tf32_halves(d, scale, monkeypatch):
    # Under "highest", past d = 64 on sm_90 (the interpreter's blocks) every kernel takes
    # the launcher's TF32 halves of a and b in one chunk (three TF32 products per GEMM, the
    # second product too): NT-Xent (stacked rows, skipped positives), CLIP (both lse from
    # the column sums, both gradients), InfoNCE's mean (the lse with the row gradient,
    # then the gradient kernel on the keys), each against float64; with the static shift
    # (scale 7) and without it (50: the online max, the gradient's tile shift).
    static = scale < 40
    assert (tk.contrastive._static_shift(*(rows(2, d, torch.float32, 0),) * 2, scale, torch.float32)[1] > 0) == static
    for kernel in ("lse", "lse_col_sums", "lse_grad", "grad"):
        cfg = tk.contrastive.contrastive_config("tf32x3", d, kernel, 90, static)
        assert cfg["ONE_CHUNK"] and cfg["SPLIT_OPERANDS"] and cfg["BLOCK_D"] == 128
        assert not tk.contrastive.contrastive_config("tf32x3", d, kernel, 80, static)["ONE_CHUNK"]  # sm_80
    split = []
    real = tk.contrastive.tf32_halves
    monkeypatch.setattr(tk.contrastive, "tf32_halves", lambda z: split.append(z.shape) or real(z))
    a, b = rows(70, d, torch.float32, 61), rows(70, d, torch.float32, 62)
    g = torch.rand(70, generator=torch.Generator().manual_seed(63), dtype=torch.float64).float().to(DEVICE)
    h = torch.rand(70, generator=torch.Generator().manual_seed(64), dtype=torch.float64).float().to(DEVICE)
    tol, grad_tol = TOL[torch.float32], GRAD_TOL[torch.float32]
    with cuda_fp32_matmul("ieee"):
        for self_pairs, skip in ((True, True), (False, False)):  # NT-Xent, CLIP
            want_a, want_b, want_ga, want_gb = reference(a, b, scale, self_pairs, g, h, skip_positives=skip)
            got = tk.contrastive_lse(a, b, scale, self_pairs, True, 0, 1, skip)
            for x, w in zip(got, (want_a, want_b)):
                torch.testing.assert_close(x.cpu().double(), w, rtol=tol, atol=tol * scale)
            lse = (want_a.float().to(DEVICE), want_b.float().to(DEVICE))
            grads = tk.contrastive_lse_backward(a, b, scale, self_pairs, *lse, g, h, 0, 1, True, True, skip)
            for x, w in zip(grads, (want_ga, want_gb)):
                torch.testing.assert_close(x.cpu().double(), w, rtol=0, atol=grad_tol * w.abs().max())
        want_mean, want_ga, want_gb = mean_cross_entropy_and_grads(a, b, scale)
        got = tk.contrastive_mean_lse(a, b, scale, True, True)
    torch.testing.assert_close(got[0].cpu().double(), want_mean, rtol=tol, atol=tol * scale)
    for x, w in ((got[1], want_ga), (got[2], want_gb)):
        torch.testing.assert_close(x.cpu().double(), w, rtol=0, atol=grad_tol * w.abs().max())
    # Split once per launch's operands (the stacked rows; a and b), 128 wide.
    assert split and all(shape[1] == 128 for shape in split)


@pytest.mark.parametrize("self_pairs", [True, False])
def test_column_split_merge_and_bitwise_reproducibility(self_pairs):
    # Few rows, many columns: the columns split over programs and merge in split order.
    a, b = rows(10, 16, torch.float32, 17), rows(10 if self_pairs else 300, 16, torch.float32, 18)
    h_len = b.shape[0]
    one = tk.contrastive_lse(a, b, 3.0, self_pairs, True, 0, 1, col_splits=1)
    split = tk.contrastive_lse(a, b, 3.0, self_pairs, True, 0, 1, col_splits=3)
    again = tk.contrastive_lse(a, b, 3.0, self_pairs, True, 0, 1, col_splits=3)
    for x, y, z in zip(one, split, again):
        torch.testing.assert_close(y, x, rtol=1e-6, atol=1e-6)
        assert torch.equal(y, z)
    g = torch.full((10,), 0.1, device=DEVICE)
    h = torch.full((h_len,), 0.1, device=DEVICE)
    grads = [tk.contrastive_lse_backward(a, b, 3.0, self_pairs, *one, g, h, 0, 1, True, True, col_splits=s)
             for s in (1, 3, 3)]
    for x, y, z in zip(*grads):
        torch.testing.assert_close(y, x, rtol=1e-6, atol=1e-7)
        assert torch.equal(y, z)


def test_registered_for_cuda_whatever_the_uniformity_backend():
    assert torch._C._dispatch_has_kernel_for_dispatch_key("pyhypersphere::contrastive_lse", "CUDA")
    assert torch._C._dispatch_has_kernel_for_dispatch_key("pyhypersphere::contrastive_lse_backward", "CUDA")
    assert torch._C._dispatch_has_kernel_for_dispatch_key("pyhypersphere::contrastive_mean_lse", "CUDA")
    assert gpu_backend.build_info()["contrastive_gpu_backend"] == "triton"


def test_sm80_blocks_of_the_16bit_gradients(monkeypatch):
    # The interpreter takes sm_90's blocks; on sm_80 the 16-bit kernels with a second
    # product run 128 x 32 tiles with plain loads at d = 128 (contrastive_config): the row
    # gradient (lse_grad) and the gradient kernel, both in the InfoNCE mean's pass.
    seen = []
    real = tk.contrastive.contrastive_config
    monkeypatch.setattr(tk.contrastive, "contrastive_config", lambda *a: seen.append(a) or real(*a))
    monkeypatch.setattr(tk.contrastive, "device_arch", lambda device: 80)
    a, b = rows(150, 128, torch.bfloat16, 57), rows(150, 128, torch.bfloat16, 58)
    want_mean, want_ga, want_gb = mean_cross_entropy_and_grads(a, b, 1 / 0.07)
    got = tk.contrastive_mean_lse(a, b, 1 / 0.07, True, True)
    torch.testing.assert_close(got[0].cpu().double(), want_mean, rtol=TOL[torch.bfloat16],
                               atol=TOL[torch.bfloat16] / 0.07)
    for x, want in ((got[1], want_ga), (got[2], want_gb)):
        torch.testing.assert_close(x.cpu().double(), want, rtol=0, atol=GRAD_TOL[torch.bfloat16] * want.abs().max())
    assert {a[2] for a in seen} == {"lse_grad", "grad"}
    assert all(real(*a) != real(*a[:3], 90, a[4]) for a in seen)


def test_mean_lse_column_split_against_float64_and_bitwise_reproducible():
    # MoCo's shape, few queries and a long queue: the columns split over programs.
    a, b = rows(10, 8, torch.float32, 31), rows(300, 8, torch.float32, 32)
    want_mean, want_ga, want_gb = mean_cross_entropy_and_grads(a, b, 1 / 0.07)
    split = tk.contrastive_mean_lse(a, b, 1 / 0.07, True, True, col_splits=3)
    again = tk.contrastive_mean_lse(a, b, 1 / 0.07, True, True, col_splits=3)
    torch.testing.assert_close(split[0].cpu().double(), want_mean, rtol=TOL[torch.float32], atol=TOL[torch.float32] / 0.07)
    for got, want in ((split[1], want_ga), (split[2], want_gb)):
        torch.testing.assert_close(got.cpu().double(), want, rtol=0, atol=GRAD_TOL[torch.float32] * want.abs().max())
    for x, y in zip(split, again):
        assert torch.equal(x, y)
