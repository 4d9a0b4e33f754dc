"""The CUDA kernels (csrc/cuda): uniform_lse and align_loss against float64 references.

Every precision mode (float64, float32 with and without TF32, bfloat16, float16), sizes
that are not multiples of the tile (up to 10^6 rows), queues, parts, non-contiguous
inputs, streams and devices, torch.compile, bitwise determinism and the O(N d) memory
bound.  The contract every implementation meets (empty parts, non-finite and bad input,
the public losses through dispatch) runs on the GPU too: test_implementations.py.

Skipped without a CUDA device of compute capability 8.0+ (and shared memory for a tile:
the glue's own rule, _C._cuda_tile_rows) or without a CUDA build of pyhypersphere.  PYHS_CUDA_TESTS_ON_CPU=1 runs the device-agnostic tests on the CPU
kernel instead: it checks the tests themselves (references, tolerances) where there is
no GPU.  The references are plain float64 torch code, independent of the kernels.
"""

import math
import os
from dataclasses import dataclass
from typing import Optional

import pytest
import torch

import pyhypersphere
from conftest import unit_rows
from pyhypersphere import align_loss, uniform_loss
from pyhypersphere.ops import align as align_ops
from pyhypersphere.ops import uniform as uniform_ops
from pyhypersphere.ops._common import accumulate_dtype
from pyhypersphere._matmul_precision import cuda_fp32_matmul
from pyhypersphere.reference import reference_align_loss

ON_CPU = os.environ.get("PYHS_CUDA_TESTS_ON_CPU", "") not in ("", "0")
DEVICE = "cpu" if ON_CPU else "cuda"


def _skip_reason() -> Optional[str]:
    if ON_CPU:
        return None
    if not torch.cuda.is_available():
        return "no CUDA device"
    if not pyhypersphere.build_info()["with_cuda"]:
        return ("pyhypersphere was built without its CUDA kernels (PYHYPERSPHERE_CUDA=auto found no "
                "CUDA torch or nvcc); rebuild with PYHYPERSPHERE_CUDA=1")
    major, minor = torch.cuda.get_device_capability()
    if major < 8:
        return f"the CUDA kernels need compute capability 8.0+, this GPU has {major}.{minor}"
    # The glue's rule (uniform_block_rows_for): a tile size whose shared memory fits.
    optin = torch.cuda.get_device_properties(0).shared_memory_per_block_optin
    rows = pyhypersphere._C._cuda_tile_rows(optin)
    if min(rows.values()) == 0:
        return f"no CUDA tile fits in {optin} bytes of shared memory per block: {rows}"
    return None


SKIP_REASON = _skip_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or "")]
cuda_only = pytest.mark.skipif(ON_CPU, reason="CUDA-specific (PYHS_CUDA_TESTS_ON_CPU runs the CPU kernel)")


# ---------------------------------------------------------------- precision modes


@dataclass(frozen=True)
class Mode:
    """A precision mode and its tolerances against the float64 reference.

    lse: |lse - ref| <= lse_atol + lse_rtol |ref|.  Gradients: max|g - ref| <= grad_rtol
    max|ref| (the gradient's own scale: single entries can be ~0).
    """

    name: str
    dtype: torch.dtype
    fp32_precision: Optional[str]  # torch.backends.cuda.matmul.fp32_precision to run under
    lse_atol: float
    lse_rtol: float
    grad_rtol: float


MODES = {
    # FP64 tensor cores, float64 everywhere.
    "float64": Mode("float64", torch.float64, None, 1e-10, 1e-12, 1e-9),
    # 3xTF32 products reach float32 accuracy; float32 sums over ~N terms.
    "float32": Mode("float32", torch.float32, "ieee", 1e-5, 2e-6, 3e-4),
    # TF32 keeps 10 mantissa bits of each product operand (relative step 2^-11); the
    # policy uses it only where t * 16 * 2^-11 * max |z|^2 <= 1e-3, else 3xTF32.
    "tf32": Mode("tf32", torch.float32, "tf32", 5e-3, 0.0, 1e-2),
    # 16-bit: the raw inputs are the operands (exact), the weights are rounded to the
    # input type in W Z (~2^-8 / 2^-11 relative on the gradient); also held to the
    # flash-attention criterion (check_16bit).
    "bfloat16": Mode("bfloat16", torch.bfloat16, None, 1e-2, 0.0, 3e-2),
    "float16": Mode("float16", torch.float16, None, 3e-3, 0.0, 1e-2),
}
ALL_MODES = list(MODES)


@pytest.fixture
def mode(request):
    """Runs the test under MODES[request.param]'s float32 matmul precision."""
    m = MODES[request.param]
    if m.fp32_precision is None:
        yield m
        return
    with cuda_fp32_matmul(m.fp32_precision):
        yield m


# ---------------------------------------------------------------- references


