"""The CUDA bars of issues 3 and 9, measured side by side in one run on one GPU (meant: an H100).

    python benchmarks/cuda_bars.py [--n 65536] [--d 128] [--big-n 1048576] [--reps 5]
                                   [--queue-n 256] [--queue-k 65536]
                                   [--json bench-out/cuda_bars.json] [--skip-peers] [--skip-big]

Both GPU backends run side by side: the fused op (whichever backend the operators use,
build_info()["gpu_backend"]: the C++ CUDA kernels, or Triton's without them) and, when
that is not Triton already, the Triton kernels called directly
(pyhypersphere.triton_kernels.loss).

Inputs are random unit-norm rows (the paper's setting), t = 2.  Every time is the median
of --reps calls after warm-up, measured with CUDA events around the whole call:
uniform_loss(x) then .backward() ("fwd+bwd"; the op computes the gradient in its forward
pass and the backward only scales it).

1. N = 65536, d = 128, fwd+bwd of the fused op: float32 with TF32 (matmul fp32_precision
   "tf32"), float32 without (3xTF32, "ieee"), and bfloat16 inputs.
2. The GEMM bar, in the same run.  The fused fwd+bwd performs three GEMM-shaped products
   over the N(N-1)/2 pairs i < j: the Gram entry <z_i, z_j> (d multiply-adds per pair), and
   W Z, W^T Z (d multiply-adds per pair each, one per row of the pair):
       MACs = 3 * N(N-1)/2 * d     (= 1.65e12 at N = 65536, d = 128; flops = 2 * MACs)
   The kernel itself computes whole 128 x 128 tiles, diagonal tiles in full, so it does a
   little more; the bar counts the exact-triangle work.  torch.mm is timed on two square
   M x M matrices with M^3 = MACs (a compute-bound shape: what the tensor cores reach on
   these flops), in the same dtype / TF32 setting; "x mm" = fused time / mm time.
3. N = 1,048,576, d = 128, fwd+bwd (TF32 and bfloat16), one timed call each.
4. Peers at N = 65536 (pyhypersphere.bench.impls: KeOps LazyTensor log-sum-exp, compiled
   FlexAttention with q = k = x and the diagonal masked), fwd+bwd, same inputs.
5. A MoCo queue shape: --queue-n rows against a --queue-k queue (a buffer, no gradient),
   fwd+bwd, per backend (issue 9's bar: under 0.5 ms at N = 256, K = 65536 on an H100;
   issue 24's: 0.4 ms, benchmarks/uniform_gpu_bars.py).
6. Extra GPU memory of every call: torch.cuda.max_memory_allocated() during the call
   minus the memory allocated before it (inputs excluded), in MiB and in units of the
   input rows (N * d * element size).

Sections run cheapest first (--sections queue,fused,peers,big: 5, then 1-2, 4, 3); each
prints its rows and rewrites the JSON when it ends, so a run cut by a time limit keeps
what it measured.  At the end: a table, and the JSON (--json).  Peers that cannot run
(package missing, out of memory, error) are reported with the reason instead of a time.
"""

import argparse
import json
import math
import os
import statistics
import sys

import torch

import pyhypersphere
from pyhypersphere import uniform_loss
from pyhypersphere._matmul_precision import cuda_fp32_matmul

T = 2.0


def unit_rows(n, d, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(n, d, generator=g, device="cuda", dtype=torch.float32)
    return torch.nn.functional.normalize(x, dim=1).to(dtype)


# Larger than any GPU's L2 (H100 50 MB, H200 60 MB): zeroed before each timed call so that
# no call finds the previous one's rows in L2, as triton.testing.do_bench does.
L2_FLUSH_BYTES = 256 * 2**20


def cuda_times(fn, reps, warmup=1):
    """Milliseconds of each of `reps` calls of fn(), CUDA events around each call, the L2
    cache flushed before each."""
    for _ in range(warmup):
        fn()
    flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device="cuda")
    times = []
    for _ in range(reps):
        flush.zero_()
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return times


def cuda_ms(fn, reps, warmup=1):
    """Median milliseconds of fn() over `reps` calls (cuda_times)."""
    return statistics.median(cuda_times(fn, reps, warmup))


