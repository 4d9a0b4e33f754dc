"""The instruction mix of a compiled kernel's main loop, read from its cubin's SASS: the one
SASS parser of both compile gates, Triton's (compile_check, issue 23; nvdisasm -c text)
and CUDA C++'s (tools/sass_loop_stats.py, issue 24; cuobjdump -sass listings of several
functions, branch targets as addresses, and cuobjdump -res-usage).

How many tensor-core GEMMs one tile's step
issues, how many exps and how many other instructions per pair of the tile.  Static
counts of the loop body, not a profile: every instruction between the loop's head and
its backward branch counts once (both arms of a branch inside the body included), except
for a body with two versions of its step (step_arms: an if/else whose arms both issue
exps, a tile-level choice between two ways of computing the weights): there the counts
follow the path through the arm with fewer exps (the common step) and the path through
the other arm is reported beside them (fallback_*).

Definitions:
- the main loop: among the innermost loops (a branch back to an earlier label) that
  contain a tensor-core instruction, the one with the most tensor-core instructions;
  on a tie, the one with the fewest instructions (a masked diagonal stage loses to the
  plain one);
- tensor-core instructions: HGMMA (wgmma, one per warpgroup of 4 warps), HMMA and DMMA
  (mma.sync, one per warp); their shapes give the multiply-adds they issue;
- gemms_per_tile: the loop body's multiply-adds over those of one BLOCK_M x BLOCK_N x
  BLOCK_D product (a 3xTF32 product counts as 3: it issues three);
- exps_per_pair: MUFU.EX2 executed by all threads of a CTA over the tile's pairs;
- nonmma_per_pair: every other instruction of the body, executed by all threads, over
  the tile's pairs (the issue slots that compete with the exps and the mma issue).
"""

import dataclasses
import os
import re
import subprocess
import tempfile

# SASS as nvdisasm prints it: "/*0a30*/  @!P5 BRA `(.L_x_3) ;" and labels ".L_x_3:"; as
# cuobjdump prints it: "/*0a30*/  @!P5 BRA 0x9c0 ;", functions headed "Function : name".
_INSTR = re.compile(r"^\s*/\*([0-9a-f]+)\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Za-z0-9_.]*)(.*?);")
_LABEL = re.compile(r"^\s*(\.L\w+):")
_BRANCH_TARGET = re.compile(r"`\((\.L\w+)\)|\s(0x[0-9a-f]+)\s*$")
_FUNCTION = re.compile(r"Function\s*:\s*(\S+)")
_RESOURCES = re.compile(r"REG:(\d+)\s+STACK:(\d+)")
# mma.sync shapes SASS spells without separators (HMMA.16816 = m16n8k16) -> (m, n, k);
# others are spelled "MxNxK" (HGMMA.64x64x16, DMMA.8x8x4 on sm_90).
_PACKED_SHAPES = {"16816": (16, 8, 16), "1688": (16, 8, 8), "16832": (16, 8, 32), "884": (8, 8, 4),
                  "8816": (8, 8, 16), "1684": (16, 8, 4)}
_SHAPE = re.compile(r"^(\d+)x(\d+)x(\d+)$")
WARPGROUP = 4  # warps that issue one HGMMA together
_MMA = ("HGMMA", "HMMA", "DMMA", "IMMA")


@dataclasses.dataclass(frozen=True)
class Instr:
    index: int
    opcode: str  # with modifiers, e.g. "HGMMA.64x64x16.F32.BF16"
    label: str | None  # the label this instruction starts, if any
    target: str | None  # a branch's target: a label, or an address as "0x..." (cuobjdump)
    address: int = -1
    guarded: bool = False  # under a predicate (@P0, @!UP1; not @PT)

    @property
    def base(self) -> str:
        return self.opcode.split(".")[0]


def parse(sass: str) -> list:
    """The instructions of SASS text (one function), in order, with labels and targets."""
    instrs, pending = [], None
    for line in sass.splitlines():
        lab = _LABEL.match(line)
        if lab:
            pending = lab.group(1)
            continue
        m = _INSTR.match(line)
        if not m:
            continue
        guard, opcode, rest = m.group(2), m.group(3), m.group(4)
        tgt = _BRANCH_TARGET.search(rest) if opcode.split(".")[0] in ("BRA", "BRX", "JMP") else None
        target = (tgt.group(1) or hex(int(tgt.group(2), 16))) if tgt else None
        guarded = guard is not None and guard.strip().lstrip("@!") != "PT"
        instrs.append(Instr(len(instrs), opcode, pending, target, int(m.group(1), 16), guarded))
        pending = None
    return instrs


def parse_functions(sass: str) -> dict:
    """{mangled name: [Instr]} of every function of a cuobjdump -sass listing."""
    chunks, name = {}, None
    for line in sass.splitlines():
        header = _FUNCTION.search(line)
        if header:
            name = header.group(1)
            chunks[name] = []
        elif name is not None:
            chunks[name].append(line)
    return {n: parse("\n".join(lines)) for n, lines in chunks.items()}


def parse_resources(res_usage: str) -> dict:
    """{mangled name: (registers, stack bytes)} from cuobjdump -res-usage."""
    out, name = {}, None
    for line in res_usage.splitlines():
        header = re.search(r"Function\s+(\S+?):?\s*$", line)
        if header:
            name = header.group(1)
            continue
        found = _RESOURCES.search(line)
        if found and name:
            out[name] = (int(found.group(1)), int(found.group(2)))
            name = None
    return out