def pair_mask(n, k, intra, device, row_begin=0, row_end=None):
    """Rows [row_begin, row_end) of the [n, n + k] mask of the pair set: i < j within x
    (intra), and every (i, queue_j).  A chunk of rows only: the whole mask at N = 10^5
    would be 10 GB (and its temporaries several times that)."""
    rows = torch.arange(row_begin, n if row_end is None else row_end, device=device)[:, None]
    cols = torch.arange(n + k, device=device)[None, :]
    within = (cols < n) & (cols > rows) if intra else torch.zeros(rows.shape[0], n + k, dtype=torch.bool, device=device)
    return within | (cols >= n)


def reference_lse_grad(x, queue=None, t=2.0, intra=True, chunk=2048):
    """float64 lse over the pair set and d lse / d x, d lse / d queue.

    Shift-stable (global max first) and chunked over x's rows: O(chunk * (N + K)) memory,
    so it also serves N = 10^5 and 10^6 on a GPU.  Returns (lse, grad_x, grad_queue).
    """
    z = x.detach().double()
    q = queue.detach().double() if queue is not None else None
    rows = torch.cat([z, q]) if q is not None else z
    n, k = z.shape[0], (q.shape[0] if q is not None else 0)
    sq = (rows * rows).sum(1)

    def exponents(i0, i1):
        d2 = (sq[i0:i1, None] + sq[None, :] - 2.0 * z[i0:i1] @ rows.T).clamp_min(0)
        keep = pair_mask(n, k, intra, z.device, i0, i1)
        return (-t * d2).masked_fill(~keep, -math.inf)

    chunks = [(i0, min(i0 + chunk, n)) for i0 in range(0, n, chunk)]
    m = max(exponents(i0, i1).max().item() for i0, i1 in chunks)
    total = 0.0
    g = torch.zeros_like(rows)
    for i0, i1 in chunks:
        w = (exponents(i0, i1) - m).exp()
        zi = z[i0:i1]
        total += w.sum().item()
        g[i0:i1] += w.sum(1)[:, None] * zi - w @ rows  # row side: sum_j w_ij (z_i - z_j)
        g += w.sum(0)[:, None] * rows - w.T @ zi       # column side: sum_i w_ij (z_j - z_i)
    g *= -2.0 * t / total
    lse = m + math.log(total)
    return lse, g[:n], (g[n:] if q is not None else None)


def lowp_torch_lse_grad(x, queue=None, t=2.0, intra=True):
    """The same quantity computed by plain torch in x's (16-bit) dtype, with autograd:
    the yardstick of the flash-attention criterion.  Dense: small inputs only."""
    xs = x.detach().clone().requires_grad_()
    qs = queue.detach().clone().requires_grad_() if queue is not None else None
    rows = torch.cat([xs, qs]) if qs is not None else xs
    n, k = xs.shape[0], (qs.shape[0] if qs is not None else 0)
    sq = (rows * rows).sum(1)
    d2 = (sq[:n, None] + sq[None, :] - 2 * xs @ rows.T).clamp_min(0)
    lse = torch.logsumexp((-t * d2)[pair_mask(n, k, intra, x.device)], 0)
    grads = torch.autograd.grad(lse, [xs] + ([qs] if qs is not None else []))
    return lse.item(), grads[0], (grads[1] if qs is not None else None)


def fused(x, queue=None, t=2.0, intra=True, part=0, num_parts=1):
    """The op with compute_grad: (lse as a float, grad_x, grad_queue or None)."""
    lse, gx, gq = uniform_ops.uniform_lse(x, queue, t, intra, part, num_parts, True, queue is not None)
    return lse.item(), gx, (gq if queue is not None else None)


def rel_err(got, want):
    got, want = got.double().cpu(), want.double().cpu()
    scale = want.abs().max().item()
    return (got - want).abs().max().item() / (scale if scale > 0 else 1.0)


def check_against_reference(m, x, queue=None, t=2.0, intra=True, cond=1.0):
    """cond scales the tolerances: the exponents' absolute error grows with t |z|^2."""
    lse, gx, gq = fused(x, queue, t, intra)
    ref_lse, ref_gx, ref_gq = reference_lse_grad(x, queue, t, intra)
    # The op's gradients are in the accumulation dtype (csrc/ops.h).
    assert gx.dtype == accumulate_dtype(x.dtype) and gx.shape == x.shape and gx.device == x.device
    assert math.isfinite(lse)
    assert abs(lse - ref_lse) <= cond * (m.lse_atol + m.lse_rtol * abs(ref_lse)), (m.name, lse, ref_lse)
    assert rel_err(gx, ref_gx) <= cond * m.grad_rtol, (m.name, rel_err(gx, ref_gx))
    if queue is not None:
        assert gq.dtype == accumulate_dtype(queue.dtype) and gq.shape == queue.shape
        assert rel_err(gq, ref_gq) <= cond * m.grad_rtol, (m.name, rel_err(gq, ref_gq))
    if m.dtype in (torch.bfloat16, torch.float16):
        check_16bit_gradients(x, queue, t, intra, (gx, gq), (ref_gx, ref_gq))


