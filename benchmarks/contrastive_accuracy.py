"""Accuracy of the contrastive losses when the positive dominates (issue 26, item 1),
against a cancellation-free float64 formula and against the dense float32 formula a
user would write (``F.cross_entropy`` on the logit matrix); both from
tests/dense_contrastive.py.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/contrastive_accuracy.py [--device cpu|cuda]

Each case prints the loss in float64, the package's and the dense formula's float32
absolute errors, and both gradients' errors relative to the float64 gradient's largest
entry.  The float64 case prints the gradient's largest entry against float64's dense one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from pyhypersphere import clip_loss, info_nce_loss, nt_xent_loss

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from dense_contrastive import exact_loss, naive_loss  # noqa: E402  (the tests' references)


LOSSES = {"nt_xent": nt_xent_loss, "info_nce": info_nce_loss, "clip": clip_loss}


def views(n: int, d: int, noise: float, seed: int, device: str):
    """Unit rows z1 and z2 = normalize(z1 + noise * N(0, I)), float64."""
    g = torch.Generator().manual_seed(seed)
    z1 = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    z2 = F.normalize(z1 + noise * torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    return z1.to(device), z2.to(device)


def value_and_grad(fn, x, y, tau, dtype):
    xx = x.to(dtype).requires_grad_()
    loss = fn(xx, y.to(dtype), tau)
    (grad,) = torch.autograd.grad(loss, xx)
    return loss.detach().double(), grad.double()


def relative(g: torch.Tensor, want: torch.Tensor) -> float:
    scale = want.abs().max().item()
    return (g - want).abs().max().item() / scale if scale > 0 else float((g - want).abs().max().item())


# (name, N, d, noise, tau): the repros.
CASES = [
    ("nt_xent", 512, 128, 0.02, 0.005),
    ("info_nce", 512, 128, 0.02, 0.005),
    ("clip", 512, 128, 0.02, 0.005),
    ("nt_xent", 64, 32, 0.07, 0.1),
    ("clip", 64, 32, 0.02, 0.07),
    ("info_nce", 256, 64, 0.01, 0.02),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print("| loss | N | d | noise | tau | loss (float64) | ours f32 abs err | dense f32 abs err "
          "| ours grad rel err | dense grad rel err |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, n, d, noise, tau in CASES:
        x, y = views(n, d, noise, 0, args.device)
        want, want_grad = value_and_grad(lambda a, b, t: exact_loss(name, a, b, t), x, y, tau, torch.float64)
        ours, ours_grad = value_and_grad(LOSSES[name], x, y, tau, torch.float32)
        dense, dense_grad = value_and_grad(lambda a, b, t: naive_loss(name, a, b, t), x, y, tau, torch.float32)
        print(f"| {name} | {n} | {d} | {noise} | {tau} | {want.item():.4e} | {abs(ours - want).item():.2e} "
              f"| {abs(dense - want).item():.2e} | {relative(ours_grad, want_grad):.2e} "
              f"| {relative(dense_grad, want_grad):.2e} |")
    # float64, N = 2, d = 1: the gradient is e^-40-small; a cancelling form returns 0.
    x = torch.tensor([[1.0], [-1.0]], dtype=torch.float64, device=args.device)
    for name, fn in LOSSES.items():
        _, ours_grad = value_and_grad(fn, x, x, 0.05, torch.float64)
        _, want_grad = value_and_grad(lambda a, b, t: exact_loss(name, a, b, t), x, x, 0.05, torch.float64)
        print(f"float64 N=2 d=1 tau=0.05 {name}: max |grad| ours {ours_grad.abs().max().item():.3e}, "
              f"dense {want_grad.abs().max().item():.3e}, rel err {relative(ours_grad, want_grad):.2e}")


if __name__ == "__main__":
    main()
