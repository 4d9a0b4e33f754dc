"""Triton kernel and launcher for `uniform_lse` (contract: csrc/ops.h).

The flash-attention forward (Triton's fused-attention tutorial) with Q = K = V = z, the
prepared rows (x then the queue, each padded to PART_BLOCK rows and to the block width):

- each program owns BLOCK_M rows; per step one column tile z_j is loaded once (it is K
  and V), S = z_i z_j^T is computed once, and the base-2 exponent is
  e_ij = min(S_ij * 2t log2(e) + c_j + c_i, 0) = -t ||z_i - z_j||^2 log2(e), with the
  per-column term c_j = -t ||z_j||^2 log2(e) a vector (-inf on padding rows: no
  per-element mask in the main loop) and c_i the row's own, a static shift;
- with the static shift (the launcher certifies it: every exponent lies in [-bound, 0])
  the weights are p = exp2(e) with no running max; otherwise the online max of the
  tutorial over S * 2t log2(e) + c_j (m_i in base 2, rounded up to an integer so that
  the rescale is an exact power of two with no exp; c_i added after the loop; no clamp:
  the max absorbs a rounding above 0);
- per row: l_i = sum_j p_ij, the lse-weighted sum lw_i (an x-x pair is seen from both of
  its rows, so it counts 1/2 there) and, with a gradient, a_i = sum_j p_ij z_j (P z_j,
  the second GEMM; P in the operands' format for 16-bit operands, as flash attention);
- the columns come in at most three ranges per row block (x below, x above, the queue;
  the launcher's _ranges, which also cut them to this call's part): whole tiles, no
  masks.  The diagonal block [r0, r0 + BLOCK_M) of x columns is its own stage after the
  loop (the only per-element mask: i != j), as the tutorial splits its causal loop;
- the tiles of z are read through tensor descriptors on sm_90 (TMA: no address
  arithmetic in the loop), plain loads with int32 offsets from an int64 base before it;
  the row padding makes every tile whole (no masks).

Work per step of the main loop: 2 GEMMs with a gradient (1 without) and 1 exp per pair,
the algorithm's minimum (loop_gate.MIN_WORK, checked on the SASS by compile_check).

d lse / d z_i = -2t / S * sum_j w_ij (z_i - z_j) = -2t exp(m_i - lse) (l_i z_i - a_i).

Few row blocks (queue shapes): the columns are split over several programs and their
(m, l, lw, a) merged afterwards in a fixed order (bitwise reproducible).  The queue's
gradient is its own pass: queue rows against x's columns.  d beyond the one-chunk width
(one_chunk_max_d: 256 wherever it fits, loop_gate.CHUNKED_ALLOWED where it does not): S
loops over BLOCK_D-wide feature chunks and the grid's third axis cuts a_i into slices,
each recomputing S (that path is not the flash pattern).

Precision (docs/triton.md): the rows and the policy come from the C++ plan_uniform_rows
(centering, float64 for far-spread float32 rows); float32 follows torch's matmul setting.
Under "highest" (3xTF32) past d = 64 on sm_90 the launcher splits the rows once into TF32
halves (tf32_halves) and the kernel issues three TF32 products from them (SPLIT_OPERANDS):
Triton's own 3xTF32 splits both operands in registers, where the row block's halves spill.
"""

import math

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from .. import _C
from .._matmul_precision import cuda_matmul_allows_tf32
from .loop_gate import ONE_CHUNK_WIDTH
from .splits import merge_splits, split_columns
from .tiles import part_index_fits, triton_before_newest

LOG2E = 1.4426950408889634
# Rows per part-slicing block: `part`/`num_parts` cut the pair set into tiles of
# PART_BLOCK x PART_BLOCK rows (upper triangle of x, then x by queue) and keep a
# contiguous, balanced range of them; each pair is in exactly one part.  Also the padding
# unit of x and of the queue in the stacked rows, so no tile straddles the two, and a
# multiple of every block size: a tile lies in one part tile.
PART_BLOCK = 128
# The static shift is certified when every exponent -t ||z_i - z_j||^2 >= -4 t max|z|^2
# stays above this (natural log): the row sums cannot underflow, whatever the row.
STATIC_SHIFT_BOUND = {torch.float32: 80.0, torch.float64: 700.0}
# The feature dimension is computed in one chunk (S once per tile, the row block's
# accumulator [BLOCK_M, d] in registers) up to loop_gate.ONE_CHUNK_WIDTH (256) wherever
# it fits without spills within the gate's budget; past it the chunked path.


TF32X3_IN_REGISTERS_MAX_D = 64
TF32X3_SPLIT_MAX_D = 128


