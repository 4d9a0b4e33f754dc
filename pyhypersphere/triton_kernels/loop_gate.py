"""The main-loop gate of compile_check (issue 23): each kernel family's minimum work and
whether its lines fail the check or are only reported.

The minimum is the algorithm's, per step of the main loop over one BLOCK_M x BLOCK_N
tile: tensor-core GEMMs (BLOCK_M x BLOCK_N x d products) and exps per pair.  A kernel
line fails when its loop issues more (exps with 10% slack for the per-row work of a
step), when a 16-bit or TF32 kernel has no wgmma on sm_90, or when its 16-bit or TF32
loop issues more other instructions per pair than NONMMA_PER_PAIR_LIMIT for its arch
(3xTF32 excepted: BUDGET_FORMATS).

Separately, the uniformity and contrastive kernels compute the feature dimension in one
chunk up to ONE_CHUNK_WIDTH (S once per tile); a configuration the launchers chunk at a
width up to it fails unless CHUNKED_ALLOWED lists it with the reason.
"""

import dataclasses

from .tiles import triton_before_newest


@dataclasses.dataclass(frozen=True)
class MinWork:
    gemms_per_tile: float | None  # None: no pair loop (nothing to count)
    exps_per_pair: float | None
    enforced: bool  # False: printed with gate=report, never fails on the mix
    note: str


