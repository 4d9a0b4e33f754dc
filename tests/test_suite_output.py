"""What `make test` prints: the skips counted by reason, then pytest's summary line last."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).parent


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the skip count on a machine without CUDA")
def test_skips_are_counted_by_reason_above_the_summary():
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(TESTS / "test_bench_timing.py")],
        capture_output=True, text=True, timeout=300, cwd=TESTS.parent,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[-1].startswith("1 passed, 1 skipped"), lines[-1]
    assert "skipped: 1 tests, 1 of them because they need a CUDA GPU:" in lines
    assert "SKIPPED [" not in done.stdout  # one line per reason, not one per test