def one_chunk_max_d(fmt: str, arch: int, static_shift: bool, with_grad: bool) -> int:
    """The widest d computed in one chunk, for a kernel with a second product (P z_j, the
    gradient) or without (the loss, the contrastive lse).  Found by compiling for sm_80
    and sm_90 (compile_check); every cap below ONE_CHUNK_WIDTH is in
    loop_gate.CHUNKED_ALLOWED with what was measured."""
    sm90 = arch >= 90
    if fmt == "tf32x3":
        # Triton splits both operands into TF32 halves in registers: past 64 the row
        # block's halves spill.  On sm_90 the kernels (uniformity and contrastive) take
        # halves the launcher split (split_operands), read by wgmma from shared memory.
        return TF32X3_SPLIT_MAX_D if sm90 else TF32X3_IN_REGISTERS_MAX_D
    if not with_grad:
        # TF32 with the online max before sm_90: 43 non-mma instructions per pair at 256;
        # under Triton 3.6 CLIP's column sums spill there with the static shift too.
        old = triton_before_newest()
        return 128 if fmt == "tf32" and not sm90 and (not static_shift or old) else ONE_CHUNK_WIDTH
    if fmt == "fp64" and triton_before_newest():
        return 64  # Triton 3.6: the 16 x 16 gradient blocks at d = 128 spill 12-188 bytes
    if fmt == "tf32" and sm90 and not static_shift:
        return 64  # the rescale of the accumulator: above 16 non-mma instructions per pair at 128
    if fmt in ("tf32", "fp64") or not sm90:
        return 128  # the accumulator [BLOCK_M, 256] with the row block or a transpose in registers
    return ONE_CHUNK_WIDTH


# Ranges per row block: (x low, x high, queue) x (start, end), the diagonal flag, unused.
_RANGE_FIELDS = 8


@triton.jit
def _load_rows(desc, z_ptr, row, col, d_pad, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, USE_DESC: tl.constexpr):
    """Rows [row, row + BLOCK_R) x features [col, col + BLOCK_D) of the padded rows: whole
    tiles, no masks.  Through the tensor descriptor (TMA on sm_90), or plain loads with an
    int64 base and int32 offsets (before sm_90, where the descriptor's lowering issues
    more instructions per element)."""
    if USE_DESC:
        tile = desc.load([row, col])
    else:
        offs = tl.arange(0, BLOCK_R)[:, None] * d_pad + (col + tl.arange(0, BLOCK_D))[None, :]
        tile = tl.load(z_ptr + tl.cast(row, tl.int64) * d_pad + offs)
    return tile


@triton.jit
def _pow2(k):
    """2^k for integer-valued k <= 0 or -inf (0 below 2^-126): for float32 from the
    exponent bits, without the exp unit; float64 through exp2 (software either way)."""
    if k.dtype == tl.float32:
        bits = (tl.maximum(k, -127.0).to(tl.int32) + 127) << 23
        return bits.to(tl.float32, bitcast=True)
    else:
        return tl.math.exp2(k)


@triton.jit
def _tf32_high(v):
    """v rounded to TF32 (10 mantissa bits, to nearest, ties away from zero) in float32:
    exactly representable, so a TF32 product of it is exact."""
    return ((v.to(tl.int32, bitcast=True) + 0x1000) & -0x2000).to(tl.float32, bitcast=True)


@triton.jit
def _row_block(ri_desc, r_ptr, r0, r_lo_rows, d_pad, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
               ONE_CHUNK: tl.constexpr, WIDEN_OPERANDS: tl.constexpr, USE_DESC: tl.constexpr,
               SPLIT_OPERANDS: tl.constexpr, acc_t: tl.constexpr):
    """A program's row block R_i (zeros when chunked: unused) and, with SPLIT_OPERANDS,
    its low TF32 half (r_lo_rows further; else R_i again, unused)."""
    r_i = tl.zeros([BLOCK_M, BLOCK_D], ri_desc.dtype)
    if ONE_CHUNK:
        r_i = _load_rows(ri_desc, r_ptr, r0, 0, d_pad, BLOCK_M, BLOCK_D, USE_DESC)
    r_i_lo = r_i
    if SPLIT_OPERANDS:
        r_i_lo = _load_rows(ri_desc, r_ptr, r_lo_rows + r0, 0, d_pad, BLOCK_M, BLOCK_D, USE_DESC)
    if WIDEN_OPERANDS:
        r_i = r_i.to(acc_t)
    return r_i, r_i_lo


@triton.jit
def _halves_logits(r_i, r_i_lo, cj_desc, c_ptr, c0, c_lo_rows, d_pad, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                   USE_DESC: tl.constexpr, acc_t: tl.constexpr):
    """(S, C_j, C_j's low half): 3xTF32 <R_i, C_j> over the columns [c0, c0 + BLOCK_N)
    from the operands' TF32 halves (tf32_halves; the columns' low halves c_lo_rows
    further), three TF32 products, the small ones first (low x low is below float32's
    rounding)."""
    c_j = _load_rows(cj_desc, c_ptr, c0, 0, d_pad, BLOCK_N, BLOCK_D, USE_DESC)  # K and V: high halves
    c_j_lo = _load_rows(cj_desc, c_ptr, c_lo_rows + c0, 0, d_pad, BLOCK_N, BLOCK_D, USE_DESC)
    s = tl.dot(r_i_lo, tl.trans(c_j), input_precision="tf32", out_dtype=acc_t)
    s = tl.dot(r_i, tl.trans(c_j_lo), s, input_precision="tf32", out_dtype=acc_t)
    return tl.dot(r_i, tl.trans(c_j), s, input_precision="tf32", out_dtype=acc_t), c_j, c_j_lo


