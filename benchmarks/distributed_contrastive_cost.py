"""Compute per rank of the distributed contrastive losses, against the single process
(one process, no ranks: the rank's share is timed on a gathered batch built here).

    .venv/bin/python benchmarks/distributed_contrastive_cost.py [--n 4096] [--d 128] [--world 2]

Times (median of --reps after a warm-up, 1 thread) the single-process ``clip_loss`` and
``nt_xent_loss`` forward + backward on N rows against rank 0's work in
``distributed.clip_loss`` / ``nt_xent_loss`` with W equal shards: its share's value and
the gradient rows of the whole gathered batch (the collectives excluded).  Each rank
computes its own rows' log-sum-exps against all N rows, so the ratio is about 2 / W.
"""

import argparse

import torch
import torch.nn.functional as F

import pyhypersphere
from pyhypersphere import _global_batch
from pyhypersphere.ops import contrastive_distributed

from cpu_bars import median_seconds  # this script's folder is on sys.path


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x, y = [F.normalize(torch.randn(args.n, args.d, generator=g), dim=1) for _ in range(2)]
    gathered = torch.cat([x, y], 1)
    shard = args.n // args.world
    rows = [shard] * (args.world - 1) + [args.n - shard * (args.world - 1)]
    layout = _global_batch.Layout.build(
        0, args.world, rows, args.d, 2, torch.float32, torch.device("cpu"), torch.device("cpu")
    )
    # The rank's share: the sum of its anchors' losses (the mean's scale changes nothing timed).
    cases = [
        ("clip_loss", pyhypersphere.clip_loss,
         lambda z, layout_, scale: contrastive_distributed._clip_rows(z, layout_, scale).sum(), 0.07),
        ("nt_xent_loss", pyhypersphere.nt_xent_loss,
         lambda z, layout_, scale: contrastive_distributed._nt_xent_rows(z, layout_, scale, False).sum(), 0.5),
    ]
    print(f"N = {args.n}, d = {args.d}, W = {args.world}, float32, 1 thread, median of {args.reps}")
    for name, single_fn, share, tau in cases:
        a, b = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
        single = median_seconds(lambda: single_fn(a, b, tau).backward(), args.reps)

        def rank_zero():
            z = gathered.clone().requires_grad_(True)
            torch.autograd.grad(share(z, layout, 1 / tau), z)

        part = median_seconds(rank_zero, args.reps)
        print(f"{name}: single process {single:.3f} s, rank 0 {part:.3f} s, ratio {part / single:.2f}")


if __name__ == "__main__":
    main()
