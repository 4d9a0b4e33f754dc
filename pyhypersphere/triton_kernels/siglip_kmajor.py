"""SigLIP's one pass (loss, d/dx, d/dy, the (t, b) sums) for float32 inputs with TF32
products (and 3xTF32) on sm_90: every wgmma operand K-major in shared memory.

A TF32 wgmma reads both operands from shared memory with the contracted index contiguous
(no transposed read, unlike 16-bit), so siglip._siglip_one_pass_kernel's third product
W^T (coef x_i), with W in registers, makes Triton transpose the float32 W through
registers (shuffles, spills).  Here the launcher passes transposed copies (coef x)^T and
y^T [d, N] (O(N d) once), and per column tile
    S      = x_i y_j^T                      x_i [BM, d], y_j [BN, d]: d contiguous
    acc_x += W y_j                          W [BM, BN] in registers, y_j^T [d, BN]
    gy_j^T = (coef x_i)^T W                 (coef x_i)^T [d, BM], W stored BM-contiguous
with gy_j^T added to a [d, N_y] buffer (TMA reduce-add on the GPU), transposed back by
the launcher.  W is GEMM 2's register operand (Triton converts its layout with shuffles)
and goes to shared memory once, BM-contiguous, for GEMM 3; nothing is transposed in
registers.  The pair terms and the masked stages are siglip_terms'.  3xTF32 (float32 accuracy,
torch's default) takes the same layout with the operands' TF32 halves prepared by the
launcher (uniform.tf32_halves) and W split in registers: three TF32 products per GEMM.
"""

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from .contrastive import _pad_rows
from .siglip_terms import LOG2E, _one_pass_stages, _tile_weights
from .tiles import triton_before_newest
from .uniform import _halves_logits, _halves_product, _tf32_high, tf32_halves


@triton.jit
def _add_cols(gyt_desc, gyt_ptr, c0, part, n_cols_pad, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
              REDUCE_DESC: tl.constexpr):
    """gy^T[:, c0:c0 + BLOCK_N] += part, atomically: one TMA reduce-add of the tile, or an
    atomic add per element (the interpreter has no TMA reduce)."""
    if REDUCE_DESC:
        gyt_desc.atomic_add([0, c0], part)
    else:
        offs = tl.arange(0, BLOCK_D)[:, None].to(tl.int64) * n_cols_pad + tl.arange(0, BLOCK_N)[None, :]
        tl.atomic_add(gyt_ptr + c0 + offs, part, sem="relaxed")


@triton.jit
def _kmajor_step(yj_desc, ytj_desc, gyt_desc, gyt_ptr, c0, x_i, x_lo, xct_i, xct_lo, t2, b2, rows, n_cols,
                 n_cols_pad, n_diag, relu2, log1p_sum, weight, acc_x,
                 MASKED: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, SPLIT_OPERANDS: tl.constexpr,
                 FAST_MATH: tl.constexpr, REDUCE_DESC: tl.constexpr):
    """One BLOCK_N tile of y's rows: S, one exp per pair, acc_x += W y_j and gy_j^T =
    (coef x_i)^T W added to y's gradient columns.  As siglip._one_pass_step otherwise.
    SPLIT_OPERANDS: 3xTF32, three TF32 products each from the operands' TF32 halves (x_lo,
    xct_lo; y's n_cols_pad rows or columns further; W split here), the small ones first."""
    if SPLIT_OPERANDS:  # (y's rows through the descriptor: the pointer argument is unused)
        s, y_j, y_lo = _halves_logits(x_i, x_lo, yj_desc, gyt_ptr, c0, n_cols_pad, BLOCK_D, BLOCK_N, BLOCK_D, True,
                                      tl.float32)
    else:
        y_j = yj_desc.load([c0, 0])
        s = tl.dot(x_i, tl.trans(y_j), input_precision="tf32", out_dtype=tl.float32)
    sig, relu2, log1p_sum, weight = _tile_weights(s, t2, b2, c0, rows, n_cols, n_diag, relu2, log1p_sum, weight,
                                                  MASKED, BLOCK_N, FAST_MATH)
    yt_j = ytj_desc.load([0, c0])
    if SPLIT_OPERANDS:
        acc_x = _halves_product(acc_x, sig, tl.trans(yt_j), tl.trans(ytj_desc.load([0, n_cols_pad + c0])))
        w_hi = _tf32_high(sig)
        part = tl.dot(xct_lo, w_hi, input_precision="tf32", out_dtype=tl.float32)
        part = tl.dot(xct_i, sig - w_hi, part, input_precision="tf32", out_dtype=tl.float32)
        part = tl.dot(xct_i, w_hi, part, input_precision="tf32", out_dtype=tl.float32)
    else:
        acc_x = tl.dot(sig, tl.trans(yt_j), acc_x, input_precision="tf32", out_dtype=tl.float32)
        part = tl.dot(xct_i, sig, input_precision="tf32", out_dtype=tl.float32)
    _add_cols(gyt_desc, gyt_ptr, c0, part, n_cols_pad, BLOCK_N, BLOCK_D, REDUCE_DESC)
    return relu2, log1p_sum, weight, acc_x


