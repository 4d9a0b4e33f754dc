"""Every implementation of every operator held to the same tests, from this one place.

tests/implementations.py enumerates them from the registry (pyhypersphere.gpu_backend): the
C++ CPU kernels, the Triton kernels under the interpreter, and on a CUDA machine the GPU
implementation gpu_backend.TABLE chose for each operator (and compiled Triton beside a C++
CUDA kernel).  Each runs the same value, gradient, flag, part, non-finite and bad-input
tests of its operator's contract (csrc/ops.h), against float64 references written from the
definitions: explicit pair differences (conftest.py) and explicit logit matrices
(dense_contrastive.py).  The public losses run through each backend's dispatch at the end.

Shapes cross the kernels' block sizes (64 and 128 rows; 128-wide features for float32, 64
for float64) but stay small: the interpreter runs Triton through numpy.  Machinery of one
backend (tile configurations, column splits, the precision policy's choices, streams and
graphs) is tested beside it: test_triton*.py, test_cuda.py, test_precision_policy.py.
"""

import itertools
import math

import pytest
import torch

from conftest import explicit_align_loss, explicit_uniform_lse_and_grads
from dense_contrastive import (
    dense_clip, dense_contrastive_lse, dense_contrastive_lse_and_grads, dense_info_nce, dense_nt_xent,
    mean_cross_entropy_and_grads, value_and_grads,
)
from implementations import (
    BACKENDS, CONTRASTIVE_GRAD_TOL, CONTRASTIVE_TOL, UNIFORM_GRAD_TOL, UNIFORM_TOL, accumulate_dtype, backend_device,
    dispatching_to, implementations, rows, uniform,
)
from pyhypersphere import align_loss, clip_loss, info_nce_loss, nt_xent_loss, uniform_loss

F64, F32, BF16, F16 = torch.float64, torch.float32, torch.bfloat16, torch.float16
ops = torch.ops.pyhypersphere


def assert_close(got, want, tol, scale=None):
    """|got - want| <= tol * scale elementwise, got on any device in any dtype, want float64
    on the CPU; scale max(|want|) by default (a gradient's own scale: single entries can be
    ~0); infinities in the same places."""
    scale = want.abs().max().item() if scale is None else scale
    torch.testing.assert_close(got.detach().cpu().double(), want, rtol=0, atol=tol * scale)


# ================================================================ uniform_lse

UNIFORM = implementations("uniform_lse")

UNIFORM_CASES = [  # n, k, d, intra_batch, t, dtype
    (2, 0, 3, True, 2.0, F64),
    (3, 0, 1, True, 0.1, F32),
    (65, 0, 64, True, 2.0, F32),  # one row past a 64-row block
    (67, 0, 128, True, 2.0, F64),  # three 32-row blocks and a tail; two 64-wide chunks
    (40, 0, 200, True, 100.0, F32),  # d past the 128-wide block; t = 100: the online max
    (33, 70, 3, False, 2.0, F32),  # the queue only
    (20, 45, 64, True, 1.0, F64),
    (70, 10, 128, True, 2.0, BF16),
    (30, 20, 16, True, 5.0, F16),
]


def check_uniform(impl, x, queue, t, intra):
    """impl's (lse, grad_x, grad_queue) for one part holding every pair, against float64."""
    has_q = queue is not None
    lse, gx, gq = impl(*impl.on(x, queue), t, intra, 0, 1, True, has_q)
    want_lse, want_gx, want_gq = explicit_uniform_lse_and_grads(x, queue, t, intra)
    assert lse.shape == () and lse.dtype == F64 and lse.device.type == impl.device  # lse: ops.h
    assert gx.dtype == gq.dtype == accumulate_dtype(x.dtype)
    assert gx.shape == x.shape and gq.shape == (queue.shape if has_q else (0,))
    assert_close(lse, want_lse, UNIFORM_TOL[x.dtype], scale=max(1.0, abs(want_lse.item())))
    assert_close(gx, want_gx, UNIFORM_GRAD_TOL[x.dtype])
    if has_q:
        assert_close(gq, want_gq, UNIFORM_GRAD_TOL[x.dtype])


@pytest.mark.parametrize("impl", UNIFORM)
@pytest.mark.parametrize("n,k,d,intra,t,dtype", UNIFORM_CASES)
def test_uniform_values_and_gradients(impl, n, k, d, intra, t, dtype):
    check_uniform(impl, rows(n, d, dtype, 1), rows(k, d, dtype, 2), t, intra)


@pytest.mark.parametrize("impl", UNIFORM)
@pytest.mark.parametrize("scale,offset,dtype", [
    (30.0, 0.0, F64),  # unnormalized, far apart: most weights underflow
    (3.0, 1e4, F32),  # far from the origin: centering keeps the digits
    (40.0, 0.0, F32),  # spread beyond TF32 and float32: computed in float64
    (1.0, 30.0, BF16),  # raw 16-bit rows beyond the float32 budget: centered float32
])  # fmt: skip
def test_uniform_far_apart_and_unnormalized_rows(impl, scale, offset, dtype):
    check_uniform(impl, rows(50, 8, dtype, 5, scale, offset), rows(20, 8, dtype, 6, scale, offset), 2.0, True)


