"""MoCo's key queue as a module: `pyhypersphere.nn.KeyQueue`.

The queue is a ring buffer held as module buffers, so it is saved and restored with the
model's state dict and moves with ``.to(device)``.  ``push(keys)`` enqueues a detached batch
and drops the oldest rows; under torch.distributed it first gathers every rank's keys in
rank order, so every rank holds the same queue (as MoCo's ``concat_all_gather``).
``.queue`` is the valid rows, oldest first: what ``info_nce_loss(..., queue=...)`` and
``uniform_loss(..., queue=...)`` take.  Until ``size`` rows have been pushed it holds only
the rows pushed so far (no zero rows pretending to be keys).
"""

from __future__ import annotations

import numbers
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn


class KeyQueue(nn.Module):
    """A FIFO of at most ``size`` key rows of dimension ``dim`` (MoCo's negatives).

    Buffers (in the state dict): ``keys`` [size, dim] in ``dtype``, ``next_row`` (where
    the next key is written) and ``filled`` (how many rows are valid).
    """

    def __init__(self, size: int, dim: int, dtype: torch.dtype = torch.float32):
        super().__init__()
        for name, value in (("size", size), ("dim", dim)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"KeyQueue: {name} must be a positive integer, got {value!r}")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"KeyQueue: dtype must be a floating-point torch.dtype, got {dtype!r}")
        self.size, self.dim = int(size), int(dim)
        self.register_buffer("keys", torch.zeros(self.size, self.dim, dtype=dtype))
        self.register_buffer("next_row", torch.zeros((), dtype=torch.int64))
        self.register_buffer("filled", torch.zeros((), dtype=torch.int64))

    def __len__(self) -> int:
        return int(self.filled)

    @property
    def queue(self) -> torch.Tensor:
        """The valid rows [len(self), dim], oldest first (a view until the ring wraps)."""
        filled, start = int(self.filled), int(self.next_row)
        if filled < self.size:
            return self.keys[:filled]
        return self.keys if start == 0 else torch.cat([self.keys[start:], self.keys[:start]])

    @torch.no_grad()
    def push(self, keys: torch.Tensor, group: Optional[dist.ProcessGroup] = None) -> "KeyQueue":
        """Enqueue ``keys`` [B, dim] (detached, cast to the queue's dtype), dropping the
        oldest rows; with an initialized process group every rank's keys first, in rank
        order (every rank must call it; the batch sizes may differ)."""
        if not isinstance(keys, torch.Tensor):
            raise TypeError(f"KeyQueue.push: keys must be a torch.Tensor, got {type(keys).__name__}")
        if keys.dim() != 2 or keys.shape[1] != self.dim or not keys.is_floating_point():
            raise ValueError(
                f"KeyQueue.push: keys must be a floating-point tensor of shape [B, {self.dim}], got a "
                f"{keys.dtype} tensor of shape {tuple(keys.shape)}"
            )
        if keys.device != self.keys.device:
            raise ValueError(f"KeyQueue.push: keys must be on the queue's device ({self.keys.device}), got {keys.device}")
        keys = keys.detach()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1:
            keys = _gather_rows(keys, group)
        keys = keys[-self.size :].to(self.keys.dtype)  # a batch longer than the queue: its newest rows
        count, start = keys.shape[0], int(self.next_row)
        rows = (torch.arange(count, device=keys.device) + start) % self.size
        self.keys.index_copy_(0, rows, keys)
        self.next_row.fill_((start + count) % self.size)
        self.filled.fill_(min(int(self.filled) + count, self.size))
        return self

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}, dtype={self.keys.dtype}, filled={len(self)}"


def _gather_rows(rows: torch.Tensor, group) -> torch.Tensor:
    """Every rank's rows concatenated in rank order (shards may differ in length)."""
    world = dist.get_world_size(group)
    count = torch.tensor([rows.shape[0]], device=rows.device)
    counts = [torch.empty_like(count) for _ in range(world)]
    dist.all_gather(counts, count, group=group)
    counts = [int(c) for c in counts]
    longest = max(counts)
    padded = torch.cat([rows, rows.new_zeros(longest - rows.shape[0], rows.shape[1])]).contiguous()
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded, group=group)
    return torch.cat([g[:c] for g, c in zip(gathered, counts)])
