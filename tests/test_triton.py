"""The Triton kernels (pyhypersphere/triton_kernels) under the Triton interpreter.

TRITON_INTERPRET=1 (set in conftest.py before triton is imported) runs the kernels on CPU
tensors through numpy; on a GPU machine with TRITON_INTERPRET=0 the same tests run compiled
on CUDA tensors (the CPU operator stays on the CPU as the cross-check): indices, masks, block tails, the online max, the column split and
its merge, the part slicing.  References are float64 (explicit pair differences and a
log-sum-exp), and the CPU operator.  The interpreter is slow: shapes are small but cross
the block sizes (64 rows, 128 features for float32; 32 and 64 for float64).
The GPU-only checks (tl.dot operand types, registers, spills, tensor-core instructions)
are `python -m pyhypersphere.triton_kernels.compile_check`, run by .ci/run.
"""

import math

import pytest
import torch

triton = pytest.importorskip("triton")

import pyhypersphere  # noqa: E402
from pyhypersphere import gpu_backend  # noqa: E402
from pyhypersphere import triton_kernels as tk  # noqa: E402
from triton_device import DEVICE, INTERPRET, RUNNABLE, assert_same_value_error  # noqa: E402

ops = torch.ops.pyhypersphere

pytestmark = RUNNABLE


def rows(n, d, dtype, seed, scale=1.0, offset=0.0):
    if n == 0:
        return None
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    return (scale * x + offset).to(dtype).to(DEVICE)


def on_cpu(t):
    return None if t is None else t.cpu()


def reference_lse(x, queue, t, intra_batch):
    """float64 log-sum-exp over the pair set from explicit differences, with autograd."""
    exps = []
    if intra_batch:
        iu = torch.triu_indices(x.shape[0], x.shape[0], offset=1)
        exps.append(-t * (x[iu[0]] - x[iu[1]]).pow(2).sum(1))
    if queue is not None:
        exps.append((-t * (x[:, None, :] - queue[None, :, :]).pow(2).sum(-1)).flatten())
    return torch.logsumexp(torch.cat(exps), 0)


def reference(x, queue, t, intra_batch):
    xr = x.detach().double().requires_grad_()
    qr = None if queue is None else queue.detach().double().requires_grad_()
    lse = reference_lse(xr, qr, t, intra_batch)
    lse.backward()
    return lse.detach(), xr.grad, None if qr is None else qr.grad


# Tolerances against float64 evaluated on the same (rounded) inputs: float32 and the
# 16-bit formats accumulate in float32; gradients of 16-bit inputs carry weights rounded
# to the 16-bit format (bf16 2^-9, fp16 2^-11 relative), as their output rounding does.
TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 2e-4, torch.float16: 2e-4}
GRAD_TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 8e-3, torch.float16: 2e-3}

CASES = [  # n, k, d, intra_batch, t, dtype
    (2, 0, 3, True, 2.0, torch.float64),
    (3, 0, 1, True, 0.1, torch.float32),
    (65, 0, 64, True, 2.0, torch.float32),  # one row past a 64-row block
    (67, 0, 128, True, 2.0, torch.float64),  # three 32-row blocks, a tail; two 64-wide chunks
    (40, 0, 200, True, 100.0, torch.float32),  # d past the 128-wide block: chunked Gram and a
    (33, 70, 3, False, 2.0, torch.float32),  # the queue only, gradients to it
    (20, 45, 64, True, 1.0, torch.float64),
    (70, 10, 128, True, 2.0, torch.bfloat16),
    (30, 20, 16, True, 5.0, torch.float16),
]


@pytest.mark.parametrize("n,k,d,intra,t,dtype", CASES)
def test_values_and_gradients_against_float64(n, k, d, intra, t, dtype):
    x, queue = rows(n, d, dtype, 1), rows(k, d, dtype, 2)
    lse, gx, gq = tk.uniform_lse(x, queue, t, intra, 0, 1, True, queue is not None)
    ref_lse, ref_gx, ref_gq = reference(x, queue, t, intra)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert lse.dtype == torch.float64 and gx.dtype == gq.dtype == acc  # lse: ops.h
    assert lse.shape == () and gx.shape == x.shape
    torch.testing.assert_close(lse.double(), ref_lse, rtol=TOL[dtype], atol=TOL[dtype])
    scale = ref_gx.abs().max()
    torch.testing.assert_close(gx.double(), ref_gx, rtol=0, atol=GRAD_TOL[dtype] * scale)
    if queue is not None:
        torch.testing.assert_close(gq.double(), ref_gq, rtol=0, atol=GRAD_TOL[dtype] * ref_gq.abs().max())
    else:
        assert gq.numel() == 0