@pytest.mark.parametrize("impl", UNIFORM)
@pytest.mark.parametrize("t,scale,queue_rows", [(1e-6, 1.0, 0), (2.0, 1e-3, 0), (1e-5, 1.0, 40)])
def test_uniform_small_loss_is_accurate_relative_to_itself(impl, t, scale, queue_rows):
    # t * d^2 small: the loss lse - log |P| is small next to log |P| (issue 26).  Against
    # float64 with no cancellation, log1p(mean(expm1(-t d^2))); the paper's formula in
    # float32 loses 3-5% here, the bar is one rounding of a float32 result.
    x, queue = rows(80, 16, F32, 11, scale=scale), rows(queue_rows, 16, F32, 12)
    lse, gx, _ = impl(*impl.on(x, queue), t, True, 0, 1, True, False)
    got = lse.item() - math.log(80 * 79 // 2 + 80 * queue_rows)
    d2 = [torch.pdist(x.double()).pow(2)]
    if queue is not None:
        d2.append(torch.cdist(x.double(), queue.double()).pow(2).flatten())
    want = torch.log1p(torch.expm1(-t * torch.cat(d2)).mean()).item()
    assert abs(got - want) <= 2.0**-23 * abs(want)
    _, want_gx, _ = explicit_uniform_lse_and_grads(x, queue, t, True)
    assert (gx.cpu().double() - want_gx).norm() <= 1e-6 * want_gx.norm()


def combine_uniform_parts(runs):
    """The whole pair set's (lse, grad_x, grad_queue) from its parts': lse = logsumexp_p
    lse_p, grad = sum_p exp(lse_p - lse) grad_p (the distributed loss's reduction)."""
    lses = torch.stack([r[0].cpu() for r in runs])
    lse = torch.logsumexp(lses, 0)
    weights = (lses - lse).exp()

    def total(i):
        if runs[0][i].numel() == 0:
            return runs[0][i].cpu()
        return sum(w * r[i].cpu().double() for w, r in zip(weights, runs))

    return lse, total(1), total(2)


@pytest.mark.parametrize("impl", UNIFORM)
@pytest.mark.parametrize("grad_x,grad_queue", list(itertools.product([True, False], repeat=2)))
@pytest.mark.parametrize("intra,num_parts,dtype", [(True, 1, F32), (False, 3, F64)])
def test_uniform_computes_only_the_gradients_asked_for(impl, grad_x, grad_queue, intra, num_parts, dtype):
    # Several 64-row blocks in x and in the queue: x-by-x, x-by-queue and diagonal tiles.
    x, queue = rows(70, 6, dtype, 10), rows(40, 6, dtype, 11)
    runs = [impl(*impl.on(x, queue), 2.0, intra, p, num_parts, grad_x, grad_queue) for p in range(num_parts)]
    for lse_p, gx_p, gq_p in runs:
        assert lse_p.dtype == F64 and gx_p.dtype == gq_p.dtype == accumulate_dtype(dtype)
        assert gx_p.shape == (x.shape if grad_x else (0,)) and gq_p.shape == (queue.shape if grad_queue else (0,))
    lse, gx, gq = combine_uniform_parts(runs)
    want_lse, want_gx, want_gq = explicit_uniform_lse_and_grads(x, queue, 2.0, intra)
    assert_close(lse, want_lse, UNIFORM_TOL[dtype], scale=abs(want_lse.item()))
    if grad_x:
        assert_close(gx, want_gx, UNIFORM_GRAD_TOL[dtype])
    if grad_queue:
        assert_close(gq, want_gq, UNIFORM_GRAD_TOL[dtype])


@pytest.mark.parametrize("impl", UNIFORM)
@pytest.mark.parametrize("num_parts,k", [(2, 0), (3, 10)])
def test_uniform_parts_combine_to_the_whole(impl, num_parts, k):
    # Two 128-row part blocks of x: the triangle's tiles (and the rectangle's, with a
    # queue) spread over the parts.
    x, queue = rows(134, 5, F64, 7), rows(k, 5, F64, 8)
    has_q = queue is not None
    whole = impl(*impl.on(x, queue), 0.5, True, 0, 1, True, has_q)
    parts = [impl(*impl.on(x, queue), 0.5, True, p, num_parts, True, has_q) for p in range(num_parts)]
    assert all(torch.isfinite(p[0]) for p in parts)  # every part holds some pairs
    # exp(lse) of the parts sum to the whole's: no pair counted twice or missed; each part's
    # gradient is that of its own lse, so weighted by its share they sum to the whole's.
    lse, gx, gq = combine_uniform_parts(parts)
    torch.testing.assert_close(lse, whole[0].cpu(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gx, whole[1].cpu(), rtol=1e-10, atol=1e-12)
    if has_q:
        torch.testing.assert_close(gq, whole[2].cpu(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("impl", UNIFORM)
def test_uniform_empty_part_gives_minus_infinity_and_zero_gradient(impl):
    # Two rows: one tile; parts 0 and 1 of 3 hold none of it.
    x = impl.on(rows(2, 3, F64, 9))
    for part in (0, 1):
        lse, gx, _ = impl(x, None, 2.0, True, part, 3, True, False)
        assert lse.item() == -math.inf and torch.equal(gx, torch.zeros_like(gx))
    assert math.isfinite(impl(x, None, 2.0, True, 2, 3, True, False)[0].item())


@pytest.mark.parametrize("impl", UNIFORM)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_uniform_nonfinite_inputs_give_nan(impl, bad):
    x, queue = rows(10, 4, F32, 14), rows(6, 4, F32, 15)
    x[3, 1] = bad
    lse, gx, gq = impl(*impl.on(x, queue), 2.0, True, 0, 1, True, True)
    assert torch.isnan(lse) and torch.isnan(gx).all() and torch.isnan(gq).all()
    x, queue = rows(10, 4, F32, 14), rows(6, 4, F32, 15)
    queue[2, 0] = bad
    lse, gx, gq = impl(*impl.on(x, queue), 2.0, True, 0, 1, True, True)
    assert torch.isnan(lse) and torch.isnan(gx).all() and torch.isnan(gq).all()


def _zeros(*shape, dtype=F32):
    return torch.zeros(shape, dtype=dtype)


@pytest.mark.parametrize("impl", UNIFORM)
@pytest.mark.parametrize("args,match", [
    ((_zeros(5), None, 2.0, True, 0, 1, False, False), "uniform_loss: x must be a 2-D tensor"),
    ((_zeros(1, 3), None, 2.0, True, 0, 1, False, False), "x must have at least 2 rows"),
    ((_zeros(4, 0), None, 2.0, True, 0, 1, False, False), "x must have at least one feature column"),
    ((_zeros(4, 3, dtype=torch.int64), None, 2.0, True, 0, 1, False, False), "x must be a floating-point tensor"),
    ((_zeros(4, 3).to(torch.float8_e4m3fn), None, 2.0, True, 0, 1, False, False), "x must be a floating-point"),
    ((_zeros(4, 3), None, 0.0, True, 0, 1, False, False), "t must be a positive finite number, got 0"),
    ((_zeros(4, 3), None, math.nan, True, 0, 1, False, False), "t must be a positive finite number, got nan"),
    ((_zeros(4, 3), None, 2.0, True, 2, 2, False, False), r"part must be in \[0, num_parts = 2\), got 2"),
    ((_zeros(4, 3), None, 2.0, True, 0, 0, False, False), "num_parts must be >= 1, got 0"),
    ((_zeros(4, 3), None, 2.0, True, 0, 1, False, True), "grad_queue=True needs a queue"),
    ((_zeros(4, 3), _zeros(4, 2), 2.0, True, 0, 1, False, False), "queue must have the same feature dimension"),
    ((_zeros(4, 3), _zeros(4, 3, dtype=F64), 2.0, True, 0, 1, False, False), "queue must have the same dtype as x"),
])  # fmt: skip
def test_uniform_bad_input_is_named(impl, args, match):
    check_error(impl, args, match)


def check_error(impl, args, match):
    """impl raises ValueError naming the argument (`match`); an implementation other than
    the CPU kernel raises the CPU kernel's message word for word."""
    with pytest.raises(ValueError, match=match) as got:
        impl(*(impl.on(a) if isinstance(a, torch.Tensor) else a for a in args))
    if impl.name != "cpu":
        with pytest.raises(ValueError) as want:
            getattr(ops, impl.op)(*args)
        assert str(got.value) == str(want.value)


# ================================================================ align_loss

ALIGN = implementations("align_loss")
ALIGN_TOL = {F64: 1e-12, F32: 1e-5, BF16: 1e-2, F16: 2e-3}


@pytest.mark.parametrize("impl", ALIGN)
@pytest.mark.parametrize("dtype", [F64, F32, BF16, F16])
@pytest.mark.parametrize("n,d,alpha", [(1, 1, 2.0), (37, 3, 1.5), (33, 200, 0.7), (150, 9, 3.0)])
def test_align_values_and_gradients(impl, dtype, n, d, alpha):
    x, y = rows(n, d, dtype, 15), rows(n, d, dtype, 16)
    y[0] = x[0]  # coincident rows: gradient 0 there (the contract's convention)
    loss, grad = impl(*impl.on(x, y), alpha, True)
    x64 = x.double().requires_grad_()
    want = explicit_align_loss(x64, y.double(), alpha)
    (want_grad,) = torch.autograd.grad(want, x64)
    want_grad[0] = 0.0  # the formula's 0 * inf there
    assert loss.shape == () and loss.dtype == dtype and grad.dtype == dtype and grad.shape == x.shape
    assert_close(loss, want.detach(), ALIGN_TOL[dtype], scale=max(1.0, want.item()))
    assert_close(grad, want_grad, 4 * ALIGN_TOL[dtype], scale=max(want_grad.abs().max().item(), 1e-300))
    assert torch.count_nonzero(grad[0]).item() == 0
    loss_only, no_grad = impl(*impl.on(x, y), alpha, False)
    assert no_grad.numel() == 0 and torch.equal(loss_only, loss)


@pytest.mark.parametrize("impl", ALIGN)
def test_align_nonfinite_inputs_give_nan(impl):
    x, y = rows(10, 3, F32, 17), rows(10, 3, F32, 18)
    x[4, 1] = math.nan
    loss, grad = impl(*impl.on(x, y), 2.0, True)
    assert torch.isnan(loss) and torch.isnan(grad[4]).any() and torch.isfinite(grad[torch.arange(10) != 4]).all()


@pytest.mark.parametrize("impl", ALIGN)
@pytest.mark.parametrize("args,match", [
    ((_zeros(3, 2), _zeros(4, 2), 2.0, False), "align_loss: y must have the same shape as x"),
    ((_zeros(3), _zeros(3), 2.0, False), "x must be a 2-D tensor"),
    ((_zeros(0, 2), _zeros(0, 2), 2.0, False), "x must have at least 1 row"),
    ((_zeros(3, 2), _zeros(3, 2, dtype=F64), 2.0, False), "y must have the same dtype as x"),
    ((_zeros(3, 2, dtype=torch.int32), _zeros(3, 2, dtype=torch.int32), 2.0, False), "x must be a floating-point"),
    ((_zeros(3, 2).to(torch.float8_e4m3fn), _zeros(3, 2).to(torch.float8_e4m3fn), 2.0, False), "x must be a floating"),
    ((_zeros(3, 2), _zeros(3, 2), -1.0, False), "alpha must be a positive finite number, got -1"),
    ((_zeros(3, 2), _zeros(3, 2), math.inf, False), "alpha must be a positive finite number"),
])  # fmt: skip
def test_align_bad_input_is_named(impl, args, match):
    check_error(impl, args, match)


# ================================================================ contrastive_lse and its backward

CONTRASTIVE = implementations("contrastive_lse")

CONTRASTIVE_CASES = [  # na, nb, d, scale, self_pairs, lse_b, dtype
    (1, 1, 1, 2.0, True, True, F64),  # NT-Xent at N = 1: each view's only partner
    (2, 2, 1, 0.5, False, True, F32),  # N = 2, d = 1
    (40, 40, 16, 2.0, True, True, F32),  # NT-Xent
    (140, 130, 33, 14.3, False, True, F32),  # CLIP, past a 128-row block
    (20, 300, 8, 1 / 0.07, False, False, F32),  # InfoNCE with a queue
    (67, 35, 100, 3.0, True, True, F64),  # 32-row blocks; chunked d (64-wide)
    (30, 30, 200, 2.0, False, True, F32),  # d past the 128-wide block: chunked
    (33, 33, 64, 10.0, False, True, BF16),
    (40, 40, 16, 5.0, True, True, F16),
]


def backward_of(impl):
    """The same implementation of contrastive_lse_backward."""
    (param,) = [p for p in implementations("contrastive_lse_backward") if p.values[0].name == impl.name]
    return param.values[0]


def check_contrastive(impl, a, b, scale, self_pairs, lse_b, skip, seed):
    """impl's lse against float64; then its backward, given the float64 lse (so that only
    its own error is measured) and random upstream gradients, against float64."""
    acc = accumulate_dtype(a.dtype)
    got_a, got_b = impl(*impl.on(a, b), scale, self_pairs, lse_b, 0, 1, skip)
    g, h = uniform(a.shape[0], seed, acc), uniform(b.shape[0], seed + 1, acc) if lse_b else None
    want_a, want_b, want_ga, want_gb = dense_contrastive_lse_and_grads(a, b, scale, self_pairs, g, h, skip)
    assert got_a.dtype == got_b.dtype == acc and got_a.device.type == impl.device
    assert got_a.shape == (a.shape[0],) and got_b.shape == ((b.shape[0],) if lse_b else (0,))
    tol = CONTRASTIVE_TOL[a.dtype]
    for got, want in ((got_a, want_a), (got_b, want_b) if lse_b else (None, None)):
        if got is not None:
            assert torch.equal(torch.isneginf(got.cpu()), torch.isneginf(want))  # rows without partners
            torch.testing.assert_close(got.cpu().double(), want, rtol=tol, atol=tol * scale)
    empty = torch.empty(0, dtype=acc)
    lse_in = (want_a.to(acc), want_b.to(acc) if lse_b else empty)
    upstream = impl.on(*lse_in, g, empty if h is None else h)
    ga, gb = backward_of(impl)(*impl.on(a, b), scale, self_pairs, *upstream, 0, 1, True, True, skip)
    assert ga.dtype == gb.dtype == acc and ga.shape == a.shape and gb.shape == b.shape
    for got, want in ((ga, want_ga), (gb, want_gb)):
        assert_close(got, want, CONTRASTIVE_GRAD_TOL[a.dtype], scale=max(want.abs().max().item(), 1e-300))


@pytest.mark.parametrize("impl", CONTRASTIVE)
@pytest.mark.parametrize("na,nb,d,scale,self_pairs,lse_b,dtype", CONTRASTIVE_CASES)
def test_contrastive_lse_and_gradients(impl, na, nb, d, scale, self_pairs, lse_b, dtype):
    check_contrastive(impl, rows(na, d, dtype, 1), rows(nb, d, dtype, 2), scale, self_pairs, lse_b, False, 3)


@pytest.mark.parametrize("impl", CONTRASTIVE)
@pytest.mark.parametrize("na,nb,d,scale,self_pairs,dtype", [
    (1, 1, 1, 2.0, True, F64),  # N = 1 NT-Xent: no negatives, lse -inf
    (2, 2, 1, 0.5, False, F32),
    (40, 40, 16, 2.0, True, F32),
    (70, 70, 33, 14.3, False, F32),
    (40, 60, 8, 7.0, True, F64),  # N_a != N_b: rows of b without a positive
    (33, 33, 64, 10.0, False, BF16),
])  # fmt: skip
def test_contrastive_skipped_positives(impl, na, nb, d, scale, self_pairs, dtype):
    # The losses' form: each row's lse over its negatives, the positives' weights exactly 0.
    check_contrastive(impl, rows(na, d, dtype, 41), rows(nb, d, dtype, 42), scale, self_pairs, True, True, 43)


@pytest.mark.parametrize("impl", CONTRASTIVE)
def test_contrastive_large_logits_are_stable(impl):
    # Unnormalized rows and a small temperature: logits near 1000, where exp overflows.
    a, b = rows(30, 8, F32, 7, scale=9.0), rows(30, 8, F32, 8, scale=9.0)
    lse_a, lse_b = impl(*impl.on(a, b), 12.0, False, True, 0, 1)
    want_a, want_b = dense_contrastive_lse(a.double(), b.double(), 12.0, False)
    assert want_a.max() > 500
    torch.testing.assert_close(lse_a.cpu().double(), want_a, rtol=1e-6, atol=1e-3)
    torch.testing.assert_close(lse_b.cpu().double(), want_b, rtol=1e-6, atol=1e-3)


@pytest.mark.parametrize("impl", CONTRASTIVE)
@pytest.mark.parametrize("grad_a,grad_b,with_h", [
    (True, False, True), (False, True, True), (True, True, False), (False, True, False), (False, False, True),
])  # fmt: skip
def test_contrastive_backward_computes_only_what_is_asked(impl, grad_a, grad_b, with_h):
    a, b = rows(20, 7, F64, 9), rows(45, 7, F64, 10)
    g, h = uniform(20, 11, F64), uniform(45, 12, F64) if with_h else None
    want_a, want_b, want_ga, want_gb = dense_contrastive_lse_and_grads(a, b, 0.7, False, g, h)
    empty = torch.empty(0, dtype=F64)
    lse_b, h = (want_b, h) if with_h else (empty, empty)
    ga, gb = backward_of(impl)(*impl.on(a, b), 0.7, False, *impl.on(want_a, lse_b, g, h), 0, 1, grad_a, grad_b)
    assert ga.shape == (a.shape if grad_a else (0,)) and gb.shape == (b.shape if grad_b else (0,))
    if grad_a:
        torch.testing.assert_close(ga.cpu(), want_ga, rtol=1e-10, atol=1e-12)
    if grad_b:
        torch.testing.assert_close(gb.cpu(), want_gb, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("impl", CONTRASTIVE)
@pytest.mark.parametrize("self_pairs,num_parts", [(True, 3), (False, 2)])
def test_contrastive_parts_combine_to_the_whole(impl, self_pairs, num_parts):
    # 140 and 275 rows: two or three 128-row part blocks per side, so tiles of the triangle
    # and of the rectangle spread over the parts.
    a, b = rows(140, 5, F64, 13), rows(140 if self_pairs else 275, 5, F64, 14)
    whole = impl(*impl.on(a, b), 1.5, self_pairs, True, 0, 1)
    parts = [impl(*impl.on(a, b), 1.5, self_pairs, True, p, num_parts) for p in range(num_parts)]
    for side in (0, 1):
        lses = torch.stack([p[side].cpu() for p in parts])
        # exp(lse) of the parts sum to the whole's: no pair counted twice or missed.
        torch.testing.assert_close(torch.logsumexp(lses, 0), whole[side].cpu(), rtol=1e-12, atol=1e-12)
        assert not torch.isneginf(lses).all(1).any()  # every part holds some pairs
    g, h = impl.on(torch.full((140,), 0.3, dtype=F64), torch.full((b.shape[0],), 0.2, dtype=F64))
    backward = backward_of(impl)
    grads = [backward(*impl.on(a, b), 1.5, self_pairs, *whole, g, h, p, num_parts, True, True) for p in range(num_parts)]
    want = backward(*impl.on(a, b), 1.5, self_pairs, *whole, g, h, 0, 1, True, True)
    for side in (0, 1):
        torch.testing.assert_close(sum(gr[side] for gr in grads), want[side], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("impl", CONTRASTIVE)
def test_contrastive_empty_part_gives_minus_infinity_and_zero_gradient(impl):
    a, b = impl.on(rows(2, 3, F64, 15), rows(2, 3, F64, 16))
    whole = impl(a, b, 1.0, False, True, 0, 1)
    one = impl.on(torch.ones(2, dtype=F64))
    for part in (0, 1):  # one tile, three parts: these two hold none of it
        lse_a, lse_b = impl(a, b, 1.0, False, True, part, 3)
        assert torch.isneginf(lse_a).all() and torch.isneginf(lse_b).all()
        ga, gb = backward_of(impl)(a, b, 1.0, False, *whole, one, one, part, 3, True, True)
        assert torch.equal(ga, torch.zeros_like(ga)) and torch.equal(gb, torch.zeros_like(gb))
    assert torch.isfinite(impl(a, b, 1.0, False, True, 2, 3)[0]).all()


@pytest.mark.parametrize("impl", CONTRASTIVE)
def test_contrastive_nonfinite_inputs_and_lse_give_nan(impl):
    a, b = rows(10, 4, F32, 19), rows(12, 4, F32, 20)
    bad = a.clone()
    bad[3, 1] = math.nan
    assert all(torch.isnan(v).all() for v in impl(*impl.on(bad, b), 1.0, False, True, 0, 1))
    bad = b[:10].clone()
    bad[0, 0] = math.inf
    assert all(torch.isnan(v).all() for v in impl(*impl.on(a, bad), 1.0, True, True, 0, 1))
    # A NaN lse in the backward: NaN gradients, not a finite guess; also a NaN lse_b given
    # without its upstream gradient.
    lse_a, lse_b = dense_contrastive_lse(a.double(), b.double(), 1.0, False)
    lse_a, lse_b = lse_a.float(), lse_b.float()
    g, h, empty = torch.ones(10), torch.ones(12), torch.empty(0)
    backward = backward_of(impl)
    nan_a = lse_a.clone()
    nan_a[2] = math.nan
    ga, gb = backward(*impl.on(a, b), 1.0, False, *impl.on(nan_a, lse_b, g, h), 0, 1, True, True)
    assert torch.isnan(ga).all() and torch.isnan(gb).all()
    nan_b = lse_b.clone()
    nan_b[0] = math.nan
    ga, _ = backward(*impl.on(a, b), 1.0, False, *impl.on(lse_a, nan_b, g, empty), 0, 1, True, False)
    assert torch.isnan(ga).all()


@pytest.mark.parametrize("impl", CONTRASTIVE)
@pytest.mark.parametrize("args,match", [
    ((_zeros(5), _zeros(4, 5), 1.0, False, True, 0, 1), "contrastive_lse: a must be a 2-D tensor"),
    ((_zeros(4, 3), _zeros(4, 2), 1.0, False, True, 0, 1), "b must have the same feature dimension"),
    ((_zeros(4, 3), _zeros(4, 3, dtype=F64), 1.0, False, True, 0, 1), "b must have the same dtype"),
    ((_zeros(4, 3), _zeros(4, 3), 0.0, False, True, 0, 1), "scale must be a positive"),
    ((_zeros(4, 3), _zeros(4, 3), 1.0, True, False, 0, 1), "self_pairs=True .* pass lse_b=True"),
    ((_zeros(4, 3), _zeros(4, 3), 1.0, False, True, 2, 2), "contrastive_lse: part must be in"),
])  # fmt: skip
def test_contrastive_bad_input_is_named(impl, args, match):
    check_error(impl, args, match)


@pytest.mark.parametrize("impl", implementations("contrastive_lse_backward"))
@pytest.mark.parametrize("lse_a,grad_a,grad_b,self_pairs,match", [
    (_zeros(8), _zeros(3), _zeros(8), False, r"grad_lse_a must have shape \[8\]"),
    (_zeros(8), _zeros(8), _zeros(0), True, r"grad_lse_b must have shape \[8\]"),
    (_zeros(5), _zeros(8), _zeros(8), False, r"lse_a must have shape \[8\]"),
])  # fmt: skip
def test_contrastive_backward_bad_input_is_named(impl, lse_a, grad_a, grad_b, self_pairs, match):
    a = _zeros(8, 4)
    check_error(impl, (a, a, 1.0, self_pairs, lse_a, _zeros(8), grad_a, grad_b, 0, 1, True, True), match)


# ================================================================ contrastive_mean_lse

MEAN_LSE = implementations("contrastive_mean_lse")

MEAN_LSE_CASES = [  # na, nb, d, scale, dtype
    (1, 1, 1, 2.0, F64),
    (2, 2, 1, 0.5, F32),  # N = 2, d = 1
    (45, 150, 33, 14.3, F32),  # past a 128-row block
    (10, 300, 8, 1 / 0.07, F32),  # MoCo's shape: few queries, a long queue
    (20, 40, 100, 3.0, F64),  # chunked d (64-wide for float64)
    (40, 70, 33, 1 / 0.01, F64),  # small tau
    (64, 64, 16, 0.01, F32),  # large tau: near-uniform weights
    (33, 40, 64, 10.0, BF16),
    (50, 80, 12, 5.0, F16),
    (33, 40, 64, 10.0, F16),  # fp16's row gradient under the online max
    (40, 150, 16, 60.0, F32),  # 2 scale > 80: no static shift (running max)
]


@pytest.mark.parametrize("impl", MEAN_LSE)
@pytest.mark.parametrize("na,nb,d,scale,dtype", MEAN_LSE_CASES)
def test_mean_lse_values_and_gradients(impl, na, nb, d, scale, dtype):
    a, b = rows(na, d, dtype, 31), rows(nb, d, dtype, 32)
    acc = accumulate_dtype(dtype)
    want_mean, want_ga, want_gb = mean_cross_entropy_and_grads(a, b, scale)
    tol = CONTRASTIVE_TOL[dtype]
    for grad_a, grad_b in ((True, True), (True, False), (False, True), (False, False)):
        mean, ga, gb = impl(*impl.on(a, b), scale, grad_a, grad_b)
        assert mean.shape == () and mean.dtype == acc and mean.device.type == impl.device
        torch.testing.assert_close(mean.cpu().double(), want_mean, rtol=tol, atol=tol * scale)
        assert ga.shape == (a.shape if grad_a else (0,)) and gb.shape == (b.shape if grad_b else (0,))
        for flag, got, want in ((grad_a, ga, want_ga), (grad_b, gb, want_gb)):
            if flag:
                assert got.dtype == acc
                # A floor: with N = 2, d = 1 the gradient cancels to ~1e-17.
                assert_close(got, want, CONTRASTIVE_GRAD_TOL[dtype], scale=max(want.abs().max().item(), 1e-3))


@pytest.mark.parametrize("impl", MEAN_LSE)
def test_mean_lse_large_logits_are_stable(impl):
    # Unnormalized rows: logits near 900, where a plain exp overflows float32.
    a, b = rows(40, 6, F32, 5, scale=9.0), rows(60, 6, F32, 6, scale=9.0)
    assert (12.0 * a @ b.T).max() > 900
    mean, ga, gb = impl(*impl.on(a, b), 12.0, True, True)
    want_mean, want_ga, want_gb = mean_cross_entropy_and_grads(a, b, 12.0)
    torch.testing.assert_close(mean.cpu().double(), want_mean, rtol=1e-6, atol=1e-4)
    # Logits near 900 carry a float32 rounding of 900 * 2^-24 ~ 5e-5 each: so do the weights.
    for got, want in ((ga, want_ga), (gb, want_gb)):
        assert_close(got, want, 1e-4)


@pytest.mark.parametrize("impl", MEAN_LSE)
@pytest.mark.parametrize("where", ["a", "b"])
def test_mean_lse_nonfinite_inputs_give_nan(impl, where):
    a, b = rows(10, 4, F32, 33), rows(12, 4, F32, 34)
    (a if where == "a" else b)[3, 1] = math.nan if where == "a" else math.inf
    mean, ga, gb = impl(*impl.on(a, b), 1.0, True, True)
    assert torch.isnan(mean) and torch.isnan(ga).all() and torch.isnan(gb).all()


@pytest.mark.parametrize("impl", MEAN_LSE)
@pytest.mark.parametrize("a,b,scale,match", [
    (_zeros(5), _zeros(4, 5), 1.0, "contrastive_mean_lse: a must be a 2-D tensor"),
    (_zeros(4, 3), _zeros(4, 2), 1.0, "contrastive_mean_lse: b must have the same feature dimension"),
    (_zeros(4, 3), _zeros(4, 3, dtype=F64), 1.0, "contrastive_mean_lse: b must have the same dtype"),
    (_zeros(4, 3), _zeros(4, 3), 0.0, "contrastive_mean_lse: scale must be a positive finite"),
    (_zeros(4, 3), _zeros(4, 3), -1.0, "contrastive_mean_lse: scale must be a positive finite"),
    (_zeros(0, 3), _zeros(4, 3), 1.0, "contrastive_mean_lse: a must have at least 1 row"),
    (_zeros(4, 3), _zeros(3, 3), 1.0, r"contrastive_mean_lse: b must have at least as many rows as a \(4; b_i is"),
])  # fmt: skip
def test_mean_lse_bad_input_is_named(impl, a, b, scale, match):
    check_error(impl, (a, b, scale, True, True), match)


# ================================================================ the public losses, through each backend's dispatch


def fused_value_and_grads(fn, tensors, device, **kwargs):
    leaves = [t.detach().to(device).requires_grad_(True) for t in tensors]
    out = fn(*leaves, **kwargs)
    return out.detach(), [g.detach() for g in torch.autograd.grad(out, leaves)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("loss,dense,kwargs", [
    (nt_xent_loss, dense_nt_xent, {"tau": 0.5}),
    (clip_loss, dense_clip, {"tau": 0.07}),
    (info_nce_loss, dense_info_nce, {"tau": 0.1}),
    (info_nce_loss, dense_info_nce, {"tau": 0.1, "in_batch": False}),  # with a queue only
    (info_nce_loss, dense_info_nce, {"tau": 0.1, "in_batch": True}),  # in-batch and a queue
])  # fmt: skip
def test_contrastive_losses_against_dense_float64(backend, dtype, loss, dense, kwargs):
    tensors = [rows(37, 12, dtype, 21), rows(37, 12, dtype, 22)]
    if "in_batch" in kwargs:
        tensors.append(rows(50, 12, dtype, 23))

        def call(fn, q, k, queue, **kw):
            return fn(q, k, queue=queue, **kw)
    else:
        def call(fn, *t, **kw):
            return fn(*t, **kw)

    with dispatching_to(backend):
        got, got_grads = fused_value_and_grads(lambda *t, **kw: call(loss, *t, **kw), tensors,
                                               backend_device(backend), **kwargs)
    want, want_grads = value_and_grads(lambda *t, **kw: call(dense, *t, **kw), *tensors, **kwargs)
    tol = dict(rtol=1e-10, atol=1e-11) if dtype == F64 else dict(rtol=3e-5, atol=3e-5)
    assert got.dtype == dtype
    torch.testing.assert_close(got.cpu().double(), want, **tol)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g.cpu().double(), w, **tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_learned_temperature_gets_its_gradient(backend):
    x, y = rows(20, 6, F64, 24), rows(20, 6, F64, 25)
    tau = torch.tensor(0.3, dtype=F64, device=backend_device(backend), requires_grad=True)
    with dispatching_to(backend):
        (got,) = torch.autograd.grad(clip_loss(x.to(tau.device), y.to(tau.device), tau), tau)
    tau_ref = torch.tensor(0.3, dtype=F64, requires_grad=True)
    (want,) = torch.autograd.grad(dense_clip(x, y, tau_ref), tau_ref)
    torch.testing.assert_close(got.cpu(), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype,tol", [(F64, 1e-10), (F32, 3e-5)])
def test_uniform_and_align_losses_against_float64(backend, dtype, tol):
    x, queue, y = rows(70, 12, dtype, 3), rows(30, 12, dtype, 4), rows(70, 12, dtype, 5)

    def losses(x, queue, y):
        return 3.0 * uniform_loss(x, 2.0, queue=queue) + align_loss(x, y, 1.5)

    def reference(x, queue, y):
        pairs = 70 * 69 // 2 + 70 * 30
        d2 = torch.cat([torch.pdist(x).pow(2), torch.cdist(x, queue).pow(2).flatten()])
        return 3.0 * (torch.logsumexp(-2.0 * d2, 0) - math.log(pairs)) + explicit_align_loss(x, y, 1.5)

    with dispatching_to(backend):
        got, got_grads = fused_value_and_grads(losses, [x, queue, y], backend_device(backend))
    want, want_grads = value_and_grads(reference, x, queue, y)
    assert got.dtype == dtype
    torch.testing.assert_close(got.cpu().double(), want, rtol=tol, atol=tol)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g.cpu().double(), w, rtol=tol, atol=tol * w.abs().max().item())


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_contrastive(backend):
    a, b = (t.to(backend_device(backend)) for t in (rows(9, 4, F64, 26), rows(11, 4, F64, 27)))
    with dispatching_to(backend):
        lse_a, lse_b = ops.contrastive_lse(a, b, 3.0, False, True, 0, 1)
        g_a, g_b = torch.rand_like(lse_a), torch.rand_like(lse_b)
        for args in [
            (a, b, 2.0, False, False, 0, 1),
            (a.clone().requires_grad_(), b.clone().requires_grad_(), 1.5, True, True, 1, 3),
            (a.float(), b.float(), 2.0, False, True, 0, 1, True),
        ]:
            torch.library.opcheck(ops.contrastive_lse.default, args)
        for args in [
            (a, b, 3.0, False, lse_a, lse_b[:0], g_a, g_b[:0], 0, 1, True, False),
            (a, b, 3.0, False, lse_a, lse_b, g_a, g_b, 1, 2, False, True),
        ]:
            torch.library.opcheck(ops.contrastive_lse_backward.default, args, test_utils=("test_schema", "test_faketensor"))
