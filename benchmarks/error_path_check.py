"""Do the extension's C++ errors and warnings reach Python, or crash the process?

    python benchmarks/error_path_check.py

Each case runs in its own subprocess (a crash must not take the checker with it): a
ValueError from the CPU and the CUDA operator (an argument check formatting a number), a
ValueError from the raw operator, and the PrecisionWarning path on each device.  Prints a
line per case, exits 1 if any case crashed or did not raise/warn as it should.

Why it exists: on the GPU machine's first run (2026-11-26) every such path crashed with
SIGSEGV inside libstdc++; torch had built the extension with the image's /opt/gcc g++, and
preloading the system libstdc++ fixed it (docs/results/gpu.md).  benchmarks/gpu_run.sh
runs this after building and, if it fails, retries with that preload.
"""

import subprocess
import sys

CASES = {
    "cpu ValueError": ("cpu", "pyhypersphere.uniform_loss(torch.randn(4, 3, device=dev), math.nan)", "ValueError"),
    "cpu raw-op ValueError": ("cpu", "torch.ops.pyhypersphere.uniform_lse(torch.zeros(5, device=dev), None, 2.0, "
                                     "True, 0, 1, False, False)", "ValueError"),
    "cuda ValueError": ("cuda", "pyhypersphere.uniform_loss(torch.randn(4, 3, device=dev), math.nan)", "ValueError"),
    "cpu PrecisionWarning": ("cpu", "pyhypersphere.uniform_loss(spread)", "PrecisionWarning"),
    "cuda PrecisionWarning": ("cuda", "pyhypersphere.uniform_loss(spread)", "PrecisionWarning"),
}

PROGRAM = """
import math, warnings, torch, pyhypersphere
dev = {dev!r}
spread = torch.tensor([[0.0, 0, 0, 0], [1e19] * 4, [1.0, 0, 0, 0]], dtype=torch.float64, device=dev)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
        {call}
    except Exception as e:
        print("raised", type(e).__name__)
print("warned", " ".join(type(w.message).__name__ for w in caught))
"""


def main() -> int:
    import torch

    failed = 0
    for name, (dev, call, want) in CASES.items():
        if dev == "cuda" and not torch.cuda.is_available():
            print(f"skip  {name}: no CUDA device")
            continue
        done = subprocess.run([sys.executable, "-c", PROGRAM.format(dev=dev, call=call)],
                              capture_output=True, text=True, timeout=120)
        ok = done.returncode == 0 and want in done.stdout
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'}  {name}: rc={done.returncode} {done.stdout.strip()!r}"
              + ("" if ok else f" {done.stderr.strip()[-300:]!r}"), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