# One source of truth, keyed by kernel family (compile_check's Job.family).
MIN_WORK = {
    # Uniformity, loss and gradient: S = 2t<x_i, x_j> - t||x_j||^2, P = exp2(S - shift),
    # O += P x_j (the queue's own gradient is the same kernel on queue rows).
    "uniform_grad": MinWork(2, 1, True, "S and P x; one exp"),
    "uniform_loss": MinWork(1, 1, True, "S only; one exp"),
    # d past the one-chunk width: S loops over feature chunks and each slice of a_i
    # recomputes it; not the flash pattern, reported only.
    "uniform_grad_chunked": MinWork(2, 1, False, "chunked S, per slice of a_i"),
    "uniform_loss_chunked": MinWork(1, 1, False, "chunked S"),
    "align": MinWork(None, None, True, "row-wise, no pair loop"),
    # The contrastive kernels (contrastive.py), with the static shift the launcher
    # certifies for unit rows: the lse (with or without the column sums that give CLIP's
    # column lse from the same S tile), the lse with the row gradient (P C), and the
    # gradient with two-sided weights e^(s - c) (a_i + b_j): one exp each.
    "contrastive_lse": MinWork(1, 1, True, "S; one exp (row and column sums)"),
    "contrastive_lse_grad": MinWork(2, 1, True, "S and P C; one exp"),
    "contrastive_grad": MinWork(2, 1, True, "S and W C; one exp (static shift)"),
    # Without the certified shift, the tile shift: the same one exp per pair in the
    # common step; a tile whose lse spread is too wide for it takes one exp per side
    # (sass_mix.step_arms: the line prints that path's fallback_exps_per_pair).
    "contrastive_grad_tile_shift": MinWork(2, 1, True, "S and W C; one exp (tile shift), two on a wide tile"),
    # Past 128 wide and in float64 (contrastive_config's TILE_SHIFT): one exp per side,
    # above the losses' minimum, reported only.
    "contrastive_grad_two_exp": MinWork(2, 2, False, "S and W C; one exp per side"),
    # d past the one-chunk width, as uniformity's chunked path: reported only.
    "contrastive_lse_chunked": MinWork(1, 1, False, "chunked S"),
    "contrastive_lse_grad_chunked": MinWork(2, 1, False, "chunked S, per slice of o_i"),
    "contrastive_grad_chunked": MinWork(2, 1, False, "chunked S, per slice of the gradient"),
    # SigLIP (siglip.py).  The two sweeps (the launcher's path under torch's deterministic
    # mode, and the loss or d/dx alone), per sweep: rows x with S and W y, rows y with S
    # again and W^T x (a loss with both gradients: 4 GEMMs and 2 exps per pair over the
    # two); reported only.
    "siglip_x_loss": MinWork(1, 1, False, "S; one exp and one log (loss only)"),
    "siglip_x_grad": MinWork(2, 1, False, "S and W y; one exp and one log (the y side is a second sweep)"),
    "siglip_y_grad": MinWork(2, 1, False, "S again and W^T x; one exp (second sweep over the pairs)"),
    # One sweep for the loss and both gradients (torch's deterministic mode off): S, W y
    # and W^T x, the last added to y's gradient rows with atomics (on sm_90 one TMA
    # reduce-add of the tile after its stores to shared memory; before it RED
    # instructions; either way counted in the non-mma budget), one exp per pair
    # (MUFU.EX2).  The loss's log is once per row and tile (MUFU.LG2, which sass_mix does
    # not count as an exp, only as a non-mma instruction; the division-free sigmoid's
    # MUFU.RCP likewise).
    "siglip_one_pass": MinWork(3, 1, True, "S, W y and W^T x (atomics); one exp"),
    # The same kernel before sm_90, reported only: within the minimum (3 GEMMs, 1 exp), but
    # mma.sync holds both [rows, d] gradient accumulators and the operands in registers,
    # so 32 x 32 tiles are the largest without spills, at 60-66 non-mma instructions per
    # pair against 40 from d = 64 (22.8 and 27.8 at d = 16 and 32).  float32 (TF32,
    # 3xTF32): on sm_90 siglip_kmajor (K-major TF32 operands,
    # wgmma: 19-25 per pair; 3xTF32 34-56 to d = 64), else mma.sync tiles of 16 or 32
    # rows (siglip.FLOAT32_ONE_PASS_BLOCKS: 26-84 for TF32, 50-256 for 3xTF32).  And sm_90's
    # 16-bit blocks under Triton 3.6 (64 x 32: its 128 x 128 spills; 21.6-22.6 per pair).
    "siglip_one_pass_over_budget": MinWork(3, 1, False, "as siglip_one_pass, above the non-mma budget"),
    # d past the one-chunk width (siglip.ONE_CHUNK_MAX_D), the gradients' features in
    # slices of that width (a second grid axis): each slice's program computes S over all
    # K chunks and its own exp, then W y and W^T x on its slice, reported only.  Per tile
    # of a slice K + 2 GEMMs of the slice's width, 1 exp per pair; over the K slices K (K +
    # 2) and K exps, against the chunked two sweeps' 2 K (K + 1) and 2 K.
    "siglip_one_pass_sliced": MinWork(3, 1, False, "S per gradient slice, W y and W^T x on it; one exp per slice"),
    # The same past K = 6 slices (TF32 9, 3xTF32 2; siglip.SLICED_ONE_PASS_BLOCKS), S's
    # other chunks in a loop at run time inside the tile loop: a loop nest, measured per
    # tile (compile_check._inner_trips: the chunk loop counted K - 1 times, sass_mix.
    # main_loop), so the line shows K + 2 GEMMs and 1 exp per pair as the unrolled slices.
    "siglip_one_pass_chunk_loop": MinWork(3, 1, False, "as siglip_one_pass_sliced, S's other chunks in a loop"),
    # d past the one-chunk width: S over feature chunks, recomputed per gradient slice.
    "siglip_chunked": MinWork(2, 1, False, "chunked S, per slice of the gradient"),
    # Triton's fused-attention tutorial, as the yardstick: S and P V, one exp.
    "reference": MinWork(2, 1, True, "flash-attention forward"),
}

