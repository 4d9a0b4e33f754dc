"""Which implementation serves each operator, on each device: one table, built here at import.

PYHYPERSPHERE_GPU_BACKEND=cuda|triton|auto (default auto) applies to every operator on
CUDA tensors:
- auto: the C++ CUDA kernels where the extension was built with them and the operator has
  one, otherwise Triton's when triton is installed;
- cuda: the C++ CUDA kernels; an operator without one (the contrastive family) raises a
  clear error on CUDA tensors instead of silently running something else;
- triton: the Triton kernels.
The CPU always runs the C++ kernels.  Every dtype of an operator takes the same
implementation.  `IMPLEMENTATIONS` ({op: {device: backend}}), `python -m pyhypersphere info`
(key `implementations`) and the tests read this table; the Triton kernels are registered for
the CUDA dispatch key from here and imported on first use, so `import pyhypersphere` does
not import triton.
"""

import importlib
import importlib.util
import os

import torch

from . import _C
from .ops import FAMILY_OF, OPS  # op -> has a C++ CUDA kernel, declared by each family (ops/<family>.py)

ENV_VAR = "PYHYPERSPHERE_GPU_BACKEND"
CHOICES = ("auto", "cuda", "triton")
NO_GPU = "none (torch sees no CUDA device; the GPU backend below serves CUDA tensors only)"


def choose(requested: str, with_cuda: bool, has_triton: bool) -> tuple:
    """(backend, reason) for an operator with a C++ CUDA kernel when the extension was built
    `with_cuda`: backend is "cuda", "triton" or "none"."""
    if requested not in CHOICES:
        raise ValueError(f"{ENV_VAR} must be one of {', '.join(CHOICES)}, got {requested!r}")
    if requested == "cuda":
        if with_cuda:
            return "cuda", f"{ENV_VAR}=cuda"
        return "none", f"{ENV_VAR}=cuda but the extension was built without CUDA kernels"
    if requested == "triton":
        if has_triton:
            return "triton", f"{ENV_VAR}=triton"
        return "none", f"{ENV_VAR}=triton but triton is not installed"
    if with_cuda:
        return "cuda", "auto: the extension was built with CUDA kernels"
    if has_triton:
        return "triton", "auto: the extension has no CUDA kernels and triton is installed"
    return "none", "auto: the extension has no CUDA kernels and triton is not installed"


def _triton(name):
    """The Triton launcher `name` (in triton_kernels/<its family>.py), imported on first call."""

    def launch(*args):
        module = importlib.import_module(f"{__package__}.triton_kernels.{FAMILY_OF[name]}")
        return getattr(module, name)(*args)

    launch.__name__ = f"triton_{name}"
    return launch


def choose_for_op(op: str, requested: str, with_cuda: bool, has_triton: bool) -> tuple:
    """(backend, reason) on CUDA tensors for `op` (see the module doc)."""
    if OPS[op]:
        return choose(requested, with_cuda, has_triton)
    if requested == "cuda":
        return "none", f"{ENV_VAR}=cuda but {op} has no C++ CUDA kernel (set {ENV_VAR}=triton or auto)"
    backend, reason = choose(requested if requested == "triton" else "auto", False, has_triton)
    if requested == "auto" and backend == "triton":
        reason = f"auto: {op} has no C++ CUDA kernel and triton is installed"
    return backend, reason


def _unavailable(op, reason):
    def fail(*args):
        raise RuntimeError(f"pyhypersphere: no implementation of {op} for CUDA tensors: {reason}")

    return fail


def _build_table(requested, with_cuda, has_triton):
    table = {}
    for op in OPS:
        backend, reason = choose_for_op(op, requested, with_cuda, has_triton)
        table[op] = {"cpu": ("cpu", "the C++ CPU kernels"), "cuda": (backend, reason)}
    return table


_lib = torch.library.Library("pyhypersphere", "IMPL")


def _register(table, with_cuda):
    for op, by_device in table.items():
        backend, reason = by_device["cuda"]
        if backend == "triton":
            # With a CUDA build this overrides the C++ registration (torch warns once).
            _lib.impl(op, _triton(op), "CUDA")
        elif backend == "none" and not (OPS[op] and with_cuda):
            _lib.impl(op, _unavailable(op, reason), "CUDA")


HAS_TRITON = importlib.util.find_spec("triton") is not None
REQUESTED = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
TABLE = _build_table(REQUESTED, bool(_C.WITH_CUDA), HAS_TRITON)
_register(TABLE, bool(_C.WITH_CUDA))
IMPLEMENTATIONS = {op: {device: choice[0] for device, choice in by_device.items()} for op, by_device in TABLE.items()}
BACKEND, REASON = TABLE["uniform_lse"]["cuda"]
CONTRASTIVE_BACKEND = TABLE["contrastive_lse"]["cuda"][0]


def build_info() -> dict:
    """How the extension was built (CUDA, arch list, torch, OpenMP, threads, CPU tile
    GEMM), whether there is a GPU, and which implementation serves each operator on each
    device (`implementations`) and why (`gpu_backend_reason`, the uniformity's; the table's
    reasons are in TABLE)."""
    info = dict(_C.build_info())
    # The backends below are the ones registered for CUDA tensors; say first whether there are any.
    info["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else NO_GPU
    info["gpu_backend"] = BACKEND
    info["gpu_backend_reason"] = REASON
    info["contrastive_gpu_backend"] = CONTRASTIVE_BACKEND
    info["implementations"] = IMPLEMENTATIONS
    return info
