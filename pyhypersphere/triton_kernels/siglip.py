"""Triton kernel and launcher for `siglip` (contract: csrc/ops.h).

One kernel, two roles, both flash-style row blocks: a program owns BLOCK_M rows R_i and
sweeps every partner column C_j, the logits l_ij = t <R_i, C_j> + b computed tile by tile
and never stored.  Each pair's loss term softplus(-z l) and weight w = coef * d/dl of it
depend on that logit only (no log-sum-exp), so one sweep gives everything of its side:
- rows x against columns y: the rows' losses, t sum_j w_ij y_j (d/dx) and the program's
  sums of w <x_i, y_j> and w (d/dt, d/db), coef indexed by the row;
- rows y against columns x: t sum_i w_ij x_i (d/dy), coef indexed by the column.
A logit is thus computed once per side (two sweeps with grad_y, one without), which buys
determinism without atomics, as in contrastive.py.  A third grid axis splits a wide
feature dimension: each program then recomputes the logits over all of d and accumulates
its BLOCK_D columns of the gradient.

Precision as the contrastive kernels (contrastive._precision): float64 in float64; float32
with TF32 products when torch allows TF32 for float32 matmuls, else 3xTF32; 16-bit inputs
on 16-bit tensor cores with float32 accumulation, the gradient's weights rounded to the
16-bit format.
"""

import torch
import triton
import triton.language as tl

from .. import _C  # the operator's argument checks
from .contrastive import _precision
from .tiles import check_device


@triton.jit
def _siglip_kernel(
    r_ptr, c_ptr, coef_ptr, tb_ptr, grad_ptr, loss_ptr, partial_ptr,
    n_rows, n_cols, d, stride_r, stride_c,
    ROWS_ARE_X: tl.constexpr, WANT_GRAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, PRECISION: tl.constexpr, WIDEN_OPERANDS: tl.constexpr,
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
    if ROWS_ARE_X:
        row_coef = tl.load(coef_ptr + rows, mask=row_ok, other=0.0)
    mine = chunk * BLOCK_D + offs_d  # this program's gradient columns
    for c0 in range(0, n_cols, BLOCK_N):
        cols = (c0 + tl.arange(0, BLOCK_N)).to(tl.int64)
        col_ok = cols < n_cols
        gram = tl.zeros([BLOCK_M, BLOCK_N], acc_t)
        for k0 in range(0, d, BLOCK_D):
            dk = k0 + offs_d
            r_k = tl.load(r_ptr + rows[:, None] * stride_r + dk[None, :], mask=row_ok[:, None] & (dk[None, :] < d),
                          other=0.0)
            c_k = tl.load(c_ptr + cols[:, None] * stride_c + dk[None, :], mask=col_ok[:, None] & (dk[None, :] < d),
                          other=0.0)
            if WIDEN_OPERANDS:
                r_k = r_k.to(acc_t)
                c_k = c_k.to(acc_t)
            gram += tl.dot(r_k, tl.trans(c_k), input_precision=PRECISION, out_dtype=acc_t)
        pair = row_ok[:, None] & col_ok[None, :]
        positive = rows[:, None] == cols[None, :]
        logit = t * gram + b
        u = tl.where(positive, -logit, logit)  # u = -z l
        e = tl.exp(-tl.abs(u))
        # log1p(e): its series where 1 + e would round the term away
        log1p_e = tl.where(e < 1e-4, e * (1.0 - e * (0.5 - e / 3.0)), tl.log(1.0 + e))
        term = tl.where(u > 0, u, 0.0) + log1p_e
        sigmoid = tl.where(u >= 0, 1.0, e) / (1.0 + e)
        dl = tl.where(positive, -sigmoid, sigmoid)
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


def _config(dtype: torch.dtype, d: int) -> dict:
    """Block sizes: 16-bit rows in chunks of up to 128 features, float32 and float64 in
    chunks of 32 (wider chunks spill on sm_80 and sm_90: compile_check); past one chunk the
    gradient is split over programs of BLOCK_D columns each."""
    wide = dtype in (torch.float32, torch.float64)
    block_d = min(max(16, triton.next_power_of_2(d)), 32 if wide else 128)
    block_m = 32 if wide or block_d > 64 else 64
    # float32 at 4 warps spills the loss-only sweep on sm_80 (48 bytes)
    warps = 8 if dtype == torch.float32 or block_d > 64 else 4
    return {"BLOCK_M": block_m, "BLOCK_N": 32, "BLOCK_D": block_d, "num_warps": warps, "num_stages": 3}


def _sweep(rows, cols, coef, tb, rows_are_x: bool, want_grad: bool, acc_t):
    """One role of the kernel: (gradient rows or None, row losses, per-program (t, b) sums)."""
    n, d = rows.shape
    cfg = _config(rows.dtype, d)
    blocks = triton.cdiv(n, cfg["BLOCK_M"])
    chunks = triton.cdiv(d, cfg["BLOCK_D"]) if want_grad else 1
    grad = torch.empty((n, d) if want_grad else (1,), dtype=acc_t, device=rows.device)
    loss = torch.empty((n,) if rows_are_x else (1,), dtype=acc_t, device=rows.device)
    partial = torch.empty((blocks, 2) if rows_are_x else (1,), dtype=acc_t, device=rows.device)
    _siglip_kernel[(blocks, chunks)](
        rows, cols, coef, tb, grad, loss, partial, n, cols.shape[0], d, rows.stride(0), cols.stride(0),
        ROWS_ARE_X=rows_are_x, WANT_GRAD=want_grad, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
        BLOCK_D=cfg["BLOCK_D"], PRECISION=_precision(rows.dtype),
        # The interpreter's 16-bit tl.dot is wrong (Triton 3.9): widen (exactly) there.
        WIDEN_OPERANDS=triton.knobs.runtime.interpret and rows.dtype in (torch.bfloat16, torch.float16),
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return (grad if want_grad else None), loss, partial


def siglip(x, y, t, b, coef, grad_x, grad_y, grad_tb):
    """`torch.ops.pyhypersphere.siglip` on Triton: same arguments, same results."""
    _C._check_siglip_args(x, y, t, b, coef)
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
