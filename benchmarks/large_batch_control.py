"""The trainer's step at one batch, plain and chunked, from the same initial weights on the
same batch: loss/align/uniform over a few SGD steps and the first step's gradient cosine.
Tells a difference caused by chunking (per-chunk BatchNorm) from one caused by the batch
size or learning rate.

    .venv/bin/python benchmarks/large_batch_control.py --batch 4096 --chunk 1024 --steps 4
"""

from __future__ import annotations

import argparse
import copy
import json
import sys

import torch

SIGNAL_LENGTH = 40  # MNIST-1D


def main(argv=None) -> int:
    from pyhypersphere.train import TrainConfig, loop, models

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--chunk", type=int, default=1024)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--lr", type=float, default=None, help="default: the trainer's, 0.12 * batch / 256")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = TrainConfig(batch_size=args.batch, lr=args.lr).resolved()
    objective = loop._Objective(cfg, world=1)
    torch.manual_seed(0)
    initial = models.Encoder(models.conv1d_trunk(), 128, cfg.feature_dim)
    g = torch.Generator().manual_seed(1)
    v1 = torch.randn(args.batch, SIGNAL_LENGTH, generator=g)
    v2 = v1 + 0.3 * torch.randn(args.batch, SIGNAL_LENGTH, generator=g)  # two "views" of each signal
    first_grad = {}
    for name, chunk in (("plain", args.batch), ("chunked", args.chunk)):
        model = copy.deepcopy(initial).train()
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        trace = []
        for step in range(args.steps):
            opt.zero_grad(set_to_none=True)
            value, align, unif = loop.backward_step(model, objective, v1, v2, chunk)
            if step == 0:
                first_grad[name] = torch.cat([q.grad.reshape(-1) for q in model.parameters()])
            opt.step()
            trace.append({"loss": round(value.item(), 4), "align": round(align.item(), 4), "uniform": round(unif.item(), 4)})
        print(json.dumps({"step": name, "batch": args.batch, "chunk": chunk, "lr": cfg.lr, "trace": trace}), flush=True)
    a, b = first_grad["plain"], first_grad["chunked"]
    cosine = (a @ b / (a.norm() * b.norm())).item()
    print(json.dumps({"first_step_gradient_cosine": round(cosine, 6), "norm_ratio": round((b.norm() / a.norm()).item(), 6)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