@triton.jit
def _siglip_kmajor_kernel(
    xi_desc, xct_desc, yj_desc, ytj_desc, gyt_desc, coef_ptr, tb_ptr, gx_ptr, gyt_ptr, loss_ptr, partial_ptr,
    n_cols, n_diag,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, SPLIT_OPERANDS: tl.constexpr,
    FAST_MATH: tl.constexpr, REDUCE_DESC: tl.constexpr,
):
    """siglip._siglip_one_pass_kernel's sweep with K-major operands (module docstring):
    x [rows, BLOCK_D], (coef x)^T [BLOCK_D, rows], y [n_cols_pad, BLOCK_D], y^T and the
    gradient gy^T [BLOCK_D, n_cols_pad]."""
    pid = tl.program_id(0)
    r0 = pid * BLOCK_M
    rows = r0 + tl.arange(0, BLOCK_M)
    t = tl.load(tb_ptr)
    t2 = t * LOG2E
    b2 = tl.load(tb_ptr + 1) * LOG2E
    x_i = xi_desc.load([r0, 0])
    xct_i = xct_desc.load([0, r0])
    x_lo, xct_lo = x_i, xct_i  # (unused without SPLIT_OPERANDS)
    if SPLIT_OPERANDS:  # the low halves, the padded row count further
        x_lo = xi_desc.load([tl.num_programs(0) * BLOCK_M + r0, 0])
        xct_lo = xct_desc.load([0, tl.num_programs(0) * BLOCK_M + r0])
    relu2 = tl.zeros([BLOCK_M], tl.float32)
    log1p_sum = tl.zeros([BLOCK_M], tl.float32)
    weight = tl.zeros([BLOCK_M], tl.float32)
    acc_x = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    n_cols_pad, n_full, diag_lo, diag_hi, tail_lo = _one_pass_stages(r0, n_cols, BLOCK_M, BLOCK_N)
    for c0 in range(0, tl.minimum(diag_lo, n_full), BLOCK_N):
        relu2, log1p_sum, weight, acc_x = _kmajor_step(
            yj_desc, ytj_desc, gyt_desc, gyt_ptr, c0, x_i, x_lo, xct_i, xct_lo, t2, b2, rows, n_cols, n_cols_pad,
            n_diag, relu2, log1p_sum, weight, acc_x, False, BLOCK_N, BLOCK_D, SPLIT_OPERANDS, FAST_MATH, REDUCE_DESC)
    for c0 in range(diag_lo, diag_hi, BLOCK_N):
        relu2, log1p_sum, weight, acc_x = _kmajor_step(
            yj_desc, ytj_desc, gyt_desc, gyt_ptr, c0, x_i, x_lo, xct_i, xct_lo, t2, b2, rows, n_cols, n_cols_pad,
            n_diag, relu2, log1p_sum, weight, acc_x, True, BLOCK_N, BLOCK_D, SPLIT_OPERANDS, FAST_MATH, REDUCE_DESC)
    for c0 in range(diag_hi, n_full, BLOCK_N):
        relu2, log1p_sum, weight, acc_x = _kmajor_step(
            yj_desc, ytj_desc, gyt_desc, gyt_ptr, c0, x_i, x_lo, xct_i, xct_lo, t2, b2, rows, n_cols, n_cols_pad,
            n_diag, relu2, log1p_sum, weight, acc_x, False, BLOCK_N, BLOCK_D, SPLIT_OPERANDS, FAST_MATH, REDUCE_DESC)
    for c0 in range(tail_lo, n_cols_pad, BLOCK_N):
        relu2, log1p_sum, weight, acc_x = _kmajor_step(
            yj_desc, ytj_desc, gyt_desc, gyt_ptr, c0, x_i, x_lo, xct_i, xct_lo, t2, b2, rows, n_cols, n_cols_pad,
            n_diag, relu2, log1p_sum, weight, acc_x, True, BLOCK_N, BLOCK_D, SPLIT_OPERANDS, FAST_MATH, REDUCE_DESC)
    coef = tl.load(coef_ptr + rows)  # loaded here, not held through the loop
    tl.store(loss_ptr + rows, relu2 / LOG2E + log1p_sum)
    offs = rows[:, None].to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)[None, :]
    tl.store(gx_ptr + offs, (t * coef)[:, None] * acc_x)
    # sum_j w_ij <x_i, y_j> = <x_i, acc_x_i>; x_i loaded again (not held in registers)
    x_i = xi_desc.load([r0, 0])
    if SPLIT_OPERANDS:
        x_i += xi_desc.load([tl.num_programs(0) * BLOCK_M + r0, 0])
    tl.store(partial_ptr + pid * 2, tl.sum(coef * tl.sum(x_i * acc_x, 1), 0))
    tl.store(partial_ptr + pid * 2 + 1, tl.sum(coef * weight, 0))


