"""Triton kernels and launcher for `siglip` (contract: csrc/ops.h).

Each pair's loss term softplus(-z l) and weight w = d/dl of it depend on that logit only
(no log-sum-exp), so one sweep over the pairs gives the loss and every gradient.

One pass (`_siglip_one_pass_kernel`, when d/dy is wanted): a program owns BLOCK_M rows of
x and sweeps y's rows in BLOCK_N tiles; per tile S = x_i y_j^T (GEMM 1), one exp per pair,
e = 2^(-|u|) with u = l log2(e), giving both the sigmoid (the weights W) and the softplus
(max(u, 0) + log1p(e), the log once per row and tile), acc_x += W y_j (GEMM 2, in
registers) and W^T (coef x_i) (GEMM 3) added to y's gradient rows [N_y, d] with atomics
(a TMA reduce-add of the tile on sm_90 for float32, an atomic add per element otherwise;
float64 rows for float64 inputs), as FlashAttention-2's backward adds dQ.  Main loop per
tile: 3 tensor-core GEMMs and 1 exp per pair, the algorithm's minimum
(loop_gate.MIN_WORK["siglip_one_pass"]).  The atomics make the result's last bits depend
on the order the programs' additions land in: under torch.use_deterministic_algorithms
the launcher takes the two sweeps below instead, which are bitwise repeatable.  d past
ONE_CHUNK_MAX_D splits the gradients' features into slices of that width, a second grid
axis: each slice's program computes S over every feature chunk and its own exp, then
both gradients' slice (K slices: K (K + 2) GEMMs of the slice width and K exps per pair,
against the chunked two sweeps' 2 K (K + 1) and 2 K; SLICED_ONE_PASS_BLOCKS: S's chunks
unrolled, or past six slices (TF32: nine, 3xTF32: two) in a loop at run time,
CHUNK_LOOP).  float32 (TF32 and 3xTF32): on sm_90 the K-major kernel of siglip_kmajor.py
(wgmma, the launcher's transposed operand copies; TF32 to d = 128,
3xTF32 to 64), else this kernel on mma.sync tiles (FLOAT32_ONE_PASS_BLOCKS: a float32 W^T
is no transposable wgmma operand here).

Two sweeps (`_siglip_kernel`, flash-style row blocks, no atomics): rows x against columns
y give the rows' losses, t sum_j w_ij y_j (d/dx) and the program's sums of w <x_i, y_j>
and w (d/dt, d/db); rows y against columns x give t sum_i w_ij x_i (d/dy).  Each side's
sweep issues 2 GEMMs (S and its gradient product) and 1 exp per pair (report-only lines
in compile_check: a loss with both gradients thus issues 4 GEMMs and 2 exps per pair).
The loss alone (no gradient) is the rows-x sweep without its product: 1 GEMM, 1 exp.  Up
to ONE_CHUNK_MAX_D features the row tile is loaded once; past it a third grid axis splits
the feature dimension, each program recomputing the logits over all of d.

Precision as the contrastive kernels (contrastive._precision): float64 in float64; float32
with TF32 products when torch allows TF32 for float32 matmuls, else 3xTF32; 16-bit inputs
on 16-bit tensor cores with float32 accumulation, the gradient's weights rounded to the
16-bit format.
"""

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from .. import _C  # noqa: F401  (loads the operators and their checks, torch.ops.pyhypersphere_checks)
from .contrastive import _pad_rows, _precision
from .siglip_kmajor import kmajor_config, one_pass_kmajor
from .siglip_terms import LOG2E, _one_pass_stages, _tile_weights
from .tiles import check_device, triton_before_newest
from .uniform import _load_rows, device_arch, operand_format




@triton.jit
def _pair_terms(logit, positive, DIAG: tl.constexpr):
    """Each pair's loss term softplus(-z l) and d/dl of it, from one exp (exp2 with log2(e)
    folded) and one log; z = +1 on the diagonal (only in the DIAG stage)."""
    if DIAG:
        u = tl.where(positive, -logit, logit)  # u = -z l
    else:
        u = logit
    e = tl.exp2(-tl.abs(u) * LOG2E)
    # log1p(e): its series where 1 + e would round the term away
    log1p_e = tl.where(e < 1e-4, e * (1.0 - e * (0.5 - e / 3.0)), tl.log(1.0 + e))
    term = tl.where(u > 0, u, 0.0) + log1p_e
    sigmoid = tl.where(u >= 0, 1.0, e) / (1.0 + e)
    if DIAG:
        dl = tl.where(positive, -sigmoid, sigmoid)
    else:
        dl = sigmoid
    return term, dl