@triton.jit
def _halves_product(acc, w, c_j, c_j_lo):
    """acc + W C_j in 3xTF32, C_j from its TF32 halves: W split in registers (a tile of
    weights, computed here), three TF32 products, the small ones first."""
    w_hi = _tf32_high(w)
    acc = tl.dot(w - w_hi, c_j, acc, input_precision="tf32", out_dtype=acc.dtype)
    acc = tl.dot(w_hi, c_j_lo, acc, input_precision="tf32", out_dtype=acc.dtype)
    return tl.dot(w_hi, c_j, acc, input_precision="tf32", out_dtype=acc.dtype)


@triton.jit
def _tile_step(zi_desc, zj_desc, z_ptr, colterm_ptr, c0, r0, z_i, z_i_lo, lo_rows, row_term, scale, m_i, l_i, lw_i,
               acc, weight, d_pad, d_chunk,
               DIAG: tl.constexpr, STATIC_SHIFT: tl.constexpr, WITH_GRAD: tl.constexpr, ONE_CHUNK: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, GRAM_PRECISION: tl.constexpr,
               GRAD_PRECISION: tl.constexpr, WIDEN_OPERANDS: tl.constexpr, USE_DESC: tl.constexpr,
               SPLIT_OPERANDS: tl.constexpr):
    """One BLOCK_M x BLOCK_N tile at columns [c0, c0 + BLOCK_N): the state (m, l, lw, a)
    updated.  DIAG masks the pairs i == j (the diagonal stage only).  SPLIT_OPERANDS:
    3xTF32 from the operands' TF32 halves (rows r and lo_rows + r), three TF32 products
    each (the small ones first)."""
    acc_t = colterm_ptr.dtype.element_ty
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    if SPLIT_OPERANDS:
        s, z_j, z_j_lo = _halves_logits(z_i, z_i_lo, zj_desc, z_ptr, c0, lo_rows, d_pad, BLOCK_N, BLOCK_D, USE_DESC,
                                        acc_t)
    elif ONE_CHUNK:
        z_j = _load_rows(zj_desc, z_ptr, c0, 0, d_pad, BLOCK_N, BLOCK_D, USE_DESC)  # K and V of this step
        if WIDEN_OPERANDS:
            z_j = z_j.to(acc_t)
        s = tl.dot(z_i, tl.trans(z_j), input_precision=GRAM_PRECISION, out_dtype=acc_t)
    else:
        s = tl.zeros([BLOCK_M, BLOCK_N], acc_t)
        for k0 in range(0, d_pad, BLOCK_D):
            zi_k = _load_rows(zi_desc, z_ptr, r0, k0, d_pad, BLOCK_M, BLOCK_D, USE_DESC)
            zj_k = _load_rows(zj_desc, z_ptr, c0, k0, d_pad, BLOCK_N, BLOCK_D, USE_DESC)
            if WIDEN_OPERANDS:
                zi_k = zi_k.to(acc_t)
                zj_k = zj_k.to(acc_t)
            s = tl.dot(zi_k, tl.trans(zj_k), s, input_precision=GRAM_PRECISION, out_dtype=acc_t)
    col_term = tl.load(colterm_ptr + c0 + offs_n)
    if STATIC_SHIFT:
        # -t ||z_i - z_j||^2 log2(e), clamped at 0 (the Gram form's rounding can cross it).
        e = tl.minimum(s * scale + col_term[None, :] + row_term[:, None], 0.0)
    else:
        # The running max absorbs any per-row constant: the row term is added to m_i
        # once, after the loop.
        e = s * scale + col_term[None, :]
    if DIAG:
        e = tl.where((r0 + offs_m)[:, None] == (c0 + offs_n)[None, :], float("-inf"), e)
    if STATIC_SHIFT:
        p = tl.math.exp2(e)
        row_sum = tl.sum(p, 1)
        l_i += row_sum
        lw_i += weight * row_sum
    else:
        # The running max rounded up to an integer: p <= 1 still, and the rescale is an
        # exact power of two built without the exp unit (_pow2): one exp per pair.
        m_new = tl.maximum(m_i, tl.math.ceil(tl.max(e, 1)))
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = _pow2(m_i - shift)
        p = tl.math.exp2(e - shift[:, None])
        row_sum = tl.sum(p, 1)
        l_i = l_i * alpha + row_sum
        lw_i = lw_i * alpha + weight * row_sum
        m_i = m_new
        if WITH_GRAD:
            acc = acc * alpha[:, None]
    if WITH_GRAD and SPLIT_OPERANDS:
        acc = _halves_product(acc, p, z_j, z_j_lo)
    elif WITH_GRAD:
        if ONE_CHUNK:
            z_c = z_j
        else:
            z_c = _load_rows(zj_desc, z_ptr, c0, d_chunk * BLOCK_D, d_pad, BLOCK_N, BLOCK_D, USE_DESC)
            if WIDEN_OPERANDS:
                z_c = z_c.to(acc_t)
        if zj_desc.dtype == acc_t:
            acc = tl.dot(p, z_c, acc, input_precision=GRAD_PRECISION, out_dtype=acc_t)
        else:
            # 16-bit operands: the weights in the operands' format (as flash attention
            # does; relative 2^-9 for bf16, the gradient's own output rounding).
            p_op = p.to(zj_desc.dtype)
            if WIDEN_OPERANDS:
                p_op = p_op.to(acc_t)
            acc = tl.dot(p_op, z_c, acc, input_precision=GRAD_PRECISION, out_dtype=acc_t)
    return m_i, l_i, lw_i, acc