def extra_memory(fn):
    """Peak bytes allocated by one call of fn beyond what was allocated before it."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def fwd_bwd(loss_fn, x):
    def run():
        xx = x.detach().requires_grad_()
        loss_fn(xx).backward()
    return run


def pair_macs(n, d):
    return 3 * n * (n - 1) / 2 * d


def mm_bar_ms(macs, dtype, reps):
    m = max(16, round(macs ** (1 / 3) / 16) * 16)
    a = torch.randn(m, m, device="cuda", dtype=torch.float32).to(dtype)
    b = torch.randn(m, m, device="cuda", dtype=torch.float32).to(dtype)
    ms = cuda_ms(lambda: torch.mm(a, b), reps, warmup=3)
    return ms * macs / float(m) ** 3, m  # scaled to exactly `macs`


def record(rows, **row):
    rows.append(row)
    return row


def measure(rows, label, loss_fn, x, reps, macs=None, peer=False):
    """Times fwd+bwd of loss_fn on x and its extra memory; records a row (or the error)."""
    row_bytes = x.numel() * x.element_size()
    try:
        ms = cuda_ms(fwd_bwd(loss_fn, x), reps)
        extra = extra_memory(fwd_bwd(loss_fn, x))
        with torch.no_grad():
            value = float(loss_fn(x))
    except Exception as exc:  # a peer that cannot run here: report why
        if not peer:
            raise
        torch.cuda.empty_cache()
        return record(rows, method=label, n=x.shape[0], d=x.shape[1], dtype=str(x.dtype).replace("torch.", ""),
                      error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    out = record(rows, method=label, n=x.shape[0], d=x.shape[1], dtype=str(x.dtype).replace("torch.", ""),
                 fwd_bwd_ms=ms, extra_mib=extra / 2**20, extra_rows=extra / row_bytes, loss=value)
    if macs is not None:
        out["tflops"] = 2 * macs / (ms * 1e-3) / 1e12
    return out


SECTIONS = ("queue", "fused", "peers", "big")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=65536)
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--big-n", type=int, default=1_048_576)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--json", default="bench-out/cuda_bars.json")
    parser.add_argument("--queue-n", type=int, default=256)
    parser.add_argument("--queue-k", type=int, default=65536)
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"which parts run, in this order (default {','.join(SECTIONS)}: cheapest first)")
    parser.add_argument("--skip-peers", action="store_true")
    parser.add_argument("--skip-big", action="store_true")
    args = parser.parse_args()
    sections = [name for name in args.sections.split(",") if name]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"--sections: unknown {', '.join(unknown)} (choose from {', '.join(SECTIONS)})")
    if args.skip_peers:
        sections = [name for name in sections if name != "peers"]
    if args.skip_big:
        sections = [name for name in sections if name != "big"]

    if not torch.cuda.is_available():
        sys.exit("cuda_bars: needs a CUDA device")
    info = pyhypersphere.build_info()
    if info["gpu_backend"] == "none":
        sys.exit(f"cuda_bars: no GPU backend ({info['gpu_backend_reason']})")

    n, d = args.n, args.d
    macs = pair_macs(n, d)
    rows = []
    backends = gpu_backends(info)
    run_section = {
        "queue": lambda: queue_section(rows, backends, args),
        "fused": lambda: fused_section(rows, backends, args, macs),
        "peers": lambda: peers_section(rows, args, macs),
        "big": lambda: big_section(rows, backends, args),
    }
    # Each section prints its rows and rewrites the JSON when it ends, so a run stopped by
    # a time limit keeps what it measured.
    for name in sections:
        first = len(rows)
        run_section[name]()
        for row in rows[first:]:
            print(f"cuda_bars {name}:", json.dumps(row), flush=True)
        save_json(args.json, rows, macs)
    print_table(rows, n, d, macs)
    print(f"\nwrote {args.json}")


SETTINGS = [("tf32", torch.float32, "tf32"), ("fp32 (3xTF32)", torch.float32, "ieee"), ("bf16", torch.bfloat16, None)]


def fused_section(rows, backends, args, macs):
    """1 + 2: fused fwd+bwd and the GEMM bar with the same multiply-adds, per precision."""
    n, d = args.n, args.d
    for name, dtype, precision in SETTINGS:
        with cuda_fp32_matmul(precision):
            x = unit_rows(n, d, dtype)
            mm_ms, m = mm_bar_ms(macs, dtype, args.reps)
            for backend, loss in backends.items():
                row = measure(rows, f"pyhypersphere {backend} {name}", loss, x, args.reps, macs)
                row["mm_equal_macs_ms"] = mm_ms
                row["mm_square_size"] = m
                row["x_mm"] = row["fwd_bwd_ms"] / mm_ms
            record(rows, method=f"torch.mm {name} ({m}x{m}, scaled to the same MACs)", n=n, d=d,
                   dtype=str(dtype).replace("torch.", ""), fwd_bwd_ms=mm_ms, tflops=2 * macs / (mm_ms * 1e-3) / 1e12)
            del x


def big_section(rows, backends, args):
    """3: a million rows, one timed call per backend and precision."""
    big_macs = pair_macs(args.big_n, args.d)
    for name, dtype, precision in (("tf32", torch.float32, "tf32"), ("bf16", torch.bfloat16, None)):
        with cuda_fp32_matmul(precision):
            x = unit_rows(args.big_n, args.d, dtype, seed=1)
            for backend, loss in backends.items():
                measure(rows, f"pyhypersphere {backend} {name}", loss, x, reps=1, macs=big_macs)
                torch.cuda.empty_cache()
            del x


def queue_section(rows, backends, args):
    """5: a MoCo queue shape: x's rows against a queue that takes no gradient."""
    for name, dtype, precision in SETTINGS:
        with cuda_fp32_matmul(precision):
            x = unit_rows(args.queue_n, args.d, dtype, seed=2)
            queue = unit_rows(args.queue_k, args.d, dtype, seed=3)
            for backend, loss in backends.items():
                measure(rows, f"pyhypersphere {backend} {name} queue K={args.queue_k}",
                        lambda v, loss=loss: loss(v, queue=queue), x, args.reps)
            del x, queue


