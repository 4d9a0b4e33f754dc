"""The implementations a sweep can measure, by name.

Each entry says when it cannot run (device, dtype, missing package) and builds the
loss callable for one size, so per-size set-up (block masks, compilation) stays
outside the timed region.  Inputs are always unit-norm rows, the paper's setting.
"""

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from . import peers

LossFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Impl:
    name: str
    description: str
    # Returns why (device, dtype) cannot run, or None when it can.
    unsupported: Callable[[torch.device, torch.dtype], Optional[str]]
    # (n, device, dtype, t) -> loss callable on an [n, d] tensor.
    build: Callable[[int, torch.device, torch.dtype, float], LossFn]


def _always(_device, _dtype) -> Optional[str]:
    return None


def _fused_unsupported(device, _dtype) -> Optional[str]:
    import pyhypersphere

    info = pyhypersphere.build_info()
    if device.type == "cuda" and info.get("gpu_backend", "cuda" if info.get("with_cuda") else "none") == "none":
        return f"no GPU backend: {info.get('gpu_backend_reason', 'built without CUDA kernels')}"
    return None


def _triton_unsupported(device, _dtype) -> Optional[str]:
    import importlib.util

    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if device.type != "cuda":
        return "the Triton kernels run on CUDA tensors (on CPU only under the test interpreter)"
    return None


def _build_triton(_n, _device, _dtype, t) -> LossFn:
    from pyhypersphere.triton_kernels.loss import uniform_loss

    return lambda x: uniform_loss(x, t)


def _build_fused(_n, _device, _dtype, t) -> LossFn:
    from pyhypersphere import uniform_loss

    return lambda x: uniform_loss(x, t)


def _build_reference(_n, _device, _dtype, t) -> LossFn:
    from pyhypersphere.reference import reference_uniform_loss

    return lambda x: reference_uniform_loss(x, t)


def _build_blocked(_n, _device, _dtype, t) -> LossFn:
    from pyhypersphere.reference import blocked_uniform_loss

    return lambda x: blocked_uniform_loss(x, t)


def _keops_unsupported(device, dtype) -> Optional[str]:
    if not peers.keops_available():
        return peers.KEOPS_MISSING
    if dtype not in (torch.float32, torch.float64) and device.type == "cpu":
        return f"KeOps on CPU supports float32 and float64, not {dtype}"
    if device.type == "cuda":
        import pykeops.config

        if not pykeops.config.gpu_available:
            return "pykeops found no usable CUDA libraries"
    return None


def _build_keops(_n, _device, _dtype, t) -> LossFn:
    return lambda x: peers.keops_uniform_loss(x, t)


def _build_flex(n, device, _dtype, t) -> LossFn:
    from torch.nn.attention.flex_attention import flex_attention

    block_mask = peers.flex_block_mask(n, device)
    # CUDA: the fused kernel.  CPU: the eager function (compiled CPU flex attention is
    # inference-only and cannot return the lse in torch 2.13; eager materializes the
    # N x N scores, so CPU timings are not the fused kernel's).
    attention = torch.compile(flex_attention, dynamic=False) if device.type == "cuda" else flex_attention
    return lambda x: peers.flex_uniform_loss(x, t, block_mask=block_mask, attention=attention)


IMPLS = {
    impl.name: impl
    for impl in (
        Impl("pyhypersphere", "the fused op (pyhypersphere.uniform_loss)", _fused_unsupported, _build_fused),
        Impl("triton", "the Triton kernels (pyhypersphere.triton_kernels)", _triton_unsupported, _build_triton),
        Impl("reference", "torch.pdist formula of Wang & Isola", _always, _build_reference),
        Impl(
            "blocked",
            "chunked Gram + log-sum-exp in plain torch (reference.blocked_uniform_loss)",
            _always,
            _build_blocked,
        ),
        Impl("keops", "KeOps LazyTensor log-sum-exp reduction", _keops_unsupported, _build_keops),
        Impl("flex", "FlexAttention forward (q = k = v = x, scale 2t, score_mod -t|x_j|^2, diagonal masked), "
             "lse and closed-form gradient", _always, _build_flex),
    )
}

# The GEMM that sets the roofline: torch.mm doing the same flops as each phase.
ROOFLINE = "torch.mm"
