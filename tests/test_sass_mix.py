"""The SASS parser of both compile gates (pyhypersphere/triton_kernels/sass_mix.py), the
Triton gate's rules (loop_gate.py) and the CUDA gate's report (tools/sass_loop_stats.py)
on small hand-written SASS in nvdisasm's and cuobjdump's formats: loops found from
backward branches, the main loop chosen, tensor-core shapes turned into GEMMs per tile,
exps and other instructions per pair.  Expected counts are worked out by hand."""

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("triton")

from pyhypersphere.triton_kernels import loop_gate, sass_mix  # noqa: E402


def sass(*lines):
    """nvdisasm -c style text from "label:" and instruction lines (addresses added)."""
    out, addr = [], 0
    for line in lines:
        if line.endswith(":"):
            out.append(line)
        else:
            out.append(f"        /*{addr:04x}*/                   {line} ;")
            addr += 16
    return "\n".join(out)


# A wgmma loop: S from 2 HGMMA 64x64x16 (d = 32), a forward branch inside the body, P V
# from 2 HGMMA 64x32x16.
WGMMA_LOOP = sass(
    "S2R R0, SR_TID.X",
    ".L_x_1:",
    "WARPGROUP.ARRIVE",
    "HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], RZ, !UPT",
    "HGMMA.64x64x16.F32.BF16 R24, gdesc[UR8], R24, gsb0",
    "FFMA R2, R24, R3, -R4",
    "MUFU.EX2 R5, R2",
    "MUFU.EX2 R6, R2",
    "@P0 BRA `(.L_x_2)",
    "FADD R7, R5, R6",
    ".L_x_2:",
    "HGMMA.64x32x16.F32.BF16 R40, R8, gdesc[UR12].tnspB, R40",
    "HGMMA.64x32x16.F32.BF16 R40, R12, gdesc[UR12].tnspB, R40, gsb0",
    "@!P5 BRA `(.L_x_1)",
    "EXIT",
)


def test_parse_labels_and_branches():
    instrs = sass_mix.parse(WGMMA_LOOP)
    assert [i.opcode for i in instrs][:4] == ["S2R", "WARPGROUP.ARRIVE", "HGMMA.64x64x16.F32.BF16",
                                              "HGMMA.64x64x16.F32.BF16"]
    assert instrs[1].label == ".L_x_1" and instrs[0].label is None
    assert instrs[7].opcode == "BRA" and instrs[7].target == ".L_x_2"  # predicated branch
    # The forward branch is no loop; the backward one spans .L_x_1 .. the branch, both
    # arms of the forward branch included (laid out contiguously: its whole range).
    assert sass_mix.loops(instrs) == [sass_mix.Loop(1, 11, tuple(range(1, 12)))]


def test_wgmma_loop_mix():
    # 8 warps = 2 warpgroups, tile 64 x 64, d = 32.  Body: 11 instructions, 4 HGMMA.
    mix = sass_mix.loop_mix(WGMMA_LOOP, num_warps=8, block_m=64, block_n=64, block_d=32)
    assert mix.tensor_core == "wgmma" and mix.has_loop
    # MACs: 2 * 64*64*16 + 2 * 64*32*16 = 196608 per warpgroup, x2 warpgroups, over 64*64*32.
    assert mix.gemms_per_tile == pytest.approx(3.0)
    # 2 EX2 per thread x 256 threads over 4096 pairs.
    assert mix.exps_per_pair == pytest.approx(0.125)
    # 11 - 4 = 7 other instructions x 256 / 4096.
    assert mix.nonmma_per_pair == pytest.approx(7 / 16)


def test_mma_sync_shapes_and_main_loop_choice():
    # Two loops with mma: a masked stage (more instructions) and the plain one; the plain
    # loop (fewest instructions at the same mma count) is the main loop.  A loop without
    # mma (an epilogue) is never chosen.
    text = sass(
        ".L_x_0:",
        "HMMA.16816.F32.BF16 R4, R8, R12, R4",
        "HMMA.16816.F32.BF16 R4, R8, R14, R4",
        "MUFU.EX2 R2, R3",
        "ISETP.GE.AND P1, PT, R1, R2, PT",
        "FSEL R3, R3, -INF, P1",
        "@P2 BRA `(.L_x_0)",
        ".L_x_5:",
        "HMMA.16816.F32.BF16 R4, R8, R12, R4",
        "HMMA.16816.F32.BF16 R4, R8, R14, R4",
        "MUFU.EX2 R2, R3",
        "@P2 BRA `(.L_x_5)",
        ".L_x_9:",
        "FADD R1, R1, R2",
        "FADD R1, R1, R2",
        "FADD R1, R1, R2",
        "@P3 BRA `(.L_x_9)",
    )
    body = sass_mix.main_loop(sass_mix.parse(text))
    assert [i.opcode for i in body] == ["HMMA.16816.F32.BF16"] * 2 + ["MUFU.EX2", "BRA"]
    # An outer loop around it, holding a peeled iteration (more mma): still the inner one.
    nested = "\n".join([sass(".L_x_7:", "HMMA.16816.F32.BF16 R4, R8, R12, R4"), text, sass("@P4 BRA `(.L_x_7)")])
    body = sass_mix.main_loop(sass_mix.parse(nested))
    assert [i.opcode for i in body] == ["HMMA.16816.F32.BF16"] * 2 + ["MUFU.EX2", "BRA"]
    # 4 warps, tile 32 x 32, d = 16: 2 x 16*8*16 MACs x 4 warps = 16384 = 1 GEMM of 32*32*16.
    mix = sass_mix.loop_mix(text, num_warps=4, block_m=32, block_n=32, block_d=16)
    assert mix.tensor_core == "mma"
    assert mix.gemms_per_tile == pytest.approx(1.0)
    assert mix.exps_per_pair == pytest.approx(128 / 1024)
    assert mix.nonmma_per_pair == pytest.approx(2 * 128 / 1024)


