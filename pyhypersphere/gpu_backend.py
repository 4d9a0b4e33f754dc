"""Which kernels the operators run on CUDA tensors: the C++ CUDA kernels or Triton's.

PYHYPERSPHERE_GPU_BACKEND=cuda|triton|auto (default auto): auto takes the CUDA kernels
when the extension was built with them, otherwise the Triton kernels when triton is
installed.  The Triton kernels are registered for the CUDA dispatch key from Python;
they are imported on first use, so `import pyhypersphere` does not import triton.

The contrastive operators have no C++ CUDA kernel: on CUDA tensors they run on Triton
whenever triton is installed, whatever the choice above.
"""

import importlib.util
import os

import torch

from . import _C

ENV_VAR = "PYHYPERSPHERE_GPU_BACKEND"
CHOICES = ("auto", "cuda", "triton")


def choose(requested: str, with_cuda: bool, has_triton: bool) -> tuple:
    """(backend, reason): backend is "cuda", "triton" or "none"."""
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


def _triton_uniform_lse(x, queue, t, intra_batch, part, num_parts, grad_x, grad_queue):
    from .triton_kernels import uniform_lse

    return uniform_lse(x, queue, t, intra_batch, part, num_parts, grad_x, grad_queue)


def _triton_align_loss(x, y, alpha, compute_grad):
    from .triton_kernels import align_loss

    return align_loss(x, y, alpha, compute_grad)


def _triton_contrastive_lse(a, b, scale, self_pairs, lse_b, part, num_parts, skip_positives=False):
    from .triton_kernels import contrastive_lse

    return contrastive_lse(a, b, scale, self_pairs, lse_b, part, num_parts, skip_positives)


def _triton_contrastive_lse_backward(a, b, scale, self_pairs, lse_a, lse_b, grad_lse_a, grad_lse_b, part,
                                     num_parts, grad_a, grad_b, skip_positives=False):
    from .triton_kernels import contrastive_lse_backward

    return contrastive_lse_backward(a, b, scale, self_pairs, lse_a, lse_b, grad_lse_a, grad_lse_b, part,
                                    num_parts, grad_a, grad_b, skip_positives)


def _triton_contrastive_mean_lse(a, b, scale, grad_a, grad_b):
    from .triton_kernels import contrastive_mean_lse

    return contrastive_mean_lse(a, b, scale, grad_a, grad_b)


_lib = torch.library.Library("pyhypersphere", "IMPL")


def _register_triton_uniformity() -> None:
    # With a CUDA build this overrides the C++ registration (torch warns once).
    _lib.impl("uniform_lse", _triton_uniform_lse, "CUDA")
    _lib.impl("align_loss", _triton_align_loss, "CUDA")


def _register_triton_contrastive() -> None:
    _lib.impl("contrastive_lse", _triton_contrastive_lse, "CUDA")
    _lib.impl("contrastive_lse_backward", _triton_contrastive_lse_backward, "CUDA")
    _lib.impl("contrastive_mean_lse", _triton_contrastive_mean_lse, "CUDA")


HAS_TRITON = importlib.util.find_spec("triton") is not None
BACKEND, REASON = choose(os.environ.get(ENV_VAR, "auto").strip().lower() or "auto", bool(_C.WITH_CUDA), HAS_TRITON)
if BACKEND == "triton":
    _register_triton_uniformity()
if HAS_TRITON:
    _register_triton_contrastive()
CONTRASTIVE_BACKEND = "triton" if HAS_TRITON else "none"


def build_info() -> dict:
    """How the extension was built (CUDA, arch list, torch, OpenMP, threads, CPU tile
    GEMM) and which GPU backend the operators use on CUDA tensors, and why
    (`contrastive_gpu_backend`: the contrastive operators', triton or none)."""
    info = dict(_C.build_info())
    info["gpu_backend"] = BACKEND
    info["gpu_backend_reason"] = REASON
    info["contrastive_gpu_backend"] = CONTRASTIVE_BACKEND
    return info
