"""Triton kernel and launcher for `uniform_lse` (contract: csrc/ops.h).

Flash-style row blocks: each program owns BLOCK_M rows of the stacked, prepared rows z
and sweeps a contiguous range of their partner columns with an online max, keeping per
row the shifted weight sum l_i = sum_j exp(e_ij - m_i), the lse-weighted sum (an x-x
pair is seen from both of its rows, so it counts 1/2 there) and, with a gradient,
a_i = sum_j exp(e_ij - m_i) z_j.  No program waits for another and there are no atomics.
When there are too few row blocks to fill the GPU (queue shapes), the columns are split
over several programs and their (m, l, a) partials are merged afterwards in a fixed
order, so the result is bitwise reproducible.  The gradient with respect to the queue
is its own pass: queue rows against x's rows.

d lse / d z_i = -2t / S * sum_j w_ij (z_i - z_j) = -2t exp(m_i - lse) (l_i z_i - a_i).

Precision (docs/triton.md): the rows and the policy come from the C++ plan_uniform_rows
(centering, float64 for far-spread float32 rows, TF32 only when it resolves the
distances).  bf16/fp16 inputs are multiplied as they are (exact products, float32
accumulation) with norms from exactly those values when the raw rows pass the float32
budget, and otherwise as float32 centered rows.  The gradient's product P Z_j takes the
weights in the 16-bit format (flash-attention style).
"""

import torch
import triton
import triton.language as tl

from .. import _C
from .._matmul_precision import cuda_matmul_allows_tf32
from .splits import merge_splits, split_columns
from .tiles import logit_tile, part_index_fits, row_block

# Rows per part-slicing block: `part`/`num_parts` cut the pair set into tiles of
# PART_BLOCK x PART_BLOCK rows (upper triangle of x, then x by queue) and keep a
# contiguous, balanced range of them; each pair is in exactly one part.
PART_BLOCK = 64