# A loop whose step comes in two versions: a guarded branch over the fall-through arm
# (two exps), which jumps to the join, and the branch target's arm (one exp).
TWO_STEP_LOOP = sass(
    ".L_x_1:",
    "HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], RZ, !UPT, gsb0",
    "FSETP.GT.AND P0, PT, R2, R3, PT",
    "@!P0 BRA `(.L_x_2)",
    "FFMA R4, R24, R5, -R6",
    "MUFU.EX2 R4, R4",
    "FFMA R7, R24, R5, -R8",
    "MUFU.EX2 R7, R7",
    "FFMA R4, R4, R9, R7",
    "BRA `(.L_x_3)",
    ".L_x_2:",
    "FFMA R4, R24, R5, -R10",
    "MUFU.EX2 R4, R4",
    "FMUL R4, R4, R11",
    ".L_x_3:",
    "HGMMA.64x32x16.F32.BF16 R40, R4, gdesc[UR12].tnspB, R40, gsb0",
    "@P5 BRA `(.L_x_1)",
    "EXIT",
)


def test_two_versions_of_the_step_count_the_common_path_and_report_the_other():
    body = sass_mix.main_loop(sass_mix.parse(TWO_STEP_LOOP))
    assert sass_mix.step_arms(body) == ((3, 8), (9, 11))
    # 4 warps (one warpgroup), tile 64 x 64, d = 16: outside the arms 5 instructions
    # (2 HGMMA); the one-exp arm 3, the two-exp arm 6 (with its jump to the join).
    mix = sass_mix.loop_mix(TWO_STEP_LOOP, num_warps=4, block_m=64, block_n=64, block_d=16)
    assert mix.gemms_per_tile == pytest.approx(1.5)
    assert mix.exps_per_pair == pytest.approx(128 / 4096)
    assert mix.nonmma_per_pair == pytest.approx(6 * 128 / 4096)
    assert mix.fallback_exps_per_pair == pytest.approx(2 * 128 / 4096)
    assert mix.fallback_nonmma_per_pair == pytest.approx(9 * 128 / 4096)
    # An if without an else (WGMMA_LOOP's) is no such split: everything counts once.
    assert sass_mix.loop_mix(WGMMA_LOOP, 8, 64, 64, 32).fallback_exps_per_pair is None


def _counts(text, num_warps, block_m, block_n, block_d, inner_trips=None):
    """(GEMMs per tile, exps per pair, other instructions per pair) of loop_mix."""
    mix = sass_mix.loop_mix(text, num_warps, block_m, block_n, block_d, inner_trips=inner_trips)
    return mix.gemms_per_tile, mix.exps_per_pair, mix.nonmma_per_pair


# sm_90's layout: a loop's mbarrier wait tries once inline and parks its retry loop past
# the kernel's exit, which branches back into the loop's middle (.L_x_2), not to its head.
WAIT_RETRY_LOOP = sass(
    "S2R R0, SR_TID.X",
    ".L_x_1:",
    "HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], RZ, !UPT, gsb0",
    "SYNCS.PHASECHK.TRANS64.TRYWAIT P1, [UR8], R2",
    "@!P1 BRA `(.L_x_5)",
    ".L_x_2:",
    "MUFU.EX2 R4, R24",
    "HGMMA.64x64x16.F32.BF16 R40, R4, gdesc[UR12], R40, gsb0",
    "@P0 BRA `(.L_x_1)",
    "EXIT",
    ".L_x_5:",
    "SYNCS.PHASECHK.TRANS64.TRYWAIT P1, [UR8], R2",
    "@!P1 BRA `(.L_x_5)",
    "BRA `(.L_x_2)",
    ".L_x_6:",
    "BRA `(.L_x_6)",
)


