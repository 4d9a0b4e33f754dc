"""The GPU bars of issues 23 and 24, side by side in one run, into one JSON list.

    python benchmarks/gpu_bars.py --json docs/gpu_bars.json

Each entry is {"case", "device", "ms", "peer", "peer_ms", "bar_ms", "meets_bar"}: forward+
backward medians (CUDA events, L2 flushed: pyhypersphere.bench.timing), d = 128 (a case
in CASE_WIDTH: its width).  The
public losses run on the backend PYHYPERSPHERE_GPU_BACKEND picks; the `cuda_` cases call
the C++ CUDA kernel through the CUDA build's test entry and the Triton launcher directly,
in the same process, whatever that choice (the op's value and x's gradient, no autograd).
Entries already in the file for other cases or devices are kept.  `--device cpu --scale
N` runs the public-API cases at 1/N of their rows on the CPU: the script's own smoke test
(tests/test_gpu_bars_script.py), no figure.
"""

import argparse
import json
import sys
from contextlib import contextmanager
from pathlib import Path

import torch

import pyhypersphere as ph
from pyhypersphere.bench.contrastive import dense_clip, dense_info_nce, dense_nt_xent
from pyhypersphere.bench.peers import flex_block_mask, flex_uniform_loss
from pyhypersphere.bench.timing import median_time
from pyhypersphere.machine import cpu_model

D = 128
T = 2.0
TAU = 0.1
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "tf32": torch.float32}

# case -> (loss, rows, queue rows, precision, bar in ms or None, peer)
CASES = {
    "uniform_bf16_65536": ("uniform", 65536, 0, "bf16", 4.5, "flex"),
    "uniform_tf32_65536": ("uniform", 65536, 0, "tf32", 9.0, None),
    "uniform_fp32_65536": ("uniform", 65536, 0, "fp32", 18.0, None),
    "uniform_bf16_4096": ("uniform", 4096, 0, "bf16", None, "flex"),
    "uniform_bf16_16384": ("uniform", 16384, 0, "bf16", None, "flex"),
    "moco_bf16_256x65536": ("uniform", 256, 65536, "bf16", 0.3, None),
    **{f"{loss}_{p}_16384": (loss, 16384, 0, p, None, "dense") for loss in ("nt_xent", "info_nce", "clip")
       for p in ("bf16", "fp32")},
    # SigLIP's one pass (y's gradient by atomics) against its two sweeps (the path under
    # torch's deterministic mode): whether the atomics pay, float32's mma.sync tiles included.
    **{f"siglip_{p}_16384": ("siglip", 16384, 0, p, None, "two-sweeps") for p in ("bf16", "tf32", "fp32")},
    "siglip_bf16_16384_d768": ("siglip", 16384, 0, "bf16", None, "two-sweeps"),
}
# Cases at another width than D: SigLIP's ViT-B/L embeddings (the one pass in gradient slices).
CASE_WIDTH = {"siglip_bf16_16384_d768": 768}
# Issue 24's bars: the C++ CUDA kernel, with the Triton kernel as its peer.
CUDA_KERNEL_CASES = {
    "cuda_uniform_bf16_65536": (65536, 0, "bf16", 7.0),
    "cuda_uniform_fp32_65536": (65536, 0, "fp32", 25.0),
    "cuda_moco_bf16_256x65536": (256, 65536, "bf16", 0.4),
}
# Contrastive bars are ratios to the dense formula: bf16 >= 3x, float32 >= 1.5x.
PEER_RATIO = {"bf16": 3.0, "fp32": 1.5}
DENSE = {"nt_xent": dense_nt_xent, "info_nce": dense_info_nce, "clip": dense_clip}
FUSED = {"nt_xent": ph.nt_xent_loss, "info_nce": ph.info_nce_loss, "clip": ph.clip_loss}


