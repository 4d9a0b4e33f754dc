"""The fused losses next to the reference formula on a busy machine (issue 26, item 8).

    python benchmarks/busy_machine.py [--competitors 1] [--threads 2,1]
        [--cases uniform:256,uniform:1024,clip:1024,nt_xent:1024] [--d 128] [--rounds 5]
        [--builds after=.,before=/tmp/old_checkout]

Starts `--competitors` processes that keep torch matmuls running on the same cores (as
data-loader workers or another job do), then times forward+backward (float32, unit rows)
of each case, fused and reference formula (uniformity: the paper's pdist line; the
contrastive losses: the logits and F.cross_entropy), at each thread count.  Every build
(a directory holding a `pyhypersphere` package: compare two checkouts in one run) runs in
a worker process of its own; the workers take turns, one round of every (case, threads)
at a time, so the machine's load hits them alike.  Prints one line per (build, case,
threads): medians over all rounds, and fused / reference.  The machine's own load adds
to the competitors': read the ratios, not the absolute times.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

COMPETITOR = "import torch\nx = torch.randn(512, 512)\nwhile True:\n    x @ x\n"


# ---------------------------------------------------------------- worker (one build)


def worker() -> None:
    """Reads 'case n threads reps' lines, answers each with a JSON line of its samples (s)."""
    import torch

    import pyhypersphere as ph
    from pyhypersphere.bench.contrastive import CONTRASTIVE_IMPLS, tau_for
    from pyhypersphere.reference import reference_uniform_loss

    def losses(case):
        if case == "uniform":
            return (lambda x, y: ph.uniform_loss(x)), (lambda x, y: reference_uniform_loss(x))
        tau = tau_for(case, None)
        return CONTRASTIVE_IMPLS["pyhypersphere"].build(case, tau), CONTRASTIVE_IMPLS["dense"].build(case, tau)

    def sample(fn, x, y):
        x, y = x.clone().requires_grad_(), y.clone().requires_grad_()
        start = time.perf_counter()
        fn(x, y).backward()
        return time.perf_counter() - start

    for line in sys.stdin:
        case, n, threads, reps = line.split()
        n, reps = int(n), int(reps)
        torch.set_num_threads(int(threads))
        g = torch.Generator().manual_seed(n)
        x = torch.nn.functional.normalize(torch.randn(n, int(os.environ["BUSY_D"]), generator=g), dim=1)
        y = torch.nn.functional.normalize(x + 0.3 * torch.randn(x.shape, generator=g), dim=1)
        fused, reference = losses(case)
        sample(fused, x, y), sample(reference, x, y)  # warm-up
        out = {"fused": [], "reference": []}
        for _ in range(reps):  # alternating, so that a load spike hits both
            out["fused"].append(sample(fused, x, y))
            out["reference"].append(sample(reference, x, y))
        print(json.dumps(out), flush=True)


# ---------------------------------------------------------------- driver


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--competitors", type=int, default=1)
    parser.add_argument("--threads", default="2,1")
    parser.add_argument("--cases", default="uniform:256,uniform:1024,clip:1024,nt_xent:1024")
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reps", type=int, default=3, help="samples of each per round")
    parser.add_argument("--builds", default="current=" + os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker()
        return 0
    builds = dict(item.split("=", 1) for item in args.builds.split(","))
    cases = [(c.split(":")[0], int(c.split(":")[1])) for c in args.cases.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    workers = {
        label: subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, env={**os.environ, "PYTHONPATH": os.path.abspath(path), "BUSY_D": str(args.d)},
        )
        for label, path in builds.items()
    }  # fmt: skip
    competitors = [subprocess.Popen([sys.executable, "-c", COMPETITOR]) for _ in range(args.competitors)]
    samples = {}
    try:
        time.sleep(2)  # the competitors' imports done
        for _ in range(args.rounds):
            for case, n in cases:
                for t in threads:
                    for label, process in workers.items():
                        process.stdin.write(f"{case} {n} {t} {args.reps}\n")
                        process.stdin.flush()
                        got = json.loads(process.stdout.readline())
                        for kind in ("fused", "reference"):
                            samples.setdefault((label, case, n, t, kind), []).extend(got[kind])
    finally:
        for process in competitors:
            process.kill()
        for process in workers.values():
            process.kill()
    print(f"d = {args.d}, float32, forward+backward, {args.competitors} competing process(es); "
          f"medians of {args.rounds} x {args.reps} alternating samples (ms)")
    print(f"{'build':>8} {'case':>8} {'N':>6} {'threads':>7} {'fused':>9} {'reference':>9} {'fused/ref':>9}")
    for label in builds:
        for case, n in cases:
            for t in threads:
                fused = statistics.median(samples[(label, case, n, t, "fused")]) * 1e3
                reference = statistics.median(samples[(label, case, n, t, "reference")]) * 1e3
                print(f"{label:>8} {case:>8} {n:6d} {t:7d} {fused:9.2f} {reference:9.2f} {fused / reference:9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
