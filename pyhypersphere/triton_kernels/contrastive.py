"""Triton kernels and launchers for `contrastive_lse`, `contrastive_lse_backward`,
`contrastive_lse_row_grad` and `contrastive_mean_lse` (contract: csrc/ops.h).

Both kernels are the flash-attention forward (Triton's fused-attention tutorial) over the
logits s_ij = scale <R_i, C_j> of a program's BLOCK_M rows R_i against its columns C_j,
computed tile by tile and never stored.  No program waits for another, no atomics.

- `_lse_rows_kernel`: per row a shift m_i and l_i = sum_j 2^(s_ij log2(e) - m_i); with
  COL_SUMS also every column's sum over the program's rows (CLIP's column lse from the
  same S tile: a cross-block merge of sums, not of gradients); with ROW_GRAD also
  o_i = sum_j 2^(...) C_j (P C, the second GEMM), the whole gradient of a loss whose
  weights are one-sided (InfoNCE's queries, MoCo).
- `_grad_rows_kernel`: per row sum_j w_ij C_j with the softmax weights of both sides of
  each logit, w_ij = g_i e^(s_ij - lse_i) + h_j e^(s_ij - lse_j), for the upstream
  gradients g (rows) and h (columns).

The layout (the uniformity kernel's): the launcher pads a and b (stacked for self pairs:
a at rows [0, na_pad), b at [na_pad, ...)) with zero rows to PART_BLOCK and the features
to the block width, so every tile is whole.  A column vector carries the shift and -inf
on padding columns (the lse kernel's only per-column term; in the gradient kernel a zero
row contributes nothing).  The columns of a row block come as at most two ranges (the
part slicing at PART_BLOCK granularity, `_part_ranges`), each cut around the at most two
column spans that hold a pair to leave out: the row block's own rows (self pairs) and its
rows' positives (skip_positives: column i of row i across, i +- na_pad stacked).  The
main loop runs over whole tiles without a mask; the spans are a stage of their own, the
only per-element mask, as the tutorial splits its causal loop.  Offsets are int32 inside
the loop; tiles come through tensor descriptors (TMA on sm_90).

The shift: c = scale max|a_i| max|b_j| bounds every logit (Cauchy-Schwarz).  When the
launcher certifies it (_static_shift: 2c <= 80 in float32, e.g. unit rows at
tau >= 0.025) it is the static shift: no running max, the lse kernel's column sums come
from the same exps, and the gradient's two-sided weights take one exp:
w_ij = e^(s - c) (g_i e^(c - lse_i) + h_j e^(c - lse_j)), the factors per row and per
column computed by the launcher.  Otherwise (or under CUDA-graph capture: no host read)
the lse kernel keeps the tutorial's online max, rounded up to an integer so the rescale
needs no exp, and the gradient kernel takes the tile shift below.

The tile shift (gradient kernel, no certified shift).  In log2 units u = s log2(e),
A = lse log2(e), k = ceil(A) and phi = g 2^(k - A) in [g, 2g) (the launcher, from
float64 logs; k = +inf, phi = 0 for a row without pairs or a padding row), a side's term
is T = g 2^(u - A) = phi 2^(u - k).  Every pair a launch visits outside the masked spans
is inside both lse it is weighted by: NT-Xent's and the decoupled loss's self pairs are
symmetric and the spans (i == j, skipped positives) are masked in both kernels; CLIP's
and InfoNCE's cross pairs a x b, with the diagonal skipped on both sides or neither; the
mean-lse keys' column terms use the queries' full lse (negatives and positive); a part
sums a subset of its pairs, its lse all of them.  So u_ij <= min(A_i, A_j), and per
tile, with top = the smaller of the rows' and the columns' largest k (a side without
terms: no bound) and low = the smallest k of both sides, every u <= top.  A tile with
top - low <= 2H takes one exp at the integer c = min(top, low + H):
  w_ij = 2^(u - c) (phi_i 2^(c - k_i) + phi_j 2^(c - k_j)),
the factors per row and column of the tile, their powers of two built from the exponent
bits (_pow2: exact, no exp unit), the columns' (top, low) per tile from the launcher
(_column_windows).  A tile with top - low > 2H (the block-level branch; never a mask)
takes one exp per side, phi_i 2^(u - k_i) + phi_j 2^(u - k_j).  The masked spans compute
the same and then zero their pairs (an overflow there is discarded by the select).
float64 (a software exp) and widths past 128 keep one exp per side on every tile
(contrastive_config's TILE_SHIFT: registers).
Error bound, float32 (H = TILE_SHIFT_HEADROOM = 64; the upstream gradients scaled by a
power of two, exactly, so that G = max |g| over both sides is in [1, 2) and |phi| < 4):
- no overflow: u - c <= max(0, top - low - H) <= H, so 2^(u - c) <= 2^64; c - k <= H
  (c <= low + H <= k + H), so a factor is below 2^66;
- a term T >= 2^-60 G keeps float32 relative accuracy: its factor is T 2^(c - u) >=
  2^-60 2^-64 and its exp T / factor > 2^-60 2^-66 = 2^-126, both normal;
  T (1 + theta), |theta| <= 2^-24 (ln2 |u - c| + 3) + eps_ex2, with |u - c| <= 126:
  the FFMA s scale log2(e) - c rounds once (relative 2^-24 |u - c| on the argument),
  phi, the factor sum and the product once each; eps_ex2 the exp unit's (ex2.approx);
- a term below 2^-60 G may be lost (flushed factor or exp): per weight at most
  2^-59 G absolute, against weights that sum to G over a row;
so |w^ - w| <= theta (|T_i| + |T_j|) + 2^-59 G.  The two-exp step: the same with
|u - k| for |u - c| (each argument one FFMA) and no loss above 2^-126 G.  (Both steps,
as before, assume every lse > -126 log2 units, -87 nats: a padding column's zero logit
gives 2^(0 - k) <= 2^126 times C_j = 0.)

Work per step of the main loop (certified), in tensor-core GEMMs over a tile and exps
per pair: lse 1 and 1 (with or without column sums), lse with the row gradient 2 and 1,
gradient 2 and 1 (also under the tile shift; 2 and 2 on a tile too wide for it, and on
every tile past 128 wide, where the tile shift does not fit the registers:
contrastive_config's TILE_SHIFT).  Per loss (issue 23's minimum, loop_gate.LOSS_PASSES):
- NT-Xent: the stacked rows' lse, then their gradient: 3 GEMMs, 2 exps;
- InfoNCE whose keys and queue need no gradient (MoCo's: a detached queue, in_batch or
  not, any reduction): lse with the row gradient (contrastive_lse_row_grad, or
  contrastive_mean_lse for the in-batch mean): 2, 1;
- in-batch InfoNCE, both gradients: lse with the queries' gradient, then the keys': 4, 2;
- CLIP: both lse from one S tile, then each side's gradient: 5, 3.

Precision: float64 in float64; float32 with TF32 products when torch allows TF32 for
float32 matmuls (as `a @ b.T` would), else 3xTF32 (float32 accuracy); bf16/fp16 inputs
multiplied as given on 16-bit tensor cores with float32 accumulation (exact products),
and in the second product the weights rounded to the 16-bit format (as flash attention
does; fp16's row gradient keeps the online max, whose weights peak at 1 in every row).
3xTF32 past d = 64 on sm_90 (uniform.split_operands): the launcher splits a and b once
into TF32 halves (uniform.tf32_halves) and the kernels issue three TF32 products per GEMM
from them (SPLIT_OPERANDS, the uniformity kernel's helpers; the weights split in
registers for the second product), where Triton's own split spills the row block.
No centering: an inner product has no cancellation to protect.
"""

