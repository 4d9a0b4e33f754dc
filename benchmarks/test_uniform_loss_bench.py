"""pytest-benchmark suite: the uniformity loss of each implementation, forward and
forward+backward, d=128 float32, on CPU and (when present) CUDA, next to torch.mm
doing the same flops (the roofline).  Same implementations and inputs as
`pyhypersphere bench` (pyhypersphere/bench/), here in one process.

    .venv/bin/python -m pytest benchmarks/test_uniform_loss_bench.py --benchmark-only \
        --benchmark-json bench.json [--bench-large] [-k "cpu and fwdbwd"]

benchmark.extra_info of each case: impl, n, d, dtype, device, phase, flops (of the
timed call), pairs, peak_mem_bytes (peak extra memory of one call: CUDA allocator
peak, or resident-set growth on CPU; see pyhypersphere/bench/memory.py).
Peers that are absent (pykeops) or unsupported (FlexAttention on CPU) are skipped.
"""

import pytest
import torch

from pyhypersphere.bench import memory, roofline, worker
from pyhypersphere.bench.impls import IMPLS, ROOFLINE
from pyhypersphere.bench.record import CaseSpec
from pyhypersphere.bench.timing import synchronize

D = 128
DTYPE = "float32"
LARGE_N = 16384
N_SIZES = [1024, 4096, pytest.param(LARGE_N, marks=pytest.mark.large)]
ROUNDS = {1024: 5, 4096: 3, LARGE_N: 2}  # timed rounds, after one warm-up round
DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
    ),
]
# KeOps' CPU backend takes minutes per forward+backward call at this size.
SLOW_ON_CPU_AT_LARGE_N = {"keops"}


@pytest.mark.parametrize("n", N_SIZES)
@pytest.mark.parametrize("phase", roofline.PHASES)
@pytest.mark.parametrize("impl", [ROOFLINE, *IMPLS])
@pytest.mark.parametrize("device", DEVICES)
def test_uniform_loss(benchmark, device, impl, phase, n):
    spec = CaseSpec(impl=impl, n=n, d=D, dtype=DTYPE, device=device)
    reason = worker.unsupported_reason(spec)
    if reason is not None:
        pytest.skip(reason)
    if device == "cpu" and n >= LARGE_N and impl in SLOW_ON_CPU_AT_LARGE_N:
        pytest.skip(f"{impl} on CPU at N={n}: minutes per call")
    fn, time_scale = {p: (f, s) for p, f, s in worker.phases(spec)}[phase]
    dev = torch.device(device)

    def call():
        fn()
        synchronize(dev)

    call()  # compiles what compiles (KeOps, FlexAttention) before anything is measured
    benchmark.group = f"{device} {DTYPE} d={D} n={n} {phase}"
    benchmark.extra_info.update(
        impl=impl, n=n, d=D, dtype=DTYPE, device=device, phase=phase,
        flops=round(roofline.flops(phase, n, D) / time_scale), pairs=roofline.pairs(n),
        peak_mem_bytes=memory.peak_extra_bytes(fn, dev),
    )  # fmt: skip
    benchmark.pedantic(call, rounds=ROUNDS[n], warmup_rounds=1, iterations=1)
