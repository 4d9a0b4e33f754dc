"""Where a run executes: the device (validated before anything is written) and the CPU
thread count (recorded in the checkpoint, since the float rounding of the kernels, and so
a bitwise-exact resume, depends on it)."""

from __future__ import annotations

import os
from typing import Optional

import torch

DEVICE_HELP = "auto, cpu, cuda, cuda:N or mps"


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """The torch device for ``name``; a ValueError naming the problem when it cannot be used.

    ``cuda`` without an index means this process's GPU: ``LOCAL_RANK`` modulo the GPUs
    visible (the first one without torchrun).
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {name!r} is not a device: expected {DEVICE_HELP}") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: CUDA is not available here (no GPU or a CPU-only torch); use cpu or auto")
        count = torch.cuda.device_count()
        index = local_rank % count if device.index is None else device.index
        if index >= count:
            raise ValueError(f"device {name!r}: only {count} CUDA device(s) visible (cuda:0 to cuda:{count - 1})")
        return torch.device("cuda", index)
    if device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"device {name!r}: MPS is not available here; use cpu or auto")
        return device
    raise ValueError(f"device {name!r}: the trainer runs on {DEVICE_HELP}")


def auto_threads() -> Optional[int]:
    """CPU threads for this process: torch's default, fewer when other processes already keep
    cores busy (1-minute load average), since OpenMP threads that outnumber the free cores
    spin against each other and can make a step several times slower than one thread."""
    n = torch.get_num_threads()
    try:
        busy = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    per_process = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    free = ((os.cpu_count() or n) - busy) / per_process
    return max(1, min(max(1, n // per_process), int(free + 0.5)))


def choose_threads(requested: Optional[int], saved: Optional[int], device: torch.device):
    """(threads to use or None for torch's default, warning or None).

    A resumed run reuses the checkpoint's count unless one is requested; a requested count
    that differs from the checkpoint's is used, with a warning that the result will differ.
    """
    if requested is not None:
        if saved is not None and requested != saved:
            return requested, (
                f"resuming with threads={requested}, but the run so far used {saved}: the result will differ "
                f"from the uninterrupted run (the float rounding depends on the thread count); leave "
                f"--threads unset to reuse {saved}"
            )
        return requested, None
    if saved is not None:
        return saved, None
    return (auto_threads() if device.type == "cpu" else None), None