# Issue 23's minimum per contrastive loss (GEMMs over a tile's pairs, exps per pair,
# with the static shift; SupCon's, issue 25, as NT-Xent's) and the passes that make it up
# (contrastive.py's launchers), as (kernel, variant) in compile_check's kernel names; a
# pass's family is contrastive_<kernel>.  The sum of the passes' minimums must not exceed the loss's.
LOSS_MIN_WORK = {
    "nt_xent": ((3, 2), (("lse", "self"), ("grad", "two-sided"))),
    # keys and queue without gradients (MoCo: a detached queue, in_batch or not, any
    # reduction): the queries' gradient out of the lse pass, contrastive_lse_row_grad
    # (contrastive_mean_lse for the in-batch mean); its launches are recorded in
    # tests/test_contrastive_row_grad.py.  With in_batch=False the kernel has no masked
    # span stage: the same main loop.
    "moco_info_nce": ((2, 1), (("lse_grad", "cross"),)),
    "info_nce": ((4, 2), (("lse_grad", "cross"), ("grad", "col-terms"))),  # both gradients
    # both lse from one S tile (column sums), then each side's gradient
    "clip": ((5, 3), (("lse", "col-sums"), ("grad", "two-sided"), ("grad", "two-sided"))),
    # supervised contrastive (supcon.py): NT-Xent's passes over x's rows, the labels' part
    # from O(N d) class sums outside the pair loop
    "supcon": ((3, 2), (("lse", "self"), ("grad", "two-sided"))),
}


def loss_families(loss: str) -> tuple:
    return tuple(f"contrastive_{kernel}" for kernel, _ in LOSS_MIN_WORK[loss][1])


def loss_work(loss: str) -> tuple:
    """(GEMMs per tile, exps per pair) of a contrastive loss's passes, each at its family's minimum."""
    families = loss_families(loss)
    return (sum(MIN_WORK[f].gemms_per_tile for f in families), sum(MIN_WORK[f].exps_per_pair for f in families))


EXP_SLACK = 1.10
# Non-mma instructions per pair, per arch (the issue's budget is for sm_90's wgmma loop;
# the reference forward issues about 8 there).  Before sm_90, mma.sync takes its operands
# from registers, so each step adds the ldmatrix and register moves: the reference
# issues 35.8 per pair on sm_80 (128 x 64 tile), and the budget is that plus 10%.
NONMMA_PER_PAIR_LIMIT = {90: 16, 80: 40}
# A 3xTF32 product issues three tensor-core products (hi*hi, hi*lo, lo*hi).  Both of a
# tile's products take it under "highest" (the gradient's l_i z_i - a_i cancels, so P z_j
# in TF32 would leave errors of TF32's 2^-11 in it), hence two more per GEMM of the
# family's minimum.
TF32X3_EXTRA_GEMMS_PER_GEMM = 2
# Formats on tensor cores of 16 or 19 bits (the dtype labels compile_check prints): these
# need wgmma on sm_90.
REDUCED_FORMATS = ("bf16", "fp16", "tf32", "tf32x3")
# ... and are held to the non-mma budget, except 3xTF32 (float32 accuracy): its split of
# both operands into TF32 halves before each of its three products is per element of
# the operand tiles, outside the budget for a single-pass main loop.
BUDGET_FORMATS = ("bf16", "fp16", "tf32")


def problems(family: str, dtype: str, arch: int, mix) -> list:
    """Why a line fails the main-loop gate ([] if it passes or its family is report-only).
    `mix` is a sass_mix.LoopMix."""
    work = MIN_WORK[family]
    if not work.enforced:
        return []
    out = []
    reduced = dtype in REDUCED_FORMATS
    if reduced and arch >= 90 and mix.has_loop and mix.tensor_core != "wgmma":
        out.append(f"no wgmma on sm_{arch}")
    if work.gemms_per_tile is not None and not mix.has_loop:
        out.append("no loop with a tensor-core instruction")
    if work.gemms_per_tile is not None and mix.has_loop:
        allowed = work.gemms_per_tile * (1 + (TF32X3_EXTRA_GEMMS_PER_GEMM if dtype == "tf32x3" else 0))
        if mix.gemms_per_tile > allowed + 1e-9:
            out.append(f"{mix.gemms_per_tile:.2f} GEMMs per tile > {allowed}")
        if mix.exps_per_pair > work.exps_per_pair * EXP_SLACK + 1e-9:
            out.append(f"{mix.exps_per_pair:.2f} exps per pair > {work.exps_per_pair} (+10%)")
        limit = NONMMA_PER_PAIR_LIMIT[90 if arch >= 90 else 80]
        if dtype in BUDGET_FORMATS and mix.nonmma_per_pair > limit:
            out.append(f"{mix.nonmma_per_pair:.1f} non-mma instructions per pair > {limit}")
    return out


