"""Triton kernels and launchers for `supcon_lse` and `supcon_lse_backward` (contract:
csrc/ops.h).

Flash-style row blocks: a program owns BLOCK_M anchors and sweeps the partner columns in
BLOCK_N tiles, the logits s_ia = scale <x_i, x_a> computed tile by tile and never stored,
the labels compared inside the tile (no mask in memory).  No program waits for another;
no atomics.
- `_supcon_forward_kernel`: per anchor the running (max, sum) of exp(s_ia) over a != i,
  the sum of the positive logits and their number, in one sweep.
- `_supcon_backward_kernel`: per anchor scale * sum_a M_ia x_a with the symmetric weights
  M_ia = g_i e^(s_ia - lse_i) + g_a e^(s_ia - lse_a) + [label_a == label_i] (h_i + h_a),
  a second sweep (the weights need every row's final lse).  A symmetric logit is computed
  once per side, which buys determinism without ordering programs.
Parts (num_parts > 1) are contiguous slices of the partner columns: the slices' lse
combine by log-sum-exp, sums, counts and gradients add (what the contract promises; the
CPU kernel slices its tile schedule instead).  The feature dimension is one BLOCK_D chunk
(next power of two of d).  Precision as the contrastive kernels': float64 exact, float32
with TF32 products when torch allows them for float32 matmuls, else 3xTF32.

Work per pair (compile_check, loop_gate.MIN_WORK["supcon_*"]): forward 1 GEMM per tile and
one exp (online max), backward 2 GEMMs and two exps (one per side: no certified static
shift), as NT-Xent's passes without the shift; the per-pair masks (pair, diagonal, label
match, int64 count) keep both loops far above the gate's non-mma budget (report only).
"""

import torch
import triton
import triton.language as tl

from .. import _C  # noqa: F401  (loads the operators and their checks, torch.ops.pyhypersphere_checks)
from .._matmul_precision import cuda_matmul_allows_tf32
from .tiles import check_device


@triton.jit
def _tile_logits(x_ptr, labels_ptr, rows, row_ok, x_i, c0, col_hi, d, stride_x, scale,
                 BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
    """(the tile's logits, which entries are pairs a != i, its columns, their labels and rows)."""
    cols = (c0 + tl.arange(0, BLOCK_N)).to(tl.int64)
    col_ok = cols < col_hi
    offs_d = tl.arange(0, BLOCK_D)
    x_j = tl.load(x_ptr + cols[:, None] * stride_x + offs_d[None, :], mask=col_ok[:, None] & (offs_d[None, :] < d),
                  other=0.0)
    s = tl.dot(x_i, tl.trans(x_j), input_precision=PRECISION) * scale
    pair = row_ok[:, None] & col_ok[None, :] & (rows[:, None] != cols[None, :])
    label_j = tl.load(labels_ptr + cols, mask=col_ok, other=0)
    return s, pair, cols, label_j, x_j


@triton.jit
def _supcon_forward_kernel(x_ptr, labels_ptr, lse_ptr, positive_ptr, count_ptr, scale_ptr, n, d, stride_x,
                           col_lo, col_hi, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                           PRECISION: tl.constexpr):
    acc_t = lse_ptr.dtype.element_ty
    scale = tl.load(scale_ptr)  # through a pointer: a Python float argument would be float32
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    row_ok = rows < n
    offs_d = tl.arange(0, BLOCK_D)
    x_i = tl.load(x_ptr + rows[:, None] * stride_x + offs_d[None, :], mask=row_ok[:, None] & (offs_d[None, :] < d),
                  other=0.0)
    label_i = tl.load(labels_ptr + rows, mask=row_ok, other=0)
    m = tl.full([BLOCK_M], float("-inf"), acc_t)
    l = tl.zeros([BLOCK_M], acc_t)
    positive = tl.zeros([BLOCK_M], acc_t)
    count = tl.zeros([BLOCK_M], tl.int64)
    for c0 in range(col_lo, col_hi, BLOCK_N):
        s, pair, cols, label_j, x_j = _tile_logits(x_ptr, labels_ptr, rows, row_ok, x_i, c0, col_hi, d, stride_x,
                                                   scale, BLOCK_N, BLOCK_D, PRECISION)
        s = s.to(acc_t)
        m_new = tl.maximum(m, tl.max(tl.where(pair, s, float("-inf")), 1))
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)  # no pair yet: nothing to rescale
        l = l * tl.exp(m - shift) + tl.sum(tl.where(pair, tl.exp(s - shift[:, None]), 0.0), 1)
        m = m_new
        same = pair & (label_i[:, None] == label_j[None, :])
        positive += tl.sum(tl.where(same, s, 0.0), 1)
        count += tl.sum(same.to(tl.int64), 1)
    lse = tl.where(l > 0, m + tl.log(tl.where(l > 0, l, 1.0)), float("-inf"))
    tl.store(lse_ptr + rows, lse, mask=row_ok)
    tl.store(positive_ptr + rows, positive, mask=row_ok)
    tl.store(count_ptr + rows, count, mask=row_ok)