@triton.jit
def _uniform_rows_kernel(
    zi_desc, zj_desc, z_ptr, colterm_ptr, scale_ptr, ranges_ptr, m_ptr, l_ptr, lw_ptr, acc_ptr,
    row_start, n_rows, span_lo, span_hi, cols_per_split, x_end, d_pad, ranges_stride, lo_rows,
    WITH_GRAD: tl.constexpr, STATIC_SHIFT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    ONE_CHUNK: tl.constexpr, GRAM_PRECISION: tl.constexpr, GRAD_PRECISION: tl.constexpr,
    WIDEN_OPERANDS: tl.constexpr, USE_DESC: tl.constexpr, SPLIT_OPERANDS: tl.constexpr,
):
    block = tl.program_id(0)
    split = tl.program_id(1)
    d_chunk = tl.program_id(2)  # the slice of a_i this program accumulates (chunked path)
    acc_t = colterm_ptr.dtype.element_ty
    scale = tl.load(scale_ptr)  # 2t log2(e), through a pointer: a Python float would be float32
    r0 = row_start + block * BLOCK_M
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    z_i, z_i_lo = _row_block(zi_desc, z_ptr, r0, lo_rows, d_pad, BLOCK_M, BLOCK_D, ONE_CHUNK, WIDEN_OPERANDS, USE_DESC,
                             SPLIT_OPERANDS, acc_t)
    row_term = tl.load(colterm_ptr + r0 + offs_m)

    if STATIC_SHIFT:
        m_i = tl.zeros([BLOCK_M], acc_t)
    else:
        m_i = tl.full([BLOCK_M], float("-inf"), acc_t)
    l_i = tl.zeros([BLOCK_M], acc_t)
    lw_i = tl.zeros([BLOCK_M], acc_t)
    acc = tl.zeros([BLOCK_M, BLOCK_D], acc_t)

    c_lo = span_lo + split * cols_per_split
    c_hi = tl.minimum(span_hi, c_lo + cols_per_split)
    ranges = ranges_ptr + block * ranges_stride
    # Stage 1: whole tiles, no masks.  Segments 0-3: the two x ranges, each cut at the
    # diagonal block; segment 4: the queue.  An x-x pair counts 1/2 in lw.
    for seg in range(5):
        r = tl.minimum(seg // 2, 2)
        lo = tl.load(ranges + 2 * r)
        hi = tl.load(ranges + 2 * r + 1)
        if seg < 4:
            if seg % 2 == 0:
                hi = tl.minimum(hi, r0)
            else:
                lo = tl.maximum(lo, r0 + BLOCK_M)
        lo = tl.maximum(lo, c_lo)
        hi = tl.minimum(hi, c_hi)
        weight = tl.where(seg < 4, 0.5, 1.0).to(acc_t)
        for c0 in range(lo, hi, BLOCK_N):
            m_i, l_i, lw_i, acc = _tile_step(
                zi_desc, zj_desc, z_ptr, colterm_ptr, c0, r0, z_i, z_i_lo, lo_rows, row_term, scale, m_i, l_i, lw_i,
                acc, weight, d_pad, d_chunk,
                False, STATIC_SHIFT, WITH_GRAD, ONE_CHUNK, BLOCK_M, BLOCK_N, BLOCK_D, GRAM_PRECISION,
                GRAD_PRECISION, WIDEN_OPERANDS, USE_DESC, SPLIT_OPERANDS)
    # Stage 2: the diagonal block (x rows against their own columns), masked i != j.
    if tl.load(ranges + 6) != 0:
        lo = tl.maximum(r0, c_lo)
        hi = tl.minimum(tl.minimum(r0 + BLOCK_M, c_hi), x_end)
        for c0 in range(lo, hi, BLOCK_N):
            m_i, l_i, lw_i, acc = _tile_step(
                zi_desc, zj_desc, z_ptr, colterm_ptr, c0, r0, z_i, z_i_lo, lo_rows, row_term, scale, m_i, l_i, lw_i,
                acc, 0.5, d_pad, d_chunk,
                True, STATIC_SHIFT, WITH_GRAD, ONE_CHUNK, BLOCK_M, BLOCK_N, BLOCK_D, GRAM_PRECISION,
                GRAD_PRECISION, WIDEN_OPERANDS, USE_DESC, SPLIT_OPERANDS)

    out = split.to(tl.int64) * n_rows + block * BLOCK_M + offs_m
    if not STATIC_SHIFT:
        m_i += row_term  # the shift of -t ||z_i - z_j||^2 log2(e) (-inf stays -inf)
    if d_chunk == 0:
        tl.store(m_ptr + out, m_i)
        tl.store(l_ptr + out, l_i)
        tl.store(lw_ptr + out, lw_i)
    if WITH_GRAD:
        tl.store(acc_ptr + out[:, None] * d_pad + (d_chunk * BLOCK_D + offs_d)[None, :], acc)


# ---------------------------------------------------------------- launcher


def operand_format(dtype: torch.dtype, precision: str) -> str:
    """The product format's name: bf16, fp16, tf32, tf32x3 or fp64."""
    if dtype == torch.float32:
        return precision
    return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}[dtype]