def check_16bit_gradients(x, queue, t, intra, got, ref):
    """Flash-attention's criterion: the kernel's error against the float64 truth on the
    same 16-bit inputs is at most twice that of plain torch computing in the 16-bit type
    (plus one rounding of the 16-bit output).  On gradients, whose max over many entries
    is a stable statistic; the scalar lse is held to the absolute bounds of MODES."""
    pt = lowp_torch_lse_grad(x, queue, t, intra)
    eps = torch.finfo(x.dtype).eps
    for g, r, p in zip(got, ref, pt[1:]):
        if r is None:
            continue
        assert rel_err(g, r) <= 2 * rel_err(p, r) + eps, (rel_err(g, r), rel_err(p, r))


def rows_on_device(n, d, dtype, seed, scale=1.0):
    """Unit-norm rows (the paper's setting); for d = 1, where unit rows are +-1 and so
    mostly exact duplicates, uniform values in [-scale, scale] instead: the gradient of
    a duplicate pair is a difference of equal sums (s_i z_i - sum_j w_ij z_j), which any
    float32 evaluation of it resolves only to ~1e-3."""
    if d == 1:
        g = torch.Generator().manual_seed(seed)
        x = scale * (2 * torch.rand(n, 1, generator=g, dtype=torch.float64) - 1)
        return x.to(device=DEVICE, dtype=dtype)
    return unit_rows(n, d, device=DEVICE, seed=seed, scale=scale).to(dtype)


# ---------------------------------------------------------------- the reference itself


def test_reference_matches_autograd_of_dense_logsumexp():
    # The chunked float64 reference against autograd of the dense formula (both plain torch).
    x = unit_rows(70, 5, seed=1) * 1.5
    q = unit_rows(30, 5, seed=2)
    for queue, intra in ((None, True), (q, True), (q, False)):
        lse, gx, gq = reference_lse_grad(x, queue, 1.3, intra, chunk=16)
        xs = x.clone().requires_grad_()
        qs = queue.clone().requires_grad_() if queue is not None else None
        rows = torch.cat([xs, qs]) if qs is not None else xs
        d2 = (xs[:, None, :] - rows[None, :, :]).pow(2).sum(-1)
        want = torch.logsumexp((-1.3 * d2)[pair_mask(70, 0 if queue is None else 30, intra, "cpu")], 0)
        want.backward()
        assert abs(lse - want.item()) < 1e-12
        torch.testing.assert_close(gx, xs.grad, rtol=1e-10, atol=1e-13)
        if queue is not None:
            torch.testing.assert_close(gq, qs.grad, rtol=1e-10, atol=1e-13)


# ---------------------------------------------------------------- values and gradients


@pytest.mark.parametrize("mode", ALL_MODES, indirect=True)
@pytest.mark.parametrize("n,d", [(2, 3), (3, 1), (127, 5), (129, 1), (257, 67), (1000, 128), (300, 1031), (4099, 33)])
def test_matches_float64_reference(mode, n, d):
    x = rows_on_device(n, d, mode.dtype, seed=n * 7 + d)
    check_against_reference(mode, x)


@pytest.mark.parametrize("mode", ALL_MODES, indirect=True)
@pytest.mark.parametrize("n,k,intra", [(1, 5, True), (100, 300, True), (300, 100, True), (130, 260, False), (257, 1, False)])
def test_queue_matches_float64_reference(mode, n, k, intra):
    x = rows_on_device(n, 40, mode.dtype, seed=n + k)
    q = rows_on_device(k, 40, mode.dtype, seed=n + k + 1)
    check_against_reference(mode, x, q, intra=intra)


@pytest.mark.parametrize("mode", ["float64", "float32"], indirect=True)
@pytest.mark.parametrize("t,scale,offset", [(50.0, 1.0, 0.0), (1000.0, 1.0, 0.0), (2.0, 10.0, 20.0)])
def test_far_apart_rows_stay_finite(mode, t, scale, offset):
    # exp(-t d^2) underflows for every pair (exponents ~ -100 to -2000): only the shifted
    # sums give a value.  Blocks meet their largest weights at different tiles, so the
    # running shifts rise and rescale what the blocks hold.  (TF32's ~1e-3 error on
    # the exponents is too coarse at t |z|^2 ~ 1000.)
    x = rows_on_device(700, 16, mode.dtype, seed=5, scale=scale) + offset
    check_against_reference(mode, x, t=t, cond=max(1.0, t * scale**2 / 50))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["float32", "tf32", "bfloat16"], indirect=True)
@pytest.mark.parametrize("n", [16385, 100_000])
def test_large_n_matches_float64_reference(mode, n):
    x = rows_on_device(n, 128, mode.dtype, seed=n)
    lse, gx, _ = fused(x)
    ref_lse, ref_gx, _ = reference_lse_grad(x)
    assert abs(lse - ref_lse) <= mode.lse_atol + mode.lse_rtol * abs(ref_lse)
    assert rel_err(gx, ref_gx) <= mode.grad_rtol


