"""Cross-check of the three backends on the same inputs (GPU machine): the C++ CUDA kernels,
the Triton kernels and the CPU kernel, each against a float64 reference.

    python benchmarks/gpu_crosscheck.py [--json out.json]

For every case the same rows (drawn once, in the case's dtype) go to
torch.ops.pyhypersphere.uniform_lse on CUDA (the C++ kernels when the build has them),
pyhypersphere.triton_kernels.uniform_lse on CUDA, and the operator on CPU copies.  The
reference is float64 log-sum-exp over explicit pair distances of the same (rounded) rows,
with autograd for the gradients.  Reported: |lse - ref| and max|grad - ref| / max|ref| for
x and the queue.  Exits 1 when a backend misses its tolerance (the test-suite tolerances
per precision mode) or returns a non-finite value.
"""

import argparse
import json
import sys

import torch

import pyhypersphere
from pyhypersphere import triton_kernels as tk
from pyhypersphere._matmul_precision import cuda_fp32_matmul

ops = torch.ops.pyhypersphere

# (lse abs, gradient relative-to-max) per mode: tests/test_cuda.py and tests/test_triton.py.
TOL = {
    "float64": (1e-10, 1e-10),
    "float32": (2e-5, 2e-5),
    "tf32": (5e-3, 1e-2),
    "bfloat16": (2e-4, 8e-3),
    "float16": (2e-4, 2e-3),
}
DTYPE = {"float64": torch.float64, "float32": torch.float32, "tf32": torch.float32,
         "bfloat16": torch.bfloat16, "float16": torch.float16}

CASES = [  # mode, n, k, d, t, intra, scale, offset
    (mode, n, k, d, t, intra, scale, offset)
    for mode in ("float64", "float32", "tf32", "bfloat16", "float16")
    for (n, k, d, t, intra, scale, offset) in [
        (1000, 0, 128, 2.0, True, 1.0, 0.0),
        (3001, 0, 64, 2.0, True, 1.0, 0.0),
        (257, 4097, 128, 2.0, True, 1.0, 0.0),
        (130, 2000, 32, 1.0, False, 1.0, 0.0),
        (2048, 0, 200, 5.0, True, 1.0, 0.0),
        (777, 0, 16, 2.0, True, 1.0, 3.0),  # off the origin: centering
        (600, 0, 8, 2.0, True, 4.0, 0.0),  # spread: the float32 / float64 fallbacks
    ]
]


def rows(n, d, dtype, seed, scale, offset):
    if n == 0:
        return None
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    return (scale * x + offset).to(dtype).cuda()


def reference(x, queue, t, intra):
    xr = x.detach().double().requires_grad_()
    qr = None if queue is None else queue.detach().double().requires_grad_()
    exps = []
    if intra:
        c = xr - xr.mean(0)
        sq = c.pow(2).sum(1)
        d2 = (sq[:, None] + sq[None, :] - 2 * c @ c.T).clamp_min(0)
        iu = torch.triu_indices(x.shape[0], x.shape[0], offset=1, device=x.device)
        exps.append(-t * d2[iu[0], iu[1]])
    if qr is not None:
        exps.append((-t * torch.cdist(xr, qr).pow(2)).flatten())
    lse = torch.logsumexp(torch.cat(exps), 0)
    lse.backward()
    return lse.detach(), xr.grad, None if qr is None else qr.grad


def errors(got, ref):
    lse, gx, gq = (None if g is None else g.detach().double().to(ref[0].device) for g in got)
    out = {"lse": abs(float(lse - ref[0])),
           "grad_x": float((gx - ref[1]).abs().max() / ref[1].abs().max())}
    if ref[2] is not None:
        out["grad_queue"] = float((gq - ref[2]).abs().max() / ref[2].abs().max())
    finite = all(torch.isfinite(g).all() for g in (lse, gx) + ((gq,) if ref[2] is not None else ()))
    return out, bool(finite)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    info = pyhypersphere.build_info()
    print(f"gpu backend of the operators: {info['gpu_backend']} ({info['gpu_backend_reason']})")
    records, failed = [], 0
    for seed, (mode, n, k, d, t, intra, scale, offset) in enumerate(CASES):
        dtype = DTYPE[mode]
        x, queue = rows(n, d, dtype, 2 * seed, scale, offset), rows(k, d, dtype, 2 * seed + 1, scale, offset)
        gq = queue is not None
        ref = reference(x, queue, t, intra)
        precision = "tf32" if mode == "tf32" else "ieee"
        with cuda_fp32_matmul(precision):
            runs = {
                "op-cuda": lambda: ops.uniform_lse(x, queue, t, intra, 0, 1, True, gq),
                "triton": lambda: tk.uniform_lse(x, queue, t, intra, 0, 1, True, gq),
                "op-cpu": lambda: ops.uniform_lse(x.cpu(), None if queue is None else queue.cpu(),
                                                  t, intra, 0, 1, True, gq),
            }
            for backend, fn in runs.items():
                if mode == "tf32" and backend == "op-cpu":
                    continue  # the CPU kernel has no TF32 mode
                rec = {"mode": mode, "n": n, "k": k, "d": d, "t": t, "intra": intra, "scale": scale,
                       "offset": offset, "backend": backend}
                try:
                    got = fn()
                    torch.cuda.synchronize()
                    err, finite = errors(got, ref)
                    tol_lse, tol_grad = TOL[mode]
                    ok = finite and err["lse"] <= tol_lse and all(
                        v <= tol_grad for key, v in err.items() if key != "lse")
                    rec.update(err, finite=finite, ok=ok)
                except Exception as e:  # noqa: BLE001 - reported, counted as a failure
                    rec.update(error=f"{type(e).__name__}: {e}"[:300], ok=False)
                failed += not rec["ok"]
                records.append(rec)
                errs = " ".join(f"{key}={rec[key]:.2e}" for key in ("lse", "grad_x", "grad_queue") if key in rec)
                print(f"{'ok  ' if rec['ok'] else 'FAIL'} {mode:8s} n={n:5d} k={k:5d} d={d:3d} t={t:g} "
                      f"intra={intra!s:5s} scale={scale:g} off={offset:g} {backend:8s} "
                      f"{errs or rec.get('error', '')}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                       "build_info": info, "records": records}, f, indent=1, default=str)
    print(f"{len(records) - failed} of {len(records)} backend runs within tolerance")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