import math

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from .. import _C  # noqa: F401  (loads the operators and their checks, torch.ops.pyhypersphere_checks)
from .._matmul_precision import cuda_matmul_allows_tf32
from .splits import merge_splits, split_columns
from .tiles import check_device, part_index_fits, triton_before_newest
from .uniform import (_halves_logits, _halves_product, _load_rows, _pow2, _row_block, device_arch, flash_config,
                      operand_format, padded_width, split_operands, tf32_halves)

# Rows per part-slicing block, and the padding unit of a and b: `part`/`num_parts` cut
# the pair set into tiles of PART_BLOCK x PART_BLOCK padded rows (self pairs: the upper
# triangle of the stacked rows' blocks; cross pairs: a's blocks by b's, row-major) and
# keep a contiguous, balanced range.  A multiple of every block size.
PART_BLOCK = 128
LOG2E = 1.4426950408889634
PART_ROWS = tl.constexpr(PART_BLOCK)  # the same, inside the kernels
# Far beyond any padded row: a span that does not exist.
_NO_SPAN = tl.constexpr(2**30)


@triton.jit
def _tile_logits(ri_desc, cj_desc, r_ptr, c_ptr, r0, c0, r_i, r_i_lo, c_lo_rows, d_pad, ONE_CHUNK: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
                 WIDEN_OPERANDS: tl.constexpr, USE_DESC: tl.constexpr, SPLIT_OPERANDS: tl.constexpr,
                 acc_t: tl.constexpr):
    """(<R_i, C_j> over the tile at columns [c0, c0 + BLOCK_N), C_j when it fits one chunk,
    C_j's low TF32 half with SPLIT_OPERANDS: the columns' halves c_lo_rows further)."""
    c_j_lo = r_i  # unused without SPLIT_OPERANDS
    if SPLIT_OPERANDS:
        s, c_j, c_j_lo = _halves_logits(r_i, r_i_lo, cj_desc, c_ptr, c0, c_lo_rows, d_pad, BLOCK_N, BLOCK_D, USE_DESC,
                                        acc_t)
    elif ONE_CHUNK:
        c_j = _load_rows(cj_desc, c_ptr, c0, 0, d_pad, BLOCK_N, BLOCK_D, USE_DESC)  # K and V of this step
        if WIDEN_OPERANDS:
            c_j = c_j.to(acc_t)
        s = tl.dot(r_i, tl.trans(c_j), input_precision=PRECISION, out_dtype=acc_t)
    else:
        c_j = r_i  # unused: the chunked second product loads its own slice
        s = tl.zeros([BLOCK_M, BLOCK_N], acc_t)
        for k0 in range(0, d_pad, BLOCK_D):
            ri_k = _load_rows(ri_desc, r_ptr, r0, k0, d_pad, BLOCK_M, BLOCK_D, USE_DESC)
            cj_k = _load_rows(cj_desc, c_ptr, c0, k0, d_pad, BLOCK_N, BLOCK_D, USE_DESC)
            if WIDEN_OPERANDS:
                ri_k = ri_k.to(acc_t)
                cj_k = cj_k.to(acc_t)
            s = tl.dot(ri_k, tl.trans(cj_k), s, input_precision=PRECISION, out_dtype=acc_t)
    return s, c_j, c_j_lo


@triton.jit
def _second_product(acc, w, c_j, c_j_lo, cj_desc, c_ptr, c0, d_chunk, d_pad, ONE_CHUNK: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
                    WIDEN_OPERANDS: tl.constexpr, USE_DESC: tl.constexpr, SPLIT_OPERANDS: tl.constexpr):
    """acc + W C_j (this program's feature slice when chunked).  16-bit operands: W in the
    operands' format (flash attention's choice; relative 2^-9 for bf16).  SPLIT_OPERANDS:
    3xTF32 from C_j's halves, as the uniformity kernel's gradient."""
    acc_t = acc.dtype
    if SPLIT_OPERANDS:
        return _halves_product(acc, w, c_j, c_j_lo)
    if not ONE_CHUNK:
        c_j = _load_rows(cj_desc, c_ptr, c0, d_chunk * BLOCK_D, d_pad, BLOCK_N, BLOCK_D, USE_DESC)
        if WIDEN_OPERANDS:
            c_j = c_j.to(acc_t)
    if cj_desc.dtype == acc_t:
        return tl.dot(w, c_j, acc, input_precision=PRECISION, out_dtype=acc_t)
    w_op = w.to(cj_desc.dtype)
    if WIDEN_OPERANDS:
        w_op = w_op.to(acc_t)
    return tl.dot(w_op, c_j, acc, input_precision=PRECISION, out_dtype=acc_t)


@triton.jit
def _spans(r0, pos_offset, DIAG_SPAN: tl.constexpr, POS_SPAN: tl.constexpr):
    """The column spans [s, s + BLOCK_M) holding pairs to leave out, sorted (_NO_SPAN: none):
    the row block's own rows, its rows' positives (stacked: the other half)."""
    s1 = r0 * 0 + _NO_SPAN
    s2 = r0 * 0 + _NO_SPAN
    if DIAG_SPAN:
        s1 = r0
    if POS_SPAN:
        s2 = tl.where(r0 < pos_offset, r0 + pos_offset, r0 - pos_offset)
    return tl.minimum(s1, s2), tl.maximum(s1, s2)


@triton.jit
def _plain_segment(ranges, seg, span_a, span_b, c_lo, c_hi, BLOCK_M: tl.constexpr):
    """Segment seg (0-5) of the main loop: range seg // 3, piece seg % 3 of it around the
    spans, within this split's columns [c_lo, c_hi)."""
    r = seg // 3
    piece = seg % 3
    lo = tl.load(ranges + 2 * r)
    hi = tl.load(ranges + 2 * r + 1)
    hi = tl.where(piece == 0, tl.minimum(hi, span_a), tl.where(piece == 1, tl.minimum(hi, span_b), hi))
    lo = tl.where(piece == 1, tl.maximum(lo, span_a + BLOCK_M), tl.where(piece == 2, tl.maximum(lo, span_b + BLOCK_M), lo))
    return tl.maximum(lo, c_lo), tl.minimum(hi, c_hi)


@triton.jit
def _span_segment(ranges, k, span_a, span_b, c_lo, c_hi, BLOCK_M: tl.constexpr):
    """Segment k (0-3) of the masked stage: range k // 2 within span k % 2; and the span."""
    r = k // 2
    span = tl.where(k % 2 == 0, span_a, span_b)
    lo = tl.maximum(tl.maximum(tl.load(ranges + 2 * r), span), c_lo)
    hi = tl.minimum(tl.minimum(tl.load(ranges + 2 * r + 1), span + BLOCK_M), c_hi)
    return lo, hi, span


