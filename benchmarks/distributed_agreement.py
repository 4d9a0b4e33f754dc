"""How far pyhypersphere.distributed.uniform_loss is from the single-process uniform_loss.

    .venv/bin/python benchmarks/distributed_agreement.py [--n 1020,4092,16380] [--d 16,128]
        [--seeds 3] [--grad-max-n 4096] [--json out.json]

Both compute the same sum over the same pairs; with ``split=True`` (measured here) they
differ only in how it is grouped: one process sums every pair tile into one
log-sum-exp, W ranks each sum about 1/W of the pairs and combine their W partial
log-sum-exps.  So the two losses differ by rounding only.  This script measures by how much: 4 gloo ranks (1 thread each; subgroups of 2
and 3 ranks for W = 2, 3), unit-norm Gaussian rows, t = 2, float32 and float64, equal
shards (N divisible by 12).  For every case it prints |L_dist - L_single| (absolute:
the loss is a log, so this is the relative error of the pair sum) next to the single
process's own error |L_single - L_float64| (L_float64: the plain-torch blocked formula
in float64), and for N <= --grad-max-n the gradients' max |diff| / max |ref| (each
rank's x.grad / W, the DDP convention).
"""

import argparse
import datetime
import json
import os
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import pyhypersphere
from pyhypersphere import distributed
from pyhypersphere.reference import blocked_uniform_loss

WORLDS = (2, 3, 4)
T = 2.0
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def unit_rows(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)


def cases(args):
    for n in args.n:
        for d in args.d:
            for seed in range(args.seeds):
                for dtype in DTYPES:
                    yield n, d, seed, dtype


def rank_main(rank, world, store, args, out_path):
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=600)
    )
    groups = {w: dist.new_group(list(range(w))) for w in WORLDS if w < world}
    groups[world] = None
    rows = []
    for n, d, seed, dtype_name in cases(args):
        full64 = unit_rows(n, d, seed)
        full = full64.to(DTYPES[dtype_name])
        want_grad = n <= args.grad_max_n
        if rank == 0:  # the single process, once per case
            single_x = full.clone().requires_grad_(want_grad)
            single = pyhypersphere.uniform_loss(single_x, T)
            if want_grad:
                single.backward()
            with torch.no_grad():
                ref64 = blocked_uniform_loss(full64, T).item()  # plain torch, float64
        for w in WORLDS:
            if rank >= w:
                continue
            shard = full[rank * (n // w) : (rank + 1) * (n // w)].clone().requires_grad_(want_grad)
            loss = distributed.uniform_loss(shard, T, group=groups[w], split=True)
            if want_grad:
                loss.backward()
                pieces = [torch.empty_like(shard) for _ in range(w)]  # equal shards: N % 12 == 0
                dist.all_gather(pieces, (shard.grad / w).contiguous(), group=groups[w])
                grads = torch.cat(pieces)
            if rank == 0:
                row = {"n": n, "d": d, "seed": seed, "dtype": dtype_name, "world": w}
                row["loss_dist_minus_single"] = abs(loss.item() - single.item())
                row["loss_single_minus_float64"] = abs(single.item() - ref64)
                row["loss_dist_minus_float64"] = abs(loss.item() - ref64)
                if want_grad:
                    g = single_x.grad.double()
                    row["grad_rel_dist_vs_single"] = ((grads.double() - g).abs().max() / g.abs().max()).item()
                rows.append(row)
    dist.barrier()
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(rows, f)
    dist.destroy_process_group()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=lambda s: [int(v) for v in s.split(",")], default=[1020, 4092, 16380])
    parser.add_argument("--d", type=lambda s: [int(v) for v in s.split(",")], default=[16, 128])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--grad-max-n", type=int, default=4096)
    parser.add_argument("--json", help="write every case here too")
    args = parser.parse_args()
    if any(n % 12 for n in args.n):
        parser.error("--n: every N must be divisible by 12 (equal shards for 2, 3 and 4 ranks)")
    with tempfile.TemporaryDirectory() as tmp:
        out_path = os.path.join(tmp, "rows.json")
        mp.start_processes(
            rank_main, args=(max(WORLDS), os.path.join(tmp, "store"), args, out_path), nprocs=max(WORLDS),
            start_method="spawn",
        )  # fmt: skip
        rows = json.load(open(out_path))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    print(f"{'dtype':<8}{'N':>7}{'d':>5}{'W':>3}  {'max |L_dist - L_single|':>24}  {'max |L_single - L_f64|':>23}"
          f"  {'max grad rel diff':>18}")
    keys = sorted({(r["dtype"], r["n"], r["d"], r["world"]) for r in rows})
    for key in keys:
        group = [r for r in rows if (r["dtype"], r["n"], r["d"], r["world"]) == key]
        dl = max(r["loss_dist_minus_single"] for r in group)
        sl = max(r["loss_single_minus_float64"] for r in group)
        gr = [r["grad_rel_dist_vs_single"] for r in group if "grad_rel_dist_vs_single" in r]
        print(f"{key[0]:<8}{key[1]:>7}{key[2]:>5}{key[3]:>3}  {dl:>24.3e}  {sl:>23.3e}  "
              f"{(f'{max(gr):.3e}' if gr else '-'):>18}")
    for dtype in DTYPES:
        group = [r for r in rows if r["dtype"] == dtype]
        print(f"{dtype}: over all {len(group)} cases, max |L_dist - L_single| = "
              f"{max(r['loss_dist_minus_single'] for r in group):.3e}, max |L_single - L_float64| = "
              f"{max(r['loss_single_minus_float64'] for r in group):.3e}")


if __name__ == "__main__":
    main()
