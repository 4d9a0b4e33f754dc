"""SigLIP's pair terms and the one pass's tile bookkeeping, shared by its one-pass kernels
(siglip.py; siglip_kmajor.py, the float32 K-major variant on sm_90): each pair's softplus
and sigmoid from one exp, the loss's log once per row and tile, and the masked stages'
bounds."""

import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _combine_q(a, b):
    """q = prod (1 + e) - 1 of two parts: (1 + a)(1 + b) - 1 = a (1 + b) + b, without adding
    1 to a (the rounded 1 + b scales a: a relative 2^-24; 1 + e itself would lose e's
    digits).  One FFMA per pair: 1 + e is the sigmoid's denominator already."""
    return a * (1.0 + b) + b


@triton.jit
def _log2(v, FAST_MATH: tl.constexpr):
    if FAST_MATH:  # the exp unit's lg2.approx (MUFU.LG2: not an exp)
        return tl.inline_asm_elementwise("lg2.approx.f32 $0, $1;", "=r,r", [v], dtype=tl.float32, is_pure=True,
                                         pack=1)
    else:
        return tl.math.log2(v)


@triton.jit
def _log1p_tile(q, BLOCK_N: tl.constexpr, FAST_MATH: tl.constexpr):
    """sum_j log(1 + e_j) of a row's tile from q = prod_j (1 + e_j) - 1, once per row and
    tile.  float64: Goldberg's log(w) q / (w - 1), w = 1 + q rounded.  float32: below
    q = 1/4 the series to q^10 (relative error < 1e-7), above it log2(1 + q) ln 2 (lg2.approx:
    absolute error 2^-22.6 on log2 >= 0.32 there: relative < 5e-7); no division, no
    libdevice log (40 instructions a row, 1.2 per pair of a 128 x 128 tile).  q overflows
    float32 only when all BLOCK_N factors are within 2^-25 of 2 (e = 1: l = 0), the sum
    then within 3e-8 of BLOCK_N log 2, which is taken."""
    if q.dtype == tl.float64:
        w = 1.0 + q
        out = tl.where(w == 1.0, q, tl.log(w) * (q / (w - 1.0)))
    else:
        series = -0.1  # (overflows to -inf for large q, where it is not taken)
        for k in tl.static_range(9, 0, -1):
            series = series * q + (1.0 if k % 2 == 1 else -1.0) / k
        out = tl.where(q < 0.25, series * q, _log2(1.0 + q, FAST_MATH) * LN2)
    return tl.where(q == float("inf"), BLOCK_N * LN2, out)


@triton.jit
def _reciprocal(v, FAST_MATH: tl.constexpr):
    """1 / v for v in [1, 2]: the exp unit's rcp.approx (one instruction; no range fix-ups,
    which division adds for operands near the float32 limits) when compiled for float32."""
    if FAST_MATH:
        return tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=r,r", [v], dtype=tl.float32, is_pure=True,
                                         pack=1)
    else:
        return 1.0 / v


@triton.jit
def _tile_weights(s, t2, b2, c0, rows, n_cols, n_diag, relu2, log1p_sum, weight,
                  MASKED: tl.constexpr, BLOCK_N: tl.constexpr, FAST_MATH: tl.constexpr):
    """(W, relu2, log1p_sum, weight) of a tile of y's rows [c0, c0 + BLOCK_N) from its
    S = x_i y_j^T: W = d/dl of each pair's term, and the rows' sums of max(u, 0), log1p(e)
    and W added.  MASKED: the diagonal's tiles and the last, partly padded one."""
    cols = c0 + tl.arange(0, BLOCK_N)
    u = s * t2 + b2  # the logit in base 2, u = l log2(e)
    if MASKED:  # z = +1 (u = -l) on the diagonal; padding columns -inf: e = 0, no term
        positive = (rows[:, None] == cols[None, :]) & (rows < n_diag)[:, None]
        u = tl.where(positive, -u, tl.where(cols[None, :] < n_cols, u, float("-inf")))
    # The one exp: e = e^(-|u|) gives the softplus, max(u, 0) + log1p(e), and the
    # sigmoid, (u >= 0 ? 1 : e) / (1 + e).  The log1p is taken once per row and tile of
    # q = prod_j (1 + e_j) - 1, accumulated without rounding 1 + e (e ~ e^-10 would lose
    # its digits there).
    e = tl.math.exp2(-tl.abs(u))
    sig = tl.where(u >= 0, 1.0, e) * _reciprocal(1.0 + e, FAST_MATH)
    relu2 += tl.sum(tl.maximum(u, 0.0), 1)
    log1p_sum += _log1p_tile(tl.reduce(e, 1, _combine_q), BLOCK_N, FAST_MATH)
    if MASKED:
        sig = tl.where(positive, -sig, sig)
    weight += tl.sum(sig, 1)
    return sig, relu2, log1p_sum, weight


@triton.jit
def _one_pass_stages(r0, n_cols, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """(n_cols_pad, n_full, diag_lo, diag_hi, tail_lo): the column tiles of the one pass's
    stages for the rows [r0, r0 + BLOCK_M).  Masked: the tiles [diag_lo, diag_hi) that
    meet the rows' own indices (the diagonal) and [tail_lo, n_cols_pad), the last tile
    when it is partly padding; the others, whole, in the plain stages [0, min(diag_lo,
    n_full)) and [diag_hi, n_full)."""
    n_cols_pad = tl.cdiv(n_cols, BLOCK_N) * BLOCK_N
    n_full = n_cols // BLOCK_N * BLOCK_N
    diag_lo = tl.minimum(r0 // BLOCK_N * BLOCK_N, n_cols_pad)
    diag_hi = tl.minimum(tl.cdiv(r0 + BLOCK_M, BLOCK_N) * BLOCK_N, n_cols_pad)
    tail_lo = tl.where((n_full < diag_lo) | (n_full >= diag_hi), n_full, n_cols_pad)
    return n_cols_pad, n_full, diag_lo, diag_hi, tail_lo