def test_a_branch_back_into_a_loop_from_its_out_of_line_wait_is_no_loop():
    instrs = sass_mix.parse(WAIT_RETRY_LOOP)
    # The loop (1..6), the retry's spin (8..9) and the trap (11): the retry's branch back
    # to .L_x_2 (index 4) is no back edge (.L_x_2 does not dominate it: the entry reaches
    # the retry through the inline wait), and the retry loop, past the exit, is left
    # out of the loop's body.
    assert sass_mix.loops(instrs) == [sass_mix.Loop(1, 6, (1, 2, 3, 4, 5, 6)), sass_mix.Loop(8, 9, (8, 9)),
                                      sass_mix.Loop(11, 11, (11,))]
    # 4 warps, 64 x 64 tile, d = 16: 2 HGMMA = 2 GEMMs, 1 EX2 x 128 threads / 4096 pairs,
    # 4 other instructions (the wait, its branch, the EX2, the back branch).
    assert _counts(WAIT_RETRY_LOOP, 4, 64, 64, 16) == pytest.approx((2.0, 128 / 4096, 4 * 128 / 4096))


# A loop whose back branch ptxas lays out after other code: the head's block jumps over
# an epilogue (.L_x_2, which the loop's exit reaches) to the block with the back branch.
LATCH_AFTER_EPILOGUE = sass(
    "S2R R0, SR_TID.X",
    "@P1 BRA `(.L_x_2)",
    ".L_x_1:",
    "HMMA.16816.F32.BF16 R4, R8, R12, R4",
    "MUFU.EX2 R2, R4",
    "BRA `(.L_x_3)",
    ".L_x_2:",
    "STG.E [R6.64], R2",
    "STG.E [R6.64+0x4], R3",
    "STG.E [R6.64+0x8], R5",
    "EXIT",
    ".L_x_3:",
    "IADD3 R1, R1, 0x1, RZ",
    "@P0 BRA `(.L_x_1)",
    "BRA `(.L_x_2)",
)


def test_a_loop_is_its_blocks_not_its_range():
    instrs = sass_mix.parse(LATCH_AFTER_EPILOGUE)
    # Head block 2..4, back branch block 9..10; the epilogue 5..8 between them is no part.
    assert sass_mix.loops(instrs) == [sass_mix.Loop(2, 10, (2, 3, 4, 9, 10))]
    # 4 warps, 32 x 32 tile, d = 16: one HMMA.16816 per warp = 16*8*16*4 MACs, half a
    # GEMM; 1 EX2 and 4 other instructions x 128 threads over 1024 pairs.
    assert _counts(LATCH_AFTER_EPILOGUE, 4, 32, 32, 16) == pytest.approx((0.5, 128 / 1024, 4 * 128 / 1024))


# A loop nest: a tile loop (.L_x_1) whose step runs S's other feature chunks in an inner
# loop (.L_x_2), then its exp and second product.
_NEST = (
    "S2R R0, SR_TID.X",
    ".L_x_1:",
    "HMMA.16816.F32.BF16 R4, R8, R12, R4",
    ".L_x_2:",
    "LDSM.16.M88.4 R8, [R3]",
    "HMMA.16816.F32.BF16 R4, R8, R12, R4",
    "@P1 BRA `(.L_x_2)",
    "MUFU.EX2 R2, R4",
    "HMMA.16816.F32.BF16 R16, R2, R14, R16",
    "FADD R1, R1, R2",
    "@P0 BRA `(.L_x_1)",
    "EXIT",
)
CHUNK_NEST = sass(*_NEST)
# The same nest as sm_80's ptxas lays it out: the inner loop leaves by a guarded
# CALL.REL.NOINC to the code after it and branches back unguarded.
_INNER_BACK = _NEST.index("@P1 BRA `(.L_x_2)")
CHUNK_NEST_CALL_EXIT = sass(*_NEST[:_INNER_BACK], "@P1 CALL.REL.NOINC `(.L_x_3)", "BRA `(.L_x_2)", ".L_x_3:",
                            *_NEST[_INNER_BACK + 1:])


def test_a_loop_left_by_a_call_is_inside_its_outer_loop():
    # The inner loop (2..5) reaches the outer back branch through its CALL's target, so
    # it is inside the outer loop (1..9): with 3 inner trips, outside it 2 HMMA and 3
    # others; inside 3 x (LDSM, HMMA, CALL, BRA): 5 HMMA = 2.5 GEMMs, 3 + 9 others.
    assert [(lp.head, lp.back) for lp in sass_mix.loops(sass_mix.parse(CHUNK_NEST_CALL_EXIT))] == [(2, 5), (1, 9)]
    assert _counts(CHUNK_NEST_CALL_EXIT, 4, 32, 32, 16, inner_trips=3) == pytest.approx((2.5, 128 / 1024,
                                                                                        12 * 128 / 1024))


