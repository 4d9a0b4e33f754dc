"""The objectives: the package's fused losses, InfoNCE, and the global-batch uniformity
from ``pyhypersphere.distributed`` under torch.distributed with more than one process."""

from __future__ import annotations

from typing import Callable, Tuple

import torch
import torch.nn.functional as F

from pyhypersphere import align_loss, uniform_loss

# Recorded in config.json and summary.json.
LOSS_BACKEND = "pyhypersphere"


def loss_functions() -> Tuple[Callable, Callable, str]:
    """``(uniform_loss, align_loss, backend)``."""
    return uniform_loss, align_loss, LOSS_BACKEND


def distributed_world() -> Tuple[int, int]:
    """(rank, world_size) of the default process group, (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def distributed_uniform_loss() -> Callable:
    """Global-batch uniformity (same value on every rank), imported only when needed."""
    from pyhypersphere.distributed import uniform_loss

    return uniform_loss


def info_nce(x: torch.Tensor, y: torch.Tensor, tau: float) -> torch.Tensor:
    """SimCLR's NT-Xent: each of the 2N views against its positive and the other 2N-2 views."""
    n = x.shape[0]
    z = torch.cat([x, y], dim=0)
    sim = (z @ z.T) / tau
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)