def clustered_reference(points, copies, t):
    """float64 lse and gradient for rows that repeat points[m] copies[m] times: pairs of
    copies have weight 1 (distance 0), pairs across points c_m c_m' exp(-t d^2).  O(M^2 d)."""
    p = points.double()
    c = copies.double()
    e = -t * (p[:, None, :] - p[None, :, :]).pow(2).sum(-1)
    e.fill_diagonal_(-math.inf)
    same = c * (c - 1) / 2  # pairs among the copies of one point
    shift = max(e.max().item(), 0.0 if (copies > 1).any() else -math.inf)
    w = (e - shift).exp() * c[None, :]  # w[m, m'] = c_m' exp(e - shift)
    total = (same.sum() * math.exp(-shift)).item() + 0.5 * (w * c[:, None]).sum().item()
    grad = (-2 * t / total) * (w.sum(1)[:, None] * p - w @ p)  # per copy of each point
    return shift + math.log(total), grad


@pytest.mark.slow
@cuda_only
def test_million_rows_against_clustered_reference():
    # N = 10^6 + 3 rows (7813 blocks, 30.5M tiles): 1000 points repeated 1000 times plus 3
    # single points, shuffled.  The exact answer costs O(points^2), whatever N.
    points = rows_on_device(1003, 32, torch.float32, seed=11)
    copies = torch.tensor([1000] * 1000 + [1] * 3, device=DEVICE)
    index = torch.repeat_interleave(torch.arange(1003, device=DEVICE), copies)
    index = index[torch.randperm(index.numel(), generator=torch.Generator().manual_seed(0)).to(DEVICE)]
    x = points[index]
    lse, gx, _ = fused(x)
    ref_lse, ref_grad = clustered_reference(points, copies, 2.0)
    m = MODES["float32"]
    assert abs(lse - ref_lse) <= m.lse_atol + m.lse_rtol * abs(ref_lse)
    assert rel_err(gx, ref_grad[index]) <= m.grad_rtol


@pytest.mark.slow
@cuda_only
def test_64bit_offsets():
    # rows x padded columns > 2^31 elements: offsets past int32 in every kernel.  The data
    # sits in the last 3 columns (the largest offsets); the zero columns leave the
    # distances, so the reference runs on those 3 columns alone.  Few rows, many columns:
    # every tile rewrites its two blocks' gradient accumulators (B x d floats each), so the
    # traffic grows as N^2 d / B - about 9 TB (most of an hour) at N = 66000, d = 33000,
    # a few hundred GB here for the same 2.2e9 elements.
    n, d = 2_000, 1_100_000
    if torch.cuda.mem_get_info()[0] < 60 * 2**30:
        pytest.skip("needs 60 GiB of free GPU memory")
    tail = rows_on_device(n, 3, torch.float32, seed=12)
    x = torch.zeros(n, d, dtype=torch.bfloat16, device=DEVICE)
    x[:, -3:] = tail.to(torch.bfloat16)
    lse, gx, _ = fused(x)
    ref_lse, ref_gx, _ = reference_lse_grad(x[:, -3:])
    del x
    assert abs(lse - ref_lse) <= MODES["bfloat16"].lse_atol
    assert rel_err(gx[:, -3:], ref_gx) <= MODES["bfloat16"].grad_rtol
    assert gx[:, :-3].abs().max().item() == 0.0


# ---------------------------------------------------------------- layouts, parts, queue


@pytest.mark.parametrize("mode", ["float32", "bfloat16"], indirect=True)
def test_non_contiguous_inputs_equal_contiguous(mode):
    base = rows_on_device(600, 80, mode.dtype, seed=9)
    x = base[:, ::2]                              # strided columns
    q = rows_on_device(40, 300, mode.dtype, seed=10).t()[:, :40]  # transposed view
    assert not x.is_contiguous() and not q.is_contiguous()
    got = fused(x, q)
    want = fused(x.contiguous(), q.contiguous())
    assert got[0] == want[0]
    assert torch.equal(got[1], want[1]) and torch.equal(got[2], want[2])


@pytest.mark.parametrize("mode", ["float64", "float32", "bfloat16"], indirect=True)
@pytest.mark.parametrize("n,k,num_parts", [(1000, 0, 2), (1000, 0, 7), (700, 300, 3), (300, 700, 5)])
def test_parts_combine_to_the_whole(mode, n, k, num_parts):
    # Each part sums a disjoint slice of the tiles; the slices cover every pair once, so
    # the parts' lse combine by log-sum-exp and their gradients weighted by exp(lse_p - lse).
    x = rows_on_device(n, 20, mode.dtype, seed=n + num_parts)
    q = rows_on_device(k, 20, mode.dtype, seed=k + 1) if k else None
    whole = fused(x, q)
    parts = [fused(x, q, part=p, num_parts=num_parts) for p in range(num_parts)]
    lses = torch.tensor([p[0] for p in parts], dtype=torch.float64)
    combined = torch.logsumexp(lses, 0).item()
    assert abs(combined - whole[0]) <= 2 * (mode.lse_atol + mode.lse_rtol * abs(whole[0]))
    weights = (lses - combined).exp()
    gx = sum(w * p[1].double() for w, p in zip(weights.tolist(), parts))
    assert rel_err(gx, whole[1]) <= 2 * mode.grad_rtol
    if q is not None:
        gq = sum(w * p[2].double() for w, p in zip(weights.tolist(), parts))
        assert rel_err(gq, whole[2]) <= 2 * mode.grad_rtol


