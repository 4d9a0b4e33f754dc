"""Peak extra memory of one call, and a cap that turns host over-allocation into an error.

CUDA: the caching allocator's peak over what was allocated before the call.
CPU: growth of the resident set's high-water mark (VmHWM) over the resident set
before the call.  Freed heap pages are handed back first (malloc_trim) and the
high-water mark is reset (/proc/self/clear_refs), so memory that an earlier call
freed but glibc kept does not hide this call's growth.  Linux only; elsewhere the
CPU figure is None.
"""

import ctypes
import gc
import resource
from typing import Callable, Optional

import torch

_PROC_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"
_RESET_PEAK_RSS = "5"  # proc(5): "reset the peak resident set size (VmHWM)"


def _status_kib(field: str) -> Optional[int]:
    try:
        with open(_PROC_STATUS) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _trim_heap() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak_rss() -> bool:
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write(_RESET_PEAK_RSS)
        return True
    except OSError:
        return False


def cpu_method_available() -> bool:
    return _status_kib("VmHWM") is not None and _reset_peak_rss()


def peak_extra_bytes(fn: Callable[[], object], device: torch.device) -> Optional[int]:
    """Run fn once and return its peak memory beyond what was in use before, in bytes."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return max(0, torch.cuda.max_memory_allocated(device) - before)
    _trim_heap()
    before = _status_kib("VmRSS")
    if before is None or not _reset_peak_rss():
        fn()
        return None
    fn()
    peak = _status_kib("VmHWM")
    return max(0, peak - before) * 1024


def peak_rss_bytes() -> Optional[int]:
    """The process's resident-set high-water mark (VmHWM; since the last reset), or None."""
    kib = _status_kib("VmHWM")
    return kib * 1024 if kib is not None else None


def available_host_bytes() -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def cap_address_space(extra_bytes: int) -> None:
    """Let this process map at most `extra_bytes` more, so a too-large host allocation
    raises (recorded as out of memory) instead of waking the kernel's OOM killer,
    which might pick another process.  Only for CPU runs: CUDA reserves huge virtual ranges."""
    size_kib = _status_kib("VmSize")
    if size_kib is None:
        return
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = size_kib * 1024 + int(extra_bytes)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
