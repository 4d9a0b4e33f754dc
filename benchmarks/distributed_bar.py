"""The distributed bar: W gloo ranks on one machine against one process.

    .venv/bin/python benchmarks/distributed_bar.py [--world 4] [--n 16384] [--d 128]
        [--threads-per-rank 1] [--reps 3] [--json out.json]

Global batch N x d float32 unit vectors, split into W equal shards.  Each rank times
forward+backward of pyhypersphere.distributed.uniform_loss on its shard (median over
--reps after one warm-up, a barrier before each step); one process times
pyhypersphere.uniform_loss on the whole batch, with all cores and with one thread.
Each rank also times its part of the kernel alone (no communication: its rows of the
gathered batch against themselves and every later row, see distributed.pair_rows), the
no-sync path (equal_shards=True), and two views in one call against two calls.  Then the
distributed loss and gradients (each rank's x.grad / W, the DDP convention)
are compared with the single-process ones: max |diff| / max |reference|, and
||diff|| / ||reference||, also against a float64 run for scale.

The ranks share the machine's cores: with 4 ranks on 2 cores give each rank 1 thread
(--threads-per-rank), otherwise they oversubscribe the cores.
"""

import argparse
import datetime
import json
import os
import socket
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import pyhypersphere
from pyhypersphere import distributed
from pyhypersphere.ops import uniform as uniform_ops


def unit_rows(n, d, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1).to(dtype)


def loss_and_grad(loss_fn, x):
    leaf = x.detach().clone().requires_grad_(True)
    loss = loss_fn(leaf)
    loss.backward()
    return loss.detach(), leaf.grad


