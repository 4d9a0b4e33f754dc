"""Triton kernel and launcher for `siglip` (contract: csrc/ops.h).

One kernel, two roles, both flash-style row blocks: a program owns BLOCK_M rows R_i and
sweeps every partner column C_j, the logits l_ij = t <R_i, C_j> + b computed tile by tile
and never stored.  Each pair's loss term softplus(-z l) and weight w = coef * d/dl of it
depend on that logit only (no log-sum-exp), so one sweep gives everything of its side:
- rows x against columns y: the rows' losses, t sum_j w_ij y_j (d/dx) and the program's
  sums of w <x_i, y_j> and w (d/dt, d/db), coef indexed by the row;
- rows y against columns x: t sum_i w_ij x_i (d/dy), coef indexed by the column.
A logit is thus computed once per side (two sweeps with grad_y, one without), which buys
determinism without atomics, as in contrastive.py.  Up to ONE_CHUNK_MAX_D features the
row tile is loaded once and each column tile once per step, for S and for the gradient
product; the diagonal (z = +1) is a loop stage of its own and padding is handled by
per-column vectors.  Past it a third grid axis splits the feature dimension: each program
recomputes the logits over all of d and accumulates its BLOCK_D columns of the gradient.

Work per pair and sweep (compile_check, loop_gate.MIN_WORK["siglip_*"]): rows x with the
gradient issue 2 GEMMs per tile (S, W y), one exp (exp2) and one log (the loss's log1p)
per pair; rows y 2 GEMMs (S again, W^T x) and one exp.  A loss with both gradients thus
sweeps the pairs twice, 4 GEMMs and 2 exps per pair, where the algorithm's minimum is one
sweep with 3 GEMMs and 1 exp (the second side's product W^T x needs a cross-block
reduction: atomics or a second sweep).

Precision as the contrastive kernels (contrastive._precision): float64 in float64; float32
with TF32 products when torch allows TF32 for float32 matmuls, else 3xTF32; 16-bit inputs
on 16-bit tensor cores with float32 accumulation, the gradient's weights rounded to the
16-bit format.
"""

import torch
import triton
import triton.language as tl

from .. import _C  # noqa: F401  (loads the operators and their checks, torch.ops.pyhypersphere_checks)
from .contrastive import _precision
from .tiles import check_device
from .uniform import operand_format


LOG2E = tl.constexpr(1.4426950408889634)


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


# The widest feature dimension held in one chunk (the row tile loaded once, no
# recomputation of S), per product format; past it the chunked path.
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
