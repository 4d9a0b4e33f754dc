"""Triton kernel and launcher for `align_loss` (contract: csrc/ops.h).

One program per block of rows: the squared distance ||x_i - y_i||^2 over chunks of the
feature dimension, the row's term ||x_i - y_i||^alpha and, with a gradient,
alpha ||x_i - y_i||^(alpha - 2) (x_i - y_i) / N (0 where x_i == y_i).  The terms are
summed afterwards in a fixed order, in float64 as the CPU kernel does.
"""

import torch
import triton
import triton.language as tl

from .. import _C  # noqa: F401  (loads the operators and their checks, torch.ops.pyhypersphere_checks)


@triton.jit
def _align_rows_kernel(
    x_ptr, y_ptr, term_ptr, grad_ptr, n, d, stride_x, stride_y, scalars_ptr,
    WITH_GRAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    acc_t = term_ptr.dtype.element_ty
    # (alpha, 1 / n) through a pointer: Python float arguments would be float32.
    alpha = tl.load(scalars_ptr)
    inv_n = tl.load(scalars_ptr + 1)
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    row_ok = rows < n
    offs_d = tl.arange(0, BLOCK_D)
    sq = tl.zeros([BLOCK_M], acc_t)
    for k0 in range(0, d, BLOCK_D):
        cols = k0 + offs_d
        mask = row_ok[:, None] & (cols[None, :] < d)
        xv = tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(acc_t)
        yv = tl.load(y_ptr + rows[:, None] * stride_y + cols[None, :], mask=mask, other=0.0).to(acc_t)
        diff = xv - yv
        sq += tl.sum(diff * diff, 1)
    # At x_i == y_i the term and (by convention, csrc/ops.h) the gradient are 0; != rather
    # than > so that a NaN distance stays NaN (the contract: NaN inputs give NaN).
    moved = sq != 0
    log_norm = 0.5 * tl.log(tl.where(moved, sq, 1.0))
    tl.store(term_ptr + rows, tl.where(moved, tl.exp(alpha * log_norm), 0.0), mask=row_ok)
    if WITH_GRAD:
        coef = tl.where(moved, alpha * tl.exp((alpha - 2.0) * log_norm) * inv_n, 0.0)
        for k0 in range(0, d, BLOCK_D):
            cols = k0 + offs_d
            mask = row_ok[:, None] & (cols[None, :] < d)
            xv = tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(acc_t)
            yv = tl.load(y_ptr + rows[:, None] * stride_y + cols[None, :], mask=mask, other=0.0).to(acc_t)
            g = coef[:, None] * (xv - yv)
            tl.store(grad_ptr + rows[:, None] * d + cols[None, :], g.to(grad_ptr.dtype.element_ty), mask=mask)


def align_config(d: int) -> dict:
    """The block configuration the launcher picks (also what compile_check compiles)."""
    # Memory-bound: a single stage (no software pipelining) keeps registers low.
    return {"BLOCK_M": 16, "BLOCK_D": min(128, max(16, triton.next_power_of_2(d))), "num_warps": 4, "num_stages": 1}


def align_loss(x, y, alpha, compute_grad):
    """`torch.ops.pyhypersphere.align_loss` on Triton: same arguments, same results."""
    torch.ops.pyhypersphere_checks.align_loss(x, y, alpha)
    x = x.contiguous()
    y = y.contiguous()
    n, d = x.shape
    acc_t = torch.float64 if x.dtype == torch.float64 else torch.float32
    cfg = align_config(d)
    terms = torch.empty(n, dtype=acc_t, device=x.device)
    grad = torch.empty_like(x) if compute_grad else x.new_empty((0,))
    _align_rows_kernel[(triton.cdiv(n, cfg["BLOCK_M"]),)](
        x, y, terms, grad, n, d, x.stride(0), y.stride(0), torch.tensor([alpha, 1.0 / n], dtype=acc_t, device=x.device),
        WITH_GRAD=compute_grad, BLOCK_M=cfg["BLOCK_M"], BLOCK_D=cfg["BLOCK_D"],
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return (terms.double().sum() / n).to(x.dtype), grad
