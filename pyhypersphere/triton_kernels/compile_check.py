"""Ahead-of-time compile of every Triton kernel configuration, without a GPU.

    python -m pyhypersphere.triton_kernels.compile_check --arch 80,90

For each kernel, each configuration the launchers can pick (operand dtype and dot
precision, block sizes, gradient or not, part mask or not) and each arch, compiles to
PTX and cubin with triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32)),
then reads registers and spills from ptxas -v and the main loop's instruction mix from
the cubin's SASS (sass_mix).  A reference flash-attention forward (reference_attention)
is compiled in the same run.  Prints one line per configuration:

    arch= kernel= dtype= tensor_core= regs= spills= gemms_per_tile= exps_per_pair= nonmma_per_pair= gate=

and exits non-zero on a compile error, any spill, shared memory above the arch's limit,
a kernel that multiplies tiles (tl.dot) without a tensor-core instruction in its PTX,
a line of an enforced family that fails the main-loop gate (loop_gate: its minimum
work, wgmma on sm_90, the non-mma instruction budget), or a uniformity or contrastive
configuration chunked at d <= 256 that loop_gate.CHUNKED_ALLOWED does not list.  Then one line per contrastive
loss, arch and format, `arch= loss= dtype= block_d= gemms_per_tile= exps_per_pair=
minimum=`: its passes' measured work added up, failing above the loss's minimum
(loop_gate.LOSS_MIN_WORK).  Lines of report-only families
print gate=report.  Catches what the interpreter lets pass (e.g. tl.dot operand dtypes).
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from typing import NamedTuple

os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from . import (align, contrastive, loop_gate, reference_attention, sass_mix, siglip, siglip_kmajor,  # noqa: E402
               uniform)
from .tiles import triton_before_newest  # noqa: E402

# Largest shared memory one block may use (opt-in), bytes.
SMEM_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}

_PTR = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32", torch.float64: "*fp64"}
# Integer arguments as the JIT passes them: int32 below 2^31 (every size and stride in
# practice; the launchers' 64-bit offsets are computed inside the kernels).
_INT = "i32"


class Job(NamedTuple):
    name: str
    kernel: str  # key of _KERNELS
    sig: dict
    consts: dict
    num_warps: int
    num_stages: int
    uses_dot: bool
    family: str  # key of loop_gate.MIN_WORK
    dtype: str  # bf16, fp16, tf32, tf32x3, fp32 or fp64: the main loop's product format
    tile: tuple  # (BLOCK_M, BLOCK_N, BLOCK_D) of the main loop's products
    archs: tuple = ()  # the compute capabilities it is compiled for; () = every one asked
    d: int = 0  # the narrowest feature width that takes this configuration (the one-chunk rule's)
    variant: str = ""  # the contrastive kernels' variant (self, col-sums, cross, two-sided, col-terms)


def dtype_label(dtype: torch.dtype, precision: str = "ieee") -> str:
    if dtype == torch.float32:
        return "fp32" if precision == "ieee" else precision
    return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}[dtype]


# (operand dtype, Gram precision, gradient precision): every operand format
# uniform._plan_operands can choose.
UNIFORM_FORMATS = [
    (torch.bfloat16, "ieee", "ieee"),
    (torch.float16, "ieee", "ieee"),
    (torch.float32, "tf32", "tf32"),
    (torch.float32, "tf32x3", "tf32x3"),
    (torch.float64, "ieee", "ieee"),
]


# CI's subset of the uniformity configurations (--quick): every format at the common
# width, 16-bit, float32 and float64 at the one-chunk width (256: the loss in one chunk,
# the allowed chunked gradients), the one-chunk 3xTF32 width, one chunked case past 256;
# the full matrix is for changes to the kernel or its blocks.
QUICK_UNIFORM = {"d": (128,), "extra": ((torch.bfloat16, 256), (torch.float32, 256), (torch.float64, 256),
                                          (torch.float32, 64), (torch.float64, 64), (torch.float32, 512))}


def _uniform_jobs(archs, quick: bool = False):
    widths = QUICK_UNIFORM["d"] if quick else (16, 32, 64, 128, 256, 512)
    cases = [(fmt, d) for fmt in UNIFORM_FORMATS for d in widths]
    if quick:
        cases += [(fmt, d) for fmt in UNIFORM_FORMATS for dt, d in QUICK_UNIFORM["extra"] if fmt[0] == dt]
    for (dtype, gram_p, grad_p), d in cases:
        acc = "*fp64" if dtype == torch.float64 else "*fp32"
        fmt = uniform.operand_format(dtype, gram_p)
        for arch in archs:
            for with_grad in (False, True):
                for static in (True, False):
                    cfg = uniform.flash_config(fmt, d, with_grad, arch, static)
                    desc = f"tensordesc<{_PTR[dtype][1:]}[{{}},{cfg['BLOCK_D']}]>"
                    sig = {"zi_desc": desc.format(cfg["BLOCK_M"]), "zj_desc": desc.format(cfg["BLOCK_N"]),
                           "z_ptr": _PTR[dtype], "colterm_ptr": acc, "scale_ptr": acc, "ranges_ptr": "*i32",
                           "m_ptr": acc, "l_ptr": acc, "lw_ptr": acc, "acc_ptr": acc,
                           **{name: _INT for name in ("row_start", "n_rows", "span_lo", "span_hi", "cols_per_split",
                                                      "x_end", "d_pad", "ranges_stride", "lo_rows")}}
                    consts = {"WITH_GRAD": with_grad, "STATIC_SHIFT": static,
                              **{k: cfg[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_D", "ONE_CHUNK", "USE_DESC",
                                                     "SPLIT_OPERANDS")},
                              "GRAM_PRECISION": gram_p, "GRAD_PRECISION": grad_p, "WIDEN_OPERANDS": False}
                    name = (f"uniform {'grad' if with_grad else 'loss'} {fmt} M{cfg['BLOCK_M']} N{cfg['BLOCK_N']} "
                            f"D{cfg['BLOCK_D']}{'' if cfg['ONE_CHUNK'] else ' chunked'}{' halves' if cfg['SPLIT_OPERANDS'] else ''} "
                            f"{'static' if static else 'online'} w{cfg['num_warps']} s{cfg['num_stages']}")
                    family = ("uniform_grad" if with_grad else "uniform_loss") + ("" if cfg["ONE_CHUNK"] else "_chunked")
                    yield Job(name, "uniform", sig, consts, cfg["num_warps"], cfg["num_stages"], True, family, fmt,
                              (cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_D"]), (arch,), d)


def _align_jobs():
    for dtype in (torch.bfloat16, torch.float16, torch.float32, torch.float64):
        acc = "*fp64" if dtype == torch.float64 else "*fp32"
        for d in (1, 32, 64, 4096):
            cfg = align.align_config(d)
            for with_grad in (False, True):
                sig = {"x_ptr": _PTR[dtype], "y_ptr": _PTR[dtype], "term_ptr": acc, "grad_ptr": _PTR[dtype],
                       "n": _INT, "d": _INT, "stride_x": _INT, "stride_y": _INT, "scalars_ptr": acc}
                consts = {"WITH_GRAD": with_grad, "BLOCK_M": cfg["BLOCK_M"], "BLOCK_D": cfg["BLOCK_D"]}
                name = f"align {str(dtype).split('.')[-1]} M{cfg['BLOCK_M']} D{cfg['BLOCK_D']}{' grad' if with_grad else ''}"
                yield Job(name, "align", sig, consts, cfg["num_warps"], cfg["num_stages"], False, "align",
                          dtype_label(dtype), (cfg["BLOCK_M"], 1, cfg["BLOCK_D"]))


# CI's subset of the contrastive configurations (--quick): every format at the common
# width (3xTF32 on sm_80 and TF32's gradient with the online max on sm_90 are chunked there),
# bf16, float32 and float64 at the one-chunk width, float64 at 64; the full matrix is for
# changes to the kernels or their blocks.
QUICK_CONTRASTIVE = {"d": (128,), "extra": ((torch.bfloat16, 256), (torch.float32, 256), (torch.float64, 256),
                                              (torch.float64, 64))}

# The variants per format, width and arch: (kernel, static shift, self pairs, column
# sums / row gradient, row terms, column terms).  The masks only shape the span stage;
# the self pairs with skipped positives have both spans.
_CONTRASTIVE_VARIANTS = (
    ("lse", True, True, False, False, False),  # NT-Xent's lse (static shift)
    ("lse", True, False, True, False, False),  # CLIP's lse, both sides from one S tile
    ("lse", False, True, False, False, False),  # online max
    ("lse_grad", True, False, True, False, False),  # InfoNCE / MoCo: lse with the row gradient
    ("lse_grad", False, False, True, False, False),
    ("grad", True, True, False, True, True),  # two-sided weights, one exp
    ("grad", True, False, False, False, True),  # InfoNCE's keys: column terms only
    ("grad", False, True, False, True, True),  # uncertified: one exp per side
)


def _contrastive_jobs(archs, quick: bool = False):
    widths = QUICK_CONTRASTIVE["d"] if quick else (16, 32, 64, 128, 256, 512)
    cases = [(fmt, d) for fmt in UNIFORM_FORMATS for d in widths]
    if quick:
        cases += [(fmt, d) for fmt in UNIFORM_FORMATS for dt, d in QUICK_CONTRASTIVE["extra"] if fmt[0] == dt]
    for (dtype, precision, _), d in cases:
        acc = "*fp64" if dtype == torch.float64 else "*fp32"
        fmt = uniform.operand_format(dtype, precision)
        for arch in archs:
            for kernel, static, self_pairs, extra, row_terms, col_terms in _CONTRASTIVE_VARIANTS:
                if kernel == "lse_grad" and static and dtype == torch.float16:
                    continue  # fp16's row gradient keeps the online max (contrastive.row_lse)
                config_kernel = "lse_col_sums" if kernel == "lse" and extra else kernel
                cfg = contrastive.contrastive_config(fmt, d, config_kernel, arch, static)
                desc = f"tensordesc<{_PTR[dtype][1:]}[{{}},{cfg['BLOCK_D']}]>"
                ints = ("row_start", "rows_out", "cols_per_split", "d_pad", "ranges_stride", "pos_offset", "r_lo_rows",
                        "c_lo_rows")
                sig = {"ri_desc": desc.format(cfg["BLOCK_M"]), "cj_desc": desc.format(cfg["BLOCK_N"]),
                       "r_ptr": _PTR[dtype], "c_ptr": _PTR[dtype]}
                consts = {"STATIC_SHIFT": static, "DIAG_SPAN": True, "POS_SPAN": self_pairs,
                          **{k: cfg[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_D", "ONE_CHUNK", "USE_DESC",
                                                 "SPLIT_OPERANDS")},
                          "PRECISION": precision, "WIDEN_OPERANDS": False}
                if kernel == "grad":
                    sig.update({name: acc for name in ("row_coef_ptr", "row_lse_ptr", "col_coef_ptr", "col_lse_ptr",
                                                       "col_range_ptr", "scale_ptr")}, ranges_ptr="*i32", out_ptr=acc)
                    consts.update(ROW_TERMS=row_terms, COL_TERMS=col_terms, TILE_SHIFT=cfg["TILE_SHIFT"])
                    what = "two-sided" if row_terms else "col-terms"
                else:
                    sig.update(bias_ptr=acc, scale_ptr=acc, ranges_ptr="*i32", m_ptr=acc, l_ptr=acc, colsum_ptr=acc,
                               acc_ptr=acc)
                    ints = ("row_start", "row_end", "rows_out", "cols_per_split", "n_cols_pad", "d_pad",
                            "ranges_stride", "pos_offset", "r_lo_rows", "c_lo_rows")
                    consts.update(COL_SUMS=kernel == "lse" and extra, ROW_GRAD=kernel == "lse_grad")
                    what = "col-sums" if kernel == "lse" and extra else ("self" if self_pairs else "cross")
                sig.update({name: _INT for name in ints})
                # Without the certified shift: the gradient's tile shift (or one exp per side
                # where it does not fit), the lse's online max.
                shift = "static" if static else "online"
                if kernel == "grad" and not static:
                    shift = "tile" if cfg["TILE_SHIFT"] else "two-exp"
                name = (f"contrastive {kernel} {fmt} M{cfg['BLOCK_M']} N{cfg['BLOCK_N']} D{cfg['BLOCK_D']}"
                        f"{'' if cfg['ONE_CHUNK'] else ' chunked'}{' halves' if cfg['SPLIT_OPERANDS'] else ''} "
                        f"{what} {shift} "
                        f"w{cfg['num_warps']} s{cfg['num_stages']}")
                family = f"contrastive_{kernel}"
                if kernel == "grad" and not static:
                    family += "_tile_shift" if cfg["TILE_SHIFT"] else "_two_exp"
                if not cfg["ONE_CHUNK"]:
                    family = f"contrastive_{kernel}_chunked"
                yield Job(name, "contrastive_grad" if kernel == "grad" else "contrastive_lse", sig, consts,
                          cfg["num_warps"], cfg["num_stages"], True, family, fmt,
                          (cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_D"]), (arch,), d, what)


# CI's subset of the SigLIP configurations (--quick): every format at the common width,
# float64 at its widest block; the full matrix adds the narrow widths.
QUICK_PAIRWISE = {"d": (128,), "extra": ((torch.float64, 64),)}


def _pairwise_cases(quick: bool, widths):
    cases = [(fmt, d) for fmt in UNIFORM_FORMATS for d in (QUICK_PAIRWISE["d"] if quick else widths)]
    if quick:
        cases += [(fmt, d) for fmt in UNIFORM_FORMATS for dt, d in QUICK_PAIRWISE["extra"] if fmt[0] == dt]
    return cases


def _siglip_jobs(quick: bool = False):
    # The launcher's roles: rows x (loss, with or without d/dx) and rows y (d/dy).
    roles = ((True, False), (True, True), (False, True))
    for (dtype, precision, _), d in _pairwise_cases(quick, (16, 32, 64, 128, 256)):
        acc = "*fp64" if dtype == torch.float64 else "*fp32"
        fmt = uniform.operand_format(dtype, precision)
        cfg = siglip._config(dtype, d, precision)
        for rows_are_x, want_grad in roles:
            sig = {"r_ptr": _PTR[dtype], "c_ptr": _PTR[dtype], "coef_ptr": acc, "tb_ptr": acc, "grad_ptr": acc,
                   "loss_ptr": acc, "partial_ptr": acc,
                   **{name: _INT for name in ("n_rows", "n_cols", "d", "stride_r", "stride_c")}}
            consts = {"ROWS_ARE_X": rows_are_x, "WANT_GRAD": want_grad,
                      **{k: cfg[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_D", "ONE_CHUNK")},
                      "PRECISION": precision, "WIDEN_OPERANDS": False}
            role = ("x" if rows_are_x else "y") + (" grad" if want_grad else " loss")
            name = (f"siglip {role} {fmt} M{cfg['BLOCK_M']} N{cfg['BLOCK_N']} D{cfg['BLOCK_D']}"
                    f"{'' if cfg['ONE_CHUNK'] else ' chunked'} w{cfg['num_warps']} s{cfg['num_stages']}")
            family = "siglip_" + ("x_grad" if rows_are_x and want_grad else "x_loss" if rows_are_x else "y_grad")
            if not cfg["ONE_CHUNK"]:
                family = "siglip_chunked"
            yield Job(name, "siglip", sig, consts, cfg["num_warps"], cfg["num_stages"], True, family, fmt,
                      (cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_D"]))


# The one pass past the one-chunk width (gradient slices): CI's subset adds bf16 at d =
# 256 (two slices) and 1152 (nine: S's other chunks in a loop at run time); the full
# matrix adds ViT-B's 768 (six, unrolled), so400m's 1152 and ViT-g's 1536 (twelve).
QUICK_SIGLIP_SLICED = ((torch.bfloat16, 256), (torch.bfloat16, 1152))
SIGLIP_SLICED_WIDTHS = (768, 1152, 1536)


def siglip_one_pass_name(fmt: str, cfg: dict) -> str:
    """The one-pass configuration's name: the tile, K<slices> past one chunk (and "loop"
    where S's other chunks take a loop at run time), warps, stages."""
    chunks = f" K{cfg['N_CHUNKS']}{' loop' if cfg['CHUNK_LOOP'] else ''}" if cfg["N_CHUNKS"] > 1 else ""
    return (f"siglip one-pass {fmt} M{cfg['BLOCK_M']} N{cfg['BLOCK_N']} D{cfg['BLOCK_D']}{chunks} "
            f"w{cfg['num_warps']} s{cfg['num_stages']}")