# (BLOCK_M, BLOCK_N, stages) per product format and feature block, 4 warps: the tiles
# with the fewest non-mma instructions per pair that compile without spills
# (compile_check; the next wider ones spill, e.g. TF32 64 x 128 at d = 128 212 bytes; two
# stages spill at TF32 d = 16 and save under 1 elsewhere).  3xTF32 (operand halves in
# shared memory) up to d = 64: at 128 every tile tried spills (956 bytes at 64 x 16).
# Below d = 64 the third product's M = d is under wgmma's 64 rows: Triton issues it as
# mma.sync.  Lines and the tiles tried: docs/results/triton.md.
KMAJOR_TILES = {"tf32": {16: (64, 128, 1), 32: (64, 64, 1), 64: (64, 128, 1), 128: (64, 64, 1)},
                "tf32x3": {16: (64, 64, 1), 32: (64, 32, 1), 64: (64, 32, 2)}}


# Triton 3.6 (before tiles.NEWEST_CHECKED_TRITON) spills on TF32's 64 x 128 tiles (40 bytes
# at d = 16, 912 at 64) and at d = 128 on 64 x 64 (1432) and 64 x 32 (224): its own tiles
# (0 spills; 24.2, 26.6 and 59.9 non-mma per pair).  3.6 compiles the others clean.
KMAJOR_TILES_OLDER_TRITON = {"tf32": {16: (64, 64, 1), 64: (64, 64, 1), 128: (64, 16, 1)}}


def kmajor_config(fmt: str, d: int, arch: int):
    """The K-major kernel's blocks for a product format, width and arch, or None where
    siglip's own one pass (or its two sweeps) is taken: float32 on sm_90 (KMAJOR_TILES)."""
    block_d = max(16, triton.next_power_of_2(d))
    tiles = KMAJOR_TILES.get(fmt, {})
    if triton_before_newest():
        tiles = {**tiles, **KMAJOR_TILES_OLDER_TRITON.get(fmt, {})}
    if arch != 90 or block_d not in tiles:
        return None
    block_m, block_n, stages = tiles[block_d]
    return {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_D": block_d, "SPLIT_OPERANDS": fmt == "tf32x3",
            "num_warps": 4, "num_stages": stages}


def one_pass_kmajor(x, y, c, tb, grad_x: bool, acc_t, cfg: dict):
    """(grad_x or None, grad_y, row losses, per-program (t, b) sums) from one sweep, as
    siglip._one_pass, on the blocks `cfg` (kmajor_config's, which siglip._one_pass asked
    with its format and arch)."""
    (nx, d), ny = x.shape, y.shape[0]
    bm, bn, bd = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_D"]
    nx_pad, ny_pad = triton.cdiv(nx, bm) * bm, triton.cdiv(ny, bn) * bn
    coef = c.new_zeros(nx_pad)
    coef[:nx] = c
    xp, yp = _pad_rows(x, nx_pad, bd), _pad_rows(y, ny_pad, bd)
    xcp = xp * coef[:, None]
    if cfg["SPLIT_OPERANDS"]:  # [high; low] TF32 halves: the low rows (columns of the transposes) padded count further
        xp, xcp, yp = tf32_halves(xp), tf32_halves(xcp), tf32_halves(yp)
    xct, yt = xcp.T.contiguous(), yp.T.contiguous()  # (coef x)^T, y^T: [bd, rows]
    gx = torch.empty((nx_pad, bd), dtype=acc_t, device=x.device)
    gyt = torch.zeros((bd, ny_pad), dtype=acc_t, device=x.device)
    loss = torch.empty(nx_pad, dtype=acc_t, device=x.device)
    partial = torch.empty((nx_pad // bm, 2), dtype=acc_t, device=x.device)
    fast = not triton.knobs.runtime.interpret  # inline assembly and TMA reduce: compiled only
    _siglip_kmajor_kernel[(nx_pad // bm,)](
        TensorDescriptor.from_tensor(xp, [bm, bd]), TensorDescriptor.from_tensor(xct, [bd, bm]),
        TensorDescriptor.from_tensor(yp, [bn, bd]), TensorDescriptor.from_tensor(yt, [bd, bn]),
        TensorDescriptor.from_tensor(gyt, [bd, bn]), coef, tb, gx, gyt, loss, partial, ny, min(nx, ny),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, SPLIT_OPERANDS=cfg["SPLIT_OPERANDS"], FAST_MATH=fast,
        REDUCE_DESC=fast,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    # gy^T back to rows (a transposed view would give the operator's output column-major strides)
    return (gx[:nx, :d] if grad_x else None), (tb[0] * gyt[:d, :ny]).T.contiguous(), loss[:nx], partial
