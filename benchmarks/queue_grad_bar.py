"""A detached queue must not pay for the queue's gradient: forward+backward of
uniform_loss with a MoCo-style queue, detached against requiring grad, side by side.

    .venv/bin/python benchmarks/queue_grad_bar.py [--n 1024] [--k 32768] [--d 128] [--reps 7]

With a detached queue the kernel accumulates x's gradient only: an x-by-queue tile takes
the Gram product and W Z_queue (2 GEMMs) instead of also W^T Z_x (3 GEMMs), and no
K x d gradient is written.  The two cases are timed alternately (one sample of each per
round) so that a shared machine's load changes hit both alike; medians over the rounds.
Target at N=1024, K=32768, d=128, float32: the detached queue >= 1.25x faster.
"""

import argparse
import json
import statistics
import time

import torch

import pyhypersphere


def unit_rows(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)


def step(x, queue, queue_grad):
    def run():
        xx = x.detach().requires_grad_()
        qq = queue.detach().requires_grad_(queue_grad)
        pyhypersphere.uniform_loss(xx, queue=qq).backward()
    return run


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1024)
    p.add_argument("--k", type=int, default=32768)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--reps", type=int, default=7)
    args = p.parse_args()
    x, queue = unit_rows(args.n, args.d, 0), unit_rows(args.k, args.d, 1)
    cases = {"detached_queue": step(x, queue, False), "queue_requires_grad": step(x, queue, True)}
    samples = {name: [] for name in cases}
    for fn in cases.values():
        fn()  # warm-up
    for _ in range(args.reps):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
    medians = {name: statistics.median(s) for name, s in samples.items()}
    result = {
        "n": args.n, "k": args.k, "d": args.d, "dtype": "float32", "reps": args.reps,
        "threads": torch.get_num_threads(),
        "tile_gemm": pyhypersphere.build_info()["cpu_tile_gemm"],
        "fwdbwd_median_s": medians,
        "fwdbwd_range_s": {name: [min(s), max(s)] for name, s in samples.items()},
        "speedup_detached": medians["queue_requires_grad"] / medians["detached_queue"],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