@triton.jit
def _uniform_rows_kernel(
    z_ptr, sq_ptr, m_ptr, l_ptr, lw_ptr, acc_ptr,
    row_start, n_rows, col_start, col_end, cols_per_split,
    n_x, d, stride_z, neg_t_ptr,
    part_lo, part_hi, part_tri, x_part_blocks, q_part_blocks,
    WITH_GRAD: tl.constexpr, HAS_PARTS: tl.constexpr, PART_ROWS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    ONE_CHUNK: tl.constexpr, GRAM_PRECISION: tl.constexpr, GRAD_PRECISION: tl.constexpr,
    WIDEN_OPERANDS: tl.constexpr,
):
    split = tl.program_id(1)
    d_chunk = tl.program_id(2)  # the slice of a_i this program accumulates (d > BLOCK_D)
    acc_t = sq_ptr.dtype.element_ty
    neg_t = tl.load(neg_t_ptr)  # a pointer: a Python float argument would be float32

    local, row_ok, rows, z_i = row_block(z_ptr, row_start, n_rows, d, stride_z, ONE_CHUNK, BLOCK_M, BLOCK_D,
                                         WIDEN_OPERANDS, acc_t)
    chunk_d = d_chunk * BLOCK_D + tl.arange(0, BLOCK_D)
    sq_i = tl.load(sq_ptr + rows, mask=row_ok, other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), acc_t)
    l_i = tl.zeros([BLOCK_M], acc_t)
    lw_i = tl.zeros([BLOCK_M], acc_t)
    a_i = tl.zeros([BLOCK_M, BLOCK_D], acc_t)

    c_lo = col_start + split * cols_per_split
    c_hi = tl.minimum(col_end, c_lo + cols_per_split)
    for c0 in range(c_lo, c_hi, BLOCK_N):
        cols = (c0 + tl.arange(0, BLOCK_N)).to(tl.int64)
        col_ok = cols < c_hi
        gram, z_j = logit_tile(z_ptr, z_ptr, rows, cols, row_ok, col_ok, z_i, d, stride_z, stride_z, ONE_CHUNK,
                               BLOCK_M, BLOCK_N, BLOCK_D, GRAM_PRECISION, WIDEN_OPERANDS, acc_t)
        sq_j = tl.load(sq_ptr + cols, mask=col_ok, other=0.0)
        dist2 = tl.maximum(sq_i[:, None] + sq_j[None, :] - 2.0 * gram, 0.0)
        expo = dist2 * neg_t

        # Pairs: x-x (i != j, only when the columns include x's rows, i.e. intra_batch)
        # and x-queue; the queue pass has queue rows and x columns only.
        ok = row_ok[:, None] & col_ok[None, :] & (rows[:, None] != cols[None, :])
        both_x = (rows[:, None] < n_x) & (cols[None, :] < n_x)
        if HAS_PARTS:
            # The pair's tile (see _part_bounds) from per-row and per-column block
            # indices; int32 per element (the launcher checks the tile count fits).
            rb = (rows // PART_ROWS).to(tl.int32)
            cb = (cols // PART_ROWS).to(tl.int32)
            lo_b = tl.minimum(rb[:, None], cb[None, :])
            hi_b = tl.maximum(rb[:, None], cb[None, :])
            tri = lo_b * x_part_blocks - (lo_b * (lo_b - 1)) // 2 + hi_b - lo_b
            # x-queue pairs: the x row has the smaller index; the queue row's block is the
            # larger of the two (the x row's is negative).
            rq = ((rows - n_x) // PART_ROWS).to(tl.int32)
            cq = ((cols - n_x) // PART_ROWS).to(tl.int32)
            rect = part_tri + lo_b * q_part_blocks + tl.maximum(rq[:, None], cq[None, :])
            tile = tl.where(both_x, tri, rect)
            ok = ok & (tile >= part_lo) & (tile < part_hi)
        expo = tl.where(ok, expo, float("-inf"))

        m_new = tl.maximum(m_i, tl.max(expo, 1))
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        scale = tl.exp(m_i - shift)
        p = tl.exp(expo - shift[:, None])
        l_i = l_i * scale + tl.sum(p, 1)
        lw_i = lw_i * scale + tl.sum(tl.where(both_x, 0.5 * p, p), 1)
        if WITH_GRAD:
            if ONE_CHUNK:
                z_c = z_j
            else:
                z_c = tl.load(z_ptr + cols[:, None] * stride_z + chunk_d[None, :],
                              mask=col_ok[:, None] & (chunk_d[None, :] < d), other=0.0)
            if z_ptr.dtype.element_ty == acc_t:
                a_i = a_i * scale[:, None] + tl.dot(p, z_c, input_precision=GRAD_PRECISION)
            else:
                # 16-bit operands: the weights in the operands' format (as flash attention
                # does; relative 2^-9 for bf16, the gradient's own output rounding).
                p_op = p.to(z_ptr.dtype.element_ty)
                if WIDEN_OPERANDS:
                    p_op = p_op.to(acc_t)
                    z_c = z_c.to(acc_t)
                a_i = a_i * scale[:, None] + tl.dot(p_op, z_c, input_precision=GRAD_PRECISION, out_dtype=acc_t)
        m_i = m_new

    out = split.to(tl.int64) * n_rows + local
    if d_chunk == 0:
        tl.store(m_ptr + out, m_i, mask=row_ok)
        tl.store(l_ptr + out, l_i, mask=row_ok)
        tl.store(lw_ptr + out, lw_i, mask=row_ok)
    if WITH_GRAD:
        tl.store(acc_ptr + out[:, None] * d + chunk_d[None, :], a_i,
                 mask=row_ok[:, None] & (chunk_d[None, :] < d))


# ---------------------------------------------------------------- launcher


def uniform_config(operand_dtype: torch.dtype, d: int, precision: str, has_parts: bool) -> dict:
    """The block configuration the launcher picks for operands of this dtype, Gram
    precision, width and part mask (also what compile_check compiles).  The caps keep the
    row block's accumulator [BLOCK_M, BLOCK_D] and the part mask's integer tiles in
    registers without spills (compile_check)."""
    wide = operand_dtype == torch.float64
    split = precision == "tf32x3"  # three products on hi/lo halves: more registers
    cap = 64 if wide or split else 128
    chunked = d > cap
    # Past the cap the Gram loops over 64-wide chunks (32 for 3xTF32), one stage, and the
    # gradient's accumulator is cut into slices that wide over the grid's third axis.
    block_d = (32 if split else 64) if chunked else max(16, triton.next_power_of_2(d))
    warps = 8 if block_d >= 128 or chunked else 4
    if wide or split:
        block_m, block_n = 32, 32
    else:
        # The part mask at full width needs the registers of half a row block.
        block_m, block_n = (32 if chunked or (has_parts and block_d >= 128) else 64), 64
    return {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_D": block_d, "num_warps": warps,
            "num_stages": 1 if chunked else 2}


def _plan_operands(x, queue, t, intra_batch, host_read):
    """(z, sq_norm, gram_precision, grad_precision, finite_on_device) or None for non-finite
    inputs.  Without a host read (CUDA-graph capture) the decision is blind and the outputs
    are masked with finite_on_device instead.

    The policy is the C++ one (plan_uniform_rows); here only the choice of operand format.
    """
    tf32 = cuda_matmul_allows_tf32()
    roundoff = _C.TF32_UNIT_ROUNDOFF if tf32 else _C.FLOAT32_UNIT_ROUNDOFF
    # The CUDA glue's options: for 16-bit inputs the policy first asks whether the raw
    # inputs can be the operands (exact products, float32 sums, budget on their norms).
    z, sq, finite, operand_ok, raw_ok, finite_dev = _C._plan_uniform_rows(
        x, queue, t, roundoff, raw_16bit_operands=True, host_read=host_read, intra_batch=intra_batch)
    if not finite:
        return None
    finite_dev = None if host_read else finite_dev
    if raw_ok:
        raw = (x if queue is None else torch.cat([x, queue], 0)).contiguous()
        # The norms of exactly the operands multiplied.
        return raw, raw.float().square().sum(1), "ieee", "ieee", finite_dev
    if z.dtype == torch.float64:
        return z, sq, "ieee", "ieee", finite_dev
    precision = "tf32" if tf32 and operand_ok else "tf32x3"
    return z, sq, precision, precision, finite_dev


def _row_pass(z, sq, row_start, n_rows, col_start, col_end, n_x, t, with_grad, parts,
              gram_precision, grad_precision, col_splits=None):
    """Runs the kernel for rows [row_start, +n_rows) against columns [col_start, col_end)
    and merges the column splits: per row (m, l, lw, a) with a None without gradient."""
    d = z.shape[1]
    acc_t = sq.dtype
    part_lo, part_hi, part_tri, x_blocks, q_blocks = parts
    cfg = uniform_config(z.dtype, d, gram_precision, part_hi >= 0)
    block_m, block_n, block_d = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_D"]
    row_blocks = triton.cdiv(n_rows, block_m)
    col_splits, cols_per_split = split_columns(n_rows, col_end - col_start, block_m, block_n, z.device, col_splits)
    d_chunks = triton.cdiv(d, block_d) if with_grad else 1

    m = torch.empty((col_splits, n_rows), dtype=acc_t, device=z.device)
    l = torch.empty_like(m)
    lw = torch.empty_like(m)
    acc = torch.empty((col_splits, n_rows, d) if with_grad else (1,), dtype=acc_t, device=z.device)
    part_lo, part_hi, part_tri, x_blocks, q_blocks = parts
    _uniform_rows_kernel[(row_blocks, col_splits, d_chunks)](
        z, sq, m, l, lw, acc,
        row_start, n_rows, col_start, col_end, cols_per_split,
        n_x, d, z.stride(0), torch.full((1,), -float(t), dtype=acc_t, device=z.device),
        part_lo, part_hi, part_tri, x_blocks, q_blocks,
        WITH_GRAD=with_grad, HAS_PARTS=part_hi >= 0, PART_ROWS=PART_BLOCK,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, ONE_CHUNK=d <= block_d,
        GRAM_PRECISION=gram_precision, GRAD_PRECISION=grad_precision,
        # The interpreter's 16-bit tl.dot is wrong (Triton 3.9): widen (exactly) there.
        WIDEN_OPERANDS=triton.knobs.runtime.interpret and z.dtype in (torch.bfloat16, torch.float16),
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return merge_splits(m, (l, lw), acc if with_grad else None)


def _part_bounds(n, k, intra_batch, part, num_parts):
    """(lo, hi, triangle tiles, x blocks, queue blocks) of this part's tile range;
    hi = -1 when there is one part (no mask)."""
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


def _row_gradient(m, l, a, z_rows, lse, t):
    coef = torch.where(torch.isfinite(lse), -2.0 * t * torch.exp(m.double() - lse), torch.zeros_like(lse))
    return coef.to(l.dtype)[:, None] * (l[:, None] * z_rows.to(l.dtype) - a)


def uniform_lse(x, queue, t, intra_batch, part, num_parts, grad_x, grad_queue, *, col_splits=None):
    """`torch.ops.pyhypersphere.uniform_lse` on Triton: same arguments, same results.

    `col_splits` (tests only) forces how many programs share a row block's columns.
    """
    _C._check_uniform_args(x, queue, t, intra_batch, part, num_parts, grad_queue)
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
    first_col = 0 if intra_batch else n
    m, l, lw, a = _row_pass(z, sq, 0, n, first_col, n + k, n, t, grad_x, parts, gram_p, grad_p, col_splits)
    terms = m.double() + torch.log(lw.double())
    lse = torch.logsumexp(terms, 0)

    gx = x.new_empty((0,), dtype=acc_t)
    gq = x.new_empty((0,), dtype=acc_t)
    if grad_x:
        gx = _row_gradient(m, l, a, z[:n], lse, t).to(acc_t)
    if grad_queue:
        mq, lq, _, aq = _row_pass(z, sq, n, k, 0, n, n, t, True, parts, gram_p, grad_p, col_splits)
        gq = _row_gradient(mq, lq, aq, z[n:], lse, t).to(acc_t)
    # lse in float64: the loss lse - log |P| is formed from it without losing its digits.
    outputs = (lse, gx, gq)
    if finite_dev is not None:  # a device-side select: NaN outputs for non-finite inputs
        outputs = tuple(torch.where(finite_dev, v, float("nan")) if v.numel() else v for v in outputs)
    return outputs