@pytest.mark.parametrize("n,k,d,intra,t,dtype", [CASES[2], CASES[5], CASES[7]])
def test_matches_cpu_operator(n, k, d, intra, t, dtype):
    x, queue = rows(n, d, dtype, 3), rows(k, d, dtype, 4)
    want = ops.uniform_lse(on_cpu(x), on_cpu(queue), t, intra, 0, 1, True, queue is not None)
    got = tk.uniform_lse(x, queue, t, intra, 0, 1, True, queue is not None)
    for g, w in zip((g.cpu() for g in got), want):
        assert g.dtype == w.dtype and g.shape == w.shape
        scale = float(w.abs().max()) if w.numel() else 1.0
        torch.testing.assert_close(g, w, rtol=GRAD_TOL[dtype], atol=GRAD_TOL[dtype] * max(1.0, scale))


@pytest.mark.parametrize("t,scale,queue_rows", [(1e-6, 1.0, 0), (2.0, 1e-3, 0), (1e-5, 1.0, 90)])
def test_small_loss_accurate_relative_to_itself(t, scale, queue_rows):
    # t * d^2 small: the loss lse - log |P| is small next to log |P| (issue 26).  Against
    # float64 with no cancellation, log1p(mean(expm1(-t d^2))), and the paper's formula in
    # float32 (it loses 3-5% here); the bar is one rounding of a float32 result.
    x, queue = rows(150, 16, torch.float32, 11, scale=scale), rows(queue_rows, 16, torch.float32, 12)
    lse, gx, _ = tk.uniform_lse(x, queue, t, True, 0, 1, True, False)
    pairs = 150 * 149 // 2 + 150 * queue_rows
    got = lse.item() - math.log(pairs)
    x64 = on_cpu(x).double()
    d2 = [torch.pdist(x64).pow(2)]
    if queue is not None:
        d2.append(torch.cdist(x64, on_cpu(queue).double()).pow(2).flatten())
    want = torch.log1p(torch.expm1(-t * torch.cat(d2)).mean()).item()
    assert abs(got - want) <= 2.0**-23 * abs(want)
    _, ref_gx, _ = reference(x, queue, t, True)
    assert (gx.cpu().double() - ref_gx).norm() <= 1e-6 * ref_gx.norm()


@pytest.mark.parametrize("scale,offset,dtype", [
    (30.0, 0.0, torch.float64),  # unnormalized, far apart: most weights underflow
    (3.0, 1e4, torch.float32),  # far from the origin: centering keeps the digits
    (40.0, 0.0, torch.float32),  # spread beyond TF32 and float32: computed in float64
    (1.0, 30.0, torch.bfloat16),  # raw 16-bit rows beyond the float32 budget: centered float32
])
def test_far_apart_and_unnormalized_rows(scale, offset, dtype):
    x, queue = rows(50, 8, dtype, 5, scale, offset), rows(20, 8, dtype, 6, scale, offset)
    lse, gx, gq = tk.uniform_lse(x, queue, 2.0, True, 0, 1, True, True)
    ref_lse, ref_gx, ref_gq = reference(x, queue, 2.0, True)
    torch.testing.assert_close(lse.double(), ref_lse, rtol=TOL[dtype], atol=TOL[dtype])
    torch.testing.assert_close(gx.double(), ref_gx, rtol=0, atol=GRAD_TOL[dtype] * ref_gx.abs().max())
    torch.testing.assert_close(gq.double(), ref_gq, rtol=0, atol=GRAD_TOL[dtype] * ref_gq.abs().max())


@pytest.mark.parametrize("num_parts", [2, 3])
@pytest.mark.parametrize("k", [0, 1])
def test_parts_sum_to_the_whole(num_parts, k):
    # Two part blocks of x (and two of the queue), so the triangle's and the rectangle's
    # tiles are spread over the parts.
    n = tk.uniform.PART_BLOCK + 6
    x, queue = rows(n, 5, torch.float64, 7), rows(k * n, 5, torch.float64, 8)
    has_q = queue is not None
    whole, gx, gq = tk.uniform_lse(x, queue, 0.5, True, 0, 1, True, has_q)
    parts = [tk.uniform_lse(x, queue, 0.5, True, p, num_parts, True, has_q) for p in range(num_parts)]
    lses = torch.stack([p[0] for p in parts])
    assert torch.isfinite(lses).all()
    # exp(lse) of the parts sum to the whole's: no pair counted twice or missed.
    torch.testing.assert_close(torch.logsumexp(lses, 0), whole, rtol=1e-12, atol=1e-12)
    # Each part's gradient is that of its own lse; weighted by its share they sum to the whole's.
    share = torch.exp(lses - whole)
    torch.testing.assert_close(sum(s * p[1] for s, p in zip(share, parts)), gx, rtol=1e-10, atol=1e-12)
    if has_q:
        torch.testing.assert_close(sum(s * p[2] for s, p in zip(share, parts)), gq, rtol=1e-10, atol=1e-12)