def mma_macs(instr: Instr, num_warps: int) -> int:
    """Multiply-adds one tensor-core instruction issues for a whole CTA (0 if it is not one)."""
    parts = instr.opcode.split(".")
    if parts[0] not in _MMA or len(parts) < 2:
        return 0
    spelled = _SHAPE.match(parts[1])
    shape = tuple(int(v) for v in spelled.groups()) if spelled else _PACKED_SHAPES.get(parts[1])
    if shape is None:
        raise ValueError(f"sass_mix: unknown mma shape in {instr.opcode!r}")
    m, n, k = shape
    # An HGMMA is one instruction of a warpgroup; the others, one of a warp.
    return m * n * k * (num_warps // WARPGROUP if parts[0] == "HGMMA" else num_warps)


def tensor_core_kind(instrs) -> str:
    bases = {i.base for i in instrs}
    if "HGMMA" in bases:
        return "wgmma"
    return "mma" if bases & set(_MMA) else "none"


def loops(instrs) -> list:
    """(first, last) instruction indices of every loop: a branch back to a label at or
    before it.  The body is the contiguous range, as the compilers lay loops out."""
    at = {hex(i.address): i.index for i in instrs if i.address >= 0}
    at.update({i.label: i.index for i in instrs if i.label})
    return [(at[i.target], i.index) for i in instrs if i.target in at and at[i.target] <= i.index]


def main_loop(instrs):
    """The main loop's instructions (see the module docstring), or None without one."""
    with_mma = [(lo, hi) for lo, hi in loops(instrs) if any(i.base in _MMA for i in instrs[lo:hi + 1])]
    # Innermost: no other loop with mma inside (an outer loop around a pipelined inner one
    # also holds the inner loop's peeled iterations, so it would count more).
    innermost = [(lo, hi) for lo, hi in with_mma
                 if not any((a, b) != (lo, hi) and lo <= a and b <= hi for a, b in with_mma)]
    best, best_key = None, None
    for lo, hi in innermost:
        body = instrs[lo:hi + 1]
        key = (-sum(1 for i in body if i.base in _MMA), len(body))
        if best_key is None or key < best_key:
            best, best_key = body, key
    return best


@dataclasses.dataclass(frozen=True)
class LoopMix:
    tensor_core: str  # "wgmma", "mma" or "none" (of the whole kernel)
    gemms_per_tile: float
    exps_per_pair: float
    nonmma_per_pair: float
    has_loop: bool
    # A body with two versions of its step (step_arms): the path through the other arm.
    fallback_exps_per_pair: float | None = None
    fallback_nonmma_per_pair: float | None = None


def step_arms(body) -> tuple | None:
    """The two arms of an if/else over a loop step's weights, as (first, last) indices
    into `body`, or None: a guarded forward branch to a label inside the body whose
    fall-through arm ends with an unguarded branch to a later label inside the body (the
    join), both arms issuing exps.  (A tile-level choice between two ways of computing
    the same weights, e.g. the contrastive gradient's tile shift and its two-exp step;
    an if without an else, or arms without exps, are no such split.)"""
    at = {i.label: k for k, i in enumerate(body) if i.label}
    at.update({hex(i.address): k for k, i in enumerate(body) if i.address >= 0})
    for k, branch in enumerate(body):
        if branch.base != "BRA" or not branch.guarded or at.get(branch.target, -1) <= k + 1:
            continue
        start = at[branch.target]
        jump = body[start - 1]
        if jump.base != "BRA" or jump.guarded or at.get(jump.target, -1) <= start:
            continue
        arms = ((k + 1, start - 1), (start, at[jump.target] - 1))
        if all(any(i.opcode == "MUFU.EX2" for i in body[lo:hi + 1]) for lo, hi in arms):
            return arms
    return None


def loop_mix(sass: str, num_warps: int, block_m: int, block_n: int, block_d: int) -> LoopMix:
    """The main loop's mix for a kernel of `num_warps` warps over BLOCK_M x BLOCK_N tiles
    with products over BLOCK_D features.  A body with two versions of its step
    (step_arms) counts the path through the arm with fewer exps (the common step; what
    the gate holds to the minimum) and reports the path through the other in the
    fallback_* fields: the instructions outside the arms count in both."""
    instrs = parse(sass)
    kind = tensor_core_kind(instrs)
    body = main_loop(instrs)
    if body is None:
        return LoopMix(kind, 0.0, 0.0, 0.0, False)
    pairs = block_m * block_n
    threads = 32 * num_warps

    def mix(path):
        n_mma = sum(1 for i in path if i.base in _MMA)
        exps = sum(1 for i in path if i.opcode == "MUFU.EX2")
        return (sum(mma_macs(i, num_warps) for i in path) / (block_m * block_n * block_d),
                exps * threads / pairs, (len(path) - n_mma) * threads / pairs)

    arms = step_arms(body)
    if arms is None:
        return LoopMix(kind, *mix(body), True)
    inside = {k for lo, hi in arms for k in range(lo, hi + 1)}
    outside = [i for k, i in enumerate(body) if k not in inside]
    common, fallback = sorted((mix(outside + body[lo:hi + 1]) for lo, hi in arms), key=lambda m: m[1])
    return LoopMix(kind, *common, True, fallback[1], fallback[2])


def disassemble(cubin: bytes) -> str:
    """SASS text of a cubin, with the nvdisasm Triton ships (no CUDA toolkit needed)."""
    from triton import knobs

    tool = knobs.nvidia.nvdisasm.path
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        return subprocess.run([tool, "-c", path], capture_output=True, text=True, check=True).stdout
