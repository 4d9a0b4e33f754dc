"""The objectives, through one small indirection.

The package's fused ``uniform_loss``/``align_loss`` are used whenever ``pyhypersphere``
imports; the plain-PyTorch reference only when the compiled extension does not (a warning
says so and the run records ``loss_backend``).  Under torch.distributed with more than one
process the uniformity term is the global-batch one from ``pyhypersphere.distributed``.
"""

from __future__ import annotations

import warnings
from typing import Callable, Tuple

import torch
import torch.nn.functional as F

_CACHE = {}


def loss_functions() -> Tuple[Callable, Callable, str]:
    """``(uniform_loss, align_loss, backend)``: ``backend`` is "pyhypersphere" or "reference"."""
    if "fns" not in _CACHE:
        try:
            from pyhypersphere import align_loss, uniform_loss

            _CACHE["fns"] = (uniform_loss, align_loss, "pyhypersphere")
        except ImportError as e:  # the compiled extension is missing or broken
            from pyhypersphere.reference import reference_align_loss, reference_uniform_loss

            warnings.warn(
                f"pyhypersphere's fused losses did not import ({e}); training with the "
                "plain-PyTorch reference losses instead (same values, O(N^2) memory). "
                "Build the extension with `pip install --no-build-isolation -e .`.",
                RuntimeWarning,
                stacklevel=2,
            )
            _CACHE["fns"] = (reference_uniform_loss, reference_align_loss, "reference")
    return _CACHE["fns"]


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
