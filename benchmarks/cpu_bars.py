"""The CPU bars of the foundation issue, measured side by side in one run.

    .venv/bin/python benchmarks/cpu_bars.py [--n 16384] [--d 128] [--big-n 65536] [--reps 5]

1. N=16384, d=128, float32: forward and forward+backward of the fused loss, the
   reference (pdist) formula and the plain-torch blocked formula; medians and ratios.
2. The fraction of torch.mm throughput the fused kernel reaches on the same flops:
   forward = one Gram product over the upper triangle, N(N-1)/2 pairs x 2d flops; the
   forward+gradient pass does three such GEMMs.  torch.mm of [N, d] x [d, N] (2 N^2 d
   flops, in column blocks into a reused buffer) is timed in the same run.
3. N=65536, d=128 forward+backward in a fresh process: peak RSS growth over the
   process's RSS just before the call (the reference would need ~40 GB there).
4. Two design choices, measured: the gradient accumulated in the forward pass against a
   forward without it plus a backward that recomputes (what a separate backward kernel
   costs), and the tile GEMMs through BLAS directly against through ATen per tile
   (PYHYPERSPHERE_CPU_GEMM=blas|aten, each in its own process).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

import pyhypersphere
from pyhypersphere.bench.memory import peak_extra_bytes
from pyhypersphere.bench.roofline import blocked_mm
from pyhypersphere.reference import blocked_uniform_loss, reference_uniform_loss


def unit_rows(n, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)


def median_seconds(fn, reps, warmup=1):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def forward(loss_fn, x):
    def run():
        with torch.no_grad():
            loss_fn(x)
    return run


def forward_backward(loss_fn, x):
    def run():
        xx = x.detach().requires_grad_()
        loss_fn(xx).backward()
    return run


def deferred_gradient(x):
    """Forward without the gradient, then a backward that recomputes it."""
    from pyhypersphere.ops import uniform as uniform_ops

    def run():
        xx = x.detach().requires_grad_()
        lse, _, _ = uniform_ops.uniform_lse(xx, None, 2.0, True, 0, 1, False, False)
        lse.backward()
    return run


def gemm_probe(n, d, reps):
    """Runs in a child (backend chosen by the environment): fused timings as JSON."""
    x = unit_rows(n, d)
    print(json.dumps({
        "backend": pyhypersphere.build_info()["cpu_tile_gemm"],
        "fwd_s": median_seconds(forward(pyhypersphere.uniform_loss, x), reps),
        "fwdbwd_s": median_seconds(forward_backward(pyhypersphere.uniform_loss, x), reps),
    }))


def rss_probe(n, d):
    """Runs in a child: forward+backward at n x d, prints peak RSS growth in bytes."""
    x = unit_rows(n, d).requires_grad_()
    pyhypersphere.uniform_loss(x[:64]).backward()  # load everything once
    x.grad = None
    out = {}

    def step():
        loss = pyhypersphere.uniform_loss(x)
        loss.backward()
        out["loss"] = loss.item()

    growth = peak_extra_bytes(step, torch.device("cpu"))
    print(json.dumps({"rss_growth_bytes": growth, "loss": out["loss"]}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=16384)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--big-n", type=int, default=65536)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--ref-reps", type=int, default=3)
    p.add_argument("--rss-probe", nargs=2, type=int, help=argparse.SUPPRESS)
    p.add_argument("--gemm-probe", nargs=3, type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rss_probe:
        rss_probe(*args.rss_probe)
        return
    if args.gemm_probe:
        gemm_probe(*args.gemm_probe)
        return

    n, d = args.n, args.d
    x = unit_rows(n, d)
    print(f"# torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"tile gemm {pyhypersphere.build_info()['cpu_tile_gemm']}, N={n}, d={d}, float32")
    impls = {
        "fused": pyhypersphere.uniform_loss,
        "reference": reference_uniform_loss,
        "blocked": blocked_uniform_loss,
    }
    rows = {}
    for name, fn in impls.items():
        reps = args.reps if name == "fused" else args.ref_reps
        rows[name] = {
            "fwd_s": median_seconds(forward(fn, x), reps),
            "fwdbwd_s": median_seconds(forward_backward(fn, x), reps),
        }
        print(f"{name:>10}: fwd {rows[name]['fwd_s']:.3f} s   fwd+bwd {rows[name]['fwdbwd_s']:.3f} s", flush=True)

    deferred_s = median_seconds(deferred_gradient(x), args.reps)
    print(f"  deferred: fwd+bwd {deferred_s:.3f} s (forward without gradient + recomputing backward)", flush=True)

    # The roofline: torch.mm [N, d] x [d, N] in column blocks into a reused buffer (as a
    # tiled Gram works; a full N x N output would make it a memory-bandwidth test).
    mm_s = median_seconds(blocked_mm(torch.randn(n, d), columns=n), args.reps)
    mm_flops = 2.0 * n * n * d
    fwd_flops = n * (n - 1) / 2 * 2 * d
    fwdbwd_flops = 3 * fwd_flops
    result = {
        "n": n,
        "d": d,
        "threads": torch.get_num_threads(),
        "impls": rows,
        "speedup_fwd_vs_reference": rows["reference"]["fwd_s"] / rows["fused"]["fwd_s"],
        "speedup_fwdbwd_vs_reference": rows["reference"]["fwdbwd_s"] / rows["fused"]["fwdbwd_s"],
        "speedup_fwdbwd_vs_blocked": rows["blocked"]["fwdbwd_s"] / rows["fused"]["fwdbwd_s"],
        "mm_gflops": mm_flops / mm_s / 1e9,
        "fused_fwd_gflops": fwd_flops / rows["fused"]["fwd_s"] / 1e9,
        "fused_fwdbwd_gflops": fwdbwd_flops / rows["fused"]["fwdbwd_s"] / 1e9,
    }
    result["fused_fwd_fraction_of_mm"] = result["fused_fwd_gflops"] / result["mm_gflops"]
    result["deferred_gradient_fwdbwd_s"] = deferred_s
    result["fused_gradient_speedup_vs_deferred"] = deferred_s / rows["fused"]["fwdbwd_s"]
    result["fused_fwdbwd_fraction_of_mm"] = result["fused_fwdbwd_gflops"] / result["mm_gflops"]

    probe = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--rss-probe", str(args.big_n), str(d)],
        capture_output=True, text=True, check=True,
    )
    big = json.loads(probe.stdout.strip().splitlines()[-1])
    result["big_n"] = args.big_n
    result["big_n_fwdbwd_rss_growth_mib"] = big["rss_growth_bytes"] / 2**20
    for backend in ("blas", "aten"):
        probe = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--gemm-probe", str(n), str(d), str(args.reps)],
            capture_output=True, text=True, check=True, env={**os.environ, "PYHYPERSPHERE_CPU_GEMM": backend},
        )
        result[f"tile_gemm_{backend}"] = json.loads(probe.stdout.strip().splitlines()[-1])
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