def peers_section(rows, args, macs):
    """4: peers at N = n."""
    n, d = args.n, args.d
    try:
        from pyhypersphere.bench.impls import IMPLS
    except ImportError as exc:
        record(rows, method="peers", error=f"pyhypersphere.bench not importable: {exc}")
        return
    device = torch.device("cuda")
    for impl_name in ("keops", "flex"):
        impl = IMPLS.get(impl_name)
        if impl is None:
            continue
        for name, dtype, precision in (("tf32", torch.float32, "tf32"), ("bf16", torch.bfloat16, None)):
            reason = impl.unsupported(device, dtype)
            if reason is not None:
                record(rows, method=f"{impl_name} {name}", n=n, d=d, error=reason)
                continue
            with cuda_fp32_matmul(precision):
                x = unit_rows(n, d, dtype)
                try:
                    loss_fn = impl.build(n, device, dtype, T)
                except Exception as exc:
                    record(rows, method=f"{impl_name} {name}", n=n, d=d, error=f"{type(exc).__name__}: {exc}"[:200])
                    continue
                measure(rows, f"{impl_name} {name}", loss_fn, x, args.reps, macs, peer=True)
                del x, loss_fn
                torch.cuda.empty_cache()


def save_json(path, rows, macs):
    meta = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "pyhypersphere": {k: v for k, v in pyhypersphere.build_info().items() if isinstance(v, (str, int, float, bool))},
        "t": T,
        "macs_fwd_bwd_at_n": macs,
        "mac_count": "3 * N(N-1)/2 * d (Gram, W Z, W^T Z over the pairs i < j); flops = 2 * MACs",
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=2)


def gpu_backends(info):
    """{backend name: loss(x, queue=None)}: the operators' active GPU backend, and Triton's
    kernels called directly when that backend is not Triton already."""
    backends = {info["gpu_backend"]: lambda x, queue=None: uniform_loss(x, T, queue=queue)}
    if info["gpu_backend"] != "triton":
        try:
            from pyhypersphere.triton_kernels.loss import uniform_loss as triton_uniform_loss
        except ImportError as exc:
            print(f"cuda_bars: no Triton rows ({exc})")
        else:
            backends["triton"] = lambda x, queue=None: triton_uniform_loss(x, T, queue=queue)
    return backends


def print_table(rows, n, d, macs):
    print(f"\nuniformity loss fwd+bwd on {torch.cuda.get_device_name()}, d = {d}, t = {T}")
    print(f"MACs at N = {n}: 3 * N(N-1)/2 * d = {macs:.3e} (flops = 2 x MACs)\n")
    header = f"{'method':58s} {'N':>8s} {'dtype':>9s} {'ms':>10s} {'TFLOP/s':>8s} {'x mm':>6s} {'extra MiB':>10s} {'x rows':>7s} {'loss':>10s}"
    print(header)
    print("-" * len(header))
    for r in rows:
        if "error" in r:
            print(f"{r['method']:58s} {r.get('n', ''):>8} {r.get('dtype', ''):>9s}  -- {r['error']}")
            continue

        def fmt(key, spec):
            v = r.get(key)
            return format(v, spec) if isinstance(v, (int, float)) and math.isfinite(v) else ""

        print(f"{r['method']:58s} {r['n']:>8d} {r['dtype']:>9s} {fmt('fwd_bwd_ms', '10.2f'):>10s} "
              f"{fmt('tflops', '8.1f'):>8s} {fmt('x_mm', '6.2f'):>6s} {fmt('extra_mib', '10.1f'):>10s} "
              f"{fmt('extra_rows', '7.2f'):>7s} {fmt('loss', '10.6f'):>10s}")


if __name__ == "__main__":
    main()