# ---------------------------------------------------------------- determinism


@pytest.mark.parametrize("mode", ALL_MODES, indirect=True)
@pytest.mark.parametrize("deterministic", [False, True])
def test_bitwise_reproducible(mode, deterministic):
    # 3000 rows + a queue: hundreds of tiles over many rounds, CTAs racing for them.  The
    # kernels have one path, fixed-order in every update, with or without the flag.
    x = rows_on_device(3000, 64, mode.dtype, seed=21)
    q = rows_on_device(1000, 64, mode.dtype, seed=22)
    old = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        runs = [fused(x, q) for _ in range(3)]
    finally:
        torch.use_deterministic_algorithms(old)
    for other in runs[1:]:
        assert other[0] == runs[0][0]
        assert torch.equal(other[1], runs[0][1]) and torch.equal(other[2], runs[0][2])


# ---------------------------------------------------------------- devices and streams


@cuda_only
def test_tf32_setting_is_honored():
    # TF32 where its roundoff meets the budget (2 * 16 * 2^-11 * |z|^2 <= 1e-3: |z| = 0.2)...
    x = rows_on_device(1000, 128, torch.float32, seed=31, scale=0.2)
    ref_lse, ref_gx, _ = reference_lse_grad(x)
    with cuda_fp32_matmul("ieee"):
        accurate = fused(x)
    with cuda_fp32_matmul("tf32"):
        fast = fused(x)
    assert rel_err(accurate[1], ref_gx) < 5e-5
    assert rel_err(fast[1], ref_gx) > rel_err(accurate[1], ref_gx)
    # ...and float32 accuracy (the same 3xTF32 kernel, bitwise) where it does not: unit rows.
    unit = rows_on_device(1000, 128, torch.float32, seed=32)
    with cuda_fp32_matmul("ieee"):
        accurate = fused(unit)
    with cuda_fp32_matmul("tf32"):
        fallback = fused(unit)
    assert fallback[0] == accurate[0] and torch.equal(fallback[1], accurate[1])


@cuda_only
def test_side_stream():
    x = rows_on_device(2000, 32, torch.float32, seed=51)
    want = fused(x)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        lse, gx, _ = uniform_ops.uniform_lse(x, None, 2.0, True, 0, 1, True, False)
        value = align_loss(x, x.flip(0))
    stream.synchronize()
    assert lse.item() == want[0] and torch.equal(gx, want[1])
    assert math.isfinite(value.item())


@cuda_only
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs a second GPU")
def test_second_gpu():
    x0 = rows_on_device(1500, 48, torch.float32, seed=61)
    x1 = x0.to("cuda:1")
    torch.cuda.set_device(0)
    got = fused(x1)
    want = fused(x0)
    assert got[1].device == torch.device("cuda:1") and torch.cuda.current_device() == 0
    assert abs(got[0] - want[0]) <= 1e-6 * abs(want[0])
    assert rel_err(got[1], want[1].to("cuda:1")) <= 1e-6
    value = align_loss(x1, x1.roll(1, 0))
    assert value.device == torch.device("cuda:1")


# ---------------------------------------------------------------- PyTorch integration


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_compile_fullgraph_matches_eager():
    x = rows_on_device(700, 32, torch.float32, seed=81)
    q = rows_on_device(300, 32, torch.float32, seed=82)

    def loss_fn(x, q):
        return uniform_loss(x, 2.0, queue=q) + align_loss(x, q[:1].expand_as(x))

    compiled = torch.compile(loss_fn, fullgraph=True)
    results = []
    for fn in (loss_fn, compiled):
        xx, qq = x.clone().requires_grad_(), q.clone().requires_grad_()
        value = fn(xx, qq)
        value.backward()
        results.append((value.detach(), xx.grad, qq.grad))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(results[1][2], results[0][2], rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- memory


@cuda_only
def test_extra_memory_is_a_few_copies_of_the_rows():
    # N^2 floats would be 16 GiB here; the op holds O(N d): centered rows, their padded
    # copy, the gradient accumulators, the gradient and its output.
    n, d = 65536, 128
    x = rows_on_device(n, d, torch.float32, seed=91).requires_grad_()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    uniform_loss(x).backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before
    row_bytes = n * d * 4
    assert extra <= 8 * row_bytes, f"extra {extra / row_bytes:.1f} x the rows"


# ---------------------------------------------------------------- align_loss


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("alpha", [2.0, 1.0, 0.5, 3.0])
@pytest.mark.parametrize("n,d", [(1, 1), (257, 33), (3000, 130)])
def test_align_matches_float64_reference(dtype, alpha, n, d):
    x = rows_on_device(n, d, dtype, seed=n + d)
    y = rows_on_device(n, d, dtype, seed=n + d + 1)
    y[0] = x[0]  # a row with x_i == y_i: zero gradient there (the CPU convention)
    xx = x.clone().requires_grad_()
    value = align_loss(xx, y, alpha)
    value.backward()
    x64 = x.double().requires_grad_()
    want = reference_align_loss(x64, y.double(), alpha)
    want.backward()
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]
    assert value.dtype == dtype
    assert abs(value.item() - want.item()) <= tol * max(1.0, abs(want.item()))
    grad_want = torch.nan_to_num(x64.grad, nan=0.0)  # the reference's 0/0 at x_i == y_i
    assert torch.count_nonzero(xx.grad[0]).item() == 0
    assert rel_err(xx.grad, grad_want) <= tol * 4


