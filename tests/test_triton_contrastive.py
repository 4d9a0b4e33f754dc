"""The Triton contrastive kernels (pyhypersphere/triton_kernels/contrastive.py).

Under TRITON_INTERPRET=1 (conftest.py) they run on CPU tensors through numpy; on a GPU
machine with TRITON_INTERPRET=0 the same tests run compiled on CUDA tensors.  References:
log-sum-exps of explicit float64 logit matrices with autograd (op level) and the dense
float64 loss formulas of dense_contrastive.py (loss level, through the operators'
dispatch: on CUDA the registered Triton kernels, under the interpreter the same kernels
registered for the CPU key for the duration of those tests).  Shapes cross the block
sizes (32 rows for float64, 128 otherwise; 128-wide features, 64 for float64 and 3xTF32)
and the 128-row part blocks (the padding unit); the interpreter is slow, so they stay
small.
"""

import math

import pytest
import torch

triton = pytest.importorskip("triton")

from dense_contrastive import (  # noqa: E402
    dense_clip, dense_info_nce, dense_nt_xent, mean_cross_entropy_and_grads, value_and_grads,
)
from pyhypersphere import clip_loss, info_nce_loss, nt_xent_loss  # noqa: E402
from pyhypersphere import gpu_backend  # noqa: E402
from pyhypersphere import triton_kernels as tk  # noqa: E402
from pyhypersphere._matmul_precision import cuda_fp32_matmul  # noqa: E402
from triton_device import DEVICE, INTERPRET, RUNNABLE, assert_same_value_error  # noqa: E402

ops = torch.ops.pyhypersphere

pytestmark = RUNNABLE


