"""Triton kernels and launchers for `contrastive_lse`, `contrastive_lse_backward` and
`contrastive_mean_lse` (contract: csrc/ops.h).

Both kernels are flash-style row blocks: a program owns BLOCK_M rows R_i and sweeps a
contiguous range of partner columns C_j with the logits s_ij = scale <R_i, C_j> computed
tile by tile, never stored.  No program waits for another and there are no atomics.

- `_row_lse_kernel`: per row a shift m_i and l_i = sum_j exp(s_ij - m_i).
- `_row_grad_kernel`: per row scale * sum_j w_ij C_j with the softmax weights of both
  sides of each logit, w_ij = g_i exp(s_ij - lse_i) + h_j exp(s_ij - lse_j) (each <= |g|
  since an lse bounds its logits), for the upstream gradients g (rows) and h (columns).

Both follow the flash-attention forward's loop (Triton's fused-attention tutorial): the
main loop runs over the full column blocks that hold only pairs, without a per-element
mask (int32 offsets within a block, exp2 with log2(e) in the scale); the blocks that meet
the diagonal, the skipped positives or the tail, and every block under the part slicing
or a chunked width, take a masked stage of their own.  When the static shift
c = scale max|a_i| max|b_j| is certified (_static_shift: unit rows at tau >= 0.025 in
float32) the main loops keep no running max, and the gradient's two-sided weights take
one exp: e^(s - c) (g_i e^(c - lse_i) + h_j e^(c - lse_j)).

Work per ordered pair of the main loops (certified), in tensor-core GEMMs over a tile
and exps: the lse kernel 1 GEMM (S) and 1 exp; the gradient kernel 2 GEMMs (S, W C) and
1 exp.  Per loss (the issue 23 minimum in brackets):
- NT-Xent: lse of the stacked rows, then their gradient: 3 GEMMs, 2 exps [3, 2];
- MoCo InfoNCE, detached queue: the queries' lse, then their gradient: 3, 2 [2, 1];
- in-batch InfoNCE, both gradients: lse, the queries' and the keys' gradients: 5, 3 [4, 2];
- CLIP: row and column lse, then both gradients: 6, 4 [5, 3].

Every side of the contract is one of these with the roles of the inputs chosen:
- cross pairs: a's lse = rows a against columns b; b's (CLIP's column lse) = rows b
  against columns a.  d/da = rows a (row terms g = grad_lse_a, column terms h =
  grad_lse_b); d/db = rows b against columns a with the two terms' roles exchanged.
- self pairs: a and b stacked into Z, rows Z against columns Z without the diagonal; the
  logit matrix is symmetric, so the gradient of a row has both terms with the stacked lse
  and upstream gradients.
A symmetric logit is thus computed twice (once per side), which buys determinism without
ordering programs.  Few row blocks (queue shapes) split the columns over programs whose
partials merge in split order (splits.py).

Precision: float64 in float64; float32 with TF32 products when torch allows TF32 for
float32 matmuls (as `a @ b.T` would), else 3xTF32 (float32 accuracy); bf16/fp16 inputs
multiplied as given on 16-bit tensor cores with float32 accumulation (exact products),
and in the gradient's second product the weights rounded to the 16-bit format (as flash
attention does).  Unlike the uniformity loss there is no centering: an inner product has
no cancellation to protect.
"""

import torch
import triton
import triton.language as tl

from .. import _C  # noqa: F401  (loads the operator schemas and their checks)
from .._matmul_precision import cuda_matmul_allows_tf32
from .splits import merge_splits, split_columns
from .tiles import check_device, logit_tile, part_index_fits, row_block
from .uniform import uniform_config

# Rows per part-slicing block: `part`/`num_parts` cut the pair set into tiles of
# PART_BLOCK x PART_BLOCK rows (self pairs: the upper triangle of the stacked rows' blocks;
# cross pairs: a's blocks by b's blocks, row-major) and keep a contiguous, balanced range.
PART_BLOCK = 64


