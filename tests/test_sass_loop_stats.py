"""tools/sass_loop_stats.py (the CUDA compile gate's SASS parser) on a small listing
written by hand in cuobjdump's format: the main loop is the innermost backward branch
with the most tensor-core instructions, counted once, NOPs and code outside excluded."""

import importlib.util
from pathlib import Path

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