def test_align_bitwise_reproducible():
    x = rows_on_device(5000, 64, torch.float32, seed=101)
    y = rows_on_device(5000, 64, torch.float32, seed=102)
    runs = [align_ops.align(x, y, 2.0, True) for _ in range(3)]
    for other in runs[1:]:
        assert torch.equal(other[0], runs[0][0]) and torch.equal(other[1], runs[0][1])


# ---------------------------------------------------------------- row passes, splits, grids


@pytest.mark.parametrize("mode", ALL_MODES, indirect=True)
@pytest.mark.parametrize("k,num_parts", [(0, 1), (300, 1), (300, 3), (0, 4)])
def test_loss_without_gradient_matches_reference(mode, k, num_parts):
    # No gradient asked for: the row pass skips a_i (the row sums only), one feature slice.
    x = rows_on_device(700, 24, mode.dtype, seed=200 + k + num_parts)
    q = rows_on_device(k, 24, mode.dtype, seed=201) if k else None
    lses = [uniform_ops.uniform_lse(x, q, 2.0, True, p, num_parts, False, False)[0].item()
            for p in range(num_parts)]
    combined = torch.logsumexp(torch.tensor(lses, dtype=torch.float64), 0).item()
    ref_lse, _, _ = reference_lse_grad(x, q, 2.0, True)
    assert abs(combined - ref_lse) <= 2 * (mode.lse_atol + mode.lse_rtol * abs(ref_lse))
    with_grad = fused(x, q)[0] if num_parts == 1 else None
    if with_grad is not None:
        assert abs(lses[0] - with_grad) <= mode.lse_atol + mode.lse_rtol * abs(ref_lse)


def _run_with(x, q, num_parts=1, no_grad=False, intra=True, max_ctas=0, block_rows=0, grad_queue=None):
    """The op through the CUDA build's test entry (pyhypersphere_cuda): the row
    kernel's grid capped at max_ctas CTAs (0: one per work item), block_rows 64 for the
    kernels of 99 KiB devices (0: the device's)."""
    op = torch.ops.pyhypersphere_cuda.uniform_lse_with
    gq = (q is not None and not no_grad) if grad_queue is None else grad_queue
    out = []
    for p in range(num_parts):
        lse, gx, gqo = op(x, q, 2.0, intra, p, num_parts, not no_grad, gq, max_ctas, block_rows)
        out.append((lse.clone(), gx.clone(), gqo.clone()))
    return out


def _assert_bitwise(a, b):
    for (la, ga, qa), (lb, gb, qb) in zip(a, b):
        assert torch.equal(la, lb) and torch.equal(ga, gb) and torch.equal(qa, qb)


def _assert_parts_match_reference(mode, parts, x, q, intra):
    """The parts' (lse, grad_x, grad_q) combined (log-sum-exp; gradients weighted by
    exp(lse_p - lse)) against the float64 reference."""
    lses = torch.tensor([p[0].item() for p in parts], dtype=torch.float64)
    combined = torch.logsumexp(lses, 0).item()
    weights = (lses - combined).exp().tolist()
    gx = sum(w * p[1].double() for w, p in zip(weights, parts))
    ref_lse, ref_gx, ref_gq = reference_lse_grad(x, q, 2.0, intra)
    assert abs(combined - ref_lse) <= 2 * (mode.lse_atol + mode.lse_rtol * abs(ref_lse))
    assert rel_err(gx, ref_gx) <= 2 * mode.grad_rtol
    if q is not None and parts[0][2].numel():
        gq = sum(w * p[2].double() for w, p in zip(weights, parts))
        assert rel_err(gq, ref_gq) <= 2 * mode.grad_rtol


@cuda_only
def test_the_test_entry_is_the_op():
    x = rows_on_device(500, 40, torch.float32, seed=209)
    q = rows_on_device(300, 40, torch.float32, seed=208)
    (got,) = _run_with(x, q)
    want = uniform_ops.uniform_lse(x, q, 2.0, True, 0, 1, True, True)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]) and torch.equal(got[2], want[2])
    with pytest.raises(ValueError, match="block_rows must be 0 or 64"):
        _run_with(x, q, block_rows=32)
    with pytest.raises(ValueError, match="max_ctas must be >= 0"):
        _run_with(x, q, max_ctas=-1)


