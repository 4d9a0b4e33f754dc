"""The uniformity bars of issue 24 on a GPU: the CUDA C++ row kernel and the Triton
kernel side by side, in one process, forward + backward (the op's value and x's
gradient), unit-norm rows, t = 2, d = 128, CUDA events, median of --reps after warm-up:

    cuda_uniform_bf16_65536    N = 65536 bf16                    bar <= 7 ms
    cuda_uniform_fp32_65536    N = 65536 float32, "highest"      bar <= 25 ms
    cuda_moco_bf16_256x65536   N = 256, queue 65536 (detached)    bar <= 0.4 ms

    python benchmarks/uniform_gpu_bars.py --json docs/gpu_bars.json

The JSON file is updated in place (other entries kept): per case the CUDA and Triton
times, the bar, whether the CUDA kernel meets it, and the device.
"""

import argparse
import json
import os
import statistics

import torch

from cuda_bars import cuda_times, unit_rows  # benchmarks/, this script's directory

CASES = [  # name, dtype, n, queue rows, bar in ms
    ("cuda_uniform_bf16_65536", torch.bfloat16, 65536, 0, 7.0),
    ("cuda_uniform_fp32_65536", torch.float32, 65536, 0, 25.0),
    ("cuda_moco_bf16_256x65536", torch.bfloat16, 256, 65536, 0.4),
]


def median_ms(fn, warmup, reps):
    return statistics.median(cuda_times(fn, reps, warmup))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()

    import pyhypersphere  # noqa: F401  (loads the ops)
    from pyhypersphere.triton_kernels.uniform import uniform_lse as triton_uniform_lse

    cuda_op = torch.ops.pyhypersphere_cuda_testing.uniform_lse_with  # the C++ kernel, whatever the backend
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    results = {}
    try:
        for name, dtype, n, k, bar in CASES:
            x = unit_rows(n, 128, dtype, seed=0)
            q = unit_rows(k, 128, dtype, seed=1) if k else None
            cuda_ms = median_ms(lambda: cuda_op(x, q, 2.0, True, 0, 1, True, False, 0, 0), args.warmup, args.reps)
            triton_ms = median_ms(lambda: triton_uniform_lse(x, q, 2.0, True, 0, 1, True, False), args.warmup, args.reps)
            results[name] = {"cuda_ms": round(cuda_ms, 4), "triton_ms": round(triton_ms, 4), "bar_ms": bar,
                             "meets_bar": cuda_ms <= bar, "device": torch.cuda.get_device_name(),
                             "what": "uniform_lse value + grad_x, t=2, d=128, unit rows, median of CUDA events"}
            print(f"{name}: cuda {cuda_ms:.3f} ms, triton {triton_ms:.3f} ms, bar {bar} ms "
                  f"{'met' if cuda_ms <= bar else 'MISSED'}", flush=True)
    finally:
        torch.set_float32_matmul_precision(old)
    if args.json:
        existing = {}
        if os.path.exists(args.json):
            with open(args.json) as f:
                existing = json.load(f)
        existing.update(results)
        with open(args.json, "w") as f:
            json.dump(existing, f, indent=2, sort_keys=True)
            f.write("\n")


if __name__ == "__main__":
    main()