# Issue 23: the feature dimension up to this width in one chunk, no recomputation of S per
# feature slice (the launchers' cap, uniform.one_chunk_max_d, and this gate's bound).
ONE_CHUNK_WIDTH = 256
# The kernel families held to it, by prefix (SigLIP and SupCon: not yet).
ONE_CHUNK_FAMILIES = ("uniform_", "contrastive_")
# The kinds of kernel an allowance names: "grad", a second product (P z_j / W C_j: the
# accumulator [BLOCK_M, d] in registers), or "loss", S alone.
_KIND = {"uniform_grad": "grad", "uniform_loss": "loss", "contrastive_lse": "loss", "contrastive_lse_grad": "grad",
         "contrastive_grad": "grad"}


@dataclasses.dataclass(frozen=True)
class ChunkedAllowed:
    kinds: tuple  # "grad" and/or "loss" (_KIND)
    formats: tuple  # compile_check's dtype labels
    archs: tuple  # 80: every arch before sm_90; 90: sm_90 and newer
    shifts: tuple  # "static", "online"
    above: int  # chunked for above < d <= ONE_CHUNK_WIDTH
    why: str  # what was measured (compile_check, Triton 3.9, 2026-12-07)
    variants: tuple = ()  # only these contrastive variants (compile_check's: "col-sums", ...); () = every one
    families: tuple = ONE_CHUNK_FAMILIES  # the kernel families (prefixes) it covers
    older_triton: bool = False  # only under a Triton before tiles.NEWEST_CHECKED_TRITON


