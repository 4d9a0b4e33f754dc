"""Alignment + global-batch uniformity with DistributedDataParallel, complete and runnable.

    torchrun --nproc_per_node 2 examples/ddp_uniformity.py                 # CPU (gloo), unless 2 GPUs
    torchrun --nproc_per_node 4 examples/ddp_uniformity.py --steps 300      # GPUs: nccl, one per process

Each of the W processes holds a shard of every global batch: the alignment term is
computed on the shard (DDP averages it over the processes), the uniformity term with
``pyhypersphere.distributed.uniform_loss`` over all pairs of the global batch, not just
the pairs inside a shard.  With DDP's gradient averaging the parameters then follow
exactly single-process training on the whole batch (tests/test_examples.py checks it).

The data are synthetic so that the script runs anywhere: points from 10 Gaussian
clusters in R^32, two views per point by jitter and feature dropout.  Replace
``global_batch`` and ``Encoder`` with your data loader (a DistributedSampler, one shard
per process) and network.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from pyhypersphere import align_loss
from pyhypersphere.distributed import uniform_loss

IN_DIM, CLUSTERS = 32, 10


class Encoder(torch.nn.Module):
    """A small MLP onto the unit sphere S^{out_dim - 1}."""

    def __init__(self, out_dim: int = 16):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(IN_DIM, 128), torch.nn.ReLU(), torch.nn.Linear(128, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=1)


def global_batch(step: int, batch: int, dtype=torch.float32):
    """Two views of the step's global batch; the same on every process (seeded by the step)."""
    g = torch.Generator().manual_seed(1000 + step)
    centers = torch.randn(CLUSTERS, IN_DIM, generator=torch.Generator().manual_seed(0), dtype=dtype)
    x = centers[torch.randint(CLUSTERS, (batch,), generator=g)] + 0.3 * torch.randn(batch, IN_DIM, generator=g, dtype=dtype)

    def view():
        keep = (torch.rand(batch, IN_DIM, generator=g) > 0.2).to(dtype)
        return x * keep + 0.1 * torch.randn(batch, IN_DIM, generator=g, dtype=dtype)

    return view(), view()


def objective(z1, z2, align_w: float = 1.0, unif_w: float = 1.0, t: float = 2.0):
    """The paper's loss, align_w * align(z1, z2) + unif_w * (unif(z1) + unif(z2)) / 2, with
    the uniformity of each view over the global batch (both views: one set of collectives)."""
    u1, u2 = uniform_loss([z1, z2], t)
    return align_w * align_loss(z1, z2) + unif_w * (u1 + u2) / 2


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch", type=int, default=256, help="global batch, split evenly over the processes")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: one GPU per process (nccl) when there are enough GPUs for every "
                        "local process, else the CPU (gloo)")
    p.add_argument("--save", help="rank 0 writes the trained encoder's state_dict here")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    use_cuda = args.device == "cuda" or (
        args.device == "auto" and torch.cuda.is_available() and torch.cuda.device_count() >= local_world)
    if use_cuda and torch.cuda.device_count() < local_world:
        raise SystemExit(f"--device cuda needs one GPU per process: {local_world} processes on this node, "
                         f"{torch.cuda.device_count()} GPUs")
    dist.init_process_group("nccl" if use_cuda else "gloo")  # torchrun sets the rendezvous
    rank, world = dist.get_rank(), dist.get_world_size()
    if args.batch % world:
        raise SystemExit(f"--batch {args.batch} must be divisible by the {world} processes")
    if args.threads:
        torch.set_num_threads(args.threads)
    if use_cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    dtype = getattr(torch, args.dtype)

    torch.manual_seed(0)  # the same initial weights everywhere (DDP also broadcasts rank 0's)
    model = DDP(Encoder().to(device=device, dtype=dtype), device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    shard = slice(rank * args.batch // world, (rank + 1) * args.batch // world)
    try:
        for step in range(args.steps):
            v1, v2 = (v[shard].to(device) for v in global_batch(step, args.batch, dtype))
            z1, z2 = model(torch.cat([v1, v2])).chunk(2)  # one forward for both views
            loss = objective(z1, z2)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # a collective: every process calls it
            opt.step()
            if rank == 0 and (step % 20 == 0 or step == args.steps - 1):
                print(f"step {step:>4}  loss {loss.item():.4f}", flush=True)
        if rank == 0 and args.save:
            torch.save(model.module.state_dict(), args.save)
        dist.barrier()  # no process leaves while another still communicates
    finally:
        dist.destroy_process_group()
    # Done: leave without finalizing the interpreter.  A gloo worker thread can still be
    # releasing the last collective's work after destroy_process_group returns; during
    # finalization its destructor needs the GIL and aborts the process ("terminate called
    # without an active exception", about 1 run in 15 on 2 CPU processes).
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
