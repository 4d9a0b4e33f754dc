"""One loss call on the GPU, for a profiler: warm-up calls, then one call between
cudaProfilerStart and cudaProfilerStop, so that `ncu --profile-from-start off` records the
kernels of exactly that call; then the same call timed with CUDA events (medians).

    ncu --clock-control none --profile-from-start off --section SpeedOfLight ... \
        python3 benchmarks/gpu_profile.py --loss uniform --backend cuda --dtype bfloat16

`--grad` (the default) takes the gradient of the input too (x only: the contrastive losses'
second input y takes none); `--no-grad` runs the forward alone, which for the uniformity
loss is the kernels' compute_grad=false path.  The backend
is chosen through PYHYPERSPHERE_GPU_BACKEND, which must be set before pyhypersphere loads.
"""
import argparse
import os
import statistics
import sys


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loss", choices=["uniform", "nt_xent", "clip"], default="uniform")
    parser.add_argument("--backend", choices=["cuda", "triton"], default="cuda")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="bfloat16")
    parser.add_argument("--n", type=int, default=65536)
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--queue", type=int, default=0,
                        help="uniformity only: a detached queue of this many rows (MoCo's shape: --n 256 --queue 65536)")
    parser.add_argument("--grad", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5, help="event-timed calls after the profiled one")
    args = parser.parse_args()
    os.environ["PYHYPERSPHERE_GPU_BACKEND"] = args.backend

    import torch
    import pyhypersphere
    from cuda_bars import cuda_times, unit_rows  # benchmarks/, this script's directory

    if args.queue and args.loss != "uniform":
        parser.error("--queue is for --loss uniform")
    dtype = getattr(torch, args.dtype)
    x = unit_rows(args.n, args.d, dtype, seed=0)
    y = unit_rows(args.n, args.d, dtype, seed=1)
    queue = unit_rows(args.queue, args.d, dtype, seed=2) if args.queue else None
    losses = {
        "uniform": lambda a: pyhypersphere.uniform_loss(a, t=2, queue=queue),
        "nt_xent": lambda a: pyhypersphere.nt_xent_loss(a, y, tau=0.1),
        "clip": lambda a: pyhypersphere.clip_loss(a, y, tau=0.07),
    }
    loss_fn = losses[args.loss]

    def call():
        a = x.detach().requires_grad_(args.grad)
        if args.grad:
            loss_fn(a).backward()
        else:
            with torch.no_grad():
                loss_fn(a)

    for _ in range(args.warmup):
        call()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    call()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()

    times = cuda_times(call, args.reps, warmup=0)
    ms = statistics.median(times)
    rate = ""
    if args.loss == "uniform":
        # The uniformity's products over its pairs: the Gram entries, and with the gradient
        # W Z and W^T Z as well (d multiply-adds per pair each), as cuda_bars.py counts them.
        pairs = args.n * (args.n - 1) / 2 + args.n * args.queue
        products = 3 if args.grad else 1
        rate = f"; {2 * products * pairs * args.d / (ms * 1e-3) / 1e12:.1f} TFLOP/s over {products} product(s)"
    print(f"{args.loss} backend={args.backend} dtype={args.dtype} n={args.n} queue={args.queue} d={args.d} "
          f"grad={args.grad}: median {ms:.3f} ms (min {min(times):.3f}, max {max(times):.3f}{rate})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
