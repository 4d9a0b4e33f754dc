"""`pyhypersphere demo`: the fused loss next to the reference, on a built-in input.

The input is embedded: N rows drawn from a fixed-seed Gaussian and normalized onto the
unit sphere (what an encoder's normalized features look like to the loss).  Each
implementation runs forward+backward in its own child process, so the peak memory
growth of one does not hide in the allocator pool of another.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

from .argtypes import int_at_least, positive_float
from .machine import cpu_model

DEFAULT_N = 8192
DEFAULT_D = 128
DEFAULT_REPEATS = 5
SEED = 0


def add_arguments(parser):
    parser.add_argument("--n", type=int_at_least(2), default=DEFAULT_N, help=f"rows (default {DEFAULT_N})")
    parser.add_argument(
        "--d", type=int_at_least(1), default=DEFAULT_D, help=f"feature dimension (default {DEFAULT_D})"
    )
    parser.add_argument("--t", type=positive_float, default=2.0, help="uniformity scale t (default 2)")
    parser.add_argument(
        "--repeats",
        type=int_at_least(1),
        default=DEFAULT_REPEATS,
        help=f"timed repetitions per implementation; the median and the range are reported (default {DEFAULT_REPEATS})",
    )
    # internal: run one implementation's measurement in this (child) process
    parser.add_argument("--child-impl", choices=["fused", "reference"], help=argparse.SUPPRESS)


def embedded_input(n, d):
    g = torch.Generator().manual_seed(SEED)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)


def _measure(impl, n, d, t, repeats):
    """Child process: loss value, forward+backward seconds of every repeat, peak extra memory."""
    import pyhypersphere
    from pyhypersphere.bench.memory import peak_extra_bytes
    from pyhypersphere.reference import reference_uniform_loss

    fn = pyhypersphere.uniform_loss if impl == "fused" else reference_uniform_loss
    x = embedded_input(n, d)
    fn(x[:64].clone().requires_grad_(), t).backward()  # first-call set-up outside the measurement
    result = {}

    def step():
        xx = x.clone().requires_grad_()
        loss = fn(xx, t)
        loss.backward()
        result["loss"] = loss.item()

    peak = peak_extra_bytes(step, torch.device("cpu"))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {"loss": result["loss"], "seconds": times, "peak_growth_bytes": peak or 0}


def _seconds(times):
    """'median (min-max)' of the repeats' seconds."""
    if len(times) == 1:
        return f"{times[0]:.3f}"
    return f"{statistics.median(times):.3f} ({min(times):.3f}-{max(times):.3f})"


def main(args):
    if args.child_impl:
        print(json.dumps(_measure(args.child_impl, args.n, args.d, args.t, args.repeats)))
        return 0
    import pyhypersphere

    info = pyhypersphere.build_info()
    print(f"pyhypersphere demo: uniform_loss(x, t={args.t}) forward+backward, x = {args.n} unit-norm rows of "
          f"dimension {args.d}, float32, CUDA build: {info['with_cuda']}")
    print(f"machine: {cpu_model()}, {torch.get_num_threads()} threads")
    print(f"reference: torch.pdist(x).pow(2).mul(-t).exp().mean().log()  (materializes {args.n * (args.n - 1) // 2:,} distances)\n")
    results = {}
    for impl in ("fused", "reference"):
        cmd = [sys.executable, "-m", "pyhypersphere", "demo", "--n", str(args.n), "--d", str(args.d),
               "--t", str(args.t), "--repeats", str(args.repeats), "--child-impl", impl]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            results[impl] = None
            print(f"{impl}: failed ({done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode})")
            continue
        results[impl] = json.loads(done.stdout.strip().splitlines()[-1])
    timed = f"fwd+bwd (s), median{' (range)' if args.repeats > 1 else ''} of {args.repeats}"
    width = len(timed) + 2
    print(f"{'implementation':<16}{'loss':>14}  {timed:<{width}}{'peak extra memory':>17}")
    for impl, r in results.items():
        if r is not None:
            print(f"{impl:<16}{r['loss']:>14.7f}  {_seconds(r['seconds']):<{width}}"
                  f"{r['peak_growth_bytes'] / 2**20:>13.1f} MiB")
    fused, ref = results.get("fused"), results.get("reference")
    if fused and ref:
        speedup = statistics.median(ref["seconds"]) / statistics.median(fused["seconds"])
        print(f"\n|loss difference| = {abs(fused['loss'] - ref['loss']):.2e}; "
              f"fused is {speedup:.1f}x faster (ratio of the medians) and uses "
              f"{ref['peak_growth_bytes'] / max(fused['peak_growth_bytes'], 1):.1f}x less extra memory")
    return 0 if fused else 1