# Every configuration chunked at d <= ONE_CHUNK_WIDTH, and why it cannot be one chunk
# (the one-chunk candidates' compile_check lines).  The one source of truth of what may
# stay chunked: compile_check fails on any other.
CHUNKED_ALLOWED = (
    # Under Triton 3.6 (the GPU image's; the launchers' choice before 3.9,
    # tiles.triton_before_newest): compile_check --quick, 2026-12-07.
    ChunkedAllowed(("grad",), ("fp64",), (80, 90), ("static", "online"), 64,
                   "Triton 3.6: the 16x16 w2 blocks at d = 128 spill (uniformity's gradient 108/188 B "
                   "static/online on sm_90, 32/80 B on sm_80; the contrastive lse with the row gradient "
                   "12-120 B)", older_triton=True),
    ChunkedAllowed(("loss",), ("tf32",), (80,), ("static",), 128,
                   "Triton 3.6: CLIP's column sums at d = 256 (64x32 w4) spill 64 B", older_triton=True),
    # 3xTF32: Triton splits both operands into TF32 halves in registers, and the
    # loop-invariant row block's two halves alone spill at d = 128 (uniformity, sm_90:
    # gradient 128x32 w8 2272 B, 64x32 w4 3176 B, 64x16 w4 2028 B; loss 128x32 w8 616 B,
    # 64x32 w4 544 B).  On sm_90 the uniformity and contrastive kernels take halves the
    # launchers split (uniform.split_operands), read by wgmma from shared memory: one
    # chunk to 128.
    ChunkedAllowed(("grad", "loss"), ("tf32x3",), (90,), ("static", "online"), 128,
                   "prepared halves at d = 256: the gradient 64x32 w4 s1 spills 4568 B with 256 KiB of "
                   "shared memory (the row block's halves alone are 128 KiB)"),
    ChunkedAllowed(("grad", "loss"), ("tf32x3",), (80,), ("static", "online"), 64,
                   "mma.sync takes the row block from registers, halves too: prepared halves spill "
                   "4108 B at d = 128 (gradient 64x32 w4); Triton's own split 4400 B (64x32 w4), the "
                   "loss 48 B (64x32 w4), 8 B and 176 KiB of shared memory (128x32 w8) (uniformity "
                   "kernel; the contrastive kernels' row blocks are the same)"),
    ChunkedAllowed(("grad",), ("fp64",), (80, 90), ("static", "online"), 128,
                   "DMMA takes the row block and the accumulator from registers (8 rows of 256 float64 a "
                   "warp: 128 registers each): 16x32 w4 spills 1088 B (sm_90), 16x16 w4 380 B; 8 warps "
                   "compute S twice (32x32, 16x32, 32x16 w8: 3 to 5 GEMMs per tile); at d = 128 16x16 "
                   "w2 takes 255 registers on sm_80"),
    ChunkedAllowed(("grad",), ("tf32",), (80, 90), ("static", "online"), 128,
                   "the accumulator [64, 256] is 128 registers a thread, and TF32's second product "
                   "transposes z_j through registers: sm_90 64x64 w4 spills 1408 B (27.0 non-mma per "
                   "pair), 64x32 w4 372 B (33.3); 8 warps compute S twice (64x64 w8: 3 GEMMs, 2 exps); "
                   "sm_80 64x32 w4 2468 B (65.7), 64x32 w8 S twice"),
    ChunkedAllowed(("grad",), ("tf32",), (90,), ("online",), 64,
                   "the online max rescales the accumulator, d / BLOCK_N multiplies per pair: at d = 128 "
                   "128x64 w8 issues 18.3 non-mma per pair (> 16, no spills); 128x128 w8 spills 440 B "
                   "(s1; 604 B s2), 64x128 w4 632 B"),
    ChunkedAllowed(("grad",), ("bf16", "fp16"), (80,), ("static", "online"), 128,
                   "mma.sync holds the row block (64 registers at d = 256) and the accumulator in "
                   "registers: 64x64 w8 spills 88 B and issues 85.0 non-mma per pair (> 40); 64x32 w8 "
                   "computes S twice (3 GEMMs, 2 exps)"),
    ChunkedAllowed(("loss",), ("tf32",), (80,), ("online",), 128,
                   "mma.sync holds the row block in registers (128 at d = 256): 128x32 w8 issues 43.2 "
                   "non-mma per pair (> 40, no spills; 36.8 with the static shift), 64x32 w4 spills 44 B"),
    ChunkedAllowed(("loss",), ("tf32",), (90,), ("static",), 128,
                   "CLIP's column sums (a cross-warp reduction per column of a tile) need 128 x 128 tiles "
                   "to stay under 16 non-mma per pair, and at d = 256 those do not fit shared memory: "
                   "128x64 w8 issues 20.2, 64x64 w4 19.2, 64x128 w4 spills 88 B (14.1)", ("col-sums",)),
)


def chunked_problem(family: str, fmt: str, arch: int, static_shift: bool, d: int, variant: str = "") -> str:
    """Why a chunked configuration at width d fails ("" if it is one chunk, past
    ONE_CHUNK_WIDTH, of a family not held to it, or in CHUNKED_ALLOWED)."""
    base = family.removesuffix("_chunked")
    if base == family or d > ONE_CHUNK_WIDTH or not family.startswith(ONE_CHUNK_FAMILIES):
        return ""
    shift = "static" if static_shift else "online"
    arch_class = 90 if arch >= 90 else 80
    for allowed in CHUNKED_ALLOWED:
        if (_KIND[base] in allowed.kinds and family.startswith(allowed.families) and fmt in allowed.formats and arch_class in allowed.archs
                and shift in allowed.shifts and allowed.above < d
                and (not allowed.variants or variant in allowed.variants)
                and (not allowed.older_triton or triton_before_newest())):
            return ""
    return f"chunked at d = {d} <= {ONE_CHUNK_WIDTH}, not in loop_gate.CHUNKED_ALLOWED"
