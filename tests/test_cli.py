"""The `pyhypersphere` command line: info, demo argument checks, demo's median and range,
and the message when the compiled extension is missing or misconfigured."""

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

import pyhypersphere
from pyhypersphere.cli import format_info, main
from pyhypersphere.machine import cpu_model

PACKAGE = Path(pyhypersphere.__file__).parent


def test_info_is_readable_and_json_is_kept(capsys):
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert re.search(r"^with_cuda:\s+(True|False)$", text, re.M)
    assert re.search(r"^cpu_tile_gemm:\s+(blas|aten)$", text, re.M)
    # the parallel info's lines, each on its own line, not one escaped string
    assert "\\n" not in text and "\\t" not in text
    assert re.search(r"^parallel_info:\n    ATen/Parallel:\n        at::get_num_threads\(\) : \d+$", text, re.M)
    assert main(["info", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == pyhypersphere.build_info()


def test_format_info_aligns_keys_and_indents_multiline_values():
    text = format_info({"a": 1, "long_key": "x", "block": "one\n\ttwo\n"})
    assert text.splitlines() == ["a:        1", "long_key: x", "block:", "    one", "        two"]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--t", "-1"], "argument --t: must be a positive finite number, got -1"),
        (["--t", "nan"], "argument --t: must be a positive finite number"),
        (["--repeats", "0"], "argument --repeats: must be at least 1, got 0"),
        (["--n", "1"], "argument --n: must be at least 2, got 1"),
        (["--d", "0"], "argument --d: must be at least 1, got 0"),
        (["--n", "many"], "argument --n: expected an integer, got 'many'"),
    ],
)
def test_demo_rejects_bad_arguments_before_running(capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo"] + args)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert captured.out == ""  # no table, no child process run


def test_demo_reports_median_and_range_of_its_repeats(capsys):
    assert main(["demo", "--n", "200", "--d", "8", "--repeats", "3"]) == 0
    out = capsys.readouterr().out
    assert "fwd+bwd (s), median (range) of 3" in out
    for impl in ("fused", "reference"):
        (line,) = [row for row in out.splitlines() if row.startswith(impl + " ")]
        m = re.search(r"\s(\d+\.\d{3}) \((\d+\.\d{3})-(\d+\.\d{3})\)\s", line)
        assert m, line
        median, low, high = map(float, m.groups())
        assert low <= median <= high
    assert "x faster (ratio of the medians)" in out
    # the machine the figures belong to
    assert f"machine: {cpu_model()}, {torch.get_num_threads()} threads" in out


def _without_extension(tmp_path):
    """A copy of the Python package without the compiled extension."""
    copy = tmp_path / "src" / "pyhypersphere"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    return copy.parent


@pytest.mark.parametrize("command", [["-c", "import pyhypersphere"], ["-m", "pyhypersphere", "info"]])
def test_missing_extension_says_how_to_build(tmp_path, command):
    src = _without_extension(tmp_path)
    # -S: no site processing, so the editable install's import hook (a .pth file) cannot
    # supply the built extension; torch still imports from site-packages via PYTHONPATH.
    env = dict(os.environ, PYTHONPATH=sysconfig.get_paths()["purelib"])
    done = subprocess.run(
        [sys.executable, "-S", *command], cwd=src, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert "the compiled extension pyhypersphere._C is not built" in last, done.stderr
    assert "make build" in last and "pip install --no-build-isolation -e ." in last
    assert "partially initialized" not in done.stderr and "circular" not in done.stderr


def test_source_tree_shadowing_an_installed_build_says_so(tmp_path):
    src = _without_extension(tmp_path)
    installed = tmp_path / "site"
    shutil.copytree(PACKAGE, installed / "pyhypersphere", ignore=shutil.ignore_patterns("__pycache__"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([sysconfig.get_paths()["purelib"], str(installed)]))
    done = subprocess.run(
        [sys.executable, "-S", "-c", "import pyhypersphere"], cwd=src, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert f"imports pyhypersphere from the source tree {src.resolve()}" in last, done.stderr
    assert f"not the installed build at {(installed / 'pyhypersphere').resolve()}" in last
    assert "start Python outside the checkout" in last


@pytest.mark.parametrize(
    "variable,value,allowed",
    [
        ("PYHYPERSPHERE_CPU_ISA", "avx3", "expected baseline or avx2"),
        ("PYHYPERSPHERE_CPU_ISA", "AVX2", "expected baseline or avx2"),
        ("PYHYPERSPHERE_CPU_GEMM", "mkl", "expected blas or aten"),
    ],
)
def test_misspelled_cpu_override_is_rejected(variable, value, allowed):
    script = (
        "import torch, pyhypersphere\n"
        "for _ in range(2):  # every call raises, not only the first\n"
        "    try:\n"
        "        pyhypersphere.uniform_loss(torch.randn(6, 3))\n"
        "    except ValueError as e:\n"
        "        print('ValueError:', e)\n"
    )
    env = dict(os.environ, **{variable: value})
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 2
    for line in lines:
        assert line.startswith(f"ValueError: {variable}={value} is not a valid value: {allowed}"), line
    info = subprocess.run(
        [sys.executable, "-m", "pyhypersphere", "info"], env=env, capture_output=True, text=True, timeout=120
    )
    assert info.returncode == 2
    assert info.stderr.count("\n") == 1, info.stderr  # one line, no traceback
    assert info.stderr.startswith(f"pyhypersphere info: error: {variable}={value} is not a valid value: {allowed}")


def test_empty_cpu_override_means_unset():
    script = "import torch, pyhypersphere; print(pyhypersphere.uniform_loss(torch.ones(3, 2).cumsum(0)).item())"
    env = dict(os.environ, PYHYPERSPHERE_CPU_ISA="", PYHYPERSPHERE_CPU_GEMM="")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    float(done.stdout)


def test_info_says_whether_there_is_a_gpu(capsys):
    assert main(["info"]) == 0
    (line,) = [row for row in capsys.readouterr().out.splitlines() if row.startswith("gpu:")]
    if torch.cuda.is_available():
        assert torch.cuda.get_device_name() in line
    else:
        assert line.split(":", 1)[1].strip().startswith("none (torch sees no CUDA device")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_bench_on_an_absent_device_fails_with_one_line():
    done = subprocess.run(
        [sys.executable, "-m", "pyhypersphere", "bench", "--device", "cuda", "--n", "64", "--no-plot"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("pyhypersphere bench: --device cuda but torch sees no CUDA device")


@pytest.mark.parametrize("world,code,finalized", [("2", 0, False), ("1", 0, True), (None, 0, True), ("2", 3, True)])
def test_a_successful_multi_process_worker_exits_without_finalizing(world, code, finalized):
    # Issue 28 item 12: a gloo worker thread releasing the last collective's work during
    # interpreter finalization aborts the process; a successful process of a multi-process
    # run leaves with os._exit after flushing, any other keeps sys.exit's finalization.
    script = ("import atexit, sys\n"
              "from pyhypersphere.train.cli import exit_process\n"
              "atexit.register(lambda: print('finalized', flush=True))\n"
              "print('output', end='')\n"
              f"exit_process({code})\n")
    env = {k: v for k, v in os.environ.items() if k != "WORLD_SIZE"}
    if world is not None:
        env["WORLD_SIZE"] = world
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == code, done.stderr
    assert done.stdout.startswith("output")  # flushed before leaving
    assert ("finalized" in done.stdout) == finalized

