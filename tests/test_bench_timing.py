"""The benchmark clock: on CUDA, event timing of the kernel itself (L2 flushed), not a
wall clock around a synchronize."""

import pytest
import torch

from pyhypersphere.bench.timing import median_time


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_timing_measures_the_gpu_work():
    # torch.cuda._sleep spins the GPU for a number of cycles: time two lengths and check
    # the ratio, which launch and host overheads would pull towards 1.
    short = median_time(lambda: torch.cuda._sleep(1_000_000), torch.device("cuda"), warmup=2, repeat=20,
                        max_seconds=2.0)  # fmt: skip
    long = median_time(lambda: torch.cuda._sleep(4_000_000), torch.device("cuda"), warmup=2, repeat=20,
                       max_seconds=2.0)  # fmt: skip
    assert short.samples >= 3 and long.samples >= 3
    assert 3.0 < long.median_ms / short.median_ms < 5.0


def test_cpu_timing_takes_the_median_of_its_samples():
    calls = []
    timing = median_time(lambda: calls.append(1), torch.device("cpu"), warmup=1, repeat=5, max_seconds=1.0)
    assert timing.samples == 5 and timing.median_ms >= 0
    assert len(calls) == 1 + 5 * timing.calls_per_sample
