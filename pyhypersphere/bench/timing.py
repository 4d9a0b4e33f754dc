"""Median wall time of a callable after warm-up, synchronizing CUDA around each sample."""

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


def median_time(fn, device: torch.device, *, warmup: int, repeat: int, max_seconds: float) -> Timing:
    """Median over up to `repeat` samples; stops early once `max_seconds` are spent and
    min(repeat, MIN_SAMPLES) samples are in."""
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
