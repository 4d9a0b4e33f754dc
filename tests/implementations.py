"""Every implementation of each operator that can run on this machine, for the tests that
run the same checks on all of them (tests/test_implementations.py).

- cpu: the C++ CPU kernels, torch.ops.pyhypersphere.<op> on CPU tensors;
- triton-interpreter: the Triton launcher (gpu_backend._triton) on CPU tensors under
  TRITON_INTERPRET=1 (conftest.py sets it before triton is imported);
- gpu-cuda / gpu-triton: on a CUDA machine, torch.ops.pyhypersphere.<op> on CUDA tensors,
  served by whichever implementation gpu_backend.TABLE chose for the op;
- triton-compiled: with TRITON_INTERPRET=0 on a CUDA machine, the Triton launcher on CUDA
  tensors where the table chose the C++ CUDA kernel (else it is gpu-triton already).

The operators come from the registry (gpu_backend.OPS), so a new operator is enumerated
here without edits.
"""

import contextlib
import warnings
from dataclasses import dataclass
from typing import Callable

import pytest
import torch

from pyhypersphere import gpu_backend

OPS = tuple(gpu_backend.OPS)
HAS_CUDA = torch.cuda.is_available()

if gpu_backend.HAS_TRITON:
    import triton

    INTERPRET = bool(triton.knobs.runtime.interpret)
else:
    INTERPRET = False


@dataclass(frozen=True)
class Implementation:
    """One implementation of `op`: `call` takes the operator's arguments (csrc/ops.h) on
    tensors of `device` and gives its results."""

    op: str
    name: str
    device: str
    call: Callable

    def __call__(self, *args):
        return self.call(*args)

    def on(self, *tensors):
        """The tensors moved to this implementation's device (None stays None)."""
        moved = tuple(None if t is None else t.to(self.device) for t in tensors)
        return moved[0] if len(moved) == 1 else moved


def _cuda_kernels_skip_reason():
    if not HAS_CUDA:
        return "no CUDA device"
    major, minor = torch.cuda.get_device_capability()
    if major < 8:
        return f"the CUDA kernels need compute capability 8.0+, this GPU has {major}.{minor}"
    return None


def implementations(op: str) -> list:
    """pytest params, one per implementation of `op` that can run here."""
    found = [pytest.param(Implementation(op, "cpu", "cpu", getattr(torch.ops.pyhypersphere, op)), id="cpu")]
    if gpu_backend.HAS_TRITON and INTERPRET:
        launcher = Implementation(op, "triton-interpreter", "cpu", gpu_backend._triton(op))
        found.append(pytest.param(launcher, id="triton-interpreter"))
    if not HAS_CUDA:
        return found
    backend = gpu_backend.TABLE[op]["cuda"][0]
    gpu = [pytest.mark.gpu]
    if backend == "cuda":
        reason = _cuda_kernels_skip_reason()
        gpu.append(pytest.mark.skipif(reason is not None, reason=reason or ""))
    if backend == "cuda" or (backend == "triton" and not INTERPRET):
        dispatched = Implementation(op, f"gpu-{backend}", "cuda", getattr(torch.ops.pyhypersphere, op))
        found.append(pytest.param(dispatched, id=f"gpu-{backend}", marks=gpu))
    if backend != "triton" and gpu_backend.HAS_TRITON and not INTERPRET:
        compiled = Implementation(op, "triton-compiled", "cuda", gpu_backend._triton(op))
        found.append(pytest.param(compiled, id="triton-compiled", marks=[pytest.mark.gpu]))
    return found


# Where the public losses run, for the loss-level tests: the dispatch key's own kernels on
# CPU or CUDA tensors, or the Triton launchers registered for the CPU key for the test.
BACKENDS = ["cpu"]
if gpu_backend.HAS_TRITON and INTERPRET:
    BACKENDS.append("triton-interpreter")
if HAS_CUDA and all(by_device["cuda"][0] == "cuda" or (by_device["cuda"][0] == "triton" and not INTERPRET)
                    for by_device in gpu_backend.TABLE.values()):
    BACKENDS.append(pytest.param("gpu", marks=[pytest.mark.gpu]))


def backend_device(backend: str) -> str:
    return "cuda" if backend == "gpu" else "cpu"


@contextlib.contextmanager
def dispatching_to(backend: str):
    """Within the block the operators on backend_device(backend)'s tensors run `backend`:
    under the interpreter the Triton launchers replace the CPU kernels (every op of the
    registry), and are removed on leaving."""
    if backend != "triton-interpreter":
        yield
        return
    lib = torch.library.Library("pyhypersphere", "IMPL")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "overriding a previously registered kernel"
        for op in OPS:
            lib.impl(op, gpu_backend._triton(op), "CPU")
    try:
        yield
    finally:
        lib._destroy()


# Tolerances against float64 evaluated on the same (rounded) inputs, by input dtype:
# float32 and 16-bit inputs accumulate in float32 (3xTF32 products reach float32
# accuracy); 16-bit gradients carry weights rounded to the 16-bit format (bf16 2^-9, fp16
# 2^-11 relative), as their output rounding does.  uniform_lse's lse is float64 whatever
# the inputs; the contrastive lse's absolute tolerance scales with `scale` (the logits').
UNIFORM_TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 2e-4, torch.float16: 2e-4}
UNIFORM_GRAD_TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 8e-3, torch.float16: 2e-3}
CONTRASTIVE_TOL = {torch.float64: 1e-11, torch.float32: 2e-5, torch.bfloat16: 2e-5, torch.float16: 2e-5}
CONTRASTIVE_GRAD_TOL = {torch.float64: 1e-11, torch.float32: 3e-5, torch.bfloat16: 1e-2, torch.float16: 3e-3}


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """The contract's accumulation dtype (csrc/ops.h): float64 for float64 inputs, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def rows(n, d, dtype=torch.float64, seed=0, scale=1.0, offset=0.0):
    """n unit rows (times scale, plus offset) of dimension d on the CPU; None for n = 0."""
    if n == 0:
        return None
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    return (scale * x + offset).to(dtype)


def uniform(n, generator_seed, dtype):
    """n values uniform in [0, 1) in `dtype`: upstream gradients of per-row outputs."""
    return torch.rand(n, generator=torch.Generator().manual_seed(generator_seed), dtype=torch.float64).to(dtype)
