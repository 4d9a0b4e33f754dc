"""benchmarks/gpu_bars.py's plumbing on the CPU at a small scale (no figure): its entries'
fields and that a second invocation merges into the same file."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_bars.py"
FIELDS = {"case", "device", "ms", "peer", "peer_ms", "bar_ms", "meets_bar"}


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


def test_entries_and_merge(tmp_path):
    out = tmp_path / "bars.json"
    first = run("--device", "cpu", "--scale", "512", "--json", str(out), "--cases", "uniform_fp32_65536,nt_xent_fp32_16384")
    assert first.returncode == 0, first.stderr
    second = run("--device", "cpu", "--scale", "512", "--json", str(out), "--cases",
                 "moco_bf16_256x65536,uniform_fp32_65536,siglip_fp32_16384,siglip_bf16_16384_d768")
    assert second.returncode == 0, second.stderr
    entries = json.loads(out.read_text())
    assert sorted(e["case"] for e in entries) == ["moco_bf16_256x65536", "nt_xent_fp32_16384", "siglip_bf16_16384_d768",
                                                  "siglip_fp32_16384", "uniform_fp32_65536"]
    for entry in entries:
        assert set(entry) == FIELDS
        assert entry["ms"] > 0 and entry["device"].startswith("cpu: ")
    (nt_xent,) = [e for e in entries if e["case"] == "nt_xent_fp32_16384"]
    assert nt_xent["peer"] == "dense" and nt_xent["peer_ms"] > 0
    assert nt_xent["meets_bar"] == (nt_xent["peer_ms"] / nt_xent["ms"] >= 1.5)
    (siglip,) = [e for e in entries if e["case"] == "siglip_fp32_16384"]
    assert siglip["peer"] == "two-sweeps" and siglip["meets_bar"] == (siglip["ms"] < siglip["peer_ms"])


def test_unknown_case_and_absent_device_are_refused(tmp_path):
    bad = run("--device", "cpu", "--json", str(tmp_path / "x.json"), "--cases", "uniform_fp64_1")
    assert bad.returncode == 2 and "unknown cases ['uniform_fp64_1']" in bad.stderr
    import torch

    if not torch.cuda.is_available():
        absent = run("--json", str(tmp_path / "x.json"))
        assert absent.returncode == 2 and "torch sees no CUDA device" in absent.stderr