def _siglip_one_pass_jobs(archs, quick: bool = False):
    # Both gradients in one sweep (siglip.one_pass_config): the launcher's choice unless
    # torch asks for deterministic algorithms.
    cases = _pairwise_cases(quick, (16, 32, 64, 128, 256, *SIGLIP_SLICED_WIDTHS))
    if quick:
        cases += [(fmt, d) for fmt in UNIFORM_FORMATS for dt, d in QUICK_SIGLIP_SLICED if fmt[0] == dt]
    for (dtype, precision, _), d in cases:
        acc = "*fp64" if dtype == torch.float64 else "*fp32"
        fmt = uniform.operand_format(dtype, precision)
        for arch in archs:
            cfg = siglip.one_pass_config(fmt, d, arch)
            if cfg is None or siglip_kmajor.kmajor_config(fmt, d, arch) is not None:  # the launcher takes the latter
                continue
            bm, bn, bd = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_D"]
            desc = f"tensordesc<{_PTR[dtype][1:]}[{{}},{bd}]>"
            sig = {"xi_desc": desc.format(bm), "yj_desc": desc.format(bn),
                   "gy_desc": f"tensordesc<{acc[1:]}[{bn},{bd}]>",
                   "x_ptr": _PTR[dtype], "y_ptr": _PTR[dtype],
                   **{name: acc for name in ("coef_ptr", "tb_ptr", "gx_ptr", "gy_ptr", "loss_ptr", "partial_ptr")},
                   "n_cols": _INT, "n_diag": _INT}
            fast = dtype != torch.float64  # the launcher's, compiled (not interpreted)
            consts = {**{k: cfg[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_D", "N_CHUNKS", "CHUNK_LOOP", "USE_DESC")},
                      "PRECISION": precision, "WIDEN_OPERANDS": False, "FAST_MATH": fast,
                      "REDUCE_DESC": fast and cfg["USE_DESC"]}
            # loop_gate's note; sm_90's 16-bit blocks under Triton 3.6 (64 x 32: 21.8 per pair) too
            over = fmt in ("tf32", "tf32x3") or (fmt != "fp64" and (arch < 90 or triton_before_newest()))
            family = "siglip_one_pass_over_budget" if over else "siglip_one_pass"
            if cfg["N_CHUNKS"] > 1:
                family = "siglip_one_pass_chunk_loop" if cfg["CHUNK_LOOP"] else "siglip_one_pass_sliced"
            yield Job(siglip_one_pass_name(fmt, cfg), "siglip_one_pass", sig, consts, cfg["num_warps"],
                      cfg["num_stages"], True, family, fmt, (bm, bn, bd), (arch,))


def _siglip_kmajor_jobs(archs, quick: bool = False):
    # The one pass with K-major TF32 operands (siglip_kmajor.kmajor_config: sm_90), which
    # the launcher takes before siglip.one_pass_config; above the sm_90 budget (TF32 19-25
    # non-mma instructions per pair, 3xTF32 34-57), so reported only.
    for (dtype, precision, _), d in _pairwise_cases(quick, (16, 32, 64, 128, 256)):
        fmt = uniform.operand_format(dtype, precision)
        for arch in archs:
            cfg = siglip_kmajor.kmajor_config(fmt, d, arch)
            if cfg is None:
                continue
            bm, bn, bd = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_D"]
            sig = {"xi_desc": f"tensordesc<fp32[{bm},{bd}]>", "xct_desc": f"tensordesc<fp32[{bd},{bm}]>",
                   "yj_desc": f"tensordesc<fp32[{bn},{bd}]>", "ytj_desc": f"tensordesc<fp32[{bd},{bn}]>",
                   "gyt_desc": f"tensordesc<fp32[{bd},{bn}]>",
                   **{name: "*fp32" for name in ("coef_ptr", "tb_ptr", "gx_ptr", "gyt_ptr", "loss_ptr", "partial_ptr")},
                   "n_cols": _INT, "n_diag": _INT}
            consts = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_D": bd, "SPLIT_OPERANDS": cfg["SPLIT_OPERANDS"],
                      "FAST_MATH": True, "REDUCE_DESC": True}
            name = f"siglip one-pass kmajor {fmt} M{bm} N{bn} D{bd} w{cfg['num_warps']} s{cfg['num_stages']}"
            yield Job(name, "siglip_kmajor", sig, consts, cfg["num_warps"], cfg["num_stages"], True,
                      "siglip_one_pass_over_budget", fmt, (bm, bn, bd), (arch,))


def _reference_jobs(archs):
    sig = {"q_ptr": "*bf16", "k_ptr": "*bf16", "v_ptr": "*bf16", "o_ptr": "*bf16", "lse_ptr": "*fp32",
           "sm_scale": "fp32", "n_ctx": _INT, "stride_row": _INT}
    for arch in archs:
        cfg = reference_attention.config(arch)
        consts = {k: cfg[k] for k in ("HEAD_DIM", "BLOCK_M", "BLOCK_N")}
        yield Job(f"reference M{cfg['BLOCK_M']} N{cfg['BLOCK_N']} D{cfg['HEAD_DIM']} sm_{arch}", "reference", sig,
                  consts, cfg["num_warps"], cfg["num_stages"], True, "reference", "bf16",
                  (cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["HEAD_DIM"]), (arch,))


def _jobs(quick: bool = False, archs=(80, 90)):
    # De-duplicated: small d values can map to the same configuration.
    seen = set()
    for job in [*_reference_jobs(archs), *_uniform_jobs(archs, quick), *_align_jobs(), *_contrastive_jobs(archs, quick),
                *_siglip_jobs(quick), *_siglip_one_pass_jobs(archs, quick),
                *_siglip_kmajor_jobs(archs, quick)]:
        if (job.name, job.archs) not in seen:
            seen.add((job.name, job.archs))
            yield job


_KERNELS = {
    "uniform": lambda: uniform._uniform_rows_kernel,
    "align": lambda: align._align_rows_kernel,
    "contrastive_lse": lambda: contrastive._lse_rows_kernel,
    "contrastive_grad": lambda: contrastive._grad_rows_kernel,
    "siglip": lambda: siglip._siglip_kernel,
    "siglip_one_pass": lambda: siglip._siglip_one_pass_kernel,
    "siglip_kmajor": lambda: siglip_kmajor._siglip_kmajor_kernel,
    "reference": lambda: reference_attention.attention_forward_kernel,
}


def _ptxas_stats(ptx: str, arch: int) -> tuple:
    """(registers, spill bytes) from ptxas -v, with the ptxas Triton itself uses."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        out = subprocess.run([get_ptxas(arch).path, "-v", f"--gpu-name={sm_arch_from_capability(arch)}",
                              src, "-o", os.path.join(tmp, "k.cubin")], capture_output=True, text=True, check=True)
    log = out.stderr + out.stdout
    regs = int(re.search(r"Used (\d+) registers", log).group(1))
    spills = sum(int(v) for v in re.findall(r"(\d+) bytes spill (?:stores|loads)", log))
    return regs, spills


def _inner_trips(job: Job) -> int | None:
    """The inner loop's trips per step of a loop-nest family's outer loop (sass_mix.main_loop),
    None for the others: the one pass's chunk loop takes S's K - 1 chunks past the held one."""
    return job.consts["N_CHUNKS"] - 1 if job.family == "siglip_one_pass_chunk_loop" else None


def compile_one(job: Job, arch: int) -> dict:
    row = {"name": job.name, "arch": arch, "family": job.family, "dtype": job.dtype,
           "enforced": loop_gate.MIN_WORK[job.family].enforced}
    chunked = loop_gate.chunked_problem(job.family, job.dtype, arch, job.consts.get("STATIC_SHIFT", True), job.d,
                                        job.variant)
    try:
        full_sig = dict(job.sig, **{k: "constexpr" for k in job.consts})
        src = ASTSource(fn=_KERNELS[job.kernel](), signature=full_sig, constexprs=job.consts)
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                                  options={"num_warps": job.num_warps, "num_stages": job.num_stages})
        ptx = compiled.asm["ptx"]
        regs, spills = _ptxas_stats(ptx, arch)
        kinds = sorted(set(re.findall(r"\b(wgmma\.mma_async|mma\.sync)\b", ptx)))
        trips = _inner_trips(job)
        mix = sass_mix.loop_mix(sass_mix.disassemble(compiled.asm["cubin"]), job.num_warps, *job.tile,
                                inner_trips=trips)
        row.update(regs=regs, spills=spills, smem=int(compiled.metadata.shared), mix=mix)
        problems = [chunked] if chunked else []
        if trips is not None and not mix.has_loop:
            problems.append("no loop nest (a loop with tensor-core instructions inside another)")
        if spills:
            problems.append(f"{spills} bytes spilled")
        if row["smem"] > SMEM_LIMIT.get(arch, 99 * 1024):
            problems.append(f"shared memory {row['smem']} B above the sm_{arch} limit")
        if job.uses_dot and not kinds:
            problems.append("no tensor-core instruction (mma/wgmma) in the PTX")
        if job.uses_dot:
            problems += loop_gate.problems(job.family, job.dtype, arch, mix)
        row["problem"] = "; ".join(problems)
    except Exception as exc:  # noqa: BLE001  (reported, and fails the check)
        row["problem"] = "; ".join(filter(None, (
            chunked, f"compile error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")))
    return row


def _kernel_field(name: str) -> str:
    """The configuration's name as one field: "uniform bfloat16/ieee M64 grad" ->
    "uniform:bfloat16/ieee:M64:grad"."""
    return ":".join(name.split())


def _format(row: dict) -> str:
    head = f"arch={row['arch']} kernel={_kernel_field(row['name'])} dtype={row['dtype']}"
    gate = f"gate={'enforced' if row['enforced'] else 'report'}"
    if "regs" not in row:
        return f"{head} {gate} FAIL: {row['problem']}"
    mix = row["mix"]
    line = (f"{head} tensor_core={mix.tensor_core} regs={row['regs']} spills={row['spills']} "
            f"gemms_per_tile={mix.gemms_per_tile:.2f} exps_per_pair={mix.exps_per_pair:.2f} "
            f"nonmma_per_pair={mix.nonmma_per_pair:.1f} smem={row['smem']} {gate}")
    if mix.fallback_exps_per_pair is not None:  # the other arm of a two-version step (sass_mix.step_arms)
        line += (f" fallback_exps_per_pair={mix.fallback_exps_per_pair:.2f}"
                 f" fallback_nonmma_per_pair={mix.fallback_nonmma_per_pair:.1f}")
    return line + (f" FAIL: {row['problem']}" if row["problem"] else "")


def _loss_lines(rows: list) -> list:
    """(line, failed) per contrastive loss, arch, format and one-chunk width: the sums of
    its passes' measured GEMMs and exps against the loss's minimum.  fp16's row gradient
    keeps the online max (contrastive.row_lse)."""
    found = {}
    for row in rows:
        parts = [p for p in row["name"].split() if p != "halves"]  # the 3xTF32 halves' tag, not a field
        if parts[0] != "contrastive" or "chunked" in parts or "mix" not in row:
            continue
        kernel, fmt, block_d, what, shift = parts[1], parts[2], parts[5], parts[6], parts[7]
        found[(row["arch"], fmt, block_d, kernel, what, shift)] = row["mix"]
    groups = sorted({key[:3] for key in found})
    out = []
    for arch, fmt, block_d in groups:
        for loss, ((gemms, exps), passes) in loop_gate.LOSS_MIN_WORK.items():
            mixes = [found.get((arch, fmt, block_d, kernel, what,
                                "online" if kernel == "lse_grad" and fmt == "fp16" else "static"))
                     for kernel, what in passes]
            if any(m is None for m in mixes):
                continue
            allowed = gemms * (1 + (loop_gate.TF32X3_EXTRA_GEMMS_PER_GEMM if fmt == "tf32x3" else 0))
            got_gemms = sum(m.gemms_per_tile for m in mixes)
            got_exps = sum(m.exps_per_pair for m in mixes)
            failed = got_gemms > allowed + 1e-9 or got_exps > exps * loop_gate.EXP_SLACK + 1e-9
            out.append((f"arch={arch} loss={loss} dtype={fmt} block_d={block_d[1:]} gemms_per_tile={got_gemms:.2f} "
                        f"exps_per_pair={got_exps:.2f} minimum={gemms}/{exps} gate=enforced"
                        + (" FAIL: above the loss's minimum" if failed else ""), failed))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pyhypersphere.triton_kernels.compile_check",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="80,90", help="comma-separated compute capabilities, e.g. 80,90")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compiles")
    parser.add_argument("--quick", action="store_true",
                        help="CI's subset of the configurations (QUICK_UNIFORM, QUICK_CONTRASTIVE)")
    parser.add_argument("--filter", default="", help="only configurations whose name matches this regular expression")
    args = parser.parse_args(argv)
    archs = [int(a) for a in args.arch.split(",") if a.strip()]
    work = [(job, arch) for job in _jobs(args.quick, archs) if re.search(args.filter, job.name)
            for arch in archs if not job.archs or arch in job.archs]
    rows = []
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for row in pool.map(compile_one, *zip(*work)):  # in order, as they finish
            rows.append(row)
            print(_format(row), flush=True)
    loss_lines = _loss_lines(rows)
    for line, _ in loss_lines:
        print(line)
    failed = [r for r in rows if r["problem"]]
    loss_failed = sum(1 for _, bad in loss_lines if bad)
    print(f"compile_check: {len(rows)} compiles, {len(failed)} failed, {len(loss_lines)} contrastive losses, "
          f"{loss_failed} above their minimum (triton {triton.__version__})")
    return 1 if failed or loss_failed else 0


if __name__ == "__main__":
    sys.exit(main())
