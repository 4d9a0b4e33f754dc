"""The CPU bars of the contrastive-losses issue, measured side by side in one run.

    .venv/bin/python benchmarks/contrastive_bars.py [--n 16384] [--d 128] [--reps 3] [--big-n 65536]

1. N=16384, d=128, float32, unit-norm rows: forward+backward (gradients to both inputs)
   of each loss, fused (pyhypersphere) against the dense PyTorch formula (logits +
   F.cross_entropy, pyhypersphere.bench.contrastive): medians of --reps after one
   warm-up call, and each call's peak RSS growth.  Every (loss, implementation) runs in
   its own fresh process, one after another, so neither's memory touches the other's.
2. N=65536 forward+backward of the fused nt_xent_loss, clip_loss and siglip_loss in a
   fresh process: peak RSS growth over the RSS just before the call (the dense logits
   alone would be 64 GiB and 16 GiB).
SigLIP's bar (issue 25): `--losses siglip`.
Prints one JSON document with every figure.
"""

import argparse
import json
import os
import subprocess
import sys

import torch

from pyhypersphere.bench.contrastive import CONTRASTIVE_IMPLS, tau_for
from pyhypersphere.bench.memory import peak_extra_bytes
from pyhypersphere.bench.timing import median_time
from pyhypersphere.bench.worker import unit_rows

LOSSES = ("nt_xent", "info_nce", "clip", "siglip")
CPU = torch.device("cpu")


def probe(loss: str, impl: str, n: int, d: int, reps: int) -> dict:
    """In a child: time forward+backward and measure its peak RSS growth."""
    fn = CONTRASTIVE_IMPLS[impl].build(loss, tau_for(loss, None))
    x = unit_rows(n, d, torch.float32, CPU, 0).requires_grad_(True)
    y = unit_rows(n, d, torch.float32, CPU, 1).requires_grad_(True)
    values = []

    def step():
        out = fn(x, y)
        out.backward()
        x.grad = y.grad = None
        values.append(out.item())

    result = {"loss": loss, "impl": impl, "n": n, "d": d, "threads": torch.get_num_threads()}
    result["rss_growth_mib"] = peak_extra_bytes(step, CPU) / 2**20  # first call: also the warm-up
    if reps > 0:
        timing = median_time(step, CPU, warmup=0, repeat=reps, max_seconds=1e9)
        result["fwdbwd_s"] = timing.median_ms / 1e3
        result["samples"] = timing.samples
    result["value"] = values[0]
    return result


def run_child(loss: str, impl: str, n: int, d: int, reps: int) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--probe", loss, impl, str(n), str(d), str(reps)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"loss": loss, "impl": impl, "n": n, "error": (done.stderr or done.stdout)[-600:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=16384)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--big-n", type=int, default=65536, help="0 skips the memory bar")
    p.add_argument("--losses", default=",".join(LOSSES))
    p.add_argument("--probe", nargs=5, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.probe:
        loss, impl, n, d, reps = args.probe
        print(json.dumps(probe(loss, impl, int(n), int(d), int(reps))))
        return

    losses = args.losses.split(",")
    out = {"n": args.n, "d": args.d, "reps": args.reps, "torch": torch.__version__, "speed": {}, "memory": {}}
    with open("/proc/loadavg") as f:
        out["loadavg_before"] = f.read().split()[:3]
    for loss in losses:
        fused = run_child(loss, "pyhypersphere", args.n, args.d, args.reps)
        dense = run_child(loss, "dense", args.n, args.d, args.reps)
        entry = {"fused": fused, "dense": dense}
        if "fwdbwd_s" in fused and "fwdbwd_s" in dense:
            entry["speedup"] = dense["fwdbwd_s"] / fused["fwdbwd_s"]
            entry["value_diff"] = abs(fused["value"] - dense["value"])
        out["speed"][loss] = entry
        print(json.dumps({loss: entry}), file=sys.stderr)
    if args.big_n:
        for loss in ("nt_xent", "clip", "siglip"):
            if loss in losses:
                out["memory"][loss] = run_child(loss, "pyhypersphere", args.big_n, args.d, 0)
                print(json.dumps({loss: out["memory"][loss]}), file=sys.stderr)
    with open("/proc/loadavg") as f:
        out["loadavg_after"] = f.read().split()[:3]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