def rows(n, d, dtype, seed, norm=1.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    return (norm * x).to(dtype).to(DEVICE)


def reference_lse(a, b, scale, self_pairs, skip_positives=False):
    """(lse over a's rows, lse over b's rows) from the explicit float64 logit matrix,
    without the positive pairs (a_i, b_i) when `skip_positives`."""
    na, nb = a.shape[0], b.shape[0]
    i = torch.arange(min(na, nb), device=a.device)
    if self_pairs:
        z = torch.cat([a, b])
        excluded = torch.eye(na + nb, dtype=torch.bool, device=z.device)
        if skip_positives:
            excluded[i, na + i] = excluded[na + i, i] = True
        lse = (scale * z @ z.T).masked_fill(excluded, -math.inf).logsumexp(1)
        return lse[:na], lse[na:]
    logits = scale * a @ b.T
    if skip_positives:
        logits = logits.index_put((i, i), torch.tensor(-math.inf, dtype=logits.dtype, device=a.device))
    return logits.logsumexp(1), logits.logsumexp(0)


def reference(a, b, scale, self_pairs, g, h, skip_positives=False):
    """float64 lse and the gradients of sum g lse_a + sum h lse_b (h None: no b terms)."""
    ar, br = (t.detach().cpu().double().requires_grad_() for t in (a, b))
    lse_a, lse_b = reference_lse(ar, br, scale, self_pairs, skip_positives)
    # A row without partners (lse -inf) has no gradient terms.
    total = (g.cpu().double() * lse_a).nan_to_num(neginf=0.0).sum()
    if h is not None:
        total = total + (h.cpu().double() * lse_b).nan_to_num(neginf=0.0).sum()
    total.backward()
    return lse_a.detach(), lse_b.detach(), ar.grad, br.grad


# Against float64 evaluated on the same (rounded) inputs: float32 and 16-bit inputs
# accumulate in float32 (3xTF32 products reach float32 accuracy); 16-bit gradients carry
# weights rounded to the 16-bit format (bf16 2^-9, fp16 2^-11 relative).
TOL = {torch.float64: 1e-11, torch.float32: 2e-5, torch.bfloat16: 2e-5, torch.float16: 2e-5}
GRAD_TOL = {torch.float64: 1e-11, torch.float32: 3e-5, torch.bfloat16: 1e-2, torch.float16: 3e-3}

CASES = [  # na, nb, d, scale, self_pairs, lse_b, dtype
    (1, 1, 1, 2.0, True, True, torch.float64),  # NT-Xent at N = 1: each view's only partner
    (2, 2, 1, 0.5, False, True, torch.float32),  # N = 2, d = 1
    (40, 40, 16, 2.0, True, True, torch.float32),  # NT-Xent
    (140, 130, 33, 14.3, False, True, torch.float32),  # CLIP, past a 128-row block
    (20, 300, 8, 1 / 0.07, False, False, torch.float32),  # InfoNCE with a queue: column splits
    (67, 35, 100, 3.0, True, True, torch.float64),  # 32-row blocks; chunked d (64-wide)
    (30, 30, 200, 2.0, False, True, torch.float32),  # d past the 128-wide block: chunked
    (33, 33, 64, 10.0, False, True, torch.bfloat16),
    (40, 40, 16, 5.0, True, True, torch.float16),
]


@pytest.mark.parametrize("na,nb,d,scale,self_pairs,lse_b,dtype", CASES)
def test_lse_and_gradients_against_float64(na, nb, d, scale, self_pairs, lse_b, dtype):
    a, b = rows(na, d, dtype, 1), rows(nb, d, dtype, 2)
    got_a, got_b = tk.contrastive_lse(a, b, scale, self_pairs, lse_b, 0, 1)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    g = torch.rand(na, generator=torch.Generator().manual_seed(3), dtype=torch.float64).to(acc).to(DEVICE)
    h = torch.rand(nb, generator=torch.Generator().manual_seed(4), dtype=torch.float64).to(acc).to(DEVICE)
    h = h if lse_b else None
    want_a, want_b, want_ga, want_gb = reference(a, b, scale, self_pairs, g, h)
    assert got_a.dtype == acc and got_a.shape == (na,)
    assert got_b.shape == ((nb,) if lse_b else (0,))
    torch.testing.assert_close(got_a.cpu().double(), want_a, rtol=TOL[dtype], atol=TOL[dtype] * scale)
    if lse_b:
        torch.testing.assert_close(got_b.cpu().double(), want_b, rtol=TOL[dtype], atol=TOL[dtype] * scale)
    # The backward takes the float64 lse so that only its own error is measured.
    lse_a = want_a.to(acc).to(DEVICE)
    lse_b_in = want_b.to(acc).to(DEVICE) if lse_b else a.new_empty((0,), dtype=acc)
    h_in = h if h is not None else a.new_empty((0,), dtype=acc)
    ga, gb = tk.contrastive_lse_backward(a, b, scale, self_pairs, lse_a, lse_b_in, g, h_in, 0, 1, True, True)
    assert ga.dtype == gb.dtype == acc and ga.shape == a.shape and gb.shape == b.shape
    for got, want in ((ga, want_ga), (gb, want_gb)):
        torch.testing.assert_close(got.cpu().double(), want, rtol=0, atol=GRAD_TOL[dtype] * want.abs().max())


@pytest.mark.parametrize("na,nb,d,scale,self_pairs,lse_b,dtype",
                         [CASES[0], CASES[1], CASES[2], CASES[3], CASES[5], CASES[7]])
def test_skipped_positives_against_float64(na, nb, d, scale, self_pairs, lse_b, dtype):
    # The losses' form: each row's lse over its negatives (N = 1 NT-Xent: none, -inf), the
    # positives' weights exactly 0 in the gradient; self pairs with N_a != N_b too.
    a, b = rows(na, d, dtype, 41), rows(nb, d, dtype, 42)
    got = tk.contrastive_lse(a, b, scale, self_pairs, True, 0, 1, True)
    acc = got[0].dtype
    g = torch.rand(na, generator=torch.Generator().manual_seed(43), dtype=torch.float64).to(acc).to(DEVICE)
    h = torch.rand(nb, generator=torch.Generator().manual_seed(44), dtype=torch.float64).to(acc).to(DEVICE)
    want_a, want_b, want_ga, want_gb = reference(a, b, scale, self_pairs, g, h, skip_positives=True)
    for x, w in zip(got, (want_a, want_b)):
        assert torch.equal(torch.isneginf(x.cpu()), torch.isneginf(w))
        torch.testing.assert_close(x.cpu().double(), w, rtol=TOL[dtype], atol=TOL[dtype] * scale)
    cpu = ops.contrastive_lse(a.cpu(), b.cpu(), scale, self_pairs, True, 0, 1, True)
    for x, w in zip(got, cpu):
        torch.testing.assert_close(x.cpu(), w, rtol=1e-5, atol=1e-5 * scale)
    lse = (want_a.to(acc).to(DEVICE), want_b.to(acc).to(DEVICE))
    ga, gb = tk.contrastive_lse_backward(a, b, scale, self_pairs, *lse, g, h, 0, 1, True, True, True)
    for x, w in ((ga, want_ga), (gb, want_gb)):
        torch.testing.assert_close(x.cpu().double(), w, rtol=0, atol=GRAD_TOL[dtype] * max(w.abs().max(), 1e-300))


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


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16bit_gradient_of_a_mean_loss_keeps_its_small_weights(dtype):
    # NT-Xent's upstream gradient is 1/(2N) and its softmax weights ~1/(2N): products
    # near 1/(4N^2) = 2.4e-7 at N = 1024, deep in fp16's subnormals unless scaled first.
    n = 1024
    a, b = rows(n, 16, dtype, 31), rows(n, 16, dtype, 32)
    g = torch.full((n,), 1 / (2 * n), dtype=torch.float32, device=DEVICE)
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


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_chunked_width_parts_and_strided_inputs(dtype):
    # d = 160 past the 128-wide block (chunked) in 16 bits, float32 parts, and column
    # slices of a wider tensor (the distributed share's z[:, :d]) as inputs.
    wide = rows(66, 2 * 160, dtype, 35)
    a, b = wide[:, :160], wide[:, 160:]
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


@pytest.mark.parametrize("na,nb,d,scale,self_pairs,lse_b,dtype", [CASES[3], CASES[4], CASES[7]])
def test_matches_cpu_operator(na, nb, d, scale, self_pairs, lse_b, dtype):
    a, b = rows(na, d, dtype, 5), rows(nb, d, dtype, 6)
    want = ops.contrastive_lse(a.cpu(), b.cpu(), scale, self_pairs, lse_b, 0, 1)
    got = tk.contrastive_lse(a, b, scale, self_pairs, lse_b, 0, 1)
    for x, w in zip(got, want):
        assert x.dtype == w.dtype and x.shape == w.shape
        torch.testing.assert_close(x.cpu(), w, rtol=1e-5, atol=1e-5 * scale)
    g = torch.full((na,), 1.0 / na, dtype=want[0].dtype)
    h = torch.full((nb,), 1.0 / nb, dtype=want[0].dtype) if lse_b else want[0].new_empty((0,))
    want_g = ops.contrastive_lse_backward(a.cpu(), b.cpu(), scale, self_pairs, *want, g, h, 0, 1, True, True)
    got_g = tk.contrastive_lse_backward(a, b, scale, self_pairs, *(v.to(DEVICE) for v in (*want, g, h)),
                                        0, 1, True, True)
    for x, w in zip(got_g, want_g):
        torch.testing.assert_close(x.cpu(), w, rtol=0, atol=GRAD_TOL[dtype] * w.abs().max())


def test_large_logits_are_stable():
    # Unnormalized rows and a small temperature: logits near 1000, where exp overflows.
    a, b = rows(30, 8, torch.float32, 7, norm=9.0), rows(30, 8, torch.float32, 8, norm=9.0)
    lse_a, lse_b = tk.contrastive_lse(a, b, 12.0, False, True, 0, 1)
    want_a, want_b = reference_lse(a.cpu().double(), b.cpu().double(), 12.0, False)
    assert want_a.max() > 500
    torch.testing.assert_close(lse_a.cpu().double(), want_a, rtol=1e-6, atol=1e-3)
    torch.testing.assert_close(lse_b.cpu().double(), want_b, rtol=1e-6, atol=1e-3)


@pytest.mark.parametrize("grad_a,grad_b,with_h", [(True, False, True), (False, True, True), (True, True, False),
                                                  (False, True, False), (False, False, True)])
def test_computes_only_what_is_asked(grad_a, grad_b, with_h):
    a, b = rows(20, 7, torch.float64, 9), rows(45, 7, torch.float64, 10)
    g = torch.rand(20, generator=torch.Generator().manual_seed(11), dtype=torch.float64).to(DEVICE)
    h = torch.rand(45, generator=torch.Generator().manual_seed(12), dtype=torch.float64).to(DEVICE) if with_h else None
    want_a, want_b, want_ga, want_gb = reference(a, b, 0.7, False, g, h)
    lse_b = want_b.to(DEVICE) if with_h else a.new_empty((0,))
    ga, gb = tk.contrastive_lse_backward(a, b, 0.7, False, want_a.to(DEVICE), lse_b,
                                         g, h if with_h else a.new_empty((0,)), 0, 1, grad_a, grad_b)
    assert ga.shape == (a.shape if grad_a else (0,)) and gb.shape == (b.shape if grad_b else (0,))
    if grad_a:
        torch.testing.assert_close(ga.cpu(), want_ga, rtol=1e-10, atol=1e-12)
    if grad_b:
        torch.testing.assert_close(gb.cpu(), want_gb, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("self_pairs", [True, False])
@pytest.mark.parametrize("num_parts", [2, 3])
def test_parts_combine_to_the_whole(self_pairs, num_parts):
    # 140 and 275 rows: two or three 128-row part blocks per side, so tiles of the
    # triangle and of the rectangle spread over the parts.
    a, b = rows(140, 5, torch.float64, 13), rows(140 if self_pairs else 275, 5, torch.float64, 14)
    whole = tk.contrastive_lse(a, b, 1.5, self_pairs, True, 0, 1)
    parts = [tk.contrastive_lse(a, b, 1.5, self_pairs, True, p, num_parts) for p in range(num_parts)]
    for side in (0, 1):
        lses = torch.stack([p[side] for p in parts])
        # exp(lse) of the parts sum to the whole's: no pair counted twice or missed.
        torch.testing.assert_close(torch.logsumexp(lses, 0), whole[side], rtol=1e-12, atol=1e-12)
        assert not torch.isneginf(lses).all(1).any()  # every part holds some pairs
    g, h = torch.full((140,), 0.3, dtype=torch.float64, device=DEVICE), torch.full((b.shape[0],), 0.2,
                                                                                  dtype=torch.float64, device=DEVICE)
    grads = [tk.contrastive_lse_backward(a, b, 1.5, self_pairs, *whole, g, h, p, num_parts, True, True)
             for p in range(num_parts)]
    want = tk.contrastive_lse_backward(a, b, 1.5, self_pairs, *whole, g, h, 0, 1, True, True)
    for side in (0, 1):
        torch.testing.assert_close(sum(gr[side] for gr in grads), want[side], rtol=1e-10, atol=1e-12)


def test_empty_part_gives_minus_inf_and_zero_gradient():
    a, b = rows(2, 3, torch.float64, 15), rows(2, 3, torch.float64, 16)
    lse_a, lse_b = tk.contrastive_lse(a, b, 1.0, False, True, 0, 3)  # one tile, three parts
    want = ops.contrastive_lse(a.cpu(), b.cpu(), 1.0, False, True, 0, 3)
    assert torch.isneginf(lse_a).all() and torch.isneginf(lse_b).all() and torch.isneginf(want[0]).all()
    whole = tk.contrastive_lse(a, b, 1.0, False, True, 0, 1)
    one = torch.ones(2, dtype=torch.float64, device=DEVICE)
    ga, gb = tk.contrastive_lse_backward(a, b, 1.0, False, *whole, one, one, 0, 3, True, True)
    assert torch.equal(ga, torch.zeros_like(ga)) and torch.equal(gb, torch.zeros_like(gb))


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


def test_nonfinite_inputs_and_lse_give_nan():
    a, b = rows(10, 4, torch.float32, 19), rows(12, 4, torch.float32, 20)
    a[3, 1] = float("nan")
    lse_a, lse_b = tk.contrastive_lse(a, b, 1.0, False, True, 0, 1)
    assert torch.isnan(lse_a).all() and torch.isnan(lse_b).all()
    x, y = rows(10, 4, torch.float32, 19), rows(10, 4, torch.float32, 20)
    y[0, 0] = float("inf")
    assert all(torch.isnan(v).all() for v in tk.contrastive_lse(x, y, 1.0, True, True, 0, 1))
    # A NaN lse (or NaN features) in the backward: NaN gradients, not a finite guess.
    a, b = rows(10, 4, torch.float32, 19), rows(12, 4, torch.float32, 20)
    lse_a, lse_b = tk.contrastive_lse(a, b, 1.0, False, True, 0, 1)
    lse_a[2] = float("nan")
    g, h = torch.ones(10, device=DEVICE), torch.ones(12, device=DEVICE)
    ga, gb = tk.contrastive_lse_backward(a, b, 1.0, False, lse_a, lse_b, g, h, 0, 1, True, True)
    assert torch.isnan(ga).all() and torch.isnan(gb).all()
    # A NaN lse_b given without its upstream gradient: NaN too, as on the CPU.
    lse_a, lse_b = tk.contrastive_lse(a, b, 1.0, False, True, 0, 1)
    lse_b[0] = float("nan")
    empty = g.new_empty((0,))
    ga, _ = tk.contrastive_lse_backward(a, b, 1.0, False, lse_a, lse_b, g, empty, 0, 1, True, False)
    want, _ = ops.contrastive_lse_backward(*(v.cpu() for v in (a, b)), 1.0, False,
                                           *(v.cpu() for v in (lse_a, lse_b, g, empty)), 0, 1, True, False)
    assert torch.isnan(ga).all() and torch.isnan(want).all()


@pytest.mark.parametrize("args", [
    (torch.zeros(5), torch.zeros(4, 5), 1.0, False, True, 0, 1),  # a not 2-D
    (torch.zeros(4, 3), torch.zeros(4, 2), 1.0, False, True, 0, 1),  # widths differ
    (torch.zeros(4, 3), torch.zeros(4, 3, dtype=torch.float64), 1.0, False, True, 0, 1),  # dtypes differ
    (torch.zeros(4, 3), torch.zeros(4, 3), 0.0, False, True, 0, 1),  # scale <= 0
    (torch.zeros(4, 3), torch.zeros(4, 3), 1.0, True, False, 0, 1),  # self pairs without lse_b
    (torch.zeros(4, 3), torch.zeros(4, 3), 1.0, False, True, 2, 2),  # part out of range
])
def test_bad_input_gets_the_operators_error(args):
    assert_same_value_error(ops.contrastive_lse, tk.contrastive_lse, args)


def test_backward_bad_input_gets_the_operators_error():
    a = torch.zeros(4, 3)
    args = (a, a, 1.0, True, torch.zeros(4), torch.zeros(4), torch.zeros(4), torch.zeros(0), 0, 1, True, True)
    assert_same_value_error(ops.contrastive_lse_backward, tk.contrastive_lse_backward, args,
                            match="grad_lse_b must have shape")


def test_registered_for_cuda_whatever_the_uniformity_backend():
    assert torch._C._dispatch_has_kernel_for_dispatch_key("pyhypersphere::contrastive_lse", "CUDA")
    assert torch._C._dispatch_has_kernel_for_dispatch_key("pyhypersphere::contrastive_lse_backward", "CUDA")
    assert torch._C._dispatch_has_kernel_for_dispatch_key("pyhypersphere::contrastive_mean_lse", "CUDA")
    assert gpu_backend.build_info()["contrastive_gpu_backend"] == "triton"


MEAN_LSE_CASES = [  # na, nb, d, scale, dtype, col_splits
    (2, 2, 1, 0.5, torch.float32, None),
    (45, 150, 33, 14.3, torch.float32, None),  # past a 128-row block
    (10, 300, 8, 1 / 0.07, torch.float32, 3),  # MoCo's shape: columns split over programs
    (35, 67, 100, 3.0, torch.float64, None),  # chunked d
    (33, 40, 64, 10.0, torch.bfloat16, None),
    (33, 40, 64, 10.0, torch.float16, None),  # fp16's row gradient under the online max
    (40, 150, 16, 60.0, torch.float32, 2),  # 2 scale > 80: no static shift (running max)
]


@pytest.mark.parametrize("na,nb,d,scale,dtype,col_splits", MEAN_LSE_CASES)
def test_mean_lse_and_gradients_against_float64(na, nb, d, scale, dtype, col_splits):
    a, b = rows(na, d, dtype, 31), rows(nb, d, dtype, 32)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    want_mean, want_ga, want_gb = mean_cross_entropy_and_grads(a, b, scale)
    for grad_a, grad_b in ((True, True), (True, False), (False, True)):
        mean, ga, gb = tk.contrastive_mean_lse(a, b, scale, grad_a, grad_b, col_splits=col_splits)
        assert mean.shape == () and mean.dtype == acc
        torch.testing.assert_close(mean.cpu().double(), want_mean, rtol=TOL[dtype], atol=TOL[dtype] * scale)
        assert ga.shape == (a.shape if grad_a else (0,)) and gb.shape == (b.shape if grad_b else (0,))
        for flag, got, want in ((grad_a, ga, want_ga), (grad_b, gb, want_gb)):
            if flag:
                assert got.dtype == acc
                # A floor: with N = 2, d = 1 the gradient cancels to ~1e-17.
                atol = GRAD_TOL[dtype] * max(want.abs().max().item(), 1e-3)
                torch.testing.assert_close(got.cpu().double(), want, rtol=0, atol=atol)


def test_mean_lse_matches_cpu_operator_and_gives_nan_for_nonfinite_inputs():
    a, b = rows(40, 12, torch.float32, 33), rows(90, 12, torch.float32, 34)
    want = ops.contrastive_mean_lse(a.cpu(), b.cpu(), 5.0, True, True)
    got = tk.contrastive_mean_lse(a, b, 5.0, True, True)
    for x, w in zip(got, want):
        assert x.dtype == w.dtype and x.shape == w.shape
        torch.testing.assert_close(x.cpu(), w, rtol=1e-5, atol=1e-6)
    b[7, 2] = float("nan")
    assert all(torch.isnan(v).all() for v in tk.contrastive_mean_lse(a, b, 5.0, True, True))
    assert_same_value_error(ops.contrastive_mean_lse, tk.contrastive_mean_lse, (a, b, -1.0, True, True))


# ------------------------------------------------------------- the losses, through dispatch


@pytest.fixture
def kernels_on_device():
    """The operators dispatch to the Triton kernels for tensors on DEVICE: on CUDA they are
    registered already; under the interpreter they replace the CPU kernels for the test."""
    if not INTERPRET:
        yield
        return
    lib = torch.library.Library("pyhypersphere", "IMPL")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "overriding a previously registered kernel"
        lib.impl("contrastive_lse", tk.contrastive_lse, "CPU")
        lib.impl("contrastive_lse_backward", tk.contrastive_lse_backward, "CPU")
        lib.impl("contrastive_mean_lse", tk.contrastive_mean_lse, "CPU")
    try:
        yield
    finally:
        lib._destroy()


def _fused(fn, tensors, **kwargs):
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    out = fn(*leaves, **kwargs)
    return out.detach(), [g.detach() for g in torch.autograd.grad(out, leaves)]


@pytest.mark.parametrize("loss,dense,kwargs", [
    (nt_xent_loss, dense_nt_xent, {"tau": 0.5}),
    (clip_loss, dense_clip, {"tau": 0.07}),
    (info_nce_loss, dense_info_nce, {"tau": 0.1}),
    (info_nce_loss, dense_info_nce, {"tau": 0.1, "queue": "queue", "in_batch": False}),
    (info_nce_loss, dense_info_nce, {"tau": 0.1, "queue": "queue"}),  # in-batch and a queue
])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_losses_through_dispatch_against_dense_float64(kernels_on_device, loss, dense, kwargs, dtype):
    x, y = rows(37, 12, dtype, 21), rows(37, 12, dtype, 22)
    tensors = [x, y]
    kwargs = dict(kwargs)
    if kwargs.get("queue") == "queue":
        tensors.append(rows(50, 12, dtype, 23))
        kwargs.pop("queue")

        def call(fn, q, k, queue, **kw):
            return fn(q, k, queue=queue, **kw)
    else:
        def call(fn, *t, **kw):
            return fn(*t, **kw)

    got, got_grads = _fused(lambda *t, **kw: call(loss, *t, **kw), tensors, **kwargs)
    want, want_grads = value_and_grads(lambda *t, **kw: call(dense, *(v.cpu() for v in t), **kw), *tensors, **kwargs)
    tol = dict(rtol=1e-10, atol=1e-11) if dtype == torch.float64 else dict(rtol=3e-5, atol=3e-5)
    assert got.dtype == dtype
    torch.testing.assert_close(got.cpu().double(), want, **tol)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g.cpu().double(), w.cpu(), **tol)


def test_learned_temperature_through_dispatch(kernels_on_device):
    x, y = rows(20, 6, torch.float64, 24), rows(20, 6, torch.float64, 25)
    tau = torch.tensor(0.3, dtype=torch.float64, device=DEVICE, requires_grad=True)
    loss = clip_loss(x, y, tau)
    (got,) = torch.autograd.grad(loss, tau)
    tau_ref = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    (want,) = torch.autograd.grad(dense_clip(x.cpu(), y.cpu(), tau_ref), tau_ref)
    torch.testing.assert_close(got.cpu(), want, rtol=1e-10, atol=1e-12)


def test_opcheck_through_dispatch(kernels_on_device):
    a, b = rows(9, 4, torch.float64, 26), rows(11, 4, torch.float64, 27)
    torch.library.opcheck(ops.contrastive_lse, (a, b, 2.0, False, True, 0, 1))
    torch.library.opcheck(ops.contrastive_lse, (a, a, 2.0, True, True, 0, 1))