@triton.jit
def _pair_mask(rows, cols, row_ok, col_ok, part_lo, part_hi, row_tile_stride, col_tile_stride,
               tri_blocks, n_a, SELF_PAIRS: tl.constexpr, SKIP_POSITIVES: tl.constexpr, HAS_PARTS: tl.constexpr,
               PART_ROWS: tl.constexpr):
    """Which (row, column) entries of the tile are pairs of this call."""
    ok = row_ok[:, None] & col_ok[None, :]
    if SELF_PAIRS:
        ok = ok & (rows[:, None] != cols[None, :])
    if SKIP_POSITIVES:
        # The positive pairs (a_i, b_i): with cross pairs column i of row i (either side);
        # with self pairs (stacked a then b, n_a rows of a) a_i's is n_a + i, b_i's is i
        # when a_i exists (-1: none).
        if SELF_PAIRS:
            partner = tl.where(rows < n_a, rows + n_a, tl.where(rows < 2 * n_a, rows - n_a, -1))
            ok = ok & (cols[None, :] != partner[:, None])
        else:
            ok = ok & (rows[:, None] != cols[None, :])
    if HAS_PARTS:
        # The pair's tile from per-row and per-column block indices (int32 per element: the
        # launcher checks the tile count fits), the same whichever side is the row.
        rb = (rows // PART_ROWS).to(tl.int32)
        cb = (cols // PART_ROWS).to(tl.int32)
        if SELF_PAIRS:
            lo_b = tl.minimum(rb[:, None], cb[None, :])
            hi_b = tl.maximum(rb[:, None], cb[None, :])
            tile = lo_b * tri_blocks - (lo_b * (lo_b - 1)) // 2 + hi_b - lo_b
        else:
            tile = rb[:, None] * row_tile_stride + cb[None, :] * col_tile_stride
        ok = ok & (tile >= part_lo) & (tile < part_hi)
    return ok


@triton.jit
def _logits(r_ptr, c_ptr, c0, c_hi, rows, row_ok, r_i, d, stride_r, stride_c, scale,
            part_lo, part_hi, row_tile_stride, col_tile_stride, tri_blocks, n_a,
            SELF_PAIRS: tl.constexpr, SKIP_POSITIVES: tl.constexpr, HAS_PARTS: tl.constexpr, PART_ROWS: tl.constexpr,
            ONE_CHUNK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
            PRECISION: tl.constexpr, WIDEN_OPERANDS: tl.constexpr, acc_t: tl.constexpr):
    """The column tile from c0: (columns, their mask, the logits scale <R_i, C_j>, which
    entries are pairs of this call, the columns' features when they fit one chunk)."""
    cols = (c0 + tl.arange(0, BLOCK_N)).to(tl.int64)
    col_ok = cols < c_hi
    gram, c_j = logit_tile(r_ptr, c_ptr, rows, cols, row_ok, col_ok, r_i, d, stride_r, stride_c,
                           ONE_CHUNK, BLOCK_M, BLOCK_N, BLOCK_D, PRECISION, WIDEN_OPERANDS, acc_t)
    ok = _pair_mask(rows, cols, row_ok, col_ok, part_lo, part_hi, row_tile_stride, col_tile_stride,
                    tri_blocks, n_a, SELF_PAIRS, SKIP_POSITIVES, HAS_PARTS, PART_ROWS)
    return cols, col_ok, gram * scale, ok, c_j


LOG2E = tl.constexpr(1.4426950408889634)  # the kernels work in log2 units: exp2, log2(e) in the scale
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _block_range(lo, hi, c_lo, n_blocks, BLOCK_N: tl.constexpr):
    """The column blocks [s, e) (from c_lo, within [0, n_blocks)) that meet columns [lo, hi)."""
    rel_lo = tl.maximum(lo - c_lo, 0)
    rel_hi = tl.maximum(hi - c_lo, 0)
    s = tl.minimum(rel_lo // BLOCK_N, n_blocks)
    e = tl.minimum((rel_hi + BLOCK_N - 1) // BLOCK_N, n_blocks)
    return s, tl.maximum(e, s)


@triton.jit
def _special_blocks(row0, c_lo, n_blocks, n_a, ALL_MASKED: tl.constexpr, SELF_PAIRS: tl.constexpr,
                    SKIP_POSITIVES: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """(s1, e1, s2, e2): the full column blocks of this program's sweep that hold an entry
    which is not a pair (the row block's own rows with self pairs, its rows' positives when
    skipped), as two sorted, disjoint ranges of block numbers; every block when
    ALL_MASKED.  Only these take the per-element mask: the main loop runs on the others."""
    zero = n_blocks * 0
    s1, e1, s2, e2 = zero, zero, zero, zero
    if ALL_MASKED:
        e1 = n_blocks
    else:
        if SELF_PAIRS or SKIP_POSITIVES:  # the diagonal, or the cross pairs' positives (column i of row i)
            s1, e1 = _block_range(row0, row0 + BLOCK_M, c_lo, n_blocks, BLOCK_N)
        if SELF_PAIRS and SKIP_POSITIVES:  # the positives of stacked rows: their bounding range
            below = row0 + BLOCK_M <= n_a
            above = row0 >= n_a
            lo = tl.where(below, row0 + n_a, tl.where(above, row0 - n_a, 0))
            hi = tl.where(below, row0 + BLOCK_M + n_a, tl.where(above, row0 + BLOCK_M - n_a, 2 * n_a))
            s2, e2 = _block_range(lo, hi, c_lo, n_blocks, BLOCK_N)
            # Sorted, and merged when they meet.
            swap = s2 < s1
            a_s, a_e = tl.where(swap, s2, s1), tl.where(swap, e2, e1)
            b_s, b_e = tl.where(swap, s1, s2), tl.where(swap, e1, e2)
            meet = b_s <= a_e
            s1, e1 = a_s, tl.where(meet, tl.maximum(a_e, b_e), a_e)
            s2, e2 = tl.where(meet, e1, b_s), tl.where(meet, e1, b_e)
    return s1, e1, s2, e2


@triton.jit
def _plain_block(k, s1, e1, s2, e2):
    """The k-th column block outside the special ranges (sorted, disjoint)."""
    b = k + tl.where(k >= s1, e1 - s1, 0)
    return b + tl.where(b >= s2, e2 - s2, 0)


@triton.jit
def _masked_block(t, s1, e1, s2, e2, n_blocks):
    """The t-th block of the masked stage: the special ranges, then the partial tail block."""
    len1 = e1 - s1
    return tl.where(t < len1, s1 + t, tl.where(t < len1 + e2 - s2, s2 + t - len1, n_blocks))


@triton.jit
def _plain_logits2(r_i, c_ptr, c0, stride_c, scale2, d_ok, EVEN_D: tl.constexpr, PRECISION: tl.constexpr,
                   WIDEN_OPERANDS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                   acc_t: tl.constexpr):
    """A full column block's logits in log2 units and its rows C_j: no per-element mask;
    int32 offsets within the block, whose base is the only 64-bit arithmetic (a hoisted
    tile of 64-bit pointers would take the registers)."""
    ptrs = (c_ptr + c0.to(tl.int64) * stride_c) + (tl.arange(0, BLOCK_N)[:, None] * stride_c
                                                   + tl.arange(0, BLOCK_D)[None, :])
    if EVEN_D:
        c_j = tl.load(ptrs)
    else:
        c_j = tl.load(ptrs, mask=d_ok[None, :], other=0.0)
    if WIDEN_OPERANDS:
        c_j = c_j.to(acc_t)
    return tl.dot(r_i, tl.trans(c_j), input_precision=PRECISION, out_dtype=acc_t) * scale2, c_j


@triton.jit
def _row_lse_kernel(
    r_ptr, c_ptr, m_ptr, l_ptr,
    row_start, n_rows, n_cols, cols_per_split, d, stride_r, stride_c, scale_ptr,
    part_lo, part_hi, row_tile_stride, col_tile_stride, tri_blocks, n_a,
    SELF_PAIRS: tl.constexpr, SKIP_POSITIVES: tl.constexpr, HAS_PARTS: tl.constexpr, PART_ROWS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    ONE_CHUNK: tl.constexpr, PRECISION: tl.constexpr, WIDEN_OPERANDS: tl.constexpr, EVEN_D: tl.constexpr,
):
    """Per row a shift m_i and l_i = sum_j exp(s_ij - m_i) over this program's columns.
    Per pair of the main loop: 1 GEMM (S), 1 exp2, no mask, and under a certified static
    shift no running max either; the diagonal, the positives, the tail and the part
    slicing take the masked stage (online max)."""
    split = tl.program_id(1)
    acc_t = m_ptr.dtype.element_ty
    scale2 = tl.load(scale_ptr) * LOG2E  # a pointer: a Python float argument would be float32
    local, row_ok, rows, r_i = row_block(r_ptr, row_start, n_rows, d, stride_r, ONE_CHUNK, BLOCK_M, BLOCK_D,
                                         WIDEN_OPERANDS, acc_t)
    ALL_MASKED: tl.constexpr = HAS_PARTS or not ONE_CHUNK
    m_i = tl.full([BLOCK_M], float("-inf"), acc_t)
    l_i = tl.zeros([BLOCK_M], acc_t)
    c_lo = split * cols_per_split
    c_hi = tl.minimum(n_cols, c_lo + cols_per_split)
    n_blocks = (c_hi - c_lo) // BLOCK_N
    s1, e1, s2, e2 = _special_blocks(row_start + tl.program_id(0) * BLOCK_M, c_lo, n_blocks, n_a, ALL_MASKED,
                                     SELF_PAIRS, SKIP_POSITIVES, BLOCK_M, BLOCK_N)
    if not ALL_MASKED:
        offs_d = tl.arange(0, BLOCK_D)
        d_ok = offs_d < d
        n_plain = n_blocks - (e1 - s1) - (e2 - s2)
        if tl.load(scale_ptr + 3) > 0:
            # The certified static shift c >= every logit (_static_shift): no running max.
            c2 = tl.load(scale_ptr + 2) * LOG2E
            m_i = tl.full([BLOCK_M], 0.0, acc_t) + c2
            for k in range(0, n_plain):
                c0 = c_lo + _plain_block(k, s1, e1, s2, e2) * BLOCK_N
                s, _ = _plain_logits2(r_i, c_ptr, c0, stride_c, scale2, d_ok, EVEN_D, PRECISION,
                                      WIDEN_OPERANDS, BLOCK_N, BLOCK_D, acc_t)
                l_i += tl.sum(tl.math.exp2(s - c2), 1)
        else:
            for k in range(0, n_plain):
                c0 = c_lo + _plain_block(k, s1, e1, s2, e2) * BLOCK_N
                s, _ = _plain_logits2(r_i, c_ptr, c0, stride_c, scale2, d_ok, EVEN_D, PRECISION,
                                      WIDEN_OPERANDS, BLOCK_N, BLOCK_D, acc_t)
                m_new = tl.maximum(m_i, tl.max(s, 1))
                l_i = l_i * tl.math.exp2(m_i - m_new) + tl.sum(tl.math.exp2(s - m_new[:, None]), 1)
                m_i = m_new
    tail = tl.where(c_lo + n_blocks * BLOCK_N < c_hi, 1, 0)
    for t in range(0, (e1 - s1) + (e2 - s2) + tail):
        c0 = c_lo + _masked_block(t, s1, e1, s2, e2, n_blocks) * BLOCK_N
        cols, col_ok, s, ok, _ = _logits(
            r_ptr, c_ptr, c0, c_hi, rows, row_ok, r_i, d, stride_r, stride_c, scale2,
            part_lo, part_hi, row_tile_stride, col_tile_stride, tri_blocks, n_a, SELF_PAIRS, SKIP_POSITIVES,
            HAS_PARTS, PART_ROWS,
            ONE_CHUNK, BLOCK_M, BLOCK_N, BLOCK_D, PRECISION, WIDEN_OPERANDS, acc_t)
        s = tl.where(ok, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        l_i = l_i * tl.math.exp2(m_i - shift) + tl.sum(tl.math.exp2(s - shift[:, None]), 1)
        m_i = m_new

    out = split.to(tl.int64) * n_rows + local
    tl.store(m_ptr + out, m_i * LN2, mask=row_ok)  # natural units for the split merge
    tl.store(l_ptr + out, l_i, mask=row_ok)


@triton.jit
def _grad_weights(s, lse_i, g_i, lse_j, g_j, ROW_TERMS: tl.constexpr, COL_TERMS: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, acc_t: tl.constexpr):
    """w_ij = g_i 2^(s_ij - lse_i) + h_j 2^(s_ij - lse_j), all in log2 units (an lse of +inf,
    a row without pairs, gives 0)."""
    w = tl.zeros([BLOCK_M, BLOCK_N], acc_t)
    if ROW_TERMS:
        w += g_i[:, None] * tl.math.exp2(s - lse_i[:, None])
    if COL_TERMS:
        w += g_j[None, :] * tl.math.exp2(s - lse_j[None, :])
    return w


@triton.jit
def _log2_lse(lse):
    """An lse in log2 units, -inf (a row without pairs) as +inf: its weights are then 0
    without a mask (2^(s - inf) = 0, also for s = -inf)."""
    return tl.where(lse == float("-inf"), float("inf"), lse * LOG2E)


@triton.jit
def _column_terms(lse_c_ptr, g_c_ptr, cols, w_scale, SIXTEEN_BIT: tl.constexpr):
    """A full column block's (lse in log2 units, upstream gradient) (see _log2_lse and the
    16-bit weights' scale)."""
    lse_j = _log2_lse(tl.load(lse_c_ptr + cols))
    g_j = tl.load(g_c_ptr + cols)
    if SIXTEEN_BIT:
        g_j = g_j * w_scale
    return lse_j, g_j


@triton.jit
def _row_grad_kernel(
    r_ptr, c_ptr, lse_r_ptr, g_r_ptr, lse_c_ptr, g_c_ptr, out_ptr,
    row_start, n_rows, n_cols, cols_per_split, d, stride_r, stride_c, scale_ptr,
    part_lo, part_hi, row_tile_stride, col_tile_stride, tri_blocks, n_a,
    ROW_TERMS: tl.constexpr, COL_TERMS: tl.constexpr,
    SELF_PAIRS: tl.constexpr, SKIP_POSITIVES: tl.constexpr, HAS_PARTS: tl.constexpr, PART_ROWS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    ONE_CHUNK: tl.constexpr, PRECISION: tl.constexpr, WIDEN_OPERANDS: tl.constexpr, EVEN_D: tl.constexpr,
):
    """Per row scale * sum_j w_ij C_j.  Per pair of the main loop: 2 GEMMs (S, W C), no
    mask, and one exp2 under a certified static shift (both sides' terms from it), else
    one per side with terms."""
    split = tl.program_id(1)
    d_chunk = tl.program_id(2)  # the slice of the gradient this program accumulates (d > BLOCK_D)
    acc_t = out_ptr.dtype.element_ty
    scale = tl.load(scale_ptr)
    scale2 = scale * LOG2E
    w_scale = tl.load(scale_ptr + 1)  # see the 16-bit product below
    local, row_ok, rows, r_i = row_block(r_ptr, row_start, n_rows, d, stride_r, ONE_CHUNK, BLOCK_M, BLOCK_D,
                                         WIDEN_OPERANDS, acc_t)
    chunk_d = d_chunk * BLOCK_D + tl.arange(0, BLOCK_D)
    SIXTEEN_BIT: tl.constexpr = c_ptr.dtype.element_ty != acc_t
    # The upstream gradients carry the 16-bit weights' power-of-two scale (exact).
    lse_i = tl.full([BLOCK_M], float("inf"), acc_t)
    g_i = tl.zeros([BLOCK_M], acc_t)
    if ROW_TERMS:
        lse_i = _log2_lse(tl.load(lse_r_ptr + rows, mask=row_ok, other=float("-inf")))
        g_i = tl.load(g_r_ptr + rows, mask=row_ok, other=0.0)
        if SIXTEEN_BIT:
            g_i = g_i * w_scale
    ALL_MASKED: tl.constexpr = HAS_PARTS or not ONE_CHUNK
    acc = tl.zeros([BLOCK_M, BLOCK_D], acc_t)
    c_lo = split * cols_per_split
    c_hi = tl.minimum(n_cols, c_lo + cols_per_split)
    n_blocks = (c_hi - c_lo) // BLOCK_N
    s1, e1, s2, e2 = _special_blocks(row_start + tl.program_id(0) * BLOCK_M, c_lo, n_blocks, n_a, ALL_MASKED,
                                     SELF_PAIRS, SKIP_POSITIVES, BLOCK_M, BLOCK_N)
    if not ALL_MASKED:
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        d_ok = offs_d < d
        n_plain = n_blocks - (e1 - s1) - (e2 - s2)
        if tl.load(scale_ptr + 3) > 0:
            # Two-sided weights with one exp under the certified static shift c:
            # g_i e^(s - lse_i) + h_j e^(s - lse_j) = e^(s - c) (a_i + b_j), a_i = g_i e^(c - lse_i).
            c2 = tl.load(scale_ptr + 2) * LOG2E
            a_i = g_i * tl.math.exp2(c2 - lse_i)
            for k in range(0, n_plain):
                c0 = c_lo + _plain_block(k, s1, e1, s2, e2) * BLOCK_N
                s, c_j = _plain_logits2(r_i, c_ptr, c0, stride_c, scale2, d_ok, EVEN_D, PRECISION,
                                        WIDEN_OPERANDS, BLOCK_N, BLOCK_D, acc_t)
                b_j = tl.zeros([BLOCK_N], acc_t)
                if COL_TERMS:
                    lse_j, g_j = _column_terms(lse_c_ptr, g_c_ptr, c0 + offs_n, w_scale, SIXTEEN_BIT)
                    b_j = g_j * tl.math.exp2(c2 - lse_j)
                w = tl.math.exp2(s - c2) * (a_i[:, None] + b_j[None, :])
                acc = _accumulate(acc, w, c_j, c_ptr, PRECISION, WIDEN_OPERANDS, acc_t)
        else:
            for k in range(0, n_plain):
                c0 = c_lo + _plain_block(k, s1, e1, s2, e2) * BLOCK_N
                s, c_j = _plain_logits2(r_i, c_ptr, c0, stride_c, scale2, d_ok, EVEN_D, PRECISION,
                                        WIDEN_OPERANDS, BLOCK_N, BLOCK_D, acc_t)
                lse_j = tl.full([BLOCK_N], float("inf"), acc_t)
                g_j = tl.zeros([BLOCK_N], acc_t)
                if COL_TERMS:
                    lse_j, g_j = _column_terms(lse_c_ptr, g_c_ptr, c0 + offs_n, w_scale, SIXTEEN_BIT)
                w = _grad_weights(s, lse_i, g_i, lse_j, g_j, ROW_TERMS, COL_TERMS, BLOCK_M, BLOCK_N, acc_t)
                acc = _accumulate(acc, w, c_j, c_ptr, PRECISION, WIDEN_OPERANDS, acc_t)
    tail = tl.where(c_lo + n_blocks * BLOCK_N < c_hi, 1, 0)
    for t in range(0, (e1 - s1) + (e2 - s2) + tail):
        c0 = c_lo + _masked_block(t, s1, e1, s2, e2, n_blocks) * BLOCK_N
        cols, col_ok, s, ok, c_j = _logits(
            r_ptr, c_ptr, c0, c_hi, rows, row_ok, r_i, d, stride_r, stride_c, scale2,
            part_lo, part_hi, row_tile_stride, col_tile_stride, tri_blocks, n_a, SELF_PAIRS, SKIP_POSITIVES,
            HAS_PARTS, PART_ROWS,
            ONE_CHUNK, BLOCK_M, BLOCK_N, BLOCK_D, PRECISION, WIDEN_OPERANDS, acc_t)
        s = tl.where(ok, s, float("-inf"))
        lse_j = tl.full([BLOCK_N], float("inf"), acc_t)
        g_j = tl.zeros([BLOCK_N], acc_t)
        if COL_TERMS:
            lse_j = _log2_lse(tl.load(lse_c_ptr + cols, mask=col_ok, other=float("-inf")))
            g_j = tl.load(g_c_ptr + cols, mask=col_ok, other=0.0)
            if SIXTEEN_BIT:
                g_j = g_j * w_scale
        w = _grad_weights(s, lse_i, g_i, lse_j, g_j, ROW_TERMS, COL_TERMS, BLOCK_M, BLOCK_N, acc_t)
        if not ONE_CHUNK:
            c_j = tl.load(c_ptr + cols[:, None] * stride_c + chunk_d[None, :],
                          mask=col_ok[:, None] & (chunk_d[None, :] < d), other=0.0)
            if WIDEN_OPERANDS:
                c_j = c_j.to(acc_t)
        acc = _accumulate(acc, w, c_j, c_ptr, PRECISION, WIDEN_OPERANDS, acc_t)

    if SIXTEEN_BIT:
        acc = acc / w_scale  # exact: a power of two
    out = split.to(tl.int64) * n_rows + local
    tl.store(out_ptr + out[:, None] * d + chunk_d[None, :], acc * scale,
             mask=row_ok[:, None] & (chunk_d[None, :] < d))


@triton.jit
def _accumulate(acc, w, c_j, c_ptr, PRECISION: tl.constexpr, WIDEN_OPERANDS: tl.constexpr, acc_t: tl.constexpr):
    """acc + W C_j.  16-bit operands: the weights in the operands' format (flash attention's
    choice; relative 2^-9 for bf16, the gradient's own output rounding), already scaled by
    the power of two that brings the largest upstream gradient near 1 (the upstream
    gradients carry it): a mean loss's weights are ~1/N^2, below fp16's range."""
    if c_ptr.dtype.element_ty == acc_t:
        return acc + tl.dot(w, c_j, input_precision=PRECISION)
    w_op = w.to(c_ptr.dtype.element_ty)
    if WIDEN_OPERANDS:
        w_op = w_op.to(acc_t)
    return acc + tl.dot(w_op, c_j, input_precision=PRECISION, out_dtype=acc_t)


# ---------------------------------------------------------------- launchers


def contrastive_config(operand_dtype: torch.dtype, d: int, precision: str, has_parts: bool, grad: bool) -> dict:
    """The block configuration for operands of this dtype, product precision, width and
    part mask, for the lse or the gradient kernel (also what compile_check compiles).

    The lse kernel's tiles hold what the uniformity kernel's forward holds (a Gram tile,
    the mask): its configuration.  The gradient kernel adds the accumulator and the
    column terms' vectors: with 64-row blocks it spilled on sm_80 (Triton 3.9; the TF32
    one on sm_90 too).  32-row blocks with 8 warps, and 32 columns where the feature
    block is 32 wide or less, compile without spills in every format, mask and width
    (found by compiling the candidates for both archs), at the cost of wgmma on sm_90:
    to be tuned on a GPU.  64-row gradient blocks (wgmma) still spill with the main loop
    of the flash-attention layout (Triton 3.9: 536 bytes on sm_90 at bf16, d = 128, with
    the features' rows and the accumulator in registers).

    The lse kernel's main loop without a mask or a running max holds 128 x 64 tiles with
    8 warps, 16-bit or TF32, up to d = 128, no part mask (the flash-attention forward's
    tile; compile_check: no spills on sm_80 and sm_90, sm_90 bf16 9.0 non-mma
    instructions per pair against 15.5 with 64 x 64)."""
    cfg = uniform_config(operand_dtype, d, precision, has_parts)
    if grad:
        cfg.update(BLOCK_M=32, num_warps=8)
        if operand_dtype == torch.float32:
            # TF32 / 3xTF32: with the main loop's layout two stages spilled a few bytes in 7 of
            # 54 configurations, one stage in 1 (TF32, 32 wide, the part mask), which keeps two
            # (compile_check, Triton 3.9, sm_80 and sm_90).
            tf32_parts_32 = precision == "tf32" and has_parts and cfg["BLOCK_D"] == 32
            cfg["num_stages"] = 2 if tf32_parts_32 else 1
        if cfg["BLOCK_D"] <= 32:
            cfg["BLOCK_N"] = 32
    elif cfg["BLOCK_M"] == 64 and not has_parts and d <= cfg["BLOCK_D"]:
        cfg.update(BLOCK_M=128, BLOCK_N=64, num_warps=8)
    return cfg


def _precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32:
        return "tf32" if cuda_matmul_allows_tf32() else "tf32x3"
    return "ieee"  # float64 (DMMA) and 16-bit tensor cores with float32 accumulation


class _Problem:
    """The rows a launch reads and where its pairs live: the inputs (stacked for self
    pairs), the part slicing and the product precision."""

    def __init__(self, function, a, b, scale, self_pairs, part, num_parts, skip_positives):
        check_device(a.device, function)
        self.a, self.b = a.contiguous(), b.contiguous()
        self.na, self.nb = a.shape[0], b.shape[0]
        self.self_pairs = self_pairs
        self.skip_positives = skip_positives
        self.acc_t = torch.float64 if a.dtype == torch.float64 else torch.float32
        self.z = torch.cat([self.a, self.b]) if self_pairs else None
        # [scale, the gradient kernel's 16-bit weight scale (row_grad sets it), the static
        # shift and whether it is certified (> 0)]
        self.scale = torch.cat([torch.tensor([float(scale), 1.0], dtype=self.acc_t, device=a.device),
                                _static_shift(self.a, self.b, float(scale), self.acc_t)])
        self.precision = _precision(a.dtype)
        a_blocks, b_blocks = triton.cdiv(self.na, PART_BLOCK), triton.cdiv(self.nb, PART_BLOCK)
        self.tri_blocks = triton.cdiv(self.na + self.nb, PART_BLOCK)
        total = self.tri_blocks * (self.tri_blocks + 1) // 2 if self_pairs else a_blocks * b_blocks
        self.b_blocks = b_blocks
        if num_parts == 1:
            self.part_lo, self.part_hi = 0, -1
        else:
            if not part_index_fits(total, self.tri_blocks if self_pairs else 0):
                raise ValueError(f"{function}: num_parts > 1 on the Triton kernels needs the {PART_BLOCK}-row "
                                 f"tile index to fit int32, got {total} tiles (N_a = {self.na}, N_b = {self.nb})")
            self.part_lo, self.part_hi = total * part // num_parts, total * (part + 1) // num_parts

    def sides(self, rows_are_a: bool):
        """(rows tensor, columns tensor, row tile stride, column tile stride) for a's rows
        against their partners, or b's."""
        if self.self_pairs:
            return self.z, self.z, 0, 0
        if rows_are_a:
            return self.a, self.b, self.b_blocks, 1
        return self.b, self.a, 1, self.b_blocks

    def launch_args(self, rows, cols, row_start, n_rows, row_stride, col_stride, col_splits, grad):
        d = rows.shape[1]
        cfg = contrastive_config(rows.dtype, d, self.precision, self.part_hi >= 0, grad)
        n_cols = cols.shape[0]
        splits, per_split = split_columns(n_rows, n_cols, cfg["BLOCK_M"], cfg["BLOCK_N"], rows.device, col_splits)
        args = (row_start, n_rows, n_cols, per_split, d, rows.stride(0), cols.stride(0), self.scale,
                self.part_lo, self.part_hi, row_stride, col_stride, self.tri_blocks, self.na)
        consts = dict(
            SELF_PAIRS=self.self_pairs, SKIP_POSITIVES=self.skip_positives, HAS_PARTS=self.part_hi >= 0,
            PART_ROWS=PART_BLOCK,
            BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_D=cfg["BLOCK_D"], ONE_CHUNK=d <= cfg["BLOCK_D"],
            EVEN_D=d == cfg["BLOCK_D"],
            PRECISION=self.precision,
            # The interpreter's 16-bit tl.dot is wrong (Triton 3.9): widen (exactly) there.
            WIDEN_OPERANDS=triton.knobs.runtime.interpret and rows.dtype in (torch.bfloat16, torch.float16),
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
        )
        return cfg, splits, args, consts

    def row_lse(self, rows_are_a: bool, col_splits=None) -> torch.Tensor:
        rows, cols, row_stride, col_stride = self.sides(rows_are_a)
        n_rows = rows.shape[0]
        cfg, splits, args, consts = self.launch_args(rows, cols, 0, n_rows, row_stride, col_stride,
                                                     col_splits, False)
        m = torch.empty((splits, n_rows), dtype=self.acc_t, device=rows.device)
        l = torch.empty_like(m)
        _row_lse_kernel[(triton.cdiv(n_rows, cfg["BLOCK_M"]), splits)](rows, cols, m, l, *args, **consts)
        top, total, _ = merge_splits(m, (l,))
        return torch.where(total > 0, top + torch.log(total), torch.full_like(top, float("-inf")))

    def row_grad(self, rows_are_a, lse, g, lse_cols, g_cols, col_splits=None) -> torch.Tensor:
        """The gradient of a's rows (or b's) from the row terms (lse, g; None: none) and the
        column terms (lse_cols, g_cols; None: none), each vector over the rows it names."""
        rows, cols, row_stride, col_stride = self.sides(rows_are_a)
        if self.self_pairs:
            row_start, n_rows = (0, self.na) if rows_are_a else (self.na, self.nb)
        else:
            row_start, n_rows = 0, rows.shape[0]
        cfg, splits, args, consts = self.launch_args(rows, cols, row_start, n_rows, row_stride, col_stride,
                                                     col_splits, True)
        d = rows.shape[1]
        d_chunks = 1 if consts["ONE_CHUNK"] else triton.cdiv(d, cfg["BLOCK_D"])
        if rows.dtype in (torch.float16, torch.bfloat16):
            self.scale[1:2] = _weight_scale([v for v in (g, g_cols) if v is not None])
        out = torch.empty((splits, n_rows, d), dtype=self.acc_t, device=rows.device)
        unused = self.scale  # a pointer the kernel never reads (its terms are off)
        _row_grad_kernel[(triton.cdiv(n_rows, cfg["BLOCK_M"]), splits, d_chunks)](
            rows, cols, unused if lse is None else lse, unused if g is None else g,
            unused if lse_cols is None else lse_cols, unused if g_cols is None else g_cols, out,
            *args, ROW_TERMS=lse is not None, COL_TERMS=lse_cols is not None, **consts,
        )
        return out[0] if splits == 1 else out.sum(0)

    def all_finite(self) -> torch.Tensor:
        """On the device, without a host read (CUDA-graph capture)."""
        return torch.isfinite(self.a).all() & torch.isfinite(self.b).all()


# The widest spread of logits below the static shift that keeps every weight a normal
# number: e^(s - c) >= e^-(2 c) and e^(c - lse) <= e^(2 c) stay within float32's (float64's)
# normal range with room for the sums; past it the kernels keep a running max.
STATIC_SHIFT_SPREAD = {torch.float32: 80.0, torch.float64: 700.0}


def _static_shift(a: torch.Tensor, b: torch.Tensor, scale: float, acc_t: torch.dtype) -> torch.Tensor:
    """[c, certified] on the device (no host read): c = scale max|a_i| max|b_j| bounds every
    logit (Cauchy-Schwarz), so e^(s - c) <= 1; certified (1.0, else 0.0) when
    |s - c| <= 2c <= STATIC_SHIFT_SPREAD for every pair and lse (unit rows: tau >= 0.025
    in float32), so that the shifted weights neither overflow nor lose their digits."""
    c = scale * a.to(acc_t).norm(dim=1).max() * b.to(acc_t).norm(dim=1).max()
    certified = torch.isfinite(c) & (2 * c <= STATIC_SHIFT_SPREAD[acc_t])
    return torch.stack([torch.where(torch.isfinite(c), c, torch.zeros_like(c)), certified.to(acc_t)])


def _weight_scale(upstream: list) -> torch.Tensor:
    """2^-floor(log2(max |g|)) over the upstream gradients, on the device (no host read):
    every weight |w_ij| <= |g_i| + |h_j| then stays below 4 after scaling, and a mean
    loss's weights (g ~ 1/N, softmax terms ~ 1/N) keep fp16's precision; 1 when there is
    no finite positive maximum."""
    top = torch.stack([v.abs().amax() for v in upstream]).amax()
    usable = torch.isfinite(top) & (top > 0)
    exponent = torch.floor(torch.log2(torch.where(usable, top, torch.ones_like(top))))
    return torch.exp2(-exponent).reshape(1)


def _where_finite(ok: torch.Tensor, *outputs):
    nan = torch.full((), float("nan"), dtype=outputs[0].dtype, device=outputs[0].device)
    return tuple(torch.where(ok, v, nan) if v.numel() else v for v in outputs)


def contrastive_lse(a, b, scale, self_pairs, lse_b, part, num_parts, skip_positives=False, *, col_splits=None):
    """`torch.ops.pyhypersphere.contrastive_lse` on Triton: same arguments, same results.

    `col_splits` (tests only) forces how many programs share a row block's columns.
    """
    _C._check_contrastive_args(a, b, scale, self_pairs, lse_b, part, num_parts)
    p = _Problem("contrastive_lse", a, b, scale, self_pairs, part, num_parts, skip_positives)
    if self_pairs:
        both = p.row_lse(True, col_splits)
        out_a, out_b = both[: p.na], both[p.na:]
    else:
        out_a = p.row_lse(True, col_splits)
        out_b = p.row_lse(False, col_splits) if lse_b else a.new_empty((0,), dtype=p.acc_t)
    return _where_finite(p.all_finite(), out_a, out_b)


def contrastive_lse_backward(a, b, scale, self_pairs, lse_a, lse_b, grad_lse_a, grad_lse_b, part, num_parts,
                             grad_a, grad_b, skip_positives=False, *, col_splits=None):
    """`torch.ops.pyhypersphere.contrastive_lse_backward` on Triton: same arguments, same results."""
    _C._check_contrastive_backward_args(a, b, scale, self_pairs, lse_a, lse_b, grad_lse_a, grad_lse_b,
                                        part, num_parts)
    p = _Problem("contrastive_lse_backward", a, b, scale, self_pairs, part, num_parts, skip_positives)
    empty = a.new_empty((0,), dtype=p.acc_t)
    if not (grad_a or grad_b):
        return empty, empty
    acc = p.acc_t
    # b's side of the weights: always with self pairs (whose grad_lse_b the check requires),
    # with cross pairs when b's lse has an upstream gradient (csrc/ops.h).
    col_terms = self_pairs or grad_lse_b.numel() > 0
    la, ga = lse_a.to(acc).contiguous(), grad_lse_a.to(acc).contiguous()
    lb = lse_b.to(acc).contiguous() if col_terms else None
    gb = grad_lse_b.to(acc).contiguous() if col_terms and grad_lse_b.numel() else None
    if self_pairs:
        lse = torch.cat([la, lb])
        g = torch.cat([ga, gb])
        out_a = p.row_grad(True, lse, g, lse, g, col_splits) if grad_a else empty
        out_b = p.row_grad(False, lse, g, lse, g, col_splits) if grad_b else empty
        lse_all = lse
    else:
        row_b = (lb, gb) if col_terms else (None, None)
        out_a = p.row_grad(True, la, ga, *row_b, col_splits) if grad_a else empty
        out_b = p.row_grad(False, *row_b, la, ga, col_splits) if grad_b else empty
        # lse_b given but unused (no upstream gradient for it) still has to be valid, as
        # for the CPU kernel.
        lse_all = torch.cat([la, lse_b.to(acc)]) if lse_b.numel() else la
    # -inf is a valid lse (a row without pairs); NaN or +inf is not.
    ok = p.all_finite() & ~(torch.isnan(lse_all) | torch.isposinf(lse_all)).any()
    return _where_finite(ok, out_a, out_b)


def contrastive_mean_lse(a, b, scale, grad_a, grad_b, *, col_splits=None):
    """`torch.ops.pyhypersphere.contrastive_mean_lse` on Triton: same arguments, same results.

    The row lse kernel over each row's negatives (b_i skipped), then the gradient kernel
    with the positive skipped, the rows' full lse log(e^n_i + e^s_ii) and upstream
    gradient 1 / N_a (rows a against columns b for grad_a; rows b against columns a, a's
    terms as the column terms, for grad_b); the positive's term, the negatives' total
    weight times b_i (a_i), is added after.
    """
    _C._check_contrastive_mean_lse_args(a, b, scale)
    p = _Problem("contrastive_mean_lse", a, b, scale, False, 0, 1, True)
    lse = p.row_lse(True, col_splits)
    na = p.na
    positive = (p.a.to(p.acc_t) * p.b[:na].to(p.acc_t)).sum(1) * scale
    u = lse - positive
    loss = torch.logaddexp(u, torch.zeros_like(u))  # log(1 + e^(n_i - s_ii)), no cancellation
    full = positive + loss
    weight = (-(scale / na) * torch.exp(u - loss))[:, None]  # the positive's, -sum_{j != i} p_ij
    g = torch.full_like(lse, 1.0 / na)
    empty = a.new_empty((0,), dtype=p.acc_t)
    out_a = p.row_grad(True, full, g, None, None, col_splits) + weight * p.b[:na] if grad_a else empty
    if grad_b:
        out_b = p.row_grad(False, None, None, full, g, col_splits)
        out_b[:na] += weight * p.a
    else:
        out_b = empty
    # The mean in float64 (as the CPU kernel sums).
    mean = loss.to(torch.float64).mean().to(p.acc_t)
    return _where_finite(p.all_finite(), mean, out_a, out_b)