def test_a_loop_nest_counts_its_inner_loop_per_trip():
    # 4 warps, 32 x 32 tile, d = 16: an HMMA.16816 is half a GEMM.  The main loop alone
    # is the inner one: 1 HMMA, no exp, 2 other instructions x 128 threads / 1024 pairs.
    assert _counts(CHUNK_NEST, 4, 32, 32, 16) == pytest.approx((0.5, 0.0, 2 * 128 / 1024))
    # The nest with 3 inner trips: outside the inner loop 2 HMMA, EX2, FADD, back branch;
    # the inner loop 3 x (LDSM, HMMA, branch): 5 HMMA = 2.5 GEMMs, 1 EX2, 3 + 6 others.
    assert _counts(CHUNK_NEST, 4, 32, 32, 16, inner_trips=3) == pytest.approx((2.5, 128 / 1024, 9 * 128 / 1024))
    # No trips past the held chunk: the outer step alone.
    assert _counts(CHUNK_NEST, 4, 32, 32, 16, inner_trips=0)[0] == pytest.approx(1.0)
    # Without a loop inside a loop there is no nest to measure.
    assert not sass_mix.loop_mix(WGMMA_LOOP, 8, 64, 64, 32, inner_trips=3).has_loop


def test_spelled_shapes_and_unknown_shape():
    instr = sass_mix.parse(sass("DMMA.8x8x4 R4, R8, R12, R4"))[0]
    assert sass_mix.mma_macs(instr, num_warps=4) == 8 * 8 * 4 * 4
    tf32 = sass_mix.parse(sass("HMMA.1688.F32.TF32 R4, R8, R12, R4"))[0]
    assert sass_mix.mma_macs(tf32, num_warps=2) == 16 * 8 * 8 * 2
    assert sass_mix.mma_macs(sass_mix.parse(sass("FFMA R1, R2, R3, R4"))[0], 4) == 0
    with pytest.raises(ValueError, match="unknown mma shape"):
        sass_mix.mma_macs(sass_mix.parse(sass("HMMA.999.F32 R4, R8, R12, R4"))[0], 4)


def test_no_tensor_core_loop():
    text = sass(".L_x_0:", "FADD R1, R1, R2", "@P0 BRA `(.L_x_0)", "EXIT")
    mix = sass_mix.loop_mix(text, num_warps=4, block_m=64, block_n=64, block_d=64)
    assert mix == sass_mix.LoopMix("none", 0.0, 0.0, 0.0, False)


def _mix(gemms, exps, nonmma, kind="wgmma"):
    return sass_mix.LoopMix(kind, gemms, exps, nonmma, True)


def test_gate_rules():
    assert loop_gate.problems("reference", "bf16", 90, _mix(2.0, 1.05, 8.0)) == []
    assert len(loop_gate.problems("reference", "bf16", 90, _mix(3.0, 2.2, 17.0))) == 3
    assert loop_gate.problems("reference", "bf16", 90, _mix(2.0, 1.0, 8.0, kind="mma")) == ["no wgmma on sm_90"]
    # Before sm_90 mma.sync is right, and the non-mma budget is the arch's own.
    assert loop_gate.problems("reference", "bf16", 80, _mix(2.0, 1.0, 30.0, kind="mma")) == []
    # 3xTF32 issues three tensor-core products per GEMM; fp64 has no instruction budget.
    assert loop_gate.problems("reference", "tf32x3", 90, _mix(6.0, 1.0, 8.0)) == []
    assert loop_gate.problems("reference", "tf32x3", 90, _mix(6.5, 1.0, 8.0)) != []
    assert loop_gate.problems("reference", "tf32x3", 90, _mix(6.0, 1.0, 40.0)) == []
    assert loop_gate.problems("reference", "tf32", 90, _mix(2.0, 1.0, 17.0)) != []
    assert loop_gate.problems("reference", "fp64", 90, _mix(2.0, 0.0, 90.0, kind="mma")) == []
    # Report-only families never fail on the mix; the contrastive kernels' are enforced.
    assert loop_gate.problems("contrastive_grad_chunked", "bf16", 90, _mix(9.0, 9.0, 99.0)) == []
    # The uncertified gradient's tile shift: held to one exp (its common step's count).
    assert loop_gate.problems("contrastive_grad_tile_shift", "bf16", 90, _mix(2.0, 1.0, 9.0)) == []
    assert loop_gate.problems("contrastive_grad_tile_shift", "bf16", 90, _mix(2.0, 2.0, 9.0)) != []
    assert len(loop_gate.problems("contrastive_grad", "bf16", 90, _mix(3.0, 2.0, 17.0))) == 3
    assert loop_gate.problems("contrastive_lse", "bf16", 90, _mix(1.0, 1.0, 13.0)) == []
    assert loop_gate.problems("reference", "bf16", 90, sass_mix.LoopMix("wgmma", 0, 0, 0, False)) != []


