"""Accuracy of supcon_loss when the positive dominates (issue 26, item 1; docs/supcon.md),
on the CPU kernel and on the Triton path, against the dense float64 definition of
tests/dense_contrastive.py.

    PYTHONPATH=$PWD TRITON_INTERPRET=1 .venv/bin/python benchmarks/supcon_accuracy.py

Two views per sample (z1 and normalize(z1 + noise)), one positive per anchor, float32.
Each case prints the float64 loss and, per path, the largest per-anchor error and the
largest gradient-entry error of the mean loss.  The Triton path runs on CUDA tensors when
a GPU is there (TRITON_INTERPRET unset), else its launchers replace the CPU kernels
under the interpreter (TRITON_INTERPRET=1).
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from pyhypersphere import gpu_backend, supcon_loss

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from dense_contrastive import dense_supcon_rows  # noqa: E402  (the tests' reference)

# (samples, d, noise, tau)
CASES = [(64, 16, 0.3, 0.1), (64, 16, 0.02, 0.05), (64, 16, 0.001, 0.02), (64, 16, 0.02, 0.005)]


@contextlib.contextmanager
def triton_path():
    """The device whose tensors take the Triton launchers, registering them for the CPU
    key under the interpreter (removed on leaving)."""
    if torch.cuda.is_available() and gpu_backend.TABLE["supcon_lse"]["cuda"][0] == "triton":
        yield "cuda"
        return
    lib = torch.library.Library("pyhypersphere", "IMPL")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "overriding a previously registered kernel"
        for op in ("supcon_lse", "supcon_lse_backward"):
            lib.impl(op, gpu_backend._triton(op), "CPU")
    try:
        yield "cpu"
    finally:
        lib._destroy()


def errors(x, labels, tau, device, want_rows, want_grad):
    xx = x.to(device).requires_grad_()
    rows = supcon_loss(xx, labels.to(device), tau, reduction="none")
    (grad,) = torch.autograd.grad(supcon_loss(xx, labels.to(device), tau), xx)
    row_error = (rows.detach().cpu().double() - want_rows).abs().max().item()
    return row_error, (grad.cpu().double() - want_grad).abs().max().item()


def main() -> None:
    print("tau noise loss(float64) | cpu: row error, grad error | triton: row error, grad error")
    for n, d, noise, tau in CASES:
        g = torch.Generator().manual_seed(8)
        z1 = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
        z2 = F.normalize(z1 + noise * torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
        x = torch.cat([z1, z2]).float()
        labels = torch.cat([torch.arange(n), torch.arange(n)])
        x64 = x.double().requires_grad_()
        want_rows, _ = dense_supcon_rows(x64, labels, tau)
        (want_grad,) = torch.autograd.grad(want_rows.mean(), x64)
        want_rows = want_rows.detach()
        cpu = errors(x, labels, tau, "cpu", want_rows, want_grad)
        with triton_path() as device:
            tri = errors(x, labels, tau, device, want_rows, want_grad)
        print(f"{tau} {noise} {want_rows.mean().item():.3e} | {cpu[0]:.2e}, {cpu[1]:.2e} | {tri[0]:.2e}, {tri[1]:.2e}")


if __name__ == "__main__":
    main()