@triton.jit
def _one_chunk_step(r_i, c_ptr, coef_ptr, rows, row_coef, c0, n_cols, d, stride_c, t, b,
                    loss, weighted_gram, weight, grad,
                    ROWS_ARE_X: tl.constexpr, WANT_GRAD: tl.constexpr, DIAG: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_D: tl.constexpr, PRECISION: tl.constexpr, WIDEN_OPERANDS: tl.constexpr):
    """One BLOCK_N tile of partner columns, the whole feature dimension in one chunk: the
    column tile is loaded once for S and for the gradient product.  Padding is handled
    by vectors, not per-pair masks: padded rows have a zero row coefficient (rows x) or
    are never stored (rows y); padded columns a zero column weight."""
    acc_t = t.dtype
    cols = c0 + tl.arange(0, BLOCK_N)
    col_ok = cols < n_cols
    offs_d = tl.arange(0, BLOCK_D)
    c_j = tl.load(c_ptr + cols[:, None].to(tl.int64) * stride_c + offs_d[None, :],
                  mask=col_ok[:, None] & (offs_d[None, :] < d), other=0.0)
    if WIDEN_OPERANDS:
        c_j = c_j.to(acc_t)
    gram = tl.dot(r_i, tl.trans(c_j), input_precision=PRECISION, out_dtype=acc_t)
    term, dl = _pair_terms(t * gram + b, rows[:, None] == cols[None, :], DIAG)
    if ROWS_ARE_X:
        col_w = col_ok.to(acc_t)
        loss += tl.sum(term * col_w[None, :], 1)
        w = row_coef[:, None] * dl * col_w[None, :]
        weighted_gram += tl.sum(w * gram, 1)
        weight += tl.sum(w, 1)
    else:
        col_coef = tl.load(coef_ptr + cols, mask=col_ok, other=0.0)
        w = col_coef[None, :] * dl
    if WANT_GRAD:
        grad += tl.dot(w.to(c_j.dtype), c_j, input_precision=PRECISION, out_dtype=acc_t)
    return loss, weighted_gram, weight, grad