@contextmanager
def matmul_precision(precision: str):
    """TF32 allowed for "tf32" (and the 16-bit cases, where it does not apply), float32
    accuracy ("highest", torch's default) for "fp32"."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest" if precision == "fp32" else "high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def unit_rows(n, dtype, device, seed, d=D):
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    return x.to(device=device, dtype=dtype)


def fwd_bwd(loss_fn, inputs):
    """A step: the loss of fresh leaves that require grad, then its backward."""
    leaves = [x.detach().requires_grad_(True) for x in inputs]

    def step():
        loss_fn(*leaves).backward()
        for leaf in leaves:
            leaf.grad = None

    return step


def deterministic(step):
    """The step under torch.use_deterministic_algorithms (warnings only: the timing is of
    the loss's own path, whatever other ops think of the mode)."""

    def run():
        before = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            step()
        finally:
            torch.use_deterministic_algorithms(before)

    return run


def time_ms(step, device):
    return median_time(step, torch.device(device), warmup=3, repeat=20, max_seconds=10.0).median_ms


def case_steps(case, device, scale):
    """(fused step, peer step or None) for one case at 1/scale of its rows."""
    loss, rows, queue_rows, precision, _, peer = CASES[case]
    dtype = DTYPES[precision]
    n = max(rows // scale, 8)
    d = CASE_WIDTH.get(case, D)
    x = unit_rows(n, dtype, device, 0, d)
    if loss == "uniform":
        if queue_rows:
            queue = unit_rows(max(queue_rows // scale, 8), dtype, device, 1)  # detached, as MoCo's
            return fwd_bwd(lambda a: ph.uniform_loss(a, T, queue=queue), [x]), None
        fused = fwd_bwd(lambda a: ph.uniform_loss(a, T), [x])
        if peer != "flex" or device == "cpu":  # FlexAttention has no backward on the CPU
            return fused, None
        mask = flex_block_mask(n, device)
        attention = None
        if device == "cuda":
            from torch.nn.attention.flex_attention import flex_attention

            attention = torch.compile(flex_attention)
        return fused, fwd_bwd(lambda a: flex_uniform_loss(a, T, block_mask=mask, attention=attention), [x])
    y = unit_rows(n, dtype, device, 2, d)
    if loss == "siglip":
        fused = fwd_bwd(ph.siglip_loss, [x, y])
        return fused, deterministic(fused)
    fused = fwd_bwd(lambda a, b: FUSED[loss](a, b, TAU), [x, y])
    return fused, fwd_bwd(lambda a, b: DENSE[loss](a, b, TAU), [x, y])


def kernel_steps(case):
    """(C++ CUDA kernel step, Triton kernel step) for one of CUDA_KERNEL_CASES."""
    from pyhypersphere.triton_kernels.uniform import uniform_lse as triton_uniform_lse

    rows, queue_rows, precision, _ = CUDA_KERNEL_CASES[case]
    x = unit_rows(rows, DTYPES[precision], "cuda", 0)
    queue = unit_rows(queue_rows, DTYPES[precision], "cuda", 1) if queue_rows else None
    cuda_kernel = torch.ops.pyhypersphere_cuda.uniform_lse_with  # max_ctas, block_rows 0: the launcher's
    return (lambda: cuda_kernel(x, queue, T, True, 0, 1, True, False, 0, 0),
            lambda: triton_uniform_lse(x, queue, T, True, 0, 1, True, False))


def run_case(case, device, scale):
    if case in CUDA_KERNEL_CASES:
        precision, bar, peer = CUDA_KERNEL_CASES[case][2], CUDA_KERNEL_CASES[case][3], "triton"
    else:
        _, _, _, precision, bar, peer = CASES[case]
    with matmul_precision(precision):
        fused, peer_step = kernel_steps(case) if case in CUDA_KERNEL_CASES else case_steps(case, device, scale)
        ms = time_ms(fused, device)
        peer_ms = time_ms(peer_step, device) if peer_step else None
    if bar is not None:
        meets = ms <= bar
    elif peer == "dense":
        meets = peer_ms / ms >= PEER_RATIO[precision]
    elif peer in ("flex", "two-sweeps") and peer_ms is not None:
        meets = ms < peer_ms
    else:
        meets = None
    return {"case": case, "device": device_name(device), "ms": ms, "peer": peer, "peer_ms": peer_ms,
            "bar_ms": bar, "meets_bar": meets}


def device_name(device):
    return torch.cuda.get_device_name() if device == "cuda" else f"cpu: {cpu_model()}"


def merge(path: Path, entries):
    """The file's entries for other (case, device) pairs, then these."""
    old = json.loads(path.read_text()) if path.exists() else []
    new_keys = {(e["case"], e["device"]) for e in entries}
    return [e for e in old if (e["case"], e["device"]) not in new_keys] + entries


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, required=True, help="the JSON list to write (merged)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--scale", type=int, default=1, help="divide every case's rows by this (CPU smoke test)")
    parser.add_argument("--cases", default=None,
                        help="comma-separated subset of the cases (default: all that run on the device)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_bars: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    with_cuda_kernels = bool(ph.build_info()["with_cuda"]) and args.device == "cuda"
    default = [*CASES, *(CUDA_KERNEL_CASES if with_cuda_kernels else ())]
    cases = default if args.cases is None else [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in CASES and c not in CUDA_KERNEL_CASES]
    if unknown:
        print(f"gpu_bars: unknown cases {unknown}; expected some of {', '.join([*CASES, *CUDA_KERNEL_CASES])}",
              file=sys.stderr)  # fmt: skip
        return 2
    if not with_cuda_kernels and any(c in CUDA_KERNEL_CASES for c in cases):
        print("gpu_bars: the cuda_ cases need a CUDA device and a CUDA build of pyhypersphere", file=sys.stderr)
        return 2
    entries = []
    for case in cases:
        try:
            entry = run_case(case, args.device, args.scale)
        except torch.OutOfMemoryError as e:  # recorded, and the others still run
            entry = {"case": case, "device": device_name(args.device), "error": f"out of memory: {e}"}
        entries.append(entry)
        print(json.dumps(entry), flush=True)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(merge(args.json, [entry]), indent=1) + "\n")  # kept if the run is cut
    return 0


if __name__ == "__main__":
    sys.exit(main())
