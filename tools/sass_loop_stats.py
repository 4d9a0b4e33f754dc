"""Instruction mix of the row-block kernels' main loop, from `cuobjdump -sass` and
`cuobjdump -res-usage` output (the CUDA compile gate, .ci/cuda_compile_check.sh).

The main loop of a kernel is sass_mix.main_loop's: the innermost loop (backward branch)
with the most tensor-core instructions (HMMA, or DMMA for float64).  Its body is counted statically,
once: for the row kernels one iteration is one column tile of one warp (16 rows x the
tile's columns), so per pair counts are thread instructions, i.e. the warp's count x 32
lanes / (16 x columns).  Out-of-line paths (BRA.DIV fallbacks) are not in the count.

    python tools/sass_loop_stats.py --arch 90 --sass FILE --res-usage FILE [--limit 16]

prints one line per uniformity row kernel and exits 1 when a kernel spills, has a stack
frame, or (bf16, fp16, tf32) has more than --limit non-tensor-core instructions per pair
(reported without failing for the dtypes of --warn-dtypes, or all with --budget warn).
"""

import argparse
import importlib.util
import re
import sys
from dataclasses import dataclass
from pathlib import Path

# The one SASS parser (pyhypersphere/triton_kernels/sass_mix.py), loaded by path: no torch,
# no triton, no package import needed on the CI machine.
_SASS_MIX = Path(__file__).resolve().parents[1] / "pyhypersphere" / "triton_kernels" / "sass_mix.py"
_SPEC = importlib.util.spec_from_file_location("sass_mix", _SASS_MIX)
sass_mix = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(sass_mix)
parse_functions, parse_resources = sass_mix.parse_functions, sass_mix.parse_resources


@dataclass
class LoopStats:
    instructions: int  # in the loop body, NOPs excluded
    mma: int
    exps: int
    local: int  # LDL / STL in the body


def main_loop(instructions: list) -> LoopStats:
    """The stats of sass_mix.main_loop's body; zeros when there is no loop."""
    body = [i for i in (sass_mix.main_loop(instructions) or []) if i.base != "NOP"]
    return LoopStats(len(body), sum(i.base in ("HMMA", "DMMA") for i in body),
                     sum(i.opcode.startswith("MUFU.EX2") for i in body), sum(i.base in ("LDL", "STL") for i in body))


# uniform_rows_kernel<Mma, rows, online>: the precision and the tile's columns.
_KERNELS = [
    (re.compile(r"Mma16I13__nv_bfloat16"), "bf16", 64),
    (re.compile(r"Mma16I6__half"), "fp16", 64),
    (re.compile(r"MmaTf32ILb0E"), "tf32", 64),
    (re.compile(r"MmaTf32ILb1E"), "fp32_3xtf32", 64),
    (re.compile(r"MmaF64"), "fp64", 32),
]
_BUDGETED = ("bf16", "fp16", "tf32")


def describe(name: str):
    """(dtype, tile columns, kernel label) of a row kernel's mangled name, else None."""
    if "uniform_rows_kernel" not in name:
        return None
    rows = re.search(r"ELi(\d+)ELb([01])E", name)
    for pattern, dtype, cols in _KERNELS:
        if pattern.search(name) and rows:
            shift = "online" if rows.group(2) == "1" else "static"
            return dtype, cols, f"rows{rows.group(1)}_{shift}"
    return None


def report(arch: str, sass: str, res_usage: str, limit: float) -> tuple:
    """(lines, failures) for every row kernel of one architecture."""
    resources = parse_resources(res_usage)
    lines, failures = [], []
    for name, instructions in parse_functions(sass).items():
        kind = describe(name)
        if kind is None:
            continue
        dtype, cols, label = kind
        loop = main_loop(instructions)
        pairs = 16 * cols / 32  # a warp's pairs per tile, per lane
        regs, stack = resources.get(name, (-1, -1))
        spills = sum(i.base in ("LDL", "STL") for i in instructions)
        nonmma = (loop.instructions - loop.mma) / pairs
        core = "DMMA" if dtype == "fp64" and loop.mma else ("HMMA" if loop.mma else "none")
        lines.append(f"arch=sm_{arch} kernel={label} dtype={dtype} tensor_core={core} regs={regs} spills={spills} "
                     f"gemms_per_tile={loop.mma} exps_per_pair={loop.exps / pairs:.2f} "
                     f"nonmma_per_pair={nonmma:.2f}")
        if spills or stack:
            failures.append(f"{label} {dtype} sm_{arch}: {spills} local loads/stores, stack {stack} bytes")
        if loop.mma == 0:
            failures.append(f"{label} {dtype} sm_{arch}: no tensor-core main loop found")
        if dtype in _BUDGETED and nonmma > limit:
            failures.append(f"{label} {dtype} sm_{arch}: {nonmma:.2f} non-MMA instructions per pair > {limit}")
    return sorted(lines), failures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", required=True)
    parser.add_argument("--sass", required=True)
    parser.add_argument("--res-usage", required=True)
    parser.add_argument("--limit", type=float, default=16.0)
    parser.add_argument("--budget", choices=("fail", "warn"), default="fail",
                        help="warn: report kernels over --limit without failing")
    parser.add_argument("--warn-dtypes", default="",
                        help="comma-separated dtypes whose kernels over --limit are reported, not failed")
    args = parser.parse_args(argv)
    warned = {d for d in args.warn_dtypes.split(",") if d}
    with open(args.sass) as f:
        sass = f.read()
    with open(args.res_usage) as f:
        res_usage = f.read()
    lines, failures = report(args.arch, sass, res_usage, args.limit)
    print("\n".join(lines))
    if not lines:
        failures.append(f"sm_{args.arch}: no uniformity row kernel found")
    over = [f for f in failures if "per pair >" in f and (args.budget == "warn" or f.split()[1] in warned)]
    hard = [f for f in failures if f not in over]
    for failure in failures:
        print(f"{'FAIL' if failure in hard else 'OVER BUDGET (not enforced)'} {failure}")
    return 1 if hard else 0


if __name__ == "__main__":
    sys.exit(main())
