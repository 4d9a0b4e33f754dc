"""Median time of a callable after warm-up.

On the CPU: wall time, several calls per sample.  On CUDA: CUDA events with the L2 cache
flushed before every call (`triton.testing.do_bench`, or torch.utils.benchmark's Timer
where triton is absent), as GPU kernel benchmarks in this field are read: a wall clock
around a synchronize adds launch and host time, and a warm L2 flatters small inputs.
"""

import math
import statistics
import time
from dataclasses import dataclass

import torch

# A sample shorter than this is made of several calls, so timer resolution and
# launch jitter stay small next to it.
MIN_SAMPLE_SECONDS = 0.005
MAX_CALLS_PER_SAMPLE = 1000
# A median needs a few samples, however slow the case: max_seconds stops sampling only after these.
MIN_SAMPLES = 3


@dataclass
class Timing:
    median_ms: float
    samples: int
    calls_per_sample: int


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device, calls: int) -> float:
    synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / calls


def _cuda_event_median(fn, *, warmup: int, repeat: int, max_seconds: float) -> Timing:
    """do_bench's median over about `repeat` calls (its budgets are in milliseconds: the
    first call's time sets them, within max_seconds)."""
    fn()
    torch.cuda.synchronize()
    try:
        from triton.testing import do_bench
    except ImportError:
        from torch.utils.benchmark import Timer

        measurement = Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min(max_seconds, 1.0))
        return Timing(measurement.median * 1e3, len(measurement.times), measurement.number_per_run)
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    one_ms = max(start.elapsed_time(end), 1e-3)
    budget_ms = max_seconds * 1e3
    times = do_bench(fn, warmup=min(budget_ms, max(warmup, 1) * one_ms),
                     rep=min(budget_ms, max(repeat, MIN_SAMPLES) * one_ms), return_mode="all")  # fmt: skip
    return Timing(statistics.median(times), len(times), 1)


def median_time(fn, device: torch.device, *, warmup: int, repeat: int, max_seconds: float) -> Timing:
    """Median over up to `repeat` samples; stops early once `max_seconds` are spent and
    min(repeat, MIN_SAMPLES) samples are in.  CUDA: event timing, L2 flushed (module doc)."""
    if device.type == "cuda":
        return _cuda_event_median(fn, warmup=warmup, repeat=repeat, max_seconds=max_seconds)
    one_call = math.inf
    for _ in range(max(1, warmup)):
        one_call = _timed(fn, device, 1)
    calls = int(min(MAX_CALLS_PER_SAMPLE, max(1, math.ceil(MIN_SAMPLE_SECONDS / max(one_call, 1e-9)))))
    samples = []
    spent = 0.0
    while len(samples) < max(1, repeat):
        seconds = _timed(fn, device, calls)
        samples.append(seconds)
        spent += seconds * calls
        if spent > max_seconds and len(samples) >= min(repeat, MIN_SAMPLES):
            break
    return Timing(statistics.median(samples) * 1e3, len(samples), calls)