@triton.jit
def _lse_step(ri_desc, cj_desc, r_ptr, c_ptr, bias_ptr, colsum_ptr, r0, c0, span, r_i, r_i_lo, c_lo_rows, scale2,
              m_i, l_i, acc, colsum_row, row_w, d_pad, d_chunk,
              MASKED: tl.constexpr, STATIC_SHIFT: tl.constexpr, COL_SUMS: tl.constexpr, ROW_GRAD: tl.constexpr,
              ONE_CHUNK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
              PRECISION: tl.constexpr, WIDEN_OPERANDS: tl.constexpr, USE_DESC: tl.constexpr,
              SPLIT_OPERANDS: tl.constexpr):
    """One tile: (m, l, o) updated; MASKED leaves out the pairs (span + i, c0 + j), i == j."""
    acc_t = bias_ptr.dtype.element_ty
    offs_n = tl.arange(0, BLOCK_N)
    s, c_j, c_j_lo = _tile_logits(ri_desc, cj_desc, r_ptr, c_ptr, r0, c0, r_i, r_i_lo, c_lo_rows, d_pad, ONE_CHUNK,
                                  BLOCK_M, BLOCK_N, BLOCK_D, PRECISION, WIDEN_OPERANDS, USE_DESC, SPLIT_OPERANDS,
                                  acc_t)
    # The column vector: -c log2(e) (static shift) or 0, -inf on padding columns.
    e = s * scale2 + tl.load(bias_ptr + c0 + offs_n)[None, :]
    if MASKED:
        e = tl.where((span + tl.arange(0, BLOCK_M))[:, None] == (c0 + offs_n)[None, :], float("-inf"), e)
    if STATIC_SHIFT:
        p = tl.math.exp2(e)
        l_i += tl.sum(p, 1)
        if COL_SUMS:  # padding rows (row_w 0) are no pairs
            tl.store(colsum_ptr + colsum_row + c0 + offs_n, tl.sum(p * row_w[:, None], 0))
    else:
        # The running max rounded up to an integer: p <= 1 still, and the rescale is an
        # exact power of two built without the exp unit (_pow2): one exp per pair.
        m_new = tl.maximum(m_i, tl.math.ceil(tl.max(e, 1)))
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = _pow2(m_i - shift)
        p = tl.math.exp2(e - shift[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        m_i = m_new
        if ROW_GRAD:
            acc = acc * alpha[:, None]
    if ROW_GRAD:
        acc = _second_product(acc, p, c_j, c_j_lo, cj_desc, c_ptr, c0, d_chunk, d_pad, ONE_CHUNK, BLOCK_N, BLOCK_D,
                              PRECISION, WIDEN_OPERANDS, USE_DESC, SPLIT_OPERANDS)
    return m_i, l_i, acc


@triton.jit
def _lse_rows_kernel(
    ri_desc, cj_desc, r_ptr, c_ptr, bias_ptr, scale_ptr, ranges_ptr, m_ptr, l_ptr, colsum_ptr, acc_ptr,
    row_start, row_end, rows_out, cols_per_split, n_cols_pad, d_pad, ranges_stride, pos_offset, r_lo_rows, c_lo_rows,
    STATIC_SHIFT: tl.constexpr, COL_SUMS: tl.constexpr, ROW_GRAD: tl.constexpr,
    DIAG_SPAN: tl.constexpr, POS_SPAN: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, ONE_CHUNK: tl.constexpr,
    PRECISION: tl.constexpr, WIDEN_OPERANDS: tl.constexpr, USE_DESC: tl.constexpr, SPLIT_OPERANDS: tl.constexpr,
):
    """Per row m_i and l_i (log2 units; o_i with ROW_GRAD, column sums with COL_SUMS) over
    this program's columns.  Main loop per pair: 1 GEMM (2 with ROW_GRAD), 1 exp2, no mask."""
    block = tl.program_id(0)
    split = tl.program_id(1)
    d_chunk = tl.program_id(2)  # the slice of o_i this program accumulates (chunked path)
    acc_t = bias_ptr.dtype.element_ty
    scale2 = tl.load(scale_ptr)  # scale log2(e), through a pointer: a Python float would be float32
    r0 = row_start + block * BLOCK_M
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    r_i, r_i_lo = _row_block(ri_desc, r_ptr, r0, r_lo_rows, d_pad, BLOCK_M, BLOCK_D, ONE_CHUNK, WIDEN_OPERANDS,
                             USE_DESC, SPLIT_OPERANDS, acc_t)
    if STATIC_SHIFT:
        m_i = tl.zeros([BLOCK_M], acc_t)  # the shift is in the column vector
    else:
        m_i = tl.full([BLOCK_M], float("-inf"), acc_t)
    l_i = tl.zeros([BLOCK_M], acc_t)
    acc = tl.zeros([BLOCK_M, BLOCK_D], acc_t)
    colsum_row = block.to(tl.int64) * n_cols_pad
    row_w = (r0 + offs_m < row_end).to(acc_t)  # 0 on padding rows

    c_lo = split * cols_per_split
    c_hi = c_lo + cols_per_split
    ranges = ranges_ptr + (r0 // PART_ROWS) * ranges_stride
    span_a, span_b = _spans(r0, pos_offset, DIAG_SPAN, POS_SPAN)
    for seg in range(6):  # stage 1: whole tiles, no masks
        lo, hi = _plain_segment(ranges, seg, span_a, span_b, c_lo, c_hi, BLOCK_M)
        for c0 in range(lo, hi, BLOCK_N):
            m_i, l_i, acc = _lse_step(
                ri_desc, cj_desc, r_ptr, c_ptr, bias_ptr, colsum_ptr, r0, c0, 0, r_i, r_i_lo, c_lo_rows, scale2, m_i,
                l_i, acc, colsum_row, row_w, d_pad, d_chunk, False, STATIC_SHIFT, COL_SUMS, ROW_GRAD, ONE_CHUNK,
                BLOCK_M, BLOCK_N, BLOCK_D, PRECISION, WIDEN_OPERANDS, USE_DESC, SPLIT_OPERANDS)
    if DIAG_SPAN or POS_SPAN:
        for k in range(4):  # stage 2: the spans, masked
            lo, hi, span = _span_segment(ranges, k, span_a, span_b, c_lo, c_hi, BLOCK_M)
            for c0 in range(lo, hi, BLOCK_N):
                m_i, l_i, acc = _lse_step(
                    ri_desc, cj_desc, r_ptr, c_ptr, bias_ptr, colsum_ptr, r0, c0, span, r_i, r_i_lo, c_lo_rows, scale2,
                    m_i, l_i, acc, colsum_row, row_w, d_pad, d_chunk, True, STATIC_SHIFT, COL_SUMS, ROW_GRAD,
                    ONE_CHUNK, BLOCK_M, BLOCK_N, BLOCK_D, PRECISION, WIDEN_OPERANDS, USE_DESC, SPLIT_OPERANDS)

    out = split.to(tl.int64) * rows_out + block * BLOCK_M + offs_m
    if d_chunk == 0:
        tl.store(m_ptr + out, m_i)
        tl.store(l_ptr + out, l_i)
    if ROW_GRAD:
        tl.store(acc_ptr + out[:, None] * d_pad + (d_chunk * BLOCK_D + offs_d)[None, :], acc)


@triton.jit
def _side_range(top, present):
    """(largest, smallest) of the rows' lse ceilings `top` over their terms (+inf: no
    term), for the tile shift; (+inf, +inf) for a side without terms (no bound).  The
    columns' come per tile from the launcher (_column_windows)."""
    inf = float("inf")
    largest = tl.max(tl.where(top < inf, top, -inf))
    largest = tl.where(largest == -inf, inf, largest)
    smallest = tl.min(top)
    if not present:
        largest = inf
        smallest = inf
    return largest, smallest


@triton.jit
def _grad_step(ri_desc, cj_desc, r_ptr, c_ptr, col_coef_ptr, col_lse_ptr, col_range_ptr, r0, c0, span, r_i, r_i_lo,
               c_lo_rows, scale2, shift2, row_coef, row_lse, row_top, row_low, acc, d_pad, d_chunk, headroom,
               MASKED: tl.constexpr, STATIC_SHIFT: tl.constexpr, ROW_TERMS: tl.constexpr, COL_TERMS: tl.constexpr,
               TILE_SHIFT: tl.constexpr, ONE_CHUNK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               BLOCK_D: tl.constexpr, PRECISION: tl.constexpr, WIDEN_OPERANDS: tl.constexpr, USE_DESC: tl.constexpr,
               SPLIT_OPERANDS: tl.constexpr):
    """One tile: acc + W C_j; MASKED gives the pairs (span + i, c0 + j), i == j, weight 0."""
    acc_t = acc.dtype
    offs_n = tl.arange(0, BLOCK_N)
    s, c_j, c_j_lo = _tile_logits(ri_desc, cj_desc, r_ptr, c_ptr, r0, c0, r_i, r_i_lo, c_lo_rows, d_pad, ONE_CHUNK,
                                  BLOCK_M, BLOCK_N, BLOCK_D, PRECISION, WIDEN_OPERANDS, USE_DESC, SPLIT_OPERANDS,
                                  acc_t)
    if STATIC_SHIFT:
        # g_i e^(s - lse_i) + h_j e^(s - lse_j) = e^(s - c) (a_i + b_j), a_i = g_i e^(c - lse_i).
        coef = row_coef[:, None]
        if COL_TERMS:
            coef = coef + tl.load(col_coef_ptr + c0 + offs_n)[None, :]
        w = tl.math.exp2(s * scale2 - shift2) * coef
    else:
        # The tile shift (module docstring): the terms phi 2^(u - k), k = ceil(lse log2 e)
        # (row_lse, col_lse); one exp at c = min(top, low + H) when the tile's ceilings
        # span at most 2 H, else one per side.
        col_coef = tl.zeros([BLOCK_N], acc_t)
        col_lse = tl.full([BLOCK_N], float("inf"), acc_t)
        col_top = float("inf")
        col_low = float("inf")
        if COL_TERMS:
            col_coef = tl.load(col_coef_ptr + c0 + offs_n)
            col_lse = tl.load(col_lse_ptr + c0 + offs_n)
            # The columns' range from the launcher (_column_windows): no reduction across
            # threads per tile.
            col_top = tl.load(col_range_ptr + 2 * c0)
            col_low = tl.load(col_range_ptr + 2 * c0 + 1)
        top = tl.minimum(row_top, col_top)
        low = tl.minimum(row_low, col_low)
        if TILE_SHIFT and not (top - low > 2 * headroom):
            # No terms at all (top - low NaN): c = 2^100, every weight 0.  A side without a
            # term has k = +inf: _pow2(-inf) = 0.
            c = tl.minimum(tl.minimum(top, low + headroom), 2.0**100)
            rf = row_coef * _pow2(c - row_lse)
            cf = col_coef * _pow2(c - col_lse)
            w = tl.math.exp2(s * scale2 - c) * (rf[:, None] + cf[None, :])
        else:
            w = tl.zeros([BLOCK_M, BLOCK_N], acc_t)
            if COL_TERMS:
                w += col_coef[None, :] * tl.math.exp2(s * scale2 - col_lse[None, :])
            if ROW_TERMS:
                w += row_coef[:, None] * tl.math.exp2(s * scale2 - row_lse[:, None])
    if MASKED:
        w = tl.where((span + tl.arange(0, BLOCK_M))[:, None] == (c0 + offs_n)[None, :], 0.0, w)
    return _second_product(acc, w, c_j, c_j_lo, cj_desc, c_ptr, c0, d_chunk, d_pad, ONE_CHUNK, BLOCK_N, BLOCK_D,
                           PRECISION, WIDEN_OPERANDS, USE_DESC, SPLIT_OPERANDS)


@triton.jit
def _grad_rows_kernel(
    ri_desc, cj_desc, r_ptr, c_ptr, row_coef_ptr, row_lse_ptr, col_coef_ptr, col_lse_ptr, col_range_ptr, scale_ptr,
    ranges_ptr, out_ptr,
    row_start, rows_out, cols_per_split, d_pad, ranges_stride, pos_offset, r_lo_rows, c_lo_rows,
    STATIC_SHIFT: tl.constexpr, ROW_TERMS: tl.constexpr, COL_TERMS: tl.constexpr, TILE_SHIFT: tl.constexpr,
    DIAG_SPAN: tl.constexpr, POS_SPAN: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, ONE_CHUNK: tl.constexpr,
    PRECISION: tl.constexpr, WIDEN_OPERANDS: tl.constexpr, USE_DESC: tl.constexpr, SPLIT_OPERANDS: tl.constexpr,
):
    """Per row sum_j w_ij C_j.  Main loop per pair: 2 GEMMs (S, W C), no mask, one exp2:
    under the static shift w = 2^(s - c) (row factor + column factor); else under the
    tile shift, the same with c and the factors per tile (two exps, one per side, for a
    tile whose lse ceilings span more than 2 H: phi_i 2^(s - k_i) + phi_j 2^(s - k_j))."""
    block = tl.program_id(0)
    split = tl.program_id(1)
    d_chunk = tl.program_id(2)
    acc_t = out_ptr.dtype.element_ty
    scale2 = tl.load(scale_ptr)
    shift2 = tl.load(scale_ptr + 1)  # c log2(e) (static shift)
    headroom = tl.load(scale_ptr + 2)  # H (tile shift)
    r0 = row_start + block * BLOCK_M
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    r_i, r_i_lo = _row_block(ri_desc, r_ptr, r0, r_lo_rows, d_pad, BLOCK_M, BLOCK_D, ONE_CHUNK, WIDEN_OPERANDS,
                             USE_DESC, SPLIT_OPERANDS, acc_t)
    row_coef = tl.zeros([BLOCK_M], acc_t)
    row_lse = tl.full([BLOCK_M], float("inf"), acc_t)
    if ROW_TERMS:
        row_coef = tl.load(row_coef_ptr + r0 + offs_m)
        if not STATIC_SHIFT:
            row_lse = tl.load(row_lse_ptr + r0 + offs_m)
    row_top, row_low = _side_range(row_lse, ROW_TERMS)
    acc = tl.zeros([BLOCK_M, BLOCK_D], acc_t)

    c_lo = split * cols_per_split
    c_hi = c_lo + cols_per_split
    ranges = ranges_ptr + (r0 // PART_ROWS) * ranges_stride
    span_a, span_b = _spans(r0, pos_offset, DIAG_SPAN, POS_SPAN)
    for seg in range(6):  # stage 1: whole tiles, no masks
        lo, hi = _plain_segment(ranges, seg, span_a, span_b, c_lo, c_hi, BLOCK_M)
        for c0 in range(lo, hi, BLOCK_N):
            acc = _grad_step(ri_desc, cj_desc, r_ptr, c_ptr, col_coef_ptr, col_lse_ptr, col_range_ptr, r0, c0, 0, r_i,
                             r_i_lo, c_lo_rows, scale2, shift2, row_coef, row_lse, row_top, row_low, acc, d_pad,
                             d_chunk, headroom, False, STATIC_SHIFT, ROW_TERMS, COL_TERMS, TILE_SHIFT, ONE_CHUNK,
                             BLOCK_M, BLOCK_N, BLOCK_D, PRECISION, WIDEN_OPERANDS, USE_DESC, SPLIT_OPERANDS)
    if DIAG_SPAN or POS_SPAN:
        for k in range(4):  # stage 2: the spans, masked
            lo, hi, span = _span_segment(ranges, k, span_a, span_b, c_lo, c_hi, BLOCK_M)
            for c0 in range(lo, hi, BLOCK_N):
                acc = _grad_step(ri_desc, cj_desc, r_ptr, c_ptr, col_coef_ptr, col_lse_ptr, col_range_ptr, r0, c0,
                                 span, r_i, r_i_lo, c_lo_rows, scale2, shift2, row_coef, row_lse, row_top, row_low,
                                 acc, d_pad, d_chunk, headroom, True, STATIC_SHIFT, ROW_TERMS, COL_TERMS, TILE_SHIFT,
                                 ONE_CHUNK, BLOCK_M, BLOCK_N, BLOCK_D, PRECISION, WIDEN_OPERANDS, USE_DESC,
                                 SPLIT_OPERANDS)

    out = split.to(tl.int64) * rows_out + block * BLOCK_M + offs_m
    tl.store(out_ptr + out[:, None] * d_pad + (d_chunk * BLOCK_D + offs_d)[None, :], acc)


# ---------------------------------------------------------------- launchers


def contrastive_config(fmt: str, d: int, kernel: str, arch: int, static_shift: bool) -> dict:
    """The block configuration of a kernel ("lse", "lse_col_sums": with CLIP's column sums,
    "lse_grad": with the row gradient, "grad") for a product format, width, arch and shift
    (also what compile_check compiles): the uniformity kernel's (the same tiles: S, and
    with a second product its accumulator), found without spills by compiling both archs.
    The lse kernel without a second product takes 128 x 128 TF32 tiles on sm_90 up to
    d = 128 (the uniformity kernel's 128 x 64 are for its gradient's registers): CLIP's
    column sums cost a cross-warp reduction per column of a tile, 16.5 non-mma
    instructions per pair at 64 columns; at d = 256 (no room for 128 x 128 in shared
    memory) the column sums stay chunked there (loop_gate.CHUNKED_ALLOWED).  On sm_80 a
    few cases take other blocks (compile_check's full matrix, Triton 3.9), and 3xTF32's lse
    at d <= 16 the descriptors (Triton 3.9 spilled the plain loads)."""
    with_grad = kernel in ("lse_grad", "grad")
    col_sums = kernel == "lse_col_sums"
    if col_sums and fmt == "tf32" and arch >= 90 and d > TF32_COL_SUMS_ONE_CHUNK_MAX_D:
        cfg = flash_config(fmt, d, True, arch, static_shift)  # the gradient's: chunked past 128
    else:
        cfg = flash_config(fmt, d, with_grad, arch, static_shift)
    if not with_grad and fmt == "tf32" and arch >= 90 and cfg["ONE_CHUNK"] and cfg["BLOCK_D"] <= 128:
        cfg["BLOCK_N"] = 128
    if arch < 90:  # sm_80 cases that spilled (8-24 bytes) or passed 40 non-mma per pair with the uniformity kernel's blocks
        if kernel == "grad" and fmt == "tf32" and cfg["BLOCK_D"] <= 16:
            cfg["num_warps"] = 4
        if kernel == "grad" and fmt == "tf32x3" and not static_shift and cfg["BLOCK_D"] == 32:
            cfg["num_stages"] = 1
        if not with_grad and fmt == "fp64" and cfg["BLOCK_D"] <= 16:
            cfg["num_warps"] = 2
        if not with_grad and fmt == "tf32x3" and cfg["BLOCK_D"] <= 16:
            cfg["USE_DESC"] = True  # plain loads (the uniformity loss's, for Triton 3.6) spill 24 bytes under 3.9
        if col_sums and fmt == "tf32" and cfg["ONE_CHUNK"] and cfg["BLOCK_D"] > 128:
            # 128 x 32, 8 warps: 40.7 non-mma per pair
            cfg.update(BLOCK_M=64, num_warps=4, num_stages=2)
    if kernel == "grad":
        # The gradient without the certified shift: the tile shift, except past 128 wide
        # (64 x 64 tiles, a 256-wide accumulator), where one exp per side alone takes 254
        # registers and the tile shift's step beside it spills 40 bytes, and in float64
        # (a software exp, not the exp unit; the two steps together spill 104 bytes):
        # sm_90, Triton 3.9.  Triton 3.6's software pipeliner fails on the tile shift's
        # per-tile branch (PassManager::run failed, two stages; one stage spills 48 bytes).
        cfg["TILE_SHIFT"] = cfg["BLOCK_D"] <= 128 and fmt != "fp64" and not triton_before_newest()
        if cfg["SPLIT_OPERANDS"] and not static_shift:
            # The tile shift's branch before the split of W: Triton 3.6's software
            # pipeliner fails on it with 2 stages (a pass error at 64 x 32 and 64 x 16);
            # 64 x 32 with 1 stage spills 128 bytes under 3.9, 64 x 16 none under either.
            cfg.update(BLOCK_N=16, num_stages=1)
    return cfg


# CLIP's column sums in TF32 on sm_90 past this width: chunked (loop_gate.CHUNKED_ALLOWED).
TF32_COL_SUMS_ONE_CHUNK_MAX_D = 128


def _precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32:
        return "tf32" if cuda_matmul_allows_tf32() else "tf32x3"
    return "ieee"  # float64 (DMMA) and 16-bit tensor cores with float32 accumulation


def _pad_rows(x: torch.Tensor, rows: int, d_pad: int) -> torch.Tensor:
    out = x.new_zeros((rows, d_pad))
    out[: x.shape[0], : x.shape[1]] = x
    return out


def _padded_vector(parts, fill, dtype, device) -> torch.Tensor:
    """Concatenates (vector, padded length) pieces, each padded with `fill`."""
    out = []
    for v, length in parts:
        piece = torch.full((length,), fill, dtype=dtype, device=device)
        piece[: v.shape[0]] = v
        out.append(piece)
    return torch.cat(out)


class _Problem:
    """The padded rows a launch reads, where its pairs live (spans, part ranges), the
    shift and the product precision."""

    def __init__(self, function, a, b, scale, self_pairs, part, num_parts, skip_positives):
        check_device(a.device, function)
        self.a, self.b = a, b
        self.na, self.nb = a.shape[0], b.shape[0]
        self.scale = float(scale)
        self.self_pairs = self_pairs
        self.skip_positives = skip_positives
        self.acc_t = torch.float64 if a.dtype == torch.float64 else torch.float32
        self.precision = _precision(a.dtype)
        self.fmt = operand_format(a.dtype, self.precision)
        self.arch = device_arch(a.device)
        # The static shift needs a host read: none under CUDA-graph capture (online max).
        host_read = not (a.is_cuda and torch.cuda.is_current_stream_capturing())
        c, certified = _static_shift(a, b, self.scale, self.acc_t).tolist() if host_read else (0.0, 0.0)
        self.static = certified > 0
        self.c = c if self.static else 0.0  # natural units
        d = a.shape[1]
        self.d = d
        self.d_pad = padded_width(self.fmt, d, self.arch, self.static)
        self.na_pad = triton.cdiv(self.na, PART_BLOCK) * PART_BLOCK
        self.nb_pad = triton.cdiv(self.nb, PART_BLOCK) * PART_BLOCK
        pa, pb = _pad_rows(a, self.na_pad, self.d_pad), _pad_rows(b, self.nb_pad, self.d_pad)
        self.z = torch.cat([pa, pb]) if self_pairs else None
        # 3xTF32 from prepared halves (split_operands: one answer for every kernel of the
        # op, as their 3xTF32 caps are one): each operand tensor [high; low], the low
        # halves as many rows further as the tensor has padded rows (halves_offset).
        self.halves = split_operands(self.fmt, d, self.arch, self.static, True)
        if self.halves:
            pa, pb = tf32_halves(pa), tf32_halves(pb)
            self.z = tf32_halves(self.z) if self_pairs else None
        self.pa, self.pb = pa, pb
        a_blocks, b_blocks = self.na_pad // PART_BLOCK, self.nb_pad // PART_BLOCK
        z_blocks = a_blocks + b_blocks
        total = z_blocks * (z_blocks + 1) // 2 if self_pairs else a_blocks * b_blocks
        if num_parts == 1:
            self.part = None
        else:
            if not part_index_fits(total, z_blocks if self_pairs else 0):
                raise ValueError(f"{function}: num_parts > 1 on the Triton kernels needs the {PART_BLOCK}-row "
                                 f"tile index to fit int32, got {total} tiles (N_a = {self.na}, N_b = {self.nb})")
            self.part = (total * part // num_parts, total * (part + 1) // num_parts, a_blocks, b_blocks)

    # ------------------------------------------------------------ where the pairs are

    def side(self, rows_are_a: bool):
        """(rows tensor, columns tensor, row_start, rows_out, n_rows) of a's rows (or b's)."""
        if self.self_pairs:
            if rows_are_a is None:  # every stacked row
                return self.z, self.z, 0, self.na_pad + self.nb_pad, self.na_pad + self.nb
            if rows_are_a:
                return self.z, self.z, 0, self.na_pad, self.na
            return self.z, self.z, self.na_pad, self.nb_pad, self.nb
        if rows_are_a:
            return self.pa, self.pb, 0, self.na_pad, self.na
        return self.pb, self.pa, 0, self.nb_pad, self.nb

    def halves_offset(self, t: torch.Tensor) -> int:
        """How many rows below a padded row its low TF32 half is (its padded row count;
        0 without halves)."""
        return t.shape[0] // 2 if self.halves else 0

    def halves_offsets(self, rows_are_a):
        """(rows', columns') halves_offset: the kernels' r_lo_rows and c_lo_rows."""
        rows, cols = self.side(rows_are_a)[:2]
        return self.halves_offset(rows), self.halves_offset(cols)

    def real_columns(self, rows_are_a):
        """(real count, padded length) pieces of the columns."""
        if self.self_pairs:
            return [(self.na, self.na_pad), (self.nb, self.nb_pad)]
        return [(self.nb, self.nb_pad)] if rows_are_a else [(self.na, self.na_pad)]

    def ranges(self, rows_are_a, n_cols_pad, device):
        """Per PART_BLOCK of rows the column ranges (lo0, hi0, lo1, hi1) of this part's
        tiles (int32 on the device) and the row stride (0: the same for every block)."""
        if self.part is None:
            return torch.tensor([[0, n_cols_pad, 0, 0]], dtype=torch.int32, device=device), 0
        lo, hi, a_blocks, b_blocks = self.part
        P = PART_BLOCK

        def clip(v, a, b):
            return v.clamp(min=a).clamp(max=b)

        if self.self_pairs:
            nz = a_blocks + b_blocks
            rb = torch.arange(nz, dtype=torch.int64)
            out = torch.zeros((nz, 4), dtype=torch.int64)
            c = torch.arange(nz, dtype=torch.int64)
            f = c * nz - c * (c - 1) // 2 - c  # tile(cb, rb) = f(cb) + rb for cb < rb
            first = torch.minimum(torch.searchsorted(f, lo - rb), rb)
            last = torch.minimum(torch.searchsorted(f, hi - rb), rb)
            out[:, 0], out[:, 1] = first * P, torch.maximum(last, first) * P
            base = rb * nz - rb * (rb - 1) // 2  # tile(rb, cb) = base + cb - rb for cb >= rb
            first = rb + clip(lo - base, 0, nz).minimum(nz - rb)
            last = rb + clip(hi - base, 0, nz).minimum(nz - rb)
            out[:, 2], out[:, 3] = first * P, torch.maximum(last, first) * P
        elif rows_are_a:
            rb = torch.arange(a_blocks, dtype=torch.int64)
            out = torch.zeros((a_blocks, 4), dtype=torch.int64)
            base = rb * b_blocks  # tile(rb, cb) = base + cb
            first, last = clip(lo - base, 0, b_blocks), clip(hi - base, 0, b_blocks)
            out[:, 0], out[:, 1] = first * P, torch.maximum(last, first) * P
        else:
            rb = torch.arange(b_blocks, dtype=torch.int64)
            out = torch.zeros((b_blocks, 4), dtype=torch.int64)
            # tile(ca, rb) = ca * b_blocks + rb: increasing in ca.
            first = clip(-((-(lo - rb)) // b_blocks), 0, a_blocks)
            last = clip(-((-(hi - rb)) // b_blocks), 0, a_blocks)
            out[:, 0], out[:, 1] = first * P, torch.maximum(last, first) * P
        return out.to(torch.int32).to(device), 4

    def launch(self, kernel, rows_are_a, static, col_splits):
        """The launch's common pieces: (cfg, grid, descriptor and pointer arguments,
        integer arguments, constexprs, rows_out, n_rows, splits)."""
        rows, cols, row_start, rows_out, n_rows = self.side(rows_are_a)
        cfg = contrastive_config(self.fmt, self.d, kernel, self.arch, static)
        bm, bn, bd = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_D"]
        n_cols_pad = cols.shape[0] - self.halves_offset(cols)
        splits, per_split = split_columns(n_rows, n_cols_pad, bm, bn, rows.device, col_splits)
        ranges, stride = self.ranges(rows_are_a, n_cols_pad, rows.device)
        d_chunks = self.d_pad // bd if kernel in ("lse_grad", "grad") else 1
        grid = (rows_out // bm, splits, d_chunks)
        tensors = (TensorDescriptor.from_tensor(rows, [bm, bd]), TensorDescriptor.from_tensor(cols, [bn, bd]),
                   rows, cols)
        diag = self.self_pairs or self.skip_positives
        consts = dict(
            DIAG_SPAN=diag, POS_SPAN=self.self_pairs and self.skip_positives,
            BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, ONE_CHUNK=cfg["ONE_CHUNK"], PRECISION=self.precision,
            # The interpreter's 16-bit tl.dot is wrong (Triton 3.9): widen (exactly) there.
            WIDEN_OPERANDS=triton.knobs.runtime.interpret and rows.dtype in (torch.bfloat16, torch.float16),
            USE_DESC=cfg["USE_DESC"], SPLIT_OPERANDS=cfg["SPLIT_OPERANDS"], num_warps=cfg["num_warps"],
            num_stages=cfg["num_stages"],
        )
        if kernel == "grad":
            consts["TILE_SHIFT"] = cfg["TILE_SHIFT"]
        return grid, tensors, ranges, stride, consts, row_start, rows_out, n_rows, splits, per_split, n_cols_pad

    # ------------------------------------------------------------ the passes

    def row_lse(self, rows_are_a, col_sums=False, row_grad=False, col_splits=None):
        """(m, l, o or None, column sums or None), natural-log shift, the splits merged:
        lse = m + log l; o_i = sum_j e^(s_ij - m_i) C_j."""
        static = self.static and not (row_grad and self.a.dtype == torch.float16)
        col_sums = col_sums and static
        kernel = "lse_grad" if row_grad else ("lse_col_sums" if col_sums else "lse")
        (grid, tensors, ranges, stride, consts, row_start, rows_out, n_rows, splits, per_split,
         n_cols_pad) = self.launch(kernel, rows_are_a, static, col_splits)
        dev, acc_t = self.a.device, self.acc_t
        shift2 = self.c * LOG2E if static else 0.0
        bias = torch.cat([torch.cat([torch.full((n,), -shift2, dtype=acc_t, device=dev),
                                     torch.full((p - n,), float("-inf"), dtype=acc_t, device=dev)])
                          for n, p in self.real_columns(rows_are_a)])
        scale = torch.tensor([self.scale * LOG2E], dtype=acc_t, device=dev)
        m = torch.empty((splits, rows_out), dtype=acc_t, device=dev)
        l = torch.empty_like(m)
        colsum = torch.zeros((grid[0], n_cols_pad) if col_sums else (1,), dtype=acc_t, device=dev)
        acc = torch.empty((splits, rows_out, self.d_pad) if row_grad else (1,), dtype=acc_t, device=dev)
        _lse_rows_kernel[grid](
            *tensors, bias, scale, ranges, m, l, colsum, acc,
            row_start, row_start + n_rows, rows_out, per_split, n_cols_pad, self.d_pad, stride, self.na_pad,
            *self.halves_offsets(rows_are_a),
            STATIC_SHIFT=static, COL_SUMS=col_sums, ROW_GRAD=row_grad, **consts)
        # base 2 -> natural; the static shift is in the column vector.
        m = (m[:, :n_rows] + shift2) * math.log(2.0)
        top, total, o = merge_splits(m, (l[:, :n_rows],), acc[:, :n_rows, : self.d] if row_grad else None)
        return top, total, o, colsum.sum(0) if col_sums else None

    def row_grad(self, rows_are_a, row_terms, col_terms, col_splits=None):
        """sum_j w_ij C_j for a's rows (b's; None: every stacked row), from the row terms
        (lse, g) and column terms (lse, h) over the padded rows and columns (None: none)."""
        static = self.static
        (grid, tensors, ranges, stride, consts, row_start, rows_out, n_rows, splits, per_split,
         _) = self.launch("grad", rows_are_a, static, col_splits)
        dev, acc_t = self.a.device, self.acc_t
        sixteen = self.a.dtype in (torch.float16, torch.bfloat16)
        # Upstream gradients scaled by a power of two (exact): 16-bit weights keep their
        # digits; the tile shift's factors (up to 2^(H + 1) |g|) stay finite.
        scaled = sixteen or not static
        w_scale = _weight_scale([t[1] for t in (row_terms, col_terms) if t is not None]) if scaled else None
        unused = torch.zeros((1,), dtype=acc_t, device=dev)

        def factors(terms):
            if terms is None:
                return unused, unused
            lse, g = terms
            if scaled:
                g = g * w_scale
            no_term = torch.isneginf(lse)  # a row without pairs, or a padding row
            if static:
                # g e^(c - lse): 0 for a row without pairs (lse -inf) or a padding row.
                return torch.where(no_term, 0.0, g * torch.exp(self.c - lse)).to(acc_t), unused
            # The tile shift's per-row terms: k = ceil(lse log2 e) (+inf: no term) and
            # phi = g 2^(k - lse log2 e) in [g, 2 g), from float64 logs.
            top = torch.where(no_term, 0.0, lse.double() * LOG2E)
            k = torch.ceil(top)
            return (torch.where(no_term, 0.0, g.double() * torch.exp2(k - top)).to(acc_t),
                    torch.where(no_term, float("inf"), k).to(acc_t))

        rc, rl = factors(row_terms)
        cc, cl = factors(col_terms)
        windows = _column_windows(cl, consts["BLOCK_N"]) if col_terms is not None and not static else unused
        scale = torch.tensor([self.scale * LOG2E, self.c * LOG2E, TILE_SHIFT_HEADROOM], dtype=acc_t, device=dev)
        out = torch.empty((splits, rows_out, self.d_pad), dtype=acc_t, device=dev)
        _grad_rows_kernel[grid](
            *tensors, rc, rl, cc, cl, windows, scale, ranges, out,
            row_start, rows_out, per_split, self.d_pad, stride, self.na_pad, *self.halves_offsets(rows_are_a),
            STATIC_SHIFT=static, ROW_TERMS=row_terms is not None, COL_TERMS=col_terms is not None, **consts)
        out = out[0] if splits == 1 else out.sum(0)
        out = out[:n_rows, : self.d] * self.scale
        if scaled:
            out = out / w_scale
        return out

    def padded(self, pieces, fill):
        """The vectors of `pieces` ((vector, padded length) ...) padded and concatenated."""
        return _padded_vector(pieces, fill, self.acc_t, self.a.device)

    def all_finite(self) -> torch.Tensor:
        """On the device, without a host read (CUDA-graph capture)."""
        return torch.isfinite(self.a).all() & torch.isfinite(self.b).all()


# The widest spread of logits below the static shift that keeps every weight a normal
# number: e^(s - c) >= e^-(2 c) and e^(c - lse) <= e^(2 c) stay within float32's (float64's)
# normal range with room for the sums; past it the kernels keep a running max.
STATIC_SHIFT_SPREAD = {torch.float32: 80.0, torch.float64: 700.0}


# H, log2 units: the tile shift's headroom (module docstring; float32 only).  Its exps
# stay below 2^H and its factors below 2^(H + 2); a tile whose lse ceilings span more
# than 2 H takes one exp per side.  Terms below 2^(H - 124) of the largest upstream
# gradient (2^-60) may be lost.
TILE_SHIFT_HEADROOM = 64.0


def _static_shift(a: torch.Tensor, b: torch.Tensor, scale: float, acc_t: torch.dtype) -> torch.Tensor:
    """[c, certified] on the device: c = scale max|a_i| max|b_j| bounds every logit
    (Cauchy-Schwarz), so e^(s - c) <= 1; certified (1.0, else 0.0) when
    |s - c| <= 2c <= STATIC_SHIFT_SPREAD for every pair and lse (unit rows: tau >= 0.025
    in float32), so that the shifted weights neither overflow nor lose their digits."""
    c = scale * a.to(acc_t).norm(dim=1).max() * b.to(acc_t).norm(dim=1).max()
    certified = torch.isfinite(c) & (2 * c <= STATIC_SHIFT_SPREAD[acc_t])
    return torch.stack([torch.where(torch.isfinite(c), c, torch.zeros_like(c)), certified.to(acc_t)])


def _column_windows(top: torch.Tensor, block_n: int) -> torch.Tensor:
    """Per column start c, (largest, smallest) of the lse ceilings `top` (+inf: no term)
    over the columns [c, c + block_n) that have terms, interleaved; (+inf, +inf) for a
    window without terms: the tile shift's column side of every tile, whatever its start."""
    inf = float("inf")
    pad = top.new_full((block_n - 1,), inf)
    with_terms = torch.where(torch.isinf(top), -inf, top)
    largest = torch.nn.functional.max_pool1d(torch.cat([with_terms, -pad])[None, None], block_n, 1)[0, 0]
    smallest = -torch.nn.functional.max_pool1d(-torch.cat([top, pad])[None, None], block_n, 1)[0, 0]
    return torch.stack([torch.where(torch.isneginf(largest), inf, largest), smallest], 1).reshape(-1).contiguous()


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


def _lse(m, total):
    return torch.where(total > 0, m + torch.log(total), torch.full_like(m, float("-inf")))


def contrastive_lse(a, b, scale, self_pairs, lse_b, part, num_parts, skip_positives=False, *, col_splits=None):
    """`torch.ops.pyhypersphere.contrastive_lse` on Triton: same arguments, same results.

    `col_splits` (tests only) forces how many programs share a row block's columns.
    """
    torch.ops.pyhypersphere_checks.contrastive_lse(a, b, scale, self_pairs, lse_b, part, num_parts)
    p = _Problem("contrastive_lse", a, b, scale, self_pairs, part, num_parts, skip_positives)
    if self_pairs:  # every stacked row in one launch
        m, total, _, _ = p.row_lse(None, col_splits=col_splits)
        both = _lse(m, total)
        out_a, out_b = both[: p.na], both[p.na_pad: p.na_pad + p.nb]
    else:
        # CLIP: b's lse from the column sums of a's S tiles (static shift; else its own pass).
        m, total, _, colsum = p.row_lse(True, col_sums=lse_b, col_splits=col_splits)
        out_a = _lse(m, total)
        if not lse_b:
            out_b = a.new_empty((0,), dtype=p.acc_t)
        elif colsum is not None:
            out_b = _lse(torch.full((p.nb,), p.c, dtype=p.acc_t, device=a.device), colsum[: p.nb])
        else:
            out_b = _lse(*p.row_lse(False, col_splits=col_splits)[:2])
    return _where_finite(p.all_finite(), out_a, out_b)


def contrastive_lse_backward(a, b, scale, self_pairs, lse_a, lse_b, grad_lse_a, grad_lse_b, part, num_parts,
                             grad_a, grad_b, skip_positives=False, *, col_splits=None):
    """`torch.ops.pyhypersphere.contrastive_lse_backward` on Triton: same arguments, same results."""
    torch.ops.pyhypersphere_checks.contrastive_lse_backward(a, b, scale, self_pairs, lse_a, lse_b, grad_lse_a,
                                                            grad_lse_b, part, num_parts)
    p = _Problem("contrastive_lse_backward", a, b, scale, self_pairs, part, num_parts, skip_positives)
    empty = a.new_empty((0,), dtype=p.acc_t)
    if not (grad_a or grad_b):
        return empty, empty
    acc = p.acc_t
    ninf = float("-inf")
    # b's side of the weights: always with self pairs (whose grad_lse_b the check requires),
    # with cross pairs when b's lse has an upstream gradient (csrc/ops.h).
    col_terms = self_pairs or grad_lse_b.numel() > 0
    la, ga = lse_a.to(acc), grad_lse_a.to(acc)
    if self_pairs:
        lb, gb = lse_b.to(acc), grad_lse_b.to(acc)
        terms = (p.padded([(la, p.na_pad), (lb, p.nb_pad)], ninf), p.padded([(ga, p.na_pad), (gb, p.nb_pad)], 0.0))
        if grad_a and grad_b:  # every stacked row in one launch
            both = p.row_grad(None, terms, terms, col_splits)
            out_a, out_b = both[: p.na], both[p.na_pad: p.na_pad + p.nb]
        else:
            out_a = p.row_grad(True, terms, terms, col_splits) if grad_a else empty
            out_b = p.row_grad(False, terms, terms, col_splits) if grad_b else empty
        lse_all = torch.cat([la, lb])
    else:
        a_terms = (p.padded([(la, p.na_pad)], ninf), p.padded([(ga, p.na_pad)], 0.0))
        b_terms = None
        if col_terms:
            b_terms = (p.padded([(lse_b.to(acc), p.nb_pad)], ninf), p.padded([(grad_lse_b.to(acc), p.nb_pad)], 0.0))
        out_a = p.row_grad(True, a_terms, b_terms, col_splits) if grad_a else empty
        out_b = p.row_grad(False, b_terms, a_terms, col_splits) if grad_b else empty
        # lse_b given but unused (no upstream gradient for it) still has to be valid, as
        # for the CPU kernel.
        lse_all = torch.cat([la, lse_b.to(acc)]) if lse_b.numel() else la
    # -inf is a valid lse (a row without pairs); NaN or +inf is not.
    ok = p.all_finite() & ~(torch.isnan(lse_all) | torch.isposinf(lse_all)).any()
    return _where_finite(ok, out_a, out_b)


def _lse_and_row_mean(p, row_grad, col_splits):
    """(lse of a's rows, o or None): one pass over the pairs, o_i = sum_j p_ij b_j with
    p_ij = e^(s_ij - lse_i) the softmax over row i's partners (0 for a row without)."""
    m, total, o, _ = p.row_lse(True, row_grad=row_grad, col_splits=col_splits)
    if o is not None:
        o = torch.where(total[:, None] > 0, o / total[:, None], torch.zeros_like(o))
    return _lse(m, total), o


def contrastive_lse_row_grad(a, b, scale, skip_positives=False, *, col_splits=None):
    """`torch.ops.pyhypersphere.contrastive_lse_row_grad` on Triton: same arguments, same
    results.  One pass: the lse kernel with the row gradient (2 GEMMs, 1 exp per pair)."""
    torch.ops.pyhypersphere_checks.contrastive_lse_row_grad(a, b, scale)
    p = _Problem("contrastive_lse_row_grad", a, b, scale, False, 0, 1, skip_positives)
    lse, o = _lse_and_row_mean(p, True, col_splits)
    return _where_finite(p.all_finite(), lse, o)


def contrastive_mean_lse(a, b, scale, grad_a, grad_b, *, col_splits=None):
    """`torch.ops.pyhypersphere.contrastive_mean_lse` on Triton: same arguments, same results.

    One pass over a's rows gives each row's negatives' lse n_i (b_i skipped) and, when
    grad_a, o_i = sum_{j != i} e^(s_ij - n_i) b_j with it (_lse_and_row_mean: 2 GEMMs,
    1 exp).  With the rows' full lse log(e^n_i + e^s_ii) and upstream gradient 1 / N_a,
    d/da_i = scale / N_a (e^(n_i - full_i) o_i - (sum_{j != i} p_ij) b_i); grad_b is the
    gradient kernel on b's rows with a's terms as column terms, the positive's term
    (the negatives' total weight times a_i) added after.
    """
    torch.ops.pyhypersphere_checks.contrastive_mean_lse(a, b, scale)
    p = _Problem("contrastive_mean_lse", a, b, scale, False, 0, 1, True)
    lse, o = _lse_and_row_mean(p, grad_a, col_splits)
    na = p.na
    positive = (a.to(p.acc_t) * b[:na].to(p.acc_t)).sum(1) * scale
    u = lse - positive
    loss = torch.logaddexp(u, torch.zeros_like(u))  # log(1 + e^(n_i - s_ii)), no cancellation
    full = positive + loss
    weight = (-(scale / na) * torch.exp(u - loss))[:, None]  # the positive's, -sum_{j != i} p_ij
    empty = a.new_empty((0,), dtype=p.acc_t)
    out_a = empty
    if grad_a:
        out_a = ((scale / na) * torch.exp(lse - full))[:, None] * o + weight * b[:na].to(p.acc_t)
    if grad_b:
        g = torch.full_like(lse, 1.0 / na)
        out_b = p.row_grad(False, None, (p.padded([(full, p.na_pad)], float("-inf")), p.padded([(g, p.na_pad)], 0.0)),
                           col_splits)
        out_b[:na] += weight * a.to(p.acc_t)
    else:
        out_b = empty
    # The mean in float64 (as the CPU kernel sums).
    mean = loss.to(torch.float64).mean().to(p.acc_t)
    return _where_finite(p.all_finite(), mean, out_a, out_b)