def test_chunked_below_the_one_chunk_width_fails_unless_allowed():
    # One chunk, past the width, or a family not held to it: nothing to say.
    assert loop_gate.chunked_problem("uniform_grad", "bf16", 90, True, 256) == ""
    assert loop_gate.chunked_problem("uniform_grad_chunked", "bf16", 90, True, 512) == ""
    assert loop_gate.chunked_problem("siglip_chunked", "bf16", 90, True, 256) == ""
    # bf16 fits d = 256 in one chunk on sm_90, float64's gradient 128: chunking them fails.
    assert "CHUNKED_ALLOWED" in loop_gate.chunked_problem("uniform_grad_chunked", "bf16", 90, True, 256)
    assert loop_gate.chunked_problem("contrastive_grad_chunked", "fp64", 80, False, 128) != ""
    assert loop_gate.chunked_problem("contrastive_grad_chunked", "fp64", 80, False, 256) == ""
    # The allowances: 3xTF32 past 64, past 128 on sm_90 (the launchers' TF32 halves);
    # TF32's gradient past 128 but not its loss on sm_90, except CLIP's column sums there.
    assert loop_gate.chunked_problem("uniform_loss_chunked", "tf32x3", 90, True, 128) != ""
    assert loop_gate.chunked_problem("uniform_grad_chunked", "tf32x3", 90, False, 256) == ""
    assert loop_gate.chunked_problem("uniform_grad_chunked", "tf32x3", 80, True, 128) == ""
    assert loop_gate.chunked_problem("contrastive_grad_chunked", "tf32x3", 90, True, 128) != ""
    assert loop_gate.chunked_problem("contrastive_lse_chunked", "tf32x3", 90, True, 256) == ""
    assert loop_gate.chunked_problem("contrastive_lse_chunked", "tf32x3", 80, True, 128) == ""
    assert loop_gate.chunked_problem("contrastive_lse_grad_chunked", "tf32", 80, False, 256) == ""
    assert loop_gate.chunked_problem("uniform_loss_chunked", "tf32", 90, True, 256) != ""
    assert loop_gate.chunked_problem("contrastive_lse_chunked", "tf32", 90, True, 256, "col-sums") == ""
    assert loop_gate.chunked_problem("contrastive_lse_chunked", "tf32", 90, True, 256, "self") != ""


def test_launchers_chunk_only_what_the_gate_allows():
    # The launchers' block choice (what compile_check compiles) against the allowances,
    # for every format, arch, shift, kernel and width up to the one-chunk width; and the
    # column tiles within the row blocks.
    from pyhypersphere.triton_kernels import compile_check, contrastive, uniform

    kernels = [("uniform_grad", "grad", ""), ("uniform_loss", "lse", ""), ("contrastive_lse", "lse", "self"),
               ("contrastive_lse", "lse_col_sums", "col-sums"), ("contrastive_lse_grad", "lse_grad", "cross"),
               ("contrastive_grad", "grad", "two-sided")]
    chunked = set()
    for dtype, precision, _ in compile_check.UNIFORM_FORMATS:
        fmt = uniform.operand_format(dtype, precision)
        for arch in (80, 90):
            for static in (True, False):
                for d in (16, 64, 65, 128, 129, 200, 256):
                    for family, kernel, variant in kernels:
                        if variant == "col-sums" and not static:
                            continue  # column sums need the static shift (contrastive.row_lse)
                        if family.startswith("uniform"):
                            cfg = uniform.flash_config(fmt, d, kernel == "grad", arch, static)
                        else:
                            cfg = contrastive.contrastive_config(fmt, d, kernel, arch, static)
                        # The diagonal stage and the spans cut the columns at BLOCK_M: a
                        # column tile must not straddle that cut (16 x 32 gave wrong sums).
                        assert cfg["BLOCK_M"] % cfg["BLOCK_N"] == 0, (fmt, arch, d, family, cfg)
                        if not cfg["ONE_CHUNK"]:
                            chunked.add((fmt, arch, d))
                            problem = loop_gate.chunked_problem(f"{family}_chunked", fmt, arch, static, d, variant)
                            assert problem == "", (fmt, arch, static, d, family, variant)
    # Every format is one chunk at d = 64; float32 under "highest" is chunked past it on
    # sm_80, past 128 on sm_90 (the launchers' TF32 halves).
    assert not any(d <= 64 for _, _, d in chunked) and ("tf32x3", 80, 128) in chunked
    assert ("tf32x3", 90, 128) not in chunked and ("tf32x3", 90, 129) in chunked
    assert uniform.flash_config("tf32x3", 128, True, 90, True)["ONE_CHUNK"]


