"""The instruction mix of a compiled kernel's main loop, read from its cubin's SASS: the one
SASS parser of both compile gates, Triton's (compile_check, issue 23; nvdisasm -c text)
and CUDA C++'s (tools/sass_loop_stats.py, issue 24; cuobjdump -sass listings of several
functions, branch targets as addresses, and cuobjdump -res-usage).

How many tensor-core GEMMs one tile's step
issues, how many exps and how many other instructions per pair of the tile.  Static
counts of the loop body, not a profile: every instruction of the loop (loops: its
blocks) counts once (both arms of a branch inside the body included), except
for a body with two versions of its step (step_arms: an if/else whose arms both issue
exps, a tile-level choice between two ways of computing the weights): there the counts
follow the path through the arm with fewer exps (the common step) and the path through
the other arm is reported beside them (fallback_*).

Definitions:
- the main loop: among the innermost loops (loops: the control-flow graph's natural
  loops) that contain a tensor-core instruction, the one with the most tensor-core
  instructions; on a tie, the one with the fewest instructions (a masked diagonal stage
  loses to the plain one); for a loop nest measured per outer step (main_loop's
  inner_trips), the outer loop's step with its inner loops' trips;
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

# Instructions that end a basic block; an unguarded BRA/JMP (no modifier: BRA.DIV and
# the like are conditional) and an unguarded EXIT/RET have no fall-through.  A CALL
# goes to its target and falls through: ptxas's loops leave by a guarded
# "CALL.REL.NOINC `(.L_x_2)" to the code after the loop, then branch back.
_JUMPS = ("BRA", "BRX", "JMP")
_ENDS = (*_JUMPS, "CALL", "EXIT", "RET")
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
    target: str | None  # a branch's or call's target: a label, or an address as "0x..." (cuobjdump)
    address: int = -1
    guarded: bool = False  # under a predicate (@P0, @!UP1, ptxas's never-taken @!PT; not @PT)

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
        tgt = _BRANCH_TARGET.search(rest) if opcode.split(".")[0] in (*_JUMPS, "CALL") else None
        target = (tgt.group(1) or hex(int(tgt.group(2), 16))) if tgt else None
        guarded = guard is not None and guard.strip() != "@PT"
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


def _targets(instrs) -> dict:
    """{branch target as parse spells it (label or "0x..." address): instruction index}."""
    at = {hex(i.address): i.index for i in instrs if i.address >= 0}
    at.update({i.label: i.index for i in instrs if i.label})
    return at


def blocks(instrs) -> tuple:
    """The control-flow graph: (blocks, successors), blocks as (first, last) instruction
    indices in layout order, successors[b] the indices of the blocks control can pass to
    from block b.  A block starts at a label, a branch target or after a block end
    (_ENDS)."""
    at = _targets(instrs)
    starts = {0} | {at[i.target] for i in instrs if i.target in at}
    starts |= {i.index for i in instrs if i.label} | {i.index + 1 for i in instrs if i.base in _ENDS}
    firsts = sorted(k for k in starts if k < len(instrs))
    spans = [(lo, hi - 1) for lo, hi in zip(firsts, [*firsts[1:], len(instrs)])]
    block_of = {lo: b for b, (lo, _) in enumerate(spans)}
    succs = []
    for b, (_, hi) in enumerate(spans):
        end, out = instrs[hi], set()
        if end.target in at:
            out.add(block_of[at[end.target]])
        final = not end.guarded and (end.base in ("EXIT", "RET") or end.opcode in ("BRA", "JMP"))
        if not final and b + 1 < len(spans):
            out.add(b + 1)
        succs.append(sorted(out))
    return spans, succs


def _reaches(succs, start, avoid) -> set:
    """The blocks reachable from `start` (included) without passing through `avoid`."""
    seen, todo = {start}, [start]
    while todo:
        for nxt in succs[todo.pop()]:
            if nxt != avoid and nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


@dataclasses.dataclass(frozen=True)
class Loop:
    head: int  # the header's first instruction index
    back: int  # the back branch's index
    body: tuple  # the loop's instruction indices, in layout order


def loops(instrs) -> list:
    """Every loop of the control-flow graph (blocks), one per back edge: a branch to a
    block at or before it that dominates it (every path from the kernel's entry to the
    branch passes through that block, its header; code the entry does not reach counts
    as dominated, e.g. ptxas's trap loop).  Its body is the natural loop: the header and
    every block that reaches the back branch without passing through the header, so a
    loop laid out contiguously is its range from the header to the back branch, and one
    whose back branch ptxas parks after other code (or past the kernel's exit) leaves
    that code out.  A branch back into the middle of a loop from code laid out after it
    (sm_90's out-of-line mbarrier waits, which branch back past their wait) is no back
    edge: the branch target does not dominate it."""
    spans, succs = blocks(instrs)
    if not spans:
        return []
    preds = [[] for _ in spans]
    for b, out in enumerate(succs):
        for nxt in out:
            preds[nxt].append(b)
    block_at = {lo: b for b, (lo, _) in enumerate(spans)}
    at, out = _targets(instrs), []
    # ptxas's out-of-line code, past the kernel's last EXIT: slow paths it parks there,
    # such as sm_90's mbarrier retry loops, which a loop's wait branches to and which
    # branch back into the loop (not its step: left out of the loop's body unless the
    # back branch itself sits there).
    out_of_line = max((i.index for i in instrs if i.base == "EXIT"), default=len(instrs))
    for src, (_, hi) in enumerate(spans):
        target = at.get(instrs[hi].target, hi + 1) if instrs[hi].base in _JUMPS else hi + 1
        if target > hi:
            continue  # a forward branch, or none
        head = block_at[target]
        # The header dominates the branch: without it, the entry does not reach the branch.
        if head != 0 and src in _reaches(succs, 0, head):
            continue
        natural = {head} | (_reaches(preds, src, head) if src != head else set())
        kept = sorted(b for b in natural if b == src or spans[b][0] < out_of_line)
        out.append(Loop(target, hi, tuple(k for b in kept for k in range(spans[b][0], spans[b][1] + 1))))
    return out


def _main_path(paths):
    """Of candidate paths (lists of Instr), the one with the most tensor-core
    instructions; on a tie, the fewest instructions (a masked stage loses to the plain
    one).  None without one."""
    return min(paths, key=lambda path: (-sum(1 for i in path if i.base in _MMA), len(path)), default=None)


def main_loop(instrs, inner_trips: int | None = None):
    """The main loop's instructions (see the module docstring), or None without one.

    With inner_trips, the main loop nest's instead: of the loops whose loops with mma
    inside are all innermost (a tile loop around a chunk loop), chosen as the main loop
    is, the path of one outer step: its instructions outside those inner loops once and
    theirs `inner_trips` times each (the inner loop's trip count per outer step)."""
    with_mma = [lp for lp in loops(instrs) if any(instrs[k].base in _MMA for k in lp.body)]
    bodies = [set(lp.body) for lp in with_mma]
    # Innermost: no other loop with mma inside (an outer loop around a pipelined inner one
    # also holds the inner loop's peeled iterations, so it would count more).
    inner = [[other for other in bodies if other < body] for body in bodies]
    if inner_trips is None:
        return _main_path([[instrs[k] for k in lp.body] for lp, within in zip(with_mma, inner) if not within])
    nests = []
    for lp, within in zip(with_mma, inner):
        if within and all(not any(o < w for o in bodies) for w in within):
            in_inner = set().union(*within)
            nests.append([instrs[k] for k in lp.body for _ in range(inner_trips if k in in_inner else 1)])
    return _main_path(nests)


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


def loop_mix(sass: str, num_warps: int, block_m: int, block_n: int, block_d: int,
             inner_trips: int | None = None) -> LoopMix:
    """The main loop's mix for a kernel of `num_warps` warps over BLOCK_M x BLOCK_N tiles
    with products over BLOCK_D features.  A body with two versions of its step
    (step_arms) counts the path through the arm with fewer exps (the common step; what
    the gate holds to the minimum) and reports the path through the other in the
    fallback_* fields: the instructions outside the arms count in both.  With
    inner_trips, the main loop nest's step (main_loop), its inner loops counted that many
    times (no step_arms split)."""
    instrs = parse(sass)
    kind = tensor_core_kind(instrs)
    body = main_loop(instrs, inner_trips)
    if body is None:
        return LoopMix(kind, 0.0, 0.0, 0.0, False)
    pairs = block_m * block_n
    threads = 32 * num_warps

    def mix(path):
        n_mma = sum(1 for i in path if i.base in _MMA)
        exps = sum(1 for i in path if i.opcode == "MUFU.EX2")
        return (sum(mma_macs(i, num_warps) for i in path) / (block_m * block_n * block_d),
                exps * threads / pairs, (len(path) - n_mma) * threads / pairs)

    arms = step_arms(body) if inner_trips is None else None
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