@triton.jit
def _supcon_backward_kernel(x_ptr, labels_ptr, lse_ptr, g_ptr, h_ptr, grad_ptr, scale_ptr, n, d, stride_x,
                            col_lo, col_hi, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                            PRECISION: tl.constexpr):
    acc_t = grad_ptr.dtype.element_ty
    scale = tl.load(scale_ptr)
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    row_ok = rows < n
    offs_d = tl.arange(0, BLOCK_D)
    x_i = tl.load(x_ptr + rows[:, None] * stride_x + offs_d[None, :], mask=row_ok[:, None] & (offs_d[None, :] < d),
                  other=0.0)
    label_i = tl.load(labels_ptr + rows, mask=row_ok, other=0)
    lse_i = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    g_i = tl.load(g_ptr + rows, mask=row_ok, other=0.0)
    h_i = tl.load(h_ptr + rows, mask=row_ok, other=0.0)
    acc = tl.zeros([BLOCK_M, BLOCK_D], acc_t)
    for c0 in range(col_lo, col_hi, BLOCK_N):
        s, pair, cols, label_j, x_j = _tile_logits(x_ptr, labels_ptr, rows, row_ok, x_i, c0, col_hi, d, stride_x,
                                                   scale, BLOCK_N, BLOCK_D, PRECISION)
        s = s.to(acc_t)
        col_ok = cols < col_hi
        lse_j = tl.load(lse_ptr + cols, mask=col_ok, other=0.0)
        g_j = tl.load(g_ptr + cols, mask=col_ok, other=0.0)
        h_j = tl.load(h_ptr + cols, mask=col_ok, other=0.0)
        # Each exp's argument is <= 0 (an lse bounds its logits) wherever it is a pair.
        w = g_i[:, None] * tl.exp(tl.where(pair, s - lse_i[:, None], float("-inf")))
        w += g_j[None, :] * tl.exp(tl.where(pair, s - lse_j[None, :], float("-inf")))
        w += tl.where(pair & (label_i[:, None] == label_j[None, :]), h_i[:, None] + h_j[None, :], 0.0)
        acc += tl.dot(w.to(x_j.dtype), x_j, input_precision=PRECISION).to(acc_t)
    tl.store(grad_ptr + rows[:, None] * d + offs_d[None, :], acc * scale,
             mask=row_ok[:, None] & (offs_d[None, :] < d))


def _config_for(dtype: torch.dtype, d: int, precision: str) -> dict:
    """Block sizes and launch options for a (widened) operand dtype, width and product
    precision: what the launchers pick and compile_check compiles."""
    block_d = max(16, triton.next_power_of_2(d))
    if precision == "tf32x3":
        # The operands' TF32 halves of a 64 x 64 tile spill (compile_check, sm_80 and sm_90).
        return {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_D": block_d, "PRECISION": precision, "num_warps": 4,
                "num_stages": 2}
    # One chunk of features: wider rows take smaller tiles (at 64 x 64 from d = 256 the
    # tiles spill and pass the shared memory limit).  3xTF32 past d = 128 and the gradient
    # at d = 512 still spill (compile_check's full matrix): that needs feature chunks.
    if block_d >= 512 or (block_d >= 256 and dtype == torch.float64):
        block, stages = 16, 2
    elif block_d >= 256:
        block, stages = 32, 2
    else:
        block, stages = (32 if dtype == torch.float64 else 64), 3
    return {"BLOCK_M": block, "BLOCK_N": block, "BLOCK_D": block_d, "PRECISION": precision, "num_warps": 4,
            "num_stages": stages}


def _config(x: torch.Tensor) -> dict:
    wide = x.dtype == torch.float64
    precision = "ieee" if wide else ("tf32" if cuda_matmul_allows_tf32() else "tf32x3")
    return _config_for(x.dtype, x.shape[1], precision)


def _columns(n: int, part: int, num_parts: int) -> tuple:
    return n * part // num_parts, n * (part + 1) // num_parts


def supcon_lse(x, labels, scale, part=0, num_parts=1):
    """`torch.ops.pyhypersphere.supcon_lse` on Triton: same arguments, same results."""
    torch.ops.pyhypersphere_checks.supcon_lse(x, labels, scale, part, num_parts)
    check_device(x.device, "supcon_lse")
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    z = x.to(acc).contiguous()
    n, d = z.shape
    lse = torch.empty(n, dtype=acc, device=x.device)
    positive = torch.empty(n, dtype=acc, device=x.device)
    count = torch.empty(n, dtype=torch.int64, device=x.device)
    cfg = _config(z)
    lo, hi = _columns(n, part, num_parts)
    _supcon_forward_kernel[(triton.cdiv(n, cfg["BLOCK_M"]),)](
        z, labels.contiguous(), lse, positive, count, torch.tensor([scale], dtype=acc, device=x.device), n, d,
        z.stride(0), lo, hi, **cfg,
    )
    if not torch.isfinite(z).all():  # as the CPU kernel: NaN values, the counts still exact
        lse.fill_(float("nan"))
        positive.fill_(float("nan"))
    return lse, positive, count


def supcon_lse_backward(x, labels, scale, lse, grad_lse, grad_positive, part=0, num_parts=1):
    """`torch.ops.pyhypersphere.supcon_lse_backward` on Triton: same arguments, same results."""
    torch.ops.pyhypersphere_checks.supcon_lse_backward(x, labels, scale, lse, grad_lse, grad_positive, part, num_parts)
    check_device(x.device, "supcon_lse_backward")
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    z = x.to(acc).contiguous()
    n, d = z.shape
    vectors = [t.to(acc).contiguous() for t in (lse, grad_lse, grad_positive)]
    grad = torch.empty(n, d, dtype=acc, device=x.device)
    cfg = _config(z)
    lo, hi = _columns(n, part, num_parts)
    _supcon_backward_kernel[(triton.cdiv(n, cfg["BLOCK_M"]),)](
        z, labels.contiguous(), *vectors, grad, torch.tensor([scale], dtype=acc, device=x.device), n, d, z.stride(0),
        lo, hi, **cfg,
    )
    bad_lse = torch.isnan(vectors[0]).any() | torch.isposinf(vectors[0]).any()
    if not torch.isfinite(z).all() or bad_lse:
        grad.fill_(float("nan"))
    return grad