def block_width(fmt: str, d: int, arch: int, static_shift: bool, with_grad: bool) -> int:
    """BLOCK_D: d rounded up to a power of two (>= 16), or the chunk width past the cap."""
    if d > one_chunk_max_d(fmt, arch, static_shift, with_grad):
        return 32 if fmt == "tf32x3" else 64
    return max(16, triton.next_power_of_2(d))


def padded_width(fmt: str, d: int, arch: int, static_shift: bool) -> int:
    """The features padded for every kernel of an op (with and without the second
    product): a multiple of both block widths (powers of two)."""
    block_d = max(block_width(fmt, d, arch, static_shift, g) for g in (False, True))
    return triton.cdiv(d, block_d) * block_d


def flash_config(fmt: str, d: int, with_grad: bool, arch: int, static_shift: bool) -> dict:
    """The block configuration the launcher picks for a product format, width, gradient
    or not, arch and shift (also what compile_check compiles: the enumerable set).
    Chosen by compiling the candidates for sm_80 and sm_90 (no spills, the gate's mix);
    to be tuned on a GPU.  sm_90 multiplies from shared memory (wgmma) with the tiles
    brought by TMA: 128 x 128 tiles fit its registers up to d = 128 (64 x 64 at 256);
    mma.sync (sm_80) holds S and P in registers, so its column tiles are narrower; there
    plain loads mostly issue fewer instructions than the descriptors' lowering.  Past the
    one-chunk cap (one_chunk_max_d) the chunked path's 128 x 32."""
    block_d = block_width(fmt, d, arch, static_shift, with_grad)
    one_chunk = d <= one_chunk_max_d(fmt, arch, static_shift, with_grad)
    use_desc = arch >= 90
    stages = 2 if one_chunk else 1
    if fmt == "fp64":
        # Plain loads: the descriptors' version of the online-max gradient spills; the
        # loss alone spills pipelined (d = 16, sm_90).  DMMA holds the row block and the
        # accumulator in registers: 16 x 16, 2 warps, with the gradient past d = 64 (32 x 32
        # spills with the online max; 16 x 16 with 4 warps computes S twice; the column
        # tile must not be wider than the row block: the diagonal stage), 8 warps for the
        # loss past 128 (4 spill).
        block_m, block_n, warps, use_desc = 32, 32, (8 if block_d > 128 else 4), False
        if with_grad and block_d > 64:
            block_m, block_n, warps = 16, 16, 2
        stages = stages if with_grad else 1
        if with_grad and block_d <= 32:
            # Under Triton 3.6, 4 warps issue both products twice (4 GEMMs per tile in its
            # PTX, 2 under 3.9); 2 warps issue them once under both.
            warps = 2
    elif split_operands(fmt, d, arch, static_shift, with_grad):
        # The halves in shared memory (wgmma): 64 x 32, 4 warps with the gradient (128
        # x 32, 8 warps: 255 registers), 128 x 32 for the loss (128 x 64 passes the limit).
        block_m, block_n, warps = (64, 32, 4) if with_grad else (128, 32, 8)
    elif fmt == "tf32x3" and arch < 90 and one_chunk:
        # Spill-free under Triton 3.6 and 3.9 (64 x 32 gradient tiles, and the loss with
        # the descriptors, spill 24-810 bytes under 3.6).
        block_m, block_n, warps, use_desc = (64, 16, 4, True) if with_grad else (128, 32, 8, False)
        stages = 1 if with_grad else stages
    elif not one_chunk or fmt == "tf32x3":
        block_m, block_n, warps = 128, 32, 8
    elif fmt == "tf32":
        block_m, block_n, warps = 128, (64 if arch >= 90 or not with_grad else 32), 8
        if block_d > 128:  # the loss alone (S): the row block and a column tile within shared memory
            block_n, stages = (64 if arch >= 90 else 32), 1
    elif arch < 90:
        # 8 warps at d <= 32 compile with a 128-register cap and spill (online max).  The
        # gradient takes 128 x 32 tiles with plain loads: 128 x 64 spills 40-860 bytes
        # under Triton 3.6 from d = 32 (with the descriptors or not; none under 3.9),
        # 128 x 32 none under either, and issues fewer non-mma instructions per pair.  The
        # loss at d = 256 spills with 64 columns (mma.sync: the row block in registers).
        block_m, block_n, warps, use_desc = (128, (32 if with_grad or block_d > 128 else 64),
                                             (4 if block_d <= 32 else 8), False)
    elif block_d > 128:
        block_m, block_n, warps = 64, 64, 4
    else:
        block_m, block_n, warps = 128, 128, 8
    return {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_D": block_d, "ONE_CHUNK": one_chunk,
            "USE_DESC": use_desc, "num_warps": warps, "num_stages": stages,
            "SPLIT_OPERANDS": split_operands(fmt, d, arch, static_shift, with_grad)}