def median_seconds(fn, reps, before=lambda: None):
    fn()  # warm-up
    times = []
    for _ in range(reps):
        before()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_main(rank, world, port, args, out_dir):
    torch.set_num_threads(args.threads_per_rank)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
        timeout=datetime.timedelta(seconds=600),
    )
    try:
        full = unit_rows(args.n, args.d)
        x = full.chunk(world)[rank].contiguous()
        step = lambda: loss_and_grad(lambda v: distributed.uniform_loss(v, split=True), x)
        median, times = median_seconds(step, args.reps, before=dist.barrier)
        loss, grad = step()
        no_sync = lambda: loss_and_grad(lambda v: distributed.uniform_loss(v, equal_shards=True, split=True), x)
        no_sync_median, _ = median_seconds(no_sync, args.reps, before=dist.barrier)
        # Two views: one call (one set of collectives) against two calls.
        views = [x, x.flip(0).contiguous()]
        leaves = lambda: [v.detach().clone().requires_grad_(True) for v in views]
        one_call = lambda: sum(distributed.uniform_loss(leaves(), split=True)).backward()
        two_calls = lambda: sum(distributed.uniform_loss(v, split=True) for v in leaves()).backward()
        one_call_median, _ = median_seconds(one_call, args.reps, before=dist.barrier)
        two_calls_median, _ = median_seconds(two_calls, args.reps, before=dist.barrier)
        # This rank's share of the pair work alone (no communication), for the overhead.
        lo, hi = distributed.pair_rows(args.n, world, rank)
        queue = full[hi:] if hi < args.n else None
        part = lambda: uniform_ops.uniform_lse(full[lo:hi], queue, 2.0, True, 0, 1, True, queue is not None)
        part_median, _ = median_seconds(part, args.reps, before=dist.barrier)
        torch.save({"loss": loss, "grad": grad, "median": median, "times": times, "part_median": part_median,
                    "no_sync_median": no_sync_median, "two_views_one_call_median": one_call_median,
                    "two_views_two_calls_median": two_calls_median},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def relative_errors(got, want):
    diff = (got.double() - want.double())
    return {
        "max_abs_over_max_ref": (diff.abs().max() / want.double().abs().max()).item(),
        "norm": (diff.norm() / want.double().norm()).item(),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=int, default=4)
    parser.add_argument("--n", type=int, default=16384, help="global batch rows")
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--threads-per-rank", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()
    if args.n % args.world:
        parser.error("--n must be a multiple of --world (equal shards)")
    cores = os.cpu_count()
    x = unit_rows(args.n, args.d)

    single = {}
    for threads in sorted({cores, 1}, reverse=True):
        torch.set_num_threads(threads)
        median, times = median_seconds(lambda: loss_and_grad(pyhypersphere.uniform_loss, x), args.reps)
        single[threads] = {"median_s": median, "times_s": times}
        print(f"single process, {threads} thread(s): fwd+bwd median {median:.3f} s  {[f'{t:.3f}' for t in times]}")
    torch.set_num_threads(cores)
    loss_single, grad_single = loss_and_grad(pyhypersphere.uniform_loss, x)
    loss_f64, grad_f64 = loss_and_grad(pyhypersphere.uniform_loss, x.double())

    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(rank_main, args=(args.world, free_port(), args, out_dir), nprocs=args.world, join=True)
        ranks = [torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(args.world)]

    losses = torch.stack([r["loss"] for r in ranks])
    assert torch.equal(losses, losses[0].expand_as(losses)), f"ranks disagree on the loss: {losses}"
    # Each rank's x.grad is W * dL/dx_r (what DDP's average over ranks expects).
    grad_dist = torch.cat([r["grad"] for r in ranks]) / args.world
    loss_dist = ranks[0]["loss"]
    per_rank = [r["median"] for r in ranks]
    result = {
        "machine": f"{cores} cores, torch {torch.__version__}",
        "world": args.world, "n": args.n, "d": args.d, "threads_per_rank": args.threads_per_rank,
        "per_rank_median_s": per_rank,
        "per_rank_kernel_part_median_s": [r["part_median"] for r in ranks],
        "per_rank_equal_shards_median_s": [r["no_sync_median"] for r in ranks],
        "per_rank_two_views_one_call_median_s": [r["two_views_one_call_median"] for r in ranks],
        "per_rank_two_views_two_calls_median_s": [r["two_views_two_calls_median"] for r in ranks],
        "single_process": single,
        "loss": {"distributed": loss_dist.item(), "single": loss_single.item(), "float64": loss_f64.item(),
                 "rel_diff_vs_single": abs(loss_dist.item() - loss_single.item()) / abs(loss_single.item()),
                 "rel_diff_vs_float64": abs(loss_dist.item() - loss_f64.item()) / abs(loss_f64.item()),
                 "single_rel_diff_vs_float64": abs(loss_single.item() - loss_f64.item()) / abs(loss_f64.item())},
        "grad_vs_single": relative_errors(grad_dist, grad_single),
        "grad_vs_float64": relative_errors(grad_dist, grad_f64),
        "single_grad_vs_float64": relative_errors(grad_single, grad_f64),
    }
    slowest = max(per_rank)
    print(f"{args.world} ranks x {args.threads_per_rank} thread(s): per-rank fwd+bwd medians "
          + ", ".join(f"{t:.3f}" for t in per_rank) + " s; its part of the kernel alone "
          + ", ".join(f"{r['part_median']:.3f}" for r in ranks) + " s")
    for key in ("per_rank_equal_shards_median_s", "per_rank_two_views_one_call_median_s",
                "per_rank_two_views_two_calls_median_s"):
        print(f"  {key}: " + ", ".join(f"{t:.3f}" for t in result[key]))
    for threads, s in single.items():
        print(f"  slowest rank / single process ({threads} thread(s)): {slowest / s['median_s']:.2f}")
    print(f"loss: distributed {loss_dist.item():.8f}  single {loss_single.item():.8f}  "
          f"rel diff {result['loss']['rel_diff_vs_single']:.2e} (vs float64: distributed "
          f"{result['loss']['rel_diff_vs_float64']:.2e}, single {result['loss']['single_rel_diff_vs_float64']:.2e})")
    for name in ("grad_vs_single", "grad_vs_float64", "single_grad_vs_float64"):
        e = result[name]
        print(f"{name}: max|diff|/max|ref| {e['max_abs_over_max_ref']:.2e}  ||diff||/||ref|| {e['norm']:.2e}")
    bar = 1e-5
    ok = result["loss"]["rel_diff_vs_single"] <= bar and result["grad_vs_single"]["max_abs_over_max_ref"] <= bar
    print(f"bar (loss and gradients within {bar:g} relative of single process): {'met' if ok else 'NOT met'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