@triton.jit
def _siglip_kernel(
    r_ptr, c_ptr, coef_ptr, tb_ptr, grad_ptr, loss_ptr, partial_ptr,
    n_rows, n_cols, d, stride_r, stride_c,
    ROWS_ARE_X: tl.constexpr, WANT_GRAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, ONE_CHUNK: tl.constexpr, PRECISION: tl.constexpr, WIDEN_OPERANDS: tl.constexpr,
):
    pid, chunk = tl.program_id(0), tl.program_id(1)
    rows = (pid * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    row_ok = rows < n_rows
    offs_d = tl.arange(0, BLOCK_D)
    t = tl.load(tb_ptr)
    b = tl.load(tb_ptr + 1)
    acc_t = t.dtype
    grad = tl.zeros([BLOCK_M, BLOCK_D], acc_t)
    loss = tl.zeros([BLOCK_M], acc_t)
    weighted_gram = tl.zeros([BLOCK_M], acc_t)
    weight = tl.zeros([BLOCK_M], acc_t)
    row_coef = tl.zeros([BLOCK_M], acc_t)
    if ROWS_ARE_X:
        row_coef = tl.load(coef_ptr + rows, mask=row_ok, other=0.0)
    mine = chunk * BLOCK_D + offs_d  # this program's gradient columns
    if ONE_CHUNK:
        # The row tile once; the diagonal (z = +1) only in the column tiles that meet the
        # rows' own indices, a stage of its own.
        r_i = tl.load(r_ptr + rows[:, None] * stride_r + offs_d[None, :], mask=row_ok[:, None] & (offs_d[None, :] < d),
                      other=0.0)
        if WIDEN_OPERANDS:
            r_i = r_i.to(acc_t)
        diag_lo = (pid * BLOCK_M) // BLOCK_N * BLOCK_N
        diag_hi = tl.cdiv(pid * BLOCK_M + BLOCK_M, BLOCK_N) * BLOCK_N
        for c0 in range(0, tl.minimum(diag_lo, n_cols), BLOCK_N):
            loss, weighted_gram, weight, grad = _one_chunk_step(
                r_i, c_ptr, coef_ptr, rows, row_coef, c0, n_cols, d, stride_c, t, b, loss, weighted_gram, weight,
                grad, ROWS_ARE_X, WANT_GRAD, False, BLOCK_N, BLOCK_D, PRECISION, WIDEN_OPERANDS)
        for c0 in range(diag_lo, tl.minimum(diag_hi, n_cols), BLOCK_N):
            loss, weighted_gram, weight, grad = _one_chunk_step(
                r_i, c_ptr, coef_ptr, rows, row_coef, c0, n_cols, d, stride_c, t, b, loss, weighted_gram, weight,
                grad, ROWS_ARE_X, WANT_GRAD, True, BLOCK_N, BLOCK_D, PRECISION, WIDEN_OPERANDS)
        for c0 in range(diag_hi, n_cols, BLOCK_N):
            loss, weighted_gram, weight, grad = _one_chunk_step(
                r_i, c_ptr, coef_ptr, rows, row_coef, c0, n_cols, d, stride_c, t, b, loss, weighted_gram, weight,
                grad, ROWS_ARE_X, WANT_GRAD, False, BLOCK_N, BLOCK_D, PRECISION, WIDEN_OPERANDS)
    else:
        # d past one chunk: S accumulated over feature chunks, each program recomputing
        # it for its BLOCK_D columns of the gradient.
        for c0 in range(0, n_cols, BLOCK_N):
            cols = (c0 + tl.arange(0, BLOCK_N)).to(tl.int64)
            col_ok = cols < n_cols
            gram = tl.zeros([BLOCK_M, BLOCK_N], acc_t)
            for k0 in range(0, d, BLOCK_D):
                dk = k0 + offs_d
                r_k = tl.load(r_ptr + rows[:, None] * stride_r + dk[None, :],
                              mask=row_ok[:, None] & (dk[None, :] < d), other=0.0)
                c_k = tl.load(c_ptr + cols[:, None] * stride_c + dk[None, :],
                              mask=col_ok[:, None] & (dk[None, :] < d), other=0.0)
                if WIDEN_OPERANDS:
                    r_k = r_k.to(acc_t)
                    c_k = c_k.to(acc_t)
                gram += tl.dot(r_k, tl.trans(c_k), input_precision=PRECISION, out_dtype=acc_t)
            pair = row_ok[:, None] & col_ok[None, :]
            term, dl = _pair_terms(t * gram + b, rows[:, None] == cols[None, :], True)
            if ROWS_ARE_X:
                loss += tl.sum(tl.where(pair, term, 0.0), 1)
                w = tl.where(pair, row_coef[:, None] * dl, 0.0)
                weighted_gram += tl.sum(w * gram, 1)
                weight += tl.sum(w, 1)
            else:
                col_coef = tl.load(coef_ptr + cols, mask=col_ok, other=0.0)
                w = tl.where(pair, col_coef[None, :] * dl, 0.0)
            if WANT_GRAD:
                c_mine = tl.load(c_ptr + cols[:, None] * stride_c + mine[None, :],
                                 mask=col_ok[:, None] & (mine[None, :] < d), other=0.0)
                if WIDEN_OPERANDS:
                    c_mine = c_mine.to(acc_t)
                grad += tl.dot(w.to(c_mine.dtype), c_mine, input_precision=PRECISION, out_dtype=acc_t)
    if WANT_GRAD:
        tl.store(grad_ptr + rows[:, None] * d + mine[None, :], t * grad, mask=row_ok[:, None] & (mine[None, :] < d))
    if ROWS_ARE_X and chunk == 0:
        tl.store(loss_ptr + rows, loss, mask=row_ok)
        tl.store(partial_ptr + pid * 2, tl.sum(weighted_gram, 0))
        tl.store(partial_ptr + pid * 2 + 1, tl.sum(weight, 0))


# ---------------------------------------------------------------- one pass, both gradients


@triton.jit
def _add_rows(gy_desc, gy_ptr, c0, col, part, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, D_PAD: tl.constexpr,
              REDUCE_DESC: tl.constexpr):
    """gy[c0:c0 + BLOCK_N, col:col + BLOCK_D] += part, atomically: one TMA reduce-add of
    the tile (sm_90, float32; the tile's stores to shared memory, 0.5 instructions per
    pair at 128 x 128), or an atomic add per element (RED instructions)."""
    if REDUCE_DESC:
        gy_desc.atomic_add([c0, col], part)
    else:
        offs = tl.arange(0, BLOCK_N)[:, None].to(tl.int64) * D_PAD + (col + tl.arange(0, BLOCK_D))[None, :]
        tl.atomic_add(gy_ptr + tl.cast(c0, tl.int64) * D_PAD + offs, part, sem="relaxed")


@triton.jit
def _slice_logits(xi_desc, yj_desc, x_ptr, y_ptr, r0, c0, col, x_i, acc_t: tl.constexpr, BLOCK_M: tl.constexpr,
                  BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, N_CHUNKS: tl.constexpr, CHUNK_LOOP: tl.constexpr,
                  PRECISION: tl.constexpr, WIDEN_OPERANDS: tl.constexpr, USE_DESC: tl.constexpr):
    """(S = x_i y_j^T over all N_CHUNKS feature chunks, y_j's chunk [col, col + BLOCK_D]):
    the program's own chunk first (x_i holds it; y_j's is the gradient products'
    operand), then the others, loaded per tile.  One chunk: S's one GEMM."""
    d_pad = N_CHUNKS * BLOCK_D
    y_j = _load_rows(yj_desc, y_ptr, c0, col, d_pad, BLOCK_N, BLOCK_D, USE_DESC)
    if WIDEN_OPERANDS:
        y_j = y_j.to(acc_t)
    s = tl.dot(x_i, tl.trans(y_j), input_precision=PRECISION, out_dtype=acc_t)
    if CHUNK_LOOP:  # a loop at run time: its registers do not grow with N_CHUNKS
        for k in range(1, N_CHUNKS):
            s = _add_chunk_logits(xi_desc, yj_desc, x_ptr, y_ptr, r0, c0, (col + k * BLOCK_D) % d_pad, s, acc_t,
                                  BLOCK_M, BLOCK_N, BLOCK_D, d_pad, PRECISION, WIDEN_OPERANDS, USE_DESC)
    else:
        for k in tl.static_range(1, N_CHUNKS):
            s = _add_chunk_logits(xi_desc, yj_desc, x_ptr, y_ptr, r0, c0, (col + k * BLOCK_D) % d_pad, s, acc_t,
                                  BLOCK_M, BLOCK_N, BLOCK_D, d_pad, PRECISION, WIDEN_OPERANDS, USE_DESC)
    return s, y_j


@triton.jit
def _add_chunk_logits(xi_desc, yj_desc, x_ptr, y_ptr, r0, c0, kc, s, acc_t: tl.constexpr, BLOCK_M: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, d_pad: tl.constexpr, PRECISION: tl.constexpr,
                      WIDEN_OPERANDS: tl.constexpr, USE_DESC: tl.constexpr):
    """s + x_i y_j^T over the feature chunk [kc, kc + BLOCK_D), both tiles loaded."""
    x_k = _load_rows(xi_desc, x_ptr, r0, kc, d_pad, BLOCK_M, BLOCK_D, USE_DESC)
    y_k = _load_rows(yj_desc, y_ptr, c0, kc, d_pad, BLOCK_N, BLOCK_D, USE_DESC)
    if WIDEN_OPERANDS:
        x_k = x_k.to(acc_t)
        y_k = y_k.to(acc_t)
    return tl.dot(x_k, tl.trans(y_k), s, input_precision=PRECISION, out_dtype=acc_t)


@triton.jit
def _one_pass_step(xi_desc, yj_desc, x_ptr, y_ptr, gy_desc, gy_ptr, r0, c0, col, x_i, xc_i, t2, b2, rows, n_cols,
                   n_diag, relu2, log1p_sum, weight, acc_x,
                   MASKED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_D: tl.constexpr, N_CHUNKS: tl.constexpr, CHUNK_LOOP: tl.constexpr, PRECISION: tl.constexpr,
                   WIDEN_OPERANDS: tl.constexpr, USE_DESC: tl.constexpr, FAST_MATH: tl.constexpr,
                   REDUCE_DESC: tl.constexpr):
    """One BLOCK_N tile of y's rows: S (GEMM 1), one exp per pair, acc_x += W y_j (GEMM 2,
    in registers) and the tile's W^T (coef x_i) (GEMM 3) added to y's gradient rows
    atomically.  MASKED: the diagonal's tiles and the last, partly padded one.  W = d/dl of
    each pair's term; the row coefficients are applied to the rows after the loop and, for
    GEMM 3, to its operand xc_i = coef x_i (no multiply per pair).  Padding rows have a
    zero coefficient (their loss is never stored)."""
    acc_t = t2.dtype
    s, y_j = _slice_logits(xi_desc, yj_desc, x_ptr, y_ptr, r0, c0, col, x_i, acc_t, BLOCK_M, BLOCK_N, BLOCK_D,
                           N_CHUNKS, CHUNK_LOOP, PRECISION, WIDEN_OPERANDS, USE_DESC)
    w, relu2, log1p_sum, weight = _tile_weights(s, t2, b2, c0, rows, n_cols, n_diag, relu2, log1p_sum, weight,
                                                MASKED, BLOCK_N, FAST_MATH)
    w_op = w
    if y_ptr.dtype.element_ty != acc_t:  # 16-bit operands: W in their format, as flash attention
        w_op = w.to(y_ptr.dtype.element_ty)
        if WIDEN_OPERANDS:
            w_op = w_op.to(acc_t)
    acc_x = tl.dot(w_op, y_j, acc_x, input_precision=PRECISION, out_dtype=acc_t)
    _add_rows(gy_desc, gy_ptr, c0, col, tl.dot(tl.trans(w_op), xc_i, input_precision=PRECISION, out_dtype=acc_t),
              BLOCK_N, BLOCK_D, N_CHUNKS * BLOCK_D, REDUCE_DESC)
    return relu2, log1p_sum, weight, acc_x


@triton.jit
def _siglip_one_pass_kernel(
    xi_desc, yj_desc, gy_desc, x_ptr, y_ptr, coef_ptr, tb_ptr, gx_ptr, gy_ptr, loss_ptr, partial_ptr,
    n_cols, n_diag,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, N_CHUNKS: tl.constexpr,
    CHUNK_LOOP: tl.constexpr, PRECISION: tl.constexpr, WIDEN_OPERANDS: tl.constexpr, USE_DESC: tl.constexpr,
    FAST_MATH: tl.constexpr, REDUCE_DESC: tl.constexpr,
):
    """The loss, d/dx, d/dy and the (t, b) sums in one sweep over the pairs (padded rows:
    x [rows, D_PAD], y [n_cols_pad, D_PAD], D_PAD = N_CHUNKS BLOCK_D).  Main loop per
    tile: 3 GEMMs (S, W y, W^T x), 1 exp per pair (exp2; the loss's log is per row and
    tile), W^T x added to gy_ptr with atomics (float32, float64 for float64 inputs): the
    result's last bits depend on the order the programs' additions land in.  Past one
    chunk (N_CHUNKS > 1) a second grid axis splits the gradients' features into
    BLOCK_D-wide slices: program (i, s) computes S over all chunks (N_CHUNKS GEMMs), its
    one exp per pair, and both gradients' slice s; slice 0 stores the rows' losses and
    the weights' sum, every slice its part of sum_j w_ij <x_i, y_j>."""
    pid = tl.program_id(0)
    if N_CHUNKS == 1:
        col = 0
    else:
        col = tl.program_id(1) * BLOCK_D  # this program's gradient columns
    d_pad: tl.constexpr = N_CHUNKS * BLOCK_D
    r0 = pid * BLOCK_M
    rows = r0 + tl.arange(0, BLOCK_M)
    t = tl.load(tb_ptr)
    acc_t = t.dtype
    t2 = t * LOG2E
    b2 = tl.load(tb_ptr + 1) * LOG2E
    coef = tl.load(coef_ptr + rows)
    x_i = _load_rows(xi_desc, x_ptr, r0, col, d_pad, BLOCK_M, BLOCK_D, USE_DESC)
    if WIDEN_OPERANDS:
        x_i = x_i.to(acc_t)
    xc_i = (x_i.to(acc_t) * coef[:, None]).to(x_i.dtype)  # GEMM 3's operand
    relu2 = tl.zeros([BLOCK_M], acc_t)
    log1p_sum = tl.zeros([BLOCK_M], acc_t)
    weight = tl.zeros([BLOCK_M], acc_t)
    acc_x = tl.zeros([BLOCK_M, BLOCK_D], acc_t)
    n_cols_pad, n_full, diag_lo, diag_hi, tail_lo = _one_pass_stages(r0, n_cols, BLOCK_M, BLOCK_N)
    for c0 in range(0, tl.minimum(diag_lo, n_full), BLOCK_N):
        relu2, log1p_sum, weight, acc_x = _one_pass_step(
            xi_desc, yj_desc, x_ptr, y_ptr, gy_desc, gy_ptr, r0, c0, col, x_i, xc_i, t2, b2, rows, n_cols, n_diag,
            relu2, log1p_sum, weight, acc_x, False, BLOCK_M, BLOCK_N, BLOCK_D, N_CHUNKS, CHUNK_LOOP, PRECISION,
            WIDEN_OPERANDS, USE_DESC, FAST_MATH, REDUCE_DESC)
    for c0 in range(diag_lo, diag_hi, BLOCK_N):
        relu2, log1p_sum, weight, acc_x = _one_pass_step(
            xi_desc, yj_desc, x_ptr, y_ptr, gy_desc, gy_ptr, r0, c0, col, x_i, xc_i, t2, b2, rows, n_cols, n_diag,
            relu2, log1p_sum, weight, acc_x, True, BLOCK_M, BLOCK_N, BLOCK_D, N_CHUNKS, CHUNK_LOOP, PRECISION,
            WIDEN_OPERANDS, USE_DESC, FAST_MATH, REDUCE_DESC)
    for c0 in range(diag_hi, n_full, BLOCK_N):
        relu2, log1p_sum, weight, acc_x = _one_pass_step(
            xi_desc, yj_desc, x_ptr, y_ptr, gy_desc, gy_ptr, r0, c0, col, x_i, xc_i, t2, b2, rows, n_cols, n_diag,
            relu2, log1p_sum, weight, acc_x, False, BLOCK_M, BLOCK_N, BLOCK_D, N_CHUNKS, CHUNK_LOOP, PRECISION,
            WIDEN_OPERANDS, USE_DESC, FAST_MATH, REDUCE_DESC)
    for c0 in range(tail_lo, n_cols_pad, BLOCK_N):
        relu2, log1p_sum, weight, acc_x = _one_pass_step(
            xi_desc, yj_desc, x_ptr, y_ptr, gy_desc, gy_ptr, r0, c0, col, x_i, xc_i, t2, b2, rows, n_cols, n_diag,
            relu2, log1p_sum, weight, acc_x, True, BLOCK_M, BLOCK_N, BLOCK_D, N_CHUNKS, CHUNK_LOOP, PRECISION,
            WIDEN_OPERANDS, USE_DESC, FAST_MATH, REDUCE_DESC)
    if col == 0:
        tl.store(loss_ptr + rows, relu2 / LOG2E + log1p_sum)
    offs = rows[:, None].to(tl.int64) * d_pad + (col + tl.arange(0, BLOCK_D))[None, :]
    tl.store(gx_ptr + offs, (t * coef)[:, None] * acc_x)
    # sum_j w_ij <x_i, y_j> = <x_i, acc_x_i>, a part per slice; x_i loaded again (kept,
    # it would hold registers through the loop)
    x_i = _load_rows(xi_desc, x_ptr, r0, col, d_pad, BLOCK_M, BLOCK_D, USE_DESC)
    part = partial_ptr + (pid * N_CHUNKS + col // BLOCK_D) * 2
    tl.store(part, tl.sum(coef * tl.sum(x_i.to(acc_t) * acc_x, 1), 0))
    weight_sum = tl.sum(coef * weight, 0)
    if N_CHUNKS > 1:  # the weights' sum once, from slice 0
        weight_sum = tl.where(col == 0, weight_sum, 0.0)
    tl.store(part + 1, weight_sum)


# The widest feature dimension held in one chunk (the row tile loaded once, no
# recomputation of S), per product format; past it the chunked paths (the one pass's
# gradient slices, the two sweeps' feature chunks).
ONE_CHUNK_MAX_D = {"bf16": 128, "fp16": 128, "tf32": 128, "tf32x3": 128, "fp64": 64}


def _config(dtype: torch.dtype, d: int, precision: str = "ieee") -> dict:
    """Block sizes per product format and width (compile_check compiles each; none spills
    on sm_80 or sm_90).  One chunk: 64 x 64 tiles (one warpgroup, wgmma on sm_90), 3xTF32
    in 16 x 32 and float64 in 32 x 32; 32-bit and 64-bit operands two stages deep (three
    spill).  Chunked: 32 x 32 tiles, 16-bit rows in chunks of 128 features and 32-bit and
    64-bit rows in chunks of 32 (wider ones spill)."""
    fmt = operand_format(dtype, precision)
    block_d = max(16, triton.next_power_of_2(d))
    if block_d <= ONE_CHUNK_MAX_D[fmt]:
        block_m, block_n = {"tf32x3": (16, 32), "fp64": (32, 32)}.get(fmt, (64, 64))
        if fmt == "tf32" and block_d <= 64:
            block_n = 32  # 64 x 64 x 64 spills the loss-only sweep on sm_90 (116 bytes)
        return {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_D": block_d, "ONE_CHUNK": True, "num_warps": 4,
                "num_stages": 3 if fmt in ("bf16", "fp16") else 2}
    wide = dtype in (torch.float32, torch.float64)
    block_d = min(block_d, 32 if wide else 128)
    # float32 at 4 warps spills the loss-only sweep on sm_80 (48 bytes)
    warps = 8 if dtype == torch.float32 or block_d > 64 else 4
    return {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_D": block_d, "ONE_CHUNK": False, "num_warps": warps,
            "num_stages": 3}


# float32's one-pass blocks, (BLOCK_M, BLOCK_N, num_warps, TMA descriptors) per product
# format, arch and BLOCK_D: mma.sync tiles on both archs (from sm_90 where the K-major
# kernel, siglip_kmajor.kmajor_config, is not taken: 3xTF32 at d = 128, and archs past
# sm_90, which have no wgmma).  A float32 W^T is no transposable wgmma operand (TF32
# wgmma reads both shared-memory operands with the contracted index contiguous), so on
# sm_90 Triton moves it through registers and spills at 64 rows (352 bytes at 64 x 32, d
# = 128); 16- and 32-row tiles stay on mma.sync.  Each entry is the tile without spills
# and with the fewest other instructions per pair among those compiled
# (docs/results/triton.md); fewer warps where more split a tile's products unevenly (6
# GEMMs and 2 exps a tile at 32 x 32 on 4 warps below d = 128), and on sm_90 the TMA
# descriptors (y's gradient tile by one bulk reduce-add) where they do not spill. 3xTF32
# on sm_80 pads d <= 16 to 32 (every 16-wide tile spills or duplicates products).
FLOAT32_ONE_PASS_BLOCKS = {
    ("tf32", 90): {16: (32, 32, 2, True), 32: (32, 32, 2, False), 64: (32, 32, 2, True), 128: (16, 32, 4, True)},
    ("tf32", 80): {16: (32, 32, 2, False), 32: (32, 32, 1, False), 64: (32, 32, 2, False),
                   128: (32, 32, 4, False)},
    ("tf32x3", 90): {16: (32, 32, 2, True), 32: (16, 32, 1, False), 64: (16, 32, 2, True),
                     128: (16, 32, 4, False)},
    ("tf32x3", 80): {32: (32, 16, 2, False), 64: (32, 16, 2, False), 128: (16, 32, 4, False)},
}
# Where Triton 3.6 (before tiles.NEWEST_CHECKED_TRITON) spills on those blocks (8-88
# bytes), its spill-free choice, or None: the two sweeps (sm_80's 3xTF32 at d = 128
# spills 8-48 bytes on every 9-GEMM tile tried).
FLOAT32_ONE_PASS_BLOCKS_OLDER_TRITON = {
    ("tf32", 90): {64: (32, 32, 2, False)},
    ("tf32x3", 90): {32: (32, 16, 2, False), 64: (16, 32, 4, True), 128: (16, 16, 2, False)},
    ("tf32x3", 80): {32: (16, 32, 1, False), 128: None},
}


# Past the one-chunk width, the gradients' features in ONE_CHUNK_MAX_D-wide slices (S
# over all K chunks per slice), per format and arch class: ranges of K as (the largest
# K, blocks), blocks = (BLOCK_M, BLOCK_N, num_warps, TMA descriptors, num_stages,
# CHUNK_LOOP) or None (the two sweeps); past the last range, the two sweeps.  Each is
# the tile without spills and with the fewest other instructions per pair among those
# compiled (docs/results/triton.md).  Unrolled (CHUNK_LOOP False) the S loop's registers
# grow with K: 16-bit spills at K = 9 (d = 1152: 168 bytes on sm_90, 24 on sm_80), so
# past K = 6 (TF32: 9) S's other chunks take a loop at run time (registers independent
# of K; on sm_90 num_stages = 2: 47.3 other instructions per slice pair at K = 9 against
# 47.9 in one), to K = 12 (ViT-g's d = 1536, the widest compiled).  d <= 768 stays
# unrolled as before (on sm_80 the loop's 32 x 32 tile issues fewer other instructions
# at K = 6, 149 against 191 per slice pair, but its loads are not pipelined: for a GPU
# run to decide).  3xTF32 on sm_90 takes the loop from K = 3 (unrolled, 16 x 32 spills
# 16 bytes there).  The one-chunk tiles spill 24-80 bytes (16-bit) already at K = 2.
# Not here (the two sweeps): 3xTF32 before sm_90 (32 bytes spilled at K = 2 on 16 x 32,
# 104 on 16 x 16; with the loop at K = 3 16-98672 on 16 x 16, 16 x 32, 32 x 16 and 32 x
# 32 at 1 to 8 warps) and float64 on sm_90 (16-288 at K = 2 to 4 on 16 x 16 and 16 x 32,
# 2 and 4 warps).
SLICED_ONE_PASS_BLOCKS = {
    ("bf16", 90): ((6, (128, 64, 8, True, 1, False)), (12, (128, 64, 8, True, 2, True))),
    ("bf16", 80): ((6, (32, 16, 2, False, 1, False)), (12, (32, 32, 4, False, 1, True))),
    ("tf32", 90): ((9, (16, 32, 4, True, 1, False)), (12, (16, 32, 4, True, 1, True))),
    ("tf32", 80): ((9, (32, 32, 4, False, 1, False)), (12, (32, 32, 4, False, 1, True))),
    ("tf32x3", 90): ((2, (16, 32, 4, False, 1, False)), (12, (16, 32, 4, False, 1, True))),
    ("fp64", 80): ((12, (16, 16, 2, False, 1, False)),),
}
# Where Triton 3.6 (before tiles.NEWEST_CHECKED_TRITON) spills on those: its ranges.  sm_90
# 16-bit: every wgmma tile spills (76-10764 bytes: 128 x 64, 64 x 64, 64 x 128, 128 x 32,
# 64 x 32), so sm_80's mma.sync tiles; sm_80 16-bit's loop 32 x 32 spills 40 bytes;
# 3xTF32 on sm_90 at K = 2 (a loop of one step is unrolled) spills on 16 x 32 (8 bytes at
# 4 warps, 1288-4888 at 2 and 8 or with descriptors), not on 16 x 16 w4, whose warps
# issue its products and exp twice (18 GEMMs and 2 exps a tile; still a tenth of the two
# sweeps' other instructions).
SLICED_ONE_PASS_BLOCKS_OLDER_TRITON = {
    ("bf16", 90): ((6, (32, 16, 2, False, 1, False)), (12, (32, 32, 4, False, 1, True))),
    ("bf16", 80): ((6, (32, 16, 2, False, 1, False)), (12, (16, 32, 4, False, 1, True))),
    ("tf32x3", 90): ((2, (16, 16, 4, False, 1, False)), (12, (16, 32, 4, False, 1, True))),
}


def _sliced_blocks(fmt: str, chunks: int, arch: int):
    """SLICED_ONE_PASS_BLOCKS' blocks for K = chunks slices (the installed Triton's), or None."""
    key = ("bf16" if fmt == "fp16" else fmt, 90 if arch >= 90 else 80)
    ranges = SLICED_ONE_PASS_BLOCKS.get(key, ())
    if triton_before_newest():
        ranges = SLICED_ONE_PASS_BLOCKS_OLDER_TRITON.get(key, ranges)
    return next((blocks for most, blocks in ranges if chunks <= most), None)


def one_pass_config(fmt: str, d: int, arch: int):
    """The one-pass kernel's blocks for a product format, width and arch (compile_check
    compiles each), or None where the launcher takes the two sweeps.  Past the one-chunk
    width N_CHUNKS > 1 gradient slices (SLICED_ONE_PASS_BLOCKS).  Up to it, sm_90,
    16-bit: 128 x 128 tiles, 8 warps, one stage (15.8 non-mma
    instructions per pair at d = 128; 64-column tiles pay the per-row log and reductions
    twice: 20.5), 64 x 128 at 4 warps for d = 64.  Before sm_90, mma.sync keeps both
    [rows, d] gradient accumulators and the operands in registers: 32 x 32 is the largest
    16-bit tile without spills (66 per pair at d = 128, above the sm_80 budget of 40).
    float64: 16 x 32 (32-row tiles spill or issue 4 GEMMs a tile).  float32:
    FLOAT32_ONE_PASS_BLOCKS.  compile_check's full matrix, d = 16 to 1536, passes with
    these."""
    block_d = max(16, triton.next_power_of_2(d))
    if block_d <= ONE_CHUNK_MAX_D[fmt]:
        cfg = _one_pass_blocks(fmt, block_d, arch)
        return None if cfg is None else {**cfg, "N_CHUNKS": 1, "CHUNK_LOOP": False}
    chunks = triton.cdiv(d, ONE_CHUNK_MAX_D[fmt])
    blocks = _sliced_blocks(fmt, chunks, arch)
    if blocks is None:
        return None
    block_m, block_n, warps, use_desc, stages, chunk_loop = blocks
    return {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_D": ONE_CHUNK_MAX_D[fmt], "USE_DESC": use_desc,
            "num_warps": warps, "num_stages": stages, "N_CHUNKS": chunks, "CHUNK_LOOP": chunk_loop}


def _one_pass_blocks(fmt: str, block_d: int, arch: int):
    if fmt in ("tf32", "tf32x3"):
        key = (fmt, 90 if arch >= 90 else 80)
        blocks = FLOAT32_ONE_PASS_BLOCKS[key]
        block_d = max(block_d, min(blocks))
        if triton_before_newest():
            blocks = {**blocks, **FLOAT32_ONE_PASS_BLOCKS_OLDER_TRITON.get(key, {})}
        if blocks[block_d] is None:
            return None
        block_m, block_n, warps, use_desc = blocks[block_d]
        return {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_D": block_d, "USE_DESC": use_desc,
                "num_warps": warps, "num_stages": 1}
    if arch >= 90 and fmt != "fp64" and triton_before_newest():
        # Triton 3.6: the 16-bit 128 x 128 tile spills 4292 bytes, 64 x 64 1952, 128 x 64
        # 2196; 64 x 32 on 4 warps compiles clean (wgmma, 21.6-22.6 non-mma per pair, d = 16-128)
        return {"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_D": block_d, "USE_DESC": True, "num_warps": 4, "num_stages": 1}
    if fmt == "fp64" and block_d <= 32 and triton_before_newest():
        # Triton 3.6: 16 x 32 on 2 warps spills 112-516 bytes at d = 16 and 32 (5 GEMMs a
        # tile on 4); 16 x 16 on one warp, d padded to 32, compiles clean (135-152 non-mma
        # per pair; at d = 16 itself it spills 160)
        return {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_D": 32, "USE_DESC": False, "num_warps": 1, "num_stages": 1}
    use_desc, stages = arch >= 90, 1
    if fmt == "fp64":  # 4 warps on d <= 32 split the products unevenly: 5 GEMMs a tile
        block_m, block_n, warps, use_desc = 16, 32, (2 if block_d <= 32 else 4), False
    elif arch < 90:  # 4 warps on d <= 32 duplicate products: 6 GEMMs, 2 exps a tile
        block_m, block_n, warps = 32, 32, (2 if block_d <= 32 else 4)
    elif block_d == 64:  # 128 x 128 spills 96 bytes there
        block_m, block_n, warps = 64, 128, 4
    else:  # d = 32 spills 24 bytes in one stage, not in two
        block_m, block_n, warps, stages = 128, 128, 8, (2 if block_d == 32 else 1)
    return {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_D": block_d, "USE_DESC": use_desc, "num_warps": warps,
            "num_stages": stages}


def _one_pass(x, y, c, tb, grad_x: bool, acc_t):
    """(grad_x or None, grad_y, row losses, per-program (t, b) sums) from one sweep, or
    None where the width takes the two sweeps."""
    precision = _precision(x.dtype)
    fmt, arch = operand_format(x.dtype, precision), device_arch(x.device)
    kmajor = kmajor_config(fmt, x.shape[1], arch)
    if kmajor is not None:  # float32 on sm_90: every operand K-major
        return one_pass_kmajor(x, y, c, tb, grad_x, acc_t, kmajor)
    cfg = one_pass_config(fmt, x.shape[1], arch)
    if cfg is None:
        return None
    (nx, d), ny = x.shape, y.shape[0]
    bm, bn, bd, chunks = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_D"], cfg["N_CHUNKS"]
    nx_pad, ny_pad = triton.cdiv(nx, bm) * bm, triton.cdiv(ny, bn) * bn
    xp, yp = _pad_rows(x, nx_pad, bd * chunks), _pad_rows(y, ny_pad, bd * chunks)
    coef = c.new_zeros(nx_pad)
    coef[:nx] = c
    gx = torch.empty((nx_pad, bd * chunks), dtype=acc_t, device=x.device)
    gy = torch.zeros((ny_pad, bd * chunks), dtype=acc_t, device=x.device)
    loss = torch.empty(nx_pad, dtype=acc_t, device=x.device)
    partial = torch.empty((nx_pad // bm * chunks, 2), dtype=acc_t, device=x.device)
    fast = acc_t == torch.float32 and not triton.knobs.runtime.interpret
    _siglip_one_pass_kernel[(nx_pad // bm, chunks)](
        TensorDescriptor.from_tensor(xp, [bm, bd]), TensorDescriptor.from_tensor(yp, [bn, bd]),
        TensorDescriptor.from_tensor(gy, [bn, bd]), xp, yp, coef, tb,
        gx, gy, loss, partial, ny, min(nx, ny),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, N_CHUNKS=chunks, CHUNK_LOOP=cfg["CHUNK_LOOP"], PRECISION=precision,
        # The interpreter's 16-bit tl.dot is wrong (Triton 3.9): widen (exactly) there.
        WIDEN_OPERANDS=triton.knobs.runtime.interpret and x.dtype in (torch.bfloat16, torch.float16),
        # The interpreter has no inline assembly and no TMA reduce: their plain forms there.
        USE_DESC=cfg["USE_DESC"], FAST_MATH=fast, REDUCE_DESC=fast and cfg["USE_DESC"],
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return (gx[:nx, :d] if grad_x else None), tb[0] * gy[:ny, :d], loss[:nx], partial


def _sweep(rows, cols, coef, tb, rows_are_x: bool, want_grad: bool, acc_t):
    """One role of the kernel: (gradient rows or None, row losses, per-program (t, b) sums)."""
    n, d = rows.shape
    precision = _precision(rows.dtype)
    cfg = _config(rows.dtype, d, precision)
    blocks = triton.cdiv(n, cfg["BLOCK_M"])
    chunks = triton.cdiv(d, cfg["BLOCK_D"]) if want_grad and not cfg["ONE_CHUNK"] else 1
    grad = torch.empty((n, d) if want_grad else (1,), dtype=acc_t, device=rows.device)
    loss = torch.empty((n,) if rows_are_x else (1,), dtype=acc_t, device=rows.device)
    partial = torch.empty((blocks, 2) if rows_are_x else (1,), dtype=acc_t, device=rows.device)
    _siglip_kernel[(blocks, chunks)](
        rows, cols, coef, tb, grad, loss, partial, n, cols.shape[0], d, rows.stride(0), cols.stride(0),
        ROWS_ARE_X=rows_are_x, WANT_GRAD=want_grad, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
        BLOCK_D=cfg["BLOCK_D"], ONE_CHUNK=cfg["ONE_CHUNK"], PRECISION=precision,
        # The interpreter's 16-bit tl.dot is wrong (Triton 3.9): widen (exactly) there.
        WIDEN_OPERANDS=triton.knobs.runtime.interpret and rows.dtype in (torch.bfloat16, torch.float16),
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return (grad if want_grad else None), loss, partial


def siglip(x, y, t, b, coef, grad_x, grad_y, grad_tb):
    """`torch.ops.pyhypersphere.siglip` on Triton: same arguments, same results."""
    torch.ops.pyhypersphere_checks.siglip(x, y, t, b, coef)
    check_device(x.device, "siglip_loss")
    acc_t = torch.float64 if x.dtype == torch.float64 else torch.float32
    x, y = x.contiguous(), y.contiguous()
    c = coef.to(acc_t).contiguous()
    tb = torch.stack([t.reshape(()), b.reshape(())]).to(device=x.device, dtype=acc_t)
    # Both sides' gradients: one sweep with atomics, unless torch asks for deterministic
    # algorithms (the two sweeps are bitwise repeatable).
    one_pass = None
    if grad_y and not torch.are_deterministic_algorithms_enabled():
        one_pass = _one_pass(x, y, c, tb, grad_x, acc_t)
    if one_pass is not None:
        gx, gy, rows, partial = one_pass
    else:
        gx, rows, partial = _sweep(x, y, c, tb, True, grad_x, acc_t)
        gy = _sweep(y, x, c, tb, False, True, acc_t)[0] if grad_y else None
    empty = x.new_empty((0,), dtype=acc_t)
    total = (rows.to(torch.float64) * c.to(torch.float64)).sum().to(acc_t)
    outputs = (total, rows, gx if grad_x else empty, gy if grad_y else empty.clone(),
               partial.to(torch.float64).sum(0).to(acc_t) if grad_tb else empty.clone())
    # NaN or inf anywhere: NaN outputs, decided on the device (no host read).
    finite = torch.isfinite(x).all() & torch.isfinite(y).all() & torch.isfinite(tb).all()
    nan = torch.full((), float("nan"), dtype=acc_t, device=x.device)
    return tuple(torch.where(finite, v, nan) if v.numel() else v for v in outputs)