def split_operands(fmt: str, d: int, arch: int, static_shift: bool, with_grad: bool) -> bool:
    """Whether a kernel takes 3xTF32's operands as TF32 halves the launcher
    prepared (rows of high halves, then as many of low halves): past d = 64 in one chunk,
    where Triton's own split (both operands into halves in registers) spills."""
    return fmt == "tf32x3" and TF32X3_IN_REGISTERS_MAX_D < d <= one_chunk_max_d(fmt, arch, static_shift, with_grad)


def tf32_halves(z: torch.Tensor) -> torch.Tensor:
    """float32 rows -> [high; low] stacked: high = z rounded to TF32 (to nearest, ties away,
    as cvt.rna.tf32), low = z - high rounded to TF32; high + low carries z to about 2^-22."""
    def high(v):
        return ((v.view(torch.int32) + 0x1000) & -0x2000).view(torch.float32)

    hi = high(z)
    return torch.cat([hi, high(z - hi)])


def device_arch(device: torch.device) -> int:
    """Compute capability as 80, 90, ...; the interpreter (CPU) takes sm_90's blocks."""
    if device.type == "cuda" and torch.version.hip is None:
        major, minor = torch.cuda.get_device_capability(device)
        return 10 * major + minor
    return 90


def float32_precision() -> str:
    """The float32 product format torch's own setting asks for: "tf32" when it allows TF32
    for CUDA matmuls (torch.backends.cuda.matmul.allow_tf32, or float32 matmul precision
    "high"/"medium"), else "tf32x3" (float32 accuracy, torch's default "highest")."""
    return "tf32" if cuda_matmul_allows_tf32() else "tf32x3"


def _plan_operands(x, queue, t, intra_batch, host_read):
    """(z, sq_norm, gram_precision, grad_precision, finite_on_device) or None for non-finite
    inputs.  Without a host read (CUDA-graph capture) the decision is blind and the outputs
    are masked with finite_on_device instead.

    The policy is the C++ one (plan_uniform_rows: centering, float64 for rows spread too
    far for float32); float32 rows take the format torch's setting asks for (a user who
    allowed TF32 gets TF32, whatever the package's error budget would prefer).
    """
    # The CUDA glue's options: for 16-bit inputs the policy first asks whether the raw
    # inputs can be the operands (exact products, float32 sums, budget on their norms).
    z, sq, finite, _, raw_ok, finite_dev = _C._plan_uniform_rows(
        x, queue, t, _C.FLOAT32_UNIT_ROUNDOFF, raw_16bit_operands=True, host_read=host_read,
        intra_batch=intra_batch)
    if not finite:
        return None
    finite_dev = None if host_read else finite_dev
    if raw_ok:
        raw = (x if queue is None else torch.cat([x, queue], 0)).contiguous()
        # The norms of exactly the operands multiplied.
        return raw, raw.float().square().sum(1), "ieee", "ieee", finite_dev
    if z.dtype == torch.float64:
        return z, sq, "ieee", "ieee", finite_dev
    precision = float32_precision()
    return z, sq, precision, precision, finite_dev


class _Stacked:
    """The rows as the kernel reads them: x at [0, n), the queue at [n_pad, n_pad + k),
    each padded with zero rows to PART_BLOCK and the features to the block width; the
    column terms -t ||z_j||^2 log2(e), -inf on padding rows."""

    def __init__(self, z, sq, n, k, t, d_pad, halves=False):
        self.n, self.k, self.d = n, k, z.shape[1]
        self.n_pad = triton.cdiv(n, PART_BLOCK) * PART_BLOCK
        self.k_pad = triton.cdiv(k, PART_BLOCK) * PART_BLOCK
        rows = self.n_pad + self.k_pad
        self.z = z.new_zeros((rows, d_pad))
        self.z[:n, :self.d] = z[:n]
        self.z[self.n_pad:self.n_pad + k, :self.d] = z[n:]
        # 3xTF32 from prepared halves (split_operands: the same for the loss and the
        # gradient kernels, whose 3xTF32 caps are one): the high halves where the rows
        # were, the low ones lo_rows further.
        self.lo_rows = rows if halves else 0
        if halves:
            self.z = tf32_halves(self.z)
        self.colterm = torch.full((rows,), float("-inf"), dtype=sq.dtype, device=z.device)
        col = (sq.double() * (-t * LOG2E)).to(sq.dtype)
        self.colterm[:n] = col[:n]
        self.colterm[self.n_pad:self.n_pad + k] = col[n:]