@cuda_only
@pytest.mark.parametrize("mode", ALL_MODES, indirect=True)
@pytest.mark.parametrize("no_grad", [False, True])
def test_bitwise_equal_across_grid_sizes(mode, no_grad):
    # Every work item writes its own partials and every merge has a fixed order: the
    # grid (how many CTAs loop over the items) changes no bit.
    x = rows_on_device(1500, 40, mode.dtype, seed=210)
    q = rows_on_device(700, 40, mode.dtype, seed=211)
    full = _run_with(x, q, no_grad=no_grad)
    for ctas in (1, 2, 7):
        _assert_bitwise(_run_with(x, q, no_grad=no_grad, max_ctas=ctas), full)


@cuda_only
@pytest.mark.parametrize("mode", ["float64", "float32", "bfloat16"], indirect=True)
@pytest.mark.parametrize("n,k,num_parts", [(256, 512 * 128, 1), (3 * 128 - 5, 511 * 128 + 7, 3), (40, 9000, 1)])
def test_queue_shapes_split_columns(mode, n, k, num_parts):
    # Few x rows against a long queue (MoCo's shape first): x's columns are split over
    # many work items whose (max, sum, a) partials are merged in split order.  Values and
    # gradients against float64, run to run and across grid sizes bitwise.
    x = rows_on_device(n, 8, mode.dtype, seed=220 + n)
    q = rows_on_device(k, 8, mode.dtype, seed=221 + n)
    first = _run_with(x, q, num_parts)
    _assert_bitwise(_run_with(x, q, num_parts), first)
    _assert_bitwise(_run_with(x, q, num_parts, max_ctas=3), first)
    _assert_parts_match_reference(mode, first, x, q, intra=True)


@cuda_only
@pytest.mark.parametrize("mode", ["float64", "float32", "bfloat16"], indirect=True)
@pytest.mark.parametrize("grad_x,grad_queue", [(True, False), (False, True)])
def test_queue_gradient_is_its_own_pass(mode, grad_x, grad_queue):
    # The queue's gradient is a second pass (queue rows against x's columns), run only
    # when asked for; x's a_i only when x's gradient is.  Each matches float64 alone.
    x = rows_on_device(300, 24, mode.dtype, seed=225)
    q = rows_on_device(900, 24, mode.dtype, seed=226)
    lse, gx, gq = uniform_ops.uniform_lse(x, q, 2.0, True, 0, 1, grad_x, grad_queue)
    ref_lse, ref_gx, ref_gq = reference_lse_grad(x, q)
    assert abs(lse.item() - ref_lse) <= mode.lse_atol + mode.lse_rtol * abs(ref_lse)
    assert (gx.numel() > 0) == grad_x and (gq.numel() > 0) == grad_queue
    if grad_x:
        assert rel_err(gx, ref_gx) <= mode.grad_rtol
    if grad_queue:
        assert rel_err(gq, ref_gq) <= mode.grad_rtol


@cuda_only
@pytest.mark.parametrize("mode", ALL_MODES, indirect=True)
def test_small_tiles_of_99_kib_devices(mode):
    # The 64-row kernels a device with 99 KiB of shared memory per block runs, forced
    # here: against float64, with parts, and bitwise across grid sizes.
    x = rows_on_device(333, 70, mode.dtype, seed=230)
    q = rows_on_device(130, 70, mode.dtype, seed=231)
    parts = _run_with(x, q, num_parts=3, block_rows=64)
    _assert_parts_match_reference(mode, parts, x, q, intra=True)
    _assert_bitwise(_run_with(x, q, num_parts=3, block_rows=64, max_ctas=2), parts)


@cuda_only
@pytest.mark.parametrize("t", [2e-8, 1e-4])
def test_float16_near_the_edge_of_its_range(t):
    # Rows near +60000, a tenth near -60000: centered, those reach -1.1e5 < -65504 (they
    # overflowed when the centered rows were rounded back to float16).  t = 2e-8: the raw
    # inputs are the operands (2e-8 * 16 * 2^-24 * 3e10 < 1e-3); t = 1e-4: over the
    # budget of raw and float32 operands, float64 rows.
    g = torch.Generator().manual_seed(240)
    side = torch.where(torch.rand(300, 1, generator=g) < 0.1, -60000.0, 60000.0).double()
    x = (side + 1000 * (2 * torch.rand(300, 8, generator=g, dtype=torch.float64) - 1)).half().to(DEVICE)
    assert torch.isfinite(x).all()
    lse, gx, _ = uniform_ops.uniform_lse(x, None, t, True, 0, 1, True, False)
    ref_lse, ref_gx, _ = reference_lse_grad(x, None, t)
    m = MODES["float16"]
    assert math.isfinite(lse.item()) and torch.isfinite(gx).all()
    assert abs(lse.item() - ref_lse) <= m.lse_atol + 1e-6 * abs(ref_lse)
    assert rel_err(gx, ref_gx) <= m.grad_rtol


