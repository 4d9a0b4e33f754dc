"""benchmarks/distributed_contrastive_cost.py at a small scale: it reaches the distributed
module's private per-row functions, so a rename there breaks it (as it once did)."""

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "distributed_contrastive_cost.py"


def test_runs_and_reports_both_losses():
    out = subprocess.run([sys.executable, str(SCRIPT), "--n", "256", "--reps", "1"], capture_output=True, text=True,
                         timeout=300, cwd=SCRIPT.parent)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    for loss in ("clip_loss", "nt_xent_loss"):
        (line,) = [ln for ln in lines if ln.startswith(f"{loss}: ")]
        assert "ratio" in line