def _ranges(st, queue_rows, intra_batch, parts, block_m, block_n):
    """Per row block the column ranges [x low, x high, queue] and the diagonal flag
    (int32 [blocks, 8] on the device, and its row stride: 0 when every block has the same),
    and (span_lo, span_hi, x_end): the columns the column split divides."""
    x_end = triton.cdiv(st.n, block_n) * block_n
    q_end = st.n_pad + triton.cdiv(st.k, block_n) * block_n
    if queue_rows:
        span = (0, x_end)
    else:
        span = (0 if intra_batch else st.n_pad, q_end if st.k else x_end)
    part_lo, part_hi, tri, x_blocks, q_blocks = parts
    dev = st.z.device
    if part_hi < 0:  # one part: the same ranges for every block
        if queue_rows:
            row = [0, x_end, 0, 0, 0, 0, 0, 0]
        else:
            row = [0, x_end if intra_batch else 0, 0, 0, st.n_pad, q_end if st.k else st.n_pad,
                   int(intra_batch), 0]
        return torch.tensor([row], dtype=torch.int32, device=dev), 0, span, x_end
    n_rows = st.k if queue_rows else st.n
    r0 = torch.arange(triton.cdiv(n_rows, block_m), dtype=torch.int64) * block_m
    out = torch.zeros((r0.numel(), _RANGE_FIELDS), dtype=torch.int64)
    P = PART_BLOCK

    def clip(a, lo, hi):
        return a.clamp(min=lo).clamp(max=hi)

    if queue_rows:
        qb = r0 // P
        # tile(cb) = tri + cb * Q + qb: increasing in cb.
        first = clip(-((-(part_lo - tri - qb)) // q_blocks), 0, x_blocks)
        last = clip(-((-(part_hi - tri - qb)) // q_blocks), 0, x_blocks)
        out[:, 0], out[:, 1] = first * P, torch.minimum(last * P, torch.tensor(x_end))
    else:
        rb = r0 // P
        if intra_batch:
            c = torch.arange(x_blocks, dtype=torch.int64)
            f = c * x_blocks - c * (c - 1) // 2 - c  # tile(cb, rb) = f(cb) + rb for cb < rb
            lo = torch.minimum(torch.searchsorted(f, part_lo - rb), rb)
            hi = torch.minimum(torch.searchsorted(f, part_hi - rb), rb)
            out[:, 0], out[:, 1] = lo * P, torch.maximum(hi, lo) * P
            base = rb * x_blocks - rb * (rb - 1) // 2  # tile(rb, cb) = base + cb - rb for cb >= rb
            lo = rb + clip(part_lo - base, 0, x_blocks).minimum(x_blocks - rb)
            hi = rb + clip(part_hi - base, 0, x_blocks).minimum(x_blocks - rb)
            out[:, 2], out[:, 3] = lo * P, torch.minimum(torch.maximum(hi, lo) * P, torch.tensor(x_end))
            out[:, 6] = ((base >= part_lo) & (base < part_hi)).long()
        if st.k:
            base = tri + rb * q_blocks  # tile(rb, qb) = base + qb
            lo = clip(part_lo - base, 0, q_blocks)
            hi = clip(part_hi - base, 0, q_blocks)
            out[:, 4] = st.n_pad + lo * P
            out[:, 5] = torch.minimum(st.n_pad + torch.maximum(hi, lo) * P, torch.tensor(q_end))
    return out.to(torch.int32).to(dev), _RANGE_FIELDS, span, x_end


def _row_pass(st, queue_rows, intra_batch, t, with_grad, parts, gram_precision, grad_precision, static_shift,
              col_splits=None):
    """Runs the kernel for x's rows (or the queue's, against x's columns) and merges the
    column splits: per row (m, l, lw, a) in natural-log units, a None without gradient."""
    z = st.z
    acc_t = st.colterm.dtype
    cfg = flash_config(operand_format(z.dtype, gram_precision), st.d, with_grad, device_arch(z.device), static_shift)
    block_m, block_n, block_d = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_D"]
    n_rows = st.k if queue_rows else st.n
    row_blocks = triton.cdiv(n_rows, block_m)
    ranges, ranges_stride, (span_lo, span_hi), x_end = _ranges(st, queue_rows, intra_batch, parts, block_m, block_n)
    col_splits, cols_per_split = split_columns(n_rows, span_hi - span_lo, block_m, block_n, z.device, col_splits)
    d_pad = z.shape[1]
    d_chunks = d_pad // block_d if with_grad else 1

    rows_out = row_blocks * block_m
    m = torch.empty((col_splits, rows_out), dtype=acc_t, device=z.device)
    l = torch.empty_like(m)
    lw = torch.empty_like(m)
    acc = torch.empty((col_splits, rows_out, d_pad) if with_grad else (1,), dtype=acc_t, device=z.device)
    _uniform_rows_kernel[(row_blocks, col_splits, d_chunks)](
        TensorDescriptor.from_tensor(z, [block_m, block_d]), TensorDescriptor.from_tensor(z, [block_n, block_d]), z,
        st.colterm, torch.full((1,), 2.0 * t * LOG2E, dtype=acc_t, device=z.device), ranges, m, l, lw, acc,
        st.n_pad if queue_rows else 0, rows_out, span_lo, span_hi, cols_per_split, x_end, d_pad, ranges_stride,
        st.lo_rows,
        WITH_GRAD=with_grad, STATIC_SHIFT=static_shift,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, ONE_CHUNK=cfg["ONE_CHUNK"],
        GRAM_PRECISION=gram_precision, GRAD_PRECISION=grad_precision,
        # The interpreter's 16-bit tl.dot is wrong (Triton 3.9): widen (exactly) there.
        WIDEN_OPERANDS=triton.knobs.runtime.interpret and z.dtype in (torch.bfloat16, torch.float16),
        USE_DESC=cfg["USE_DESC"], SPLIT_OPERANDS=cfg["SPLIT_OPERANDS"], num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"],
    )
    m = m[:, :n_rows] * math.log(2.0)  # base 2 -> natural (0 and -inf stay)
    acc = acc[:, :n_rows, :st.d] if with_grad else None
    return merge_splits(m, (l[:, :n_rows], lw[:, :n_rows]), acc)


def _part_bounds(n, k, intra_batch, part, num_parts):
    """(lo, hi, triangle tiles, x blocks, queue blocks) of this part's tile range;
    hi = -1 when there is one part (no ranges to cut)."""
    x_blocks = triton.cdiv(n, PART_BLOCK)
    q_blocks = triton.cdiv(k, PART_BLOCK)
    tri = x_blocks * (x_blocks + 1) // 2 if intra_batch else 0
    if num_parts == 1:
        return 0, -1, tri, x_blocks, q_blocks
    total = tri + x_blocks * q_blocks
    if not part_index_fits(total, x_blocks):
        raise ValueError(f"uniform_loss: num_parts > 1 on the Triton kernels needs the {PART_BLOCK}-row tile "
                         f"index to fit int32, got {total} tiles (N = {n}, K = {k})")
    return total * part // num_parts, total * (part + 1) // num_parts, tri, x_blocks, q_blocks


def static_shift_certified(t: float, max_sq: float, acc_t: torch.dtype) -> bool:
    """Whether the static shift is exact and safe: every exponent -t ||z_i - z_j||^2 lies
    in [-4 t max|z|^2, 0], above the float format's underflow (STATIC_SHIFT_BOUND)."""
    return 4.0 * t * max_sq <= STATIC_SHIFT_BOUND[acc_t]


def _row_gradient(m, l, a, z_rows, lse, t):
    coef = torch.where(torch.isfinite(lse), -2.0 * t * torch.exp(m.double() - lse), torch.zeros_like(lse))
    return coef.to(l.dtype)[:, None] * (l[:, None] * z_rows.to(l.dtype) - a)


def uniform_lse(x, queue, t, intra_batch, part, num_parts, grad_x, grad_queue, *, col_splits=None):
    """`torch.ops.pyhypersphere.uniform_lse` on Triton: same arguments, same results.

    `col_splits` (tests only) forces how many programs share a row block's columns.
    """
    torch.ops.pyhypersphere_checks.uniform_lse(x, queue, t, intra_batch, part, num_parts, grad_queue)
    acc_t = torch.float64 if x.dtype == torch.float64 else torch.float32
    n = x.shape[0]
    k = 0 if queue is None else queue.shape[0]
    # No device-to-host read while a CUDA graph is being captured (as the CUDA glue).
    host_read = not (x.is_cuda and torch.cuda.is_current_stream_capturing())
    planned = _plan_operands(x, queue, t, intra_batch, host_read)
    if planned is None:
        nan = float("nan")
        return (torch.full((), nan, dtype=torch.float64, device=x.device),
                torch.full(x.shape, nan, dtype=acc_t, device=x.device) if grad_x else x.new_empty((0,), dtype=acc_t),
                torch.full(queue.shape, nan, dtype=acc_t, device=x.device) if grad_queue else x.new_empty((0,), dtype=acc_t))
    z, sq, gram_p, grad_p, finite_dev = planned
    parts = _part_bounds(n, k, intra_batch, part, num_parts)
    # Certifying the static shift reads max |z|^2 on the host; under CUDA-graph capture
    # (no host read) the online max is always right.
    static = host_read and static_shift_certified(t, float(sq.max()), acc_t)
    fmt, arch = operand_format(z.dtype, gram_p), device_arch(x.device)
    st = _Stacked(z, sq, n, k, t, padded_width(fmt, z.shape[1], arch, static),
                  split_operands(fmt, z.shape[1], arch, static, True))
    m, l, lw, a = _row_pass(st, False, intra_batch, t, grad_x, parts, gram_p, grad_p, static, col_splits)
    terms = m.double() + torch.log(lw.double())
    lse = torch.logsumexp(terms, 0)

    gx = x.new_empty((0,), dtype=acc_t)
    gq = x.new_empty((0,), dtype=acc_t)
    if grad_x:
        gx = _row_gradient(m, l, a, z[:n], lse, t).to(acc_t)
    if grad_queue:
        mq, lq, _, aq = _row_pass(st, True, intra_batch, t, True, parts, gram_p, grad_p, static, col_splits)
        gq = _row_gradient(mq, lq, aq, z[n:], lse, t).to(acc_t)
    # lse in float64: the loss lse - log |P| is formed from it without losing its digits.
    outputs = (lse, gx, gq)
    if finite_dev is not None:  # a device-side select: NaN outputs for non-finite inputs
        outputs = tuple(torch.where(finite_dev, v, float("nan")) if v.numel() else v for v in outputs)
    return outputs