@cuda_only
@pytest.mark.parametrize("mode", ["float32", "tf32"], indirect=True)
def test_float32_far_from_the_origin(mode):
    # Radius 100 with one close pair: the Gram form in float32 (let alone TF32) misses the
    # budget by far; the policy moves the rows to float64 (CPU: the same decision).
    x = rows_on_device(300, 8, torch.float64, seed=250, scale=100.0)
    x[1] = x[0] + 0.05
    x = x.float()
    lse, gx, _ = uniform_ops.uniform_lse(x, None, 2.0, True, 0, 1, True, False)
    ref_lse, ref_gx, _ = reference_lse_grad(x)
    assert abs(lse.item() - ref_lse) <= 2e-5 * max(1.0, abs(ref_lse))
    assert rel_err(gx, ref_gx) <= 3e-4


@cuda_only
@pytest.mark.parametrize("mode", ["tf32"], indirect=True)
def test_tf32_with_large_norms_falls_back_to_float32_accuracy(mode):
    # |z| = 3: TF32's exponent error 2 * 16 * 2^-11 * 9 ~ 0.14 is over the budget; the
    # kernel multiplies with 3xTF32 and meets the float32 tolerances.
    x = rows_on_device(1000, 64, torch.float32, seed=260, scale=3.0)
    check_against_reference(MODES["float32"], x)


@cuda_only
def test_concurrent_calls_on_two_streams():
    xs = [rows_on_device(3000, 48, torch.float32, seed=270 + i) for i in range(2)]
    want = [fused(x) for x in xs]
    streams = [torch.cuda.Stream() for _ in xs]
    out = [None, None]
    for s in streams:
        s.wait_stream(torch.cuda.current_stream())
    for _ in range(3):
        for i, (s, x) in enumerate(zip(streams, xs)):
            with torch.cuda.stream(s):
                out[i] = uniform_ops.uniform_lse(x, None, 2.0, True, 0, 1, True, False)
        torch.cuda.synchronize()
        for (lse, gx, _), w in zip(out, want):
            assert lse.item() == w[0] and torch.equal(gx, w[1])


@cuda_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_cuda_graph_capture(dtype):
    # No host read inside the op: it captures, replays on new data, and flags non-finite
    # inputs with NaN on the device.
    x = rows_on_device(900, 32, dtype, seed=280)
    q = rows_on_device(200, 32, dtype, seed=281)
    static_x, static_q = x.clone(), q.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        uniform_ops.uniform_lse(static_x, static_q, 2.0, True, 0, 1, True, True)  # warm-up
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        lse, gx, gq = uniform_ops.uniform_lse(static_x, static_q, 2.0, True, 0, 1, True, True)
    m = MODES["float64" if dtype == torch.float64 else "float32"]
    for seed in (282, 283):
        static_x.copy_(rows_on_device(900, 32, dtype, seed=seed))
        graph.replay()
        torch.cuda.synchronize()
        ref_lse, ref_gx, ref_gq = reference_lse_grad(static_x, static_q)
        assert abs(lse.item() - ref_lse) <= m.lse_atol + m.lse_rtol * abs(ref_lse)
        assert rel_err(gx, ref_gx) <= m.grad_rtol and rel_err(gq, ref_gq) <= m.grad_rtol
    static_x[5, 3] = math.inf
    graph.replay()
    torch.cuda.synchronize()
    assert math.isnan(lse.item()) and torch.isnan(gx).all() and torch.isnan(gq).all()


@cuda_only
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_compile_reduce_overhead():
    x = rows_on_device(800, 32, torch.float32, seed=290)

    def loss_fn(x):
        return uniform_loss(x, 2.0)

    compiled = torch.compile(loss_fn, mode="reduce-overhead", fullgraph=True)
    for _ in range(3):
        got = compiled(x)
    want = reference_lse_grad(x)[0] - math.log(800 * 799 / 2)
    assert abs(got.item() - want) <= 1e-5 * max(1.0, abs(want))


@cuda_only
def test_cuda_autocast():
    x = rows_on_device(400, 16, torch.float32, seed=300)
    y = rows_on_device(400, 16, torch.float32, seed=301)
    xb = x.bfloat16().requires_grad_()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        # The reference formula: pdist is on autocast's float32 list.
        ref = torch.pdist(x, p=2).pow(2).mul(-2).exp().mean().log()
        got = uniform_loss(xb)
        got_align = align_loss(xb, y.bfloat16())
    assert ref.dtype == torch.float32
    assert got.dtype == torch.float32 and got_align.dtype == torch.float32
    want = reference_lse_grad(xb)[0] - math.log(400 * 399 / 2)
    assert abs(got.item() - want) <= 1e-4 * abs(want)
    want_align = reference_align_loss(xb.detach().double(), y.bfloat16().double())
    assert abs(got_align.item() - want_align.item()) <= 1e-6 * abs(want_align.item())
    (got + got_align).backward()
    assert xb.grad.dtype == torch.bfloat16
