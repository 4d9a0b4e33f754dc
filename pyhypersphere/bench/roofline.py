"""Nominal flop counts of the uniformity loss and the torch.mm that does as many.

Forward: one Gram over the upper triangle, N^2/2 pairs x 2d flops = N^2 d.
Forward + backward: the gradient needs two more products of the same size (the
weighted sums over j for x_i, and over i for x_j), so 3 N^2 d in all.
The roofline is torch.mm on [N, d] x [d, m] (2 N d m flops) with m chosen to match,
its time scaled to the exact count; fraction = roofline time / implementation time.
The product is done in column blocks into a reused output buffer, as a tiled Gram
would, so the roofline needs no N x N matrix and runs at every size the loss does.
"""

import torch

PHASES = ("fwd", "fwdbwd")
_GRAM_MULTIPLE = {"fwd": 1, "fwdbwd": 3}


def pairs(n: int) -> int:
    return n * (n - 1) // 2


def flops(phase: str, n: int, d: int) -> int:
    return _GRAM_MULTIPLE[phase] * n * n * d


def mm_columns(phase: str, n: int) -> int:
    """m such that [n, d] x [d, m] is the phase's flops (N^2 d per Gram = 2 N d (N/2))."""
    return max(1, round(_GRAM_MULTIPLE[phase] * n / 2))


def mm_scale(phase: str, n: int, d: int) -> float:
    """Factor turning the timed mm into the time of exactly flops(phase, n, d)."""
    return flops(phase, n, d) / (2 * n * d * mm_columns(phase, n))


# Wide enough for torch.mm to run at full speed, small enough that the buffer is O(N).
MM_BLOCK_COLUMNS = 4096


def blocked_mm(a: torch.Tensor, columns: int, seed: int = 0):
    """A callable doing a @ b for a random b [d, columns], block by block into one buffer."""
    gen = torch.Generator().manual_seed(seed)
    b = torch.randn(a.shape[1], columns, generator=gen).to(device=a.device, dtype=a.dtype)
    blocks = [b[:, s : s + MM_BLOCK_COLUMNS].contiguous() for s in range(0, columns, MM_BLOCK_COLUMNS)]
    buffers = {blk.shape[1]: a.new_empty(a.shape[0], blk.shape[1]) for blk in blocks}

    def run():
        for blk in blocks:
            torch.mm(a, blk, out=buffers[blk.shape[1]])

    return run
