"""Small batches on the CPU: forward+backward of uniform_loss against the paper's reference
formula, side by side, at N from 2 up (issue 26, item 7: the fused op must not be slower).

    .venv/bin/python benchmarks/small_n_bar.py [--n 2,4,16,64,128,256,512] [--d 128]
                                               [--reps 300] [--threads 0] [--json]

At small N a call is overhead, not pair work: Python wrappers, the autograd nodes, the
precision plan, the kernel's set-up.  The two are timed alternately, one sample of each
per round, so that a shared machine's load hits both alike; medians over the rounds, after
20 rounds of warm-up.  --threads 0 keeps torch's default.
"""

import argparse
import json
import statistics
import time

import torch

import pyhypersphere
from pyhypersphere.reference import reference_uniform_loss


def unit_rows(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)


def forward_backward_seconds(loss_fn, x):
    xx = x.detach().requires_grad_()
    start = time.perf_counter()
    loss_fn(xx).backward()
    return time.perf_counter() - start


def side_by_side(n, d, reps):
    x = unit_rows(n, d, seed=n)
    fused, reference = [], []
    for round_ in range(20 + reps):
        f = forward_backward_seconds(pyhypersphere.uniform_loss, x)
        r = forward_backward_seconds(reference_uniform_loss, x)
        if round_ >= 20:
            fused.append(f)
            reference.append(r)
    return statistics.median(fused), statistics.median(reference)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="2,4,16,64,128,256,512")
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--reps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for n in (int(v) for v in args.n.split(",")):
        fused, reference = side_by_side(n, args.d, args.reps)
        rows.append({"n": n, "fused_ms": fused * 1e3, "reference_ms": reference * 1e3, "ratio": fused / reference})
    if args.json:
        print(json.dumps({"threads": torch.get_num_threads(), "d": args.d, "rows": rows}))
        return
    print(f"float32, d = {args.d}, {torch.get_num_threads()} thread(s), medians of {args.reps} alternating rounds")
    print("    N  fused fwd+bwd (ms)  reference (ms)  fused / reference")
    for r in rows:
        print(f"{r['n']:5d}  {r['fused_ms']:18.3f}  {r['reference_ms']:14.3f}  {r['ratio']:17.2f}")


if __name__ == "__main__":
    main()