def test_empty_part_gives_minus_inf_and_zero_gradient():
    x = rows(2, 3, torch.float64, 9)
    lse, gx, _ = tk.uniform_lse(x, None, 2.0, True, 0, 3, True, False)  # one tile, three parts
    want = ops.uniform_lse(x.cpu(), None, 2.0, True, 0, 3, True, False)
    assert lse.item() == want[0].item() == -math.inf
    assert torch.equal(gx, torch.zeros_like(gx))


@pytest.mark.parametrize("grad_x,grad_queue", [(False, False), (True, False), (False, True), (True, True)])
def test_computes_only_what_is_asked(grad_x, grad_queue):
    x, queue = rows(20, 7, torch.float32, 10), rows(30, 7, torch.float32, 11)
    lse, gx, gq = tk.uniform_lse(x, queue, 2.0, True, 0, 1, grad_x, grad_queue)
    ref_lse, ref_gx, ref_gq = reference(x, queue, 2.0, True)
    torch.testing.assert_close(lse.double(), ref_lse, rtol=2e-5, atol=2e-5)
    assert gx.shape == (x.shape if grad_x else (0,)) and gq.shape == (queue.shape if grad_queue else (0,))
    assert gx.dtype == gq.dtype == torch.float32
    if grad_x:
        torch.testing.assert_close(gx.double(), ref_gx, rtol=0, atol=2e-5 * ref_gx.abs().max())
    if grad_queue:
        torch.testing.assert_close(gq.double(), ref_gq, rtol=0, atol=2e-5 * ref_gq.abs().max())


def test_column_split_merge_and_bitwise_reproducibility():
    # Few rows, many columns (a queue shape): the columns split over programs and merge.
    x, queue = rows(10, 16, torch.float32, 12), rows(300, 16, torch.float32, 13)
    one = tk.uniform_lse(x, queue, 2.0, True, 0, 1, True, True, col_splits=1)
    split = tk.uniform_lse(x, queue, 2.0, True, 0, 1, True, True, col_splits=3)
    again = tk.uniform_lse(x, queue, 2.0, True, 0, 1, True, True, col_splits=3)
    for a, b, c in zip(one, split, again):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)
        assert torch.equal(b, c)


def test_nonfinite_inputs_give_nan():
    x = rows(10, 4, torch.float32, 14)
    x[3, 1] = float("nan")
    lse, gx, _ = tk.uniform_lse(x, None, 2.0, True, 0, 1, True, False)
    assert torch.isnan(lse) and torch.isnan(gx).all()


@pytest.mark.parametrize("args", [
    (torch.zeros(5), None, 2.0, True, 0, 1, False, False),  # x not 2-D
    (torch.zeros(1, 3), None, 2.0, True, 0, 1, False, False),  # one row, no queue
    (torch.zeros(4, 3), None, 0.0, True, 0, 1, False, False),  # t <= 0
    (torch.zeros(4, 3), None, 2.0, True, 2, 2, False, False),  # part out of range
    (torch.zeros(4, 3), None, 2.0, True, 0, 1, False, True),  # grad_queue without a queue
    (torch.zeros(4, 3), torch.zeros(4, 2), 2.0, True, 0, 1, False, False),  # queue width
    (torch.zeros(4, 3), torch.zeros(4, 3, dtype=torch.float64), 2.0, True, 0, 1, False, False),
])
def test_bad_input_gets_the_operators_error(args):
    assert_same_value_error(ops.uniform_lse, tk.uniform_lse, args)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,d,alpha", [(1, 1, 2.0), (37, 3, 1.5), (33, 200, 0.7)])
