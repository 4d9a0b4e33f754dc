"""The objectives: the package's fused losses (InfoNCE as the fused NT-Xent, SigLIP's
sigmoid loss), and their global-batch forms from ``pyhypersphere.distributed``
(uniformity, NT-Xent, SigLIP) under torch.distributed with more than one process."""

from __future__ import annotations

from typing import Callable, Tuple

import torch

from pyhypersphere import align_loss, nt_xent_loss, siglip_loss, uniform_loss

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


def distributed_nt_xent_loss() -> Callable:
    """Global-batch NT-Xent (same value on every rank; DDP's gradient averaging gives the
    single-process gradient), imported only when needed."""
    from pyhypersphere.distributed import nt_xent_loss as global_nt_xent

    return global_nt_xent


def info_nce(x: torch.Tensor, y: torch.Tensor, tau: float) -> torch.Tensor:
    """SimCLR's NT-Xent: each of the 2N views against its positive and the other 2N-2 views.

    The fused ``pyhypersphere.nt_xent_loss``: O(N d) memory instead of the 2N x 2N
    logits, so the baseline runs at the batch sizes the align+uniform loss reaches.
    """
    return nt_xent_loss(x, y, tau)


def distributed_siglip_loss() -> Callable:
    """Global-batch SigLIP (same value on every rank), imported only when needed."""
    from pyhypersphere.distributed import siglip_loss as global_siglip

    return global_siglip


def siglip(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SigLIP's sigmoid loss with the two views as the pair (x_i, y_i), every other pair a
    negative, at the paper's initial t = 10 and b = -10 (held fixed: the trainer's
    optimizer holds the encoder's parameters only)."""
    return siglip_loss(x, y)
