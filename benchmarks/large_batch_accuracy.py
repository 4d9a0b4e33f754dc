"""Linear-probe accuracy against batch size for align+uniform (or InfoNCE) on MNIST-1D, the
encoder run in chunks (``pyhypersphere train --chunk-size``) so every batch fits the memory
of a small one.

    .venv/bin/python benchmarks/large_batch_accuracy.py --out runs/large-batch
    .venv/bin/python benchmarks/large_batch_accuracy.py --loss infonce --batches 16384 --out runs/lb-infonce

Each batch size is a fresh ``pyhypersphere train`` process with the same samples, epochs
and seed; the learning rate follows the paper (0.12 * B / 256) unless --lr-rule sqrt.
``--loss`` and ``--tau`` go to the trainer unchanged (its defaults when not given).
Prints a Markdown table and writes OUT/table.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from pyhypersphere.train.config import LOSSES, TrainConfig

COLUMNS = ("linear_probe_acc", "knn_acc", "linear_probe_acc_output", "align", "uniform")


def lr_for(batch: int, rule: str) -> float:
    if rule == "linear":
        return 0.12 * batch / 256
    return 0.12 * (batch / 256) ** 0.5


def train_command(batch: int, args, folder: Path) -> list:
    """The ``pyhypersphere train`` command line of one batch size."""
    return [
        sys.executable, "-m", "pyhypersphere", "train",
        "--loss", args.loss, "--tau", repr(args.tau),
        "--num-samples", str(args.samples), "--epochs", str(args.epochs),
        "--batch-size", str(batch), "--chunk-size", str(args.chunk_size),
        "--lr", repr(lr_for(batch, args.lr_rule)), "--eval-every", str(args.epochs),
        "--threads", str(args.threads), "--seed", str(args.seed),
        "--out", str(folder), "--overwrite", "--no-progress", "--no-plots",
    ]  # fmt: skip


def run_one(batch: int, args, out: Path) -> dict:
    folder = out / f"{args.loss}-batch{batch}"
    start = time.perf_counter()
    done = subprocess.run(train_command(batch, args, folder), capture_output=True, text=True)
    wall = time.perf_counter() - start
    row = {
        "loss": args.loss,
        "batch": batch,
        "lr": lr_for(batch, args.lr_rule),
        "wall_s": round(wall, 1),
        "returncode": done.returncode,
    }
    summary = folder / "summary.json"
    if done.returncode == 0 and summary.exists():
        s = json.loads(summary.read_text())
        row.update({k: s[k] for k in COLUMNS})
        row["chunk_size"] = s["chunk_size"]
        row["steps_per_epoch"] = s["train_samples"] // batch
    else:
        row["error"] = done.stderr.strip().splitlines()[-1:] or ["(no output)"]
    return row


def markdown(rows) -> str:
    lines = [
        "| loss | batch | lr | steps/epoch | linear probe | 5-NN | linear probe (output) | align | uniform | wall time |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(
                f"| {r['loss']} | {r['batch']} | {r['lr']:g} | | failed: {r['error'][0]} | | | | | {r['wall_s']:.0f} s |"
            )
            continue
        lines.append(
            f"| {r['loss']} | {r['batch']} | {r['lr']:g} | {r['steps_per_epoch']} | {r['linear_probe_acc']:.3f} | {r['knn_acc']:.3f} "
            f"| {r['linear_probe_acc_output']:.3f} | {r['align']:.3f} | {r['uniform']:.3f} | {r['wall_s']:.0f} s |"
        )
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", default="16384,4096,1024,256", help="comma-separated batch sizes, run in this order")
    p.add_argument("--samples", type=int, default=20480, help="MNIST-1D samples (80%% train: 16384 for 20480)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--chunk-size", type=int, default=1024)
    p.add_argument("--lr-rule", choices=("linear", "sqrt"), default="linear")
    p.add_argument("--loss", choices=LOSSES, default=TrainConfig.loss)
    p.add_argument("--tau", type=float, default=TrainConfig.tau, help="InfoNCE temperature (unused by align_uniform)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/large-batch")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        rows.append(run_one(batch, args, out))
        print(json.dumps(rows[-1]), flush=True)
        (out / "table.json").write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=2))
    print(markdown(sorted(rows, key=lambda r: r["batch"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
