"""MoCo's InfoNCE on the CPU, two checkouts side by side in one run (issue 23: one pass over
the pairs for a detached queue, where contrastive_lse and its backward took two).

    .venv/bin/python benchmarks/moco_passes.py --before /work/main --after . [--n 256] [--queue 65536]
        [--d 128] [--reps 7] [--rounds 3]

Forward+backward of info_nce_loss(q, k, 0.07, queue=queue, in_batch=False), float32,
unit rows, the gradient to q only (keys and queue from the momentum encoder).  Each
checkout runs in its own child process (PYTHONPATH=<checkout>: its package and its built
extension), the two alternating for --rounds rounds of --reps timed calls after one
warm-up call; prints one JSON document with each side's median over all its calls, the
ratio, and the loss and gradient norm of each side (they must agree).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def child(n: int, queue_rows: int, d: int, reps: int) -> dict:
    import torch

    from pyhypersphere import info_nce_loss

    g = torch.Generator().manual_seed(0)

    def unit(rows):
        return torch.nn.functional.normalize(torch.randn(rows, d, generator=g), dim=1)

    q, k, queue = unit(n).requires_grad_(), unit(n), unit(queue_rows)

    def step():
        loss = info_nce_loss(q, k, 0.07, queue=queue, in_batch=False)
        loss.backward()
        return loss.item()

    value = step()  # warm-up
    grad_norm = q.grad.norm().item()
    times = []
    for _ in range(reps):
        q.grad = None
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"times_s": times, "loss": value, "grad_norm": grad_norm, "threads": torch.get_num_threads()}


def run_side(checkout: str, args) -> dict:
    env = dict(os.environ, PYTHONPATH=os.path.abspath(checkout))
    out = subprocess.run([sys.executable, __file__, "--child", str(args.n), str(args.queue), str(args.d),
                          str(args.reps)], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="the checkout to compare against (e.g. main's); required")
    parser.add_argument("--after", default=".", help="this checkout")
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--queue", type=int, default=65536)
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", nargs=4, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    if not args.before:
        parser.error("--before is required")
    sides = {"before": [], "after": []}
    for _ in range(args.rounds):
        for name in sides:
            sides[name].append(run_side(getattr(args, name), args))
    report = {"n": args.n, "queue": args.queue, "d": args.d, "dtype": "float32", "reps": args.reps,
              "rounds": args.rounds, "before": os.path.abspath(args.before), "after": os.path.abspath(args.after)}
    for name, runs in sides.items():
        times = [t for r in runs for t in r["times_s"]]
        report[name] = {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
                        "loss": runs[0]["loss"], "grad_norm": runs[0]["grad_norm"], "threads": runs[0]["threads"]}
    report["speedup"] = report["before"]["median_s"] / report["after"]["median_s"]
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