def test_compile_check_reference_line():
    # The CLI (compiled, so outside this process's interpreter mode) on the sm_90
    # reference forward: one line with every field, passing the gate.
    import os
    import subprocess
    import sys

    env = dict(os.environ, TRITON_INTERPRET="0")
    out = subprocess.run([sys.executable, "-m", "pyhypersphere.triton_kernels.compile_check", "--arch", "90",
                          "--filter", "^reference", "--jobs", "1"], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    line = out.stdout.splitlines()[0]
    fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
    for name in ("arch", "kernel", "dtype", "tensor_core", "regs", "spills", "gemms_per_tile", "exps_per_pair",
                 "nonmma_per_pair", "gate"):
        assert name in fields, line
    assert fields["kernel"].startswith("reference") and fields["tensor_core"] == "wgmma", line
    assert float(fields["gemms_per_tile"]) == 2.0 and "FAIL" not in line, line


# Issue 23's minimum work per contrastive loss (GEMMs per tile, exps per pair), as the
# issue states it; SupCon (issue 25) as NT-Xent: an lse over x's rows and its gradient.
ISSUE_23_LOSS_MINIMUM = {"nt_xent": (3, 2), "moco_info_nce": (2, 1), "info_nce": (4, 2), "clip": (5, 3),
                         "supcon": (3, 2)}


def test_contrastive_losses_passes_meet_the_issue_minimum():
    # Each loss's passes, at their enforced families' minimums, add up to at most the
    # issue's minimum for the loss.
    assert set(loop_gate.LOSS_MIN_WORK) == set(ISSUE_23_LOSS_MINIMUM)
    for loss, (gemms, exps) in ISSUE_23_LOSS_MINIMUM.items():
        assert loop_gate.LOSS_MIN_WORK[loss][0] == (gemms, exps)
        got_gemms, got_exps = loop_gate.loss_work(loss)
        assert got_gemms <= gemms and got_exps <= exps, loss
        assert all(loop_gate.MIN_WORK[f].enforced for f in loop_gate.loss_families(loss)), loss


def test_loss_lines_add_up_each_loss_passes():
    from pyhypersphere.triton_kernels import compile_check

    def row(kernel, what, gemms, exps):
        return {"name": f"contrastive {kernel} bf16 M128 N128 D128 {what} static w8 s2", "arch": 90,
                "mix": _mix(gemms, exps, 6.0)}

    rows = [row("lse", "self", 1.0, 1.0), row("grad", "two-sided", 2.0, 1.0), row("lse", "col-sums", 1.0, 1.0),
            row("lse_grad", "cross", 2.0, 1.0), row("grad", "col-terms", 2.0, 1.0)]
    lines = dict((line.split()[1], (line, bad)) for line, bad in compile_check._loss_lines(rows))
    assert set(lines) == {f"loss={loss}" for loss in loop_gate.LOSS_MIN_WORK}
    assert "gemms_per_tile=5.00 exps_per_pair=3.00 minimum=5/3" in lines["loss=clip"][0]
    assert not any(bad for _, bad in lines.values())
    assert "gemms_per_tile=3.00 exps_per_pair=2.00 minimum=3/2" in lines["loss=supcon"][0]
    # A second exp in the gradient pass puts CLIP (two of them), NT-Xent and SupCon above their minimum.
    rows[1] = row("grad", "two-sided", 2.0, 2.0)
    bad = {line.split()[1] for line, failed in compile_check._loss_lines(rows) if failed}
    assert bad == {"loss=clip", "loss=nt_xent", "loss=supcon"}


def test_loss_lines_read_the_3xtf32_halves_names():
    # The kernels fed TF32 halves carry a "halves" tag in their names: their passes still
    # add up to per-loss lines (three TF32 products per GEMM of the minimum).
    from pyhypersphere.triton_kernels import compile_check

    def row(kernel, what, gemms):
        return {"name": f"contrastive {kernel} tf32x3 M64 N32 D128 halves {what} static w4 s2", "arch": 90,
                "mix": _mix(gemms, 1.0, 40.0)}

    rows = [row("lse", "self", 3.0), row("grad", "two-sided", 6.0)]
    lines = dict((line.split()[1], (line, bad)) for line, bad in compile_check._loss_lines(rows))
    assert "gemms_per_tile=9.00 exps_per_pair=2.00 minimum=3/2" in lines["loss=nt_xent"][0]
    assert not lines["loss=nt_xent"][1]


# ---------------------------------------------------------------- the CUDA gate (cuobjdump)

_PATH = Path(__file__).resolve().parents[1] / "tools" / "sass_loop_stats.py"
_SPEC = importlib.util.spec_from_file_location("sass_loop_stats", _PATH)
stats = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(stats)

NAME = ("_ZN13pyhypersphere4cuda51_GLOBAL__N__x19uniform_rows_kernelINS0_5Mma16I13__nv_bfloat16EELi128ELb0EEE"
        "vNS1_10PassParamsINT_4op_tENS7_5acc_tEEE")


def _line(address, text):
    return f"        /*{address:04x}*/                   {text} ;   /* 0x000000000000794d */"


def listing():
    body = [
        (0x00, "IMAD.MOV.U32 R1, RZ, RZ, c[0x0][0x28]"),
        (0x10, "HMMA.16816.F32.BF16 R4, R8, R12, R4"),  # before any loop: not counted
        # outer loop 0x20..0xd0 with an inner loop 0x30..0xa0 holding the products
        (0x20, "LDGSTS.E.BYPASS.128 [R2], desc[UR4][R6.64]"),
        (0x30, "LDSM.16.M88.4 R8, [R3]"),
        (0x40, "HMMA.16816.F32.BF16 R4, R8, R12, R4"),
        (0x50, "HMMA.16816.F32.BF16 R16, R8, R14, R16"),
        (0x60, "FFMA R20, R4, R21, R22"),
        (0x70, "MUFU.EX2 R20, R20"),
        (0x80, "NOP"),
        (0x90, "@P0 STL [R1], R5"),
        (0xa0, "@!P1 BRA 0x30"),
        (0xb0, "BAR.SYNC.DEFER_BLOCKING 0x0"),
        (0xd0, "@P2 BRA 0x20"),
        (0xe0, "EXIT"),
        (0xf0, "BRA 0xf0"),  # the trap loop: no products
    ]
    lines = [f"\t\tFunction : {NAME}", "\t.headerflags @\"EF_CUDA_SM90\""]
    lines += [_line(a, t) for a, t in body]
    return "\n".join(lines)


def test_main_loop_is_the_innermost_with_the_products():
    functions = stats.parse_functions(listing())
    loop = stats.main_loop(functions[NAME])
    # 0x30..0xa0: LDSM, 2 HMMA, FFMA, MUFU, STL, BRA (the NOP excluded)
    assert (loop.instructions, loop.mma, loop.exps, loop.local) == (7, 2, 1, 1)


def test_report_line_and_failures():
    res = f" Function {NAME}:\n  REG:200 STACK:0 SHARED:0 LOCAL:0 CONSTANT[0]:752 TEXTURE:0\n"
    lines, failures = stats.report("90", listing(), res, limit=16.0)
    assert lines == ["arch=sm_90 kernel=rows128_static dtype=bf16 tensor_core=HMMA regs=200 spills=1 "
                     "gemms_per_tile=2 exps_per_pair=0.03 nonmma_per_pair=0.16"]
    assert any("local loads/stores" in f for f in failures)  # the STL is a spill
    _, over = stats.report("90", listing(), res, limit=0.1)
    assert any("non-MMA instructions per pair > 0.1" in f for f in over)


def test_other_functions_are_ignored():
    text = listing().replace("uniform_rows_kernel", "pack_rows_kernel")
    assert stats.report("90", text, "", limit=16.0) == ([], [])


def test_budget_enforced_unless_the_dtype_is_warned(tmp_path, capsys):
    sass, res = tmp_path / "k.sass", tmp_path / "k.res"
    sass.write_text(listing().replace("STL [R1], R5", "FADD R5, R5, R5"))  # no spill: only the budget
    res.write_text(f" Function {NAME}:\n  REG:200 STACK:0 SHARED:0 LOCAL:0\n")
    argv = ["--arch", "90", "--sass", str(sass), "--res-usage", str(res), "--limit", "0.1"]
    assert stats.main(argv) == 1
    assert stats.main(argv + ["--warn-dtypes", "tf32"]) == 1  # bf16 is still enforced
    assert stats.main(argv + ["--warn-dtypes", "tf32,bf16"]) == 0
    assert stats.main(argv + ["--budget", "warn"]) == 0
    assert "OVER BUDGET (not enforced)" in capsys.readouterr().out



def test_cuobjdump_branch_targets_are_addresses():
    functions = sass_mix.parse_functions(listing())
    instrs = functions[NAME]
    assert [i.target for i in instrs if i.base == "BRA"][:2] == ["0x30", "0x20"]
    # The outer loop (0x20..0xd0), the inner one (0x30..0xa0) and the trap, as indices.
    assert sorted((lp.head, lp.back) for lp in sass_mix.loops(instrs)) == [(2, 12), (3, 10), (14, 14)]
    assert [i.opcode for i in sass_mix.main_loop(instrs)][:2] == ["LDSM.16.M88.4", "HMMA.16816.F32.BF16"]


def test_compile_check_enumerates_what_the_siglip_launcher_picks():
    # Every width and format the launcher can meet maps to a compiled configuration: the
    # same blocks its config function returns, a known kernel, a family with a minimum in
    # loop_gate.  (SupCon runs the contrastive kernels: no jobs of its own.)
    from pyhypersphere.triton_kernels import compile_check, siglip, siglip_kmajor

    one_pass = list(compile_check._siglip_one_pass_jobs((80, 90)))
    kmajor = list(compile_check._siglip_kmajor_jobs((80, 90)))
    jobs = [*compile_check._siglip_jobs(), *one_pass, *kmajor]
    assert all(job.family in loop_gate.MIN_WORK and job.kernel in compile_check._KERNELS for job in jobs)
    assert not any(family.startswith("supcon") for family in loop_gate.MIN_WORK)
    names = {job.name for job in jobs}
    for dtype, precision, _ in compile_check.UNIFORM_FORMATS:
        for d in (1, 20, 64, 100, 128, 130, 256, 768, 1100, 1152, 1536):
            cfg = siglip._config(dtype, d, precision)
            tile = f"M{cfg['BLOCK_M']} N{cfg['BLOCK_N']} D{cfg['BLOCK_D']}{'' if cfg['ONE_CHUNK'] else ' chunked'}"
            for role in ("x loss", "x grad", "y grad"):
                assert any(n.startswith(f"siglip {role} ") and f" {tile} w{cfg['num_warps']} " in n for n in names), \
                    (role, dtype, precision, d)
            fmt = compile_check.uniform.operand_format(dtype, precision)
            for arch in (80, 90):
                cfg = siglip_kmajor.kmajor_config(fmt, d, arch)
                if cfg is not None:  # taken before one_pass_config's blocks, which are not compiled there
                    assert any(job.archs == (arch,) and job.name == (
                        f"siglip one-pass kmajor {fmt} M{cfg['BLOCK_M']} N{cfg['BLOCK_N']} D{cfg['BLOCK_D']} "
                        f"w{cfg['num_warps']} s{cfg['num_stages']}") for job in kmajor), (dtype, precision, d, arch)
                    continue
                cfg = siglip.one_pass_config(fmt, d, arch)
                if cfg is None:  # the two sweeps, checked above
                    continue
                # Past one chunk the slice count K is compiled into the kernel (its S loop
                # unrolled, or a loop at run time past its unrolled K): compile_check compiles K at
                # d = 256, 768, 1152 and 1536 (exactly, below), other widths the same
                # blocks at another K.
                tile = f"siglip one-pass {fmt} M{cfg['BLOCK_M']} N{cfg['BLOCK_N']} D{cfg['BLOCK_D']}"
                slices = f" K{cfg['N_CHUNKS']}" if cfg["N_CHUNKS"] > 1 else ""
                loop = " loop" if cfg["CHUNK_LOOP"] else ""
                tail = f"{loop} w{cfg['num_warps']} s{cfg['num_stages']}"
                exact = not slices or d in (256, 768, 1152, 1536)
                assert any(job.archs == (arch,) and (job.name == tile + slices + tail if exact else (
                    job.name.startswith(tile + " K") and job.name.endswith(tail))) for job in one_pass), \
                    (dtype, precision, d, arch)


@pytest.mark.parametrize("older", [True, False])
def test_block_choices_follow_the_installed_triton(monkeypatch, older):
    # Where Triton 3.6's compiler fails or spills on a choice that 3.9 compiles cleanly,
    # a Triton before tiles.NEWEST_CHECKED_TRITON takes the older path, and the gate
    # allows those chunked lines only there.
    from pyhypersphere.triton_kernels import contrastive, siglip, siglip_kmajor, uniform

    for module in (contrastive, loop_gate, siglip, siglip_kmajor, uniform):
        monkeypatch.setattr(module, "triton_before_newest", lambda: older)
    assert contrastive.contrastive_config("bf16", 128, "grad", 90, False)["TILE_SHIFT"] is not older
    assert siglip.one_pass_config("bf16", 128, 90)["BLOCK_N"] == (32 if older else 128)
    assert siglip_kmajor.kmajor_config("tf32", 128, 90)["BLOCK_N"] == (16 if older else 64)
    assert siglip.one_pass_config("fp64", 64, 90) is not None
    assert siglip.one_pass_config("fp64", 16, 80)["num_warps"] == (1 if older else 2)
    assert (siglip.one_pass_config("tf32x3", 128, 80) is None) is older
    assert siglip.one_pass_config("tf32x3", 64, 90)["num_warps"] == (4 if older else 2)
    assert siglip.one_pass_config("tf32x3", 128, 90)["BLOCK_N"] == (16 if older else 32)
    assert siglip.one_pass_config("tf32x3", 256, 90)["BLOCK_N"] == (16 if older else 32)  # gradient slices
    assert siglip.one_pass_config("tf32x3", 384, 90)["CHUNK_LOOP"]
    assert siglip.one_pass_config("bf16", 768, 90)["BLOCK_M"] == (32 if older else 128)  # mma.sync under 3.6
    assert siglip.one_pass_config("bf16", 768, 80)["N_CHUNKS"] == 6
    assert siglip.one_pass_config("bf16", 1536, 80)["BLOCK_M"] == (16 if older else 32)
    assert siglip.one_pass_config("bf16", 1536, 90)["CHUNK_LOOP"]
    assert uniform.flash_config("fp64", 128, True, 90, True)["ONE_CHUNK"] is not older
    assert uniform.flash_config("tf32", 256, False, 80, True)["ONE_CHUNK"] is not older
    allowed = loop_gate.chunked_problem("uniform_grad_chunked", "fp64", 90, True, 128) == ""
    assert allowed is older