def test_align_against_cpu_operator(dtype, n, d, alpha):
    x, y = rows(n, d, dtype, 15), rows(n, d, dtype, 16)
    y[0] = x[0]  # coincident rows: gradient 0
    want_loss, want_grad = ops.align_loss(x.cpu(), y.cpu(), alpha, True)
    loss, grad = tk.align_loss(x, y, alpha, True)
    loss, grad = loss.cpu(), grad.cpu()
    assert loss.dtype == want_loss.dtype and grad.dtype == want_grad.dtype and grad.shape == x.shape
    tol = {torch.float64: 1e-12, torch.float32: 1e-5}.get(dtype, 1e-2)
    torch.testing.assert_close(loss, want_loss, rtol=tol, atol=tol)
    torch.testing.assert_close(grad, want_grad, rtol=tol, atol=tol / n)
    assert torch.equal(grad[0], torch.zeros_like(grad[0]))
    ref = (x.double() - y.double()).norm(dim=1).pow(alpha).mean().cpu()
    torch.testing.assert_close(loss.double(), ref, rtol=tol, atol=tol)
    no_grad = tk.align_loss(x, y, alpha, False)
    assert no_grad[1].numel() == 0 and torch.equal(no_grad[0].cpu(), loss)


def test_align_bad_input_gets_the_operators_error():
    for args in [(torch.zeros(3, 2), torch.zeros(4, 2), 2.0), (torch.zeros(3, 2), torch.zeros(3, 2), -1.0)]:
        assert_same_value_error(ops.align_loss, tk.align_loss, (*args, False))


# ---------------------------------------------------------------- dispatch


@pytest.mark.parametrize("requested,with_cuda,has_triton,backend", [
    ("auto", True, True, "cuda"),
    ("auto", False, True, "triton"),
    ("auto", False, False, "none"),
    ("cuda", True, True, "cuda"),
    ("cuda", False, True, "none"),
    ("triton", True, True, "triton"),
    ("triton", True, False, "none"),
])
def test_backend_choice(requested, with_cuda, has_triton, backend):
    chosen, reason = gpu_backend.choose(requested, with_cuda, has_triton)
    assert chosen == backend and reason


def test_backend_choice_rejects_unknown_names():
    with pytest.raises(ValueError, match="PYHYPERSPHERE_GPU_BACKEND must be one of auto, cuda, triton"):
        gpu_backend.choose("tritonn", False, True)


def test_build_info_names_the_gpu_backend_and_registers_it():
    info = pyhypersphere.build_info()
    assert info["gpu_backend"] == gpu_backend.BACKEND and info["gpu_backend_reason"] == gpu_backend.REASON
    has_cuda_kernel = torch._C._dispatch_has_kernel_for_dispatch_key("pyhypersphere::uniform_lse", "CUDA")
    assert has_cuda_kernel == (info["gpu_backend"] != "none")


def test_tf32_rule_survives_mixed_legacy_and_new_settings():
    # torch 2.9+ raises in torch.get_float32_matmul_precision() once both the legacy
    # (allow_tf32) and the new (fp32_precision) settings were used (seen on the GPU
    # machine, torch 2.11); the launcher reads the CUDA matmul setting itself.
    from pyhypersphere._matmul_precision import cuda_matmul_allows_tf32

    matmul = torch.backends.cuda.matmul
    if not hasattr(matmul, "fp32_precision"):
        pytest.skip("torch before 2.9 has only allow_tf32")
    old = matmul.fp32_precision
    try:
        matmul.allow_tf32 = True  # legacy
        assert cuda_matmul_allows_tf32()
        matmul.fp32_precision = "ieee"  # new
        assert not cuda_matmul_allows_tf32()
        matmul.fp32_precision = "tf32"
        assert cuda_matmul_allows_tf32()
    finally:
        matmul.fp32_precision = old


def test_plan_without_host_read_flags_nonfinite_rows_on_the_device():
    # The CUDA-graph-capture path: no device-to-host read, the decision made blind, the
    # finiteness fact left on the device for the launcher to mask its outputs with.
    x = torch.randn(6, 3)
    for bad, want in ((False, True), (True, False)):
        if bad:
            x[2, 1] = float("inf")
        z, sq, finite, operand_ok, raw_ok, finite_dev = pyhypersphere._C._plan_uniform_rows(
            x, None, 2.0, pyhypersphere._C.FLOAT32_UNIT_ROUNDOFF, raw_16bit_operands=True, host_read=False)
        assert finite and not raw_ok and finite_dev.dim() == 0 and bool(finite_dev) == want
        assert z.shape == x.shape and sq.shape == (6,)
