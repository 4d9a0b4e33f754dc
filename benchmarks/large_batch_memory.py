"""Peak memory and time of one training step of the trainer's MNIST-1D encoder, chunked
(``pyhypersphere train --chunk-size``) and not, each case in a fresh process.

    .venv/bin/python benchmarks/large_batch_memory.py                  # the default cases
    .venv/bin/python benchmarks/large_batch_memory.py --cases 1024,16384/1024 --steps 3

A case is ``B`` (the plain step at batch B) or ``B/C`` (batch B, the encoder on C samples at a
time).  A step is what the trainer does: both views through the conv1d encoder, the
align+uniform loss, backward, SGD.  Reported per case: the peak resident set of the process
(VmHWM) and its growth during the first step over the process after set-up (model, data,
optimizer), and the median time of the steps after the first.  Prints a Markdown table and
the JSON rows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

SIGNAL_LENGTH = 40  # MNIST-1D


def _mib(n_bytes) -> float:
    return round(n_bytes / 2**20, 1) if n_bytes is not None else None


def worker(case: str, steps: int, threads: int, seed: int) -> dict:
    import torch

    from pyhypersphere.bench.memory import peak_extra_bytes, peak_rss_bytes
    from pyhypersphere.train import TrainConfig, loop, models

    torch.set_num_threads(threads)
    batch, _, chunk = case.partition("/")
    batch = int(batch)
    chunk = int(chunk) if chunk else batch
    cfg = TrainConfig(batch_size=batch).resolved()
    torch.manual_seed(seed)
    model = models.Encoder(models.conv1d_trunk(), 128, cfg.feature_dim)  # what models.build makes for mnist1d
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    objective = loop._Objective(cfg, world=1)
    v1, v2 = torch.randn(batch, SIGNAL_LENGTH), torch.randn(batch, SIGNAL_LENGTH)
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        value, _, _ = loop.backward_step(model, objective, v1, v2, chunk)
        opt.step()
        return value

    times = []
    start = time.perf_counter()
    extra = peak_extra_bytes(step, torch.device("cpu"))
    first = time.perf_counter() - start
    for _ in range(steps - 1):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {
        "case": case,
        "batch": batch,
        "chunk": chunk,
        "threads": threads,
        "step_peak_extra_mib": _mib(extra),
        "process_peak_rss_mib": _mib(peak_rss_bytes()),
        "first_step_s": round(first, 3),
        "step_s_median": round(statistics.median(times), 3) if times else None,
        "step_s_all": [round(t, 3) for t in times],
    }


def markdown(rows) -> str:
    lines = [
        "| case | peak RSS growth in a step | process peak RSS | time per step (median) | first step |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        name = f"batch {r['batch']}" + (f", chunks of {r['chunk']}" if r["chunk"] < r["batch"] else " (plain)")
        median = f"{r['step_s_median']:.2f} s" if r["step_s_median"] is not None else ""
        lines.append(
            f"| {name} | {r['step_peak_extra_mib']:.0f} MiB | {r['process_peak_rss_mib']:.0f} MiB "
            f"| {median} | {r['first_step_s']:.2f} s |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="1024,16384/1024,16384", help="B or B/C, comma-separated")
    p.add_argument("--steps", type=int, default=3, help="steps per case; the first is the memory one")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps, args.threads, args.seed)))
        return 0
    rows = []
    for case in args.cases.split(","):
        cmd = [sys.executable, __file__, "--worker", case, "--steps", str(args.steps), "--threads", str(args.threads)]
        done = subprocess.run(cmd + ["--seed", str(args.seed)], capture_output=True, text=True)
        if done.returncode != 0:
            print(f"case {case} failed:\n{done.stderr}", file=sys.stderr)
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
