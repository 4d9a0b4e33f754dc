"""Triton kernels for the pyhypersphere operators: a GPU path that needs no compiler.

`uniform_lse`, `align_loss`, `contrastive_lse`, `contrastive_lse_backward`,
`contrastive_lse_row_grad` and `contrastive_mean_lse` take the arguments and give the results of the
`torch.ops.pyhypersphere` operators of those names (csrc/ops.h).  They run on CUDA (or ROCm) tensors, and on CPU tensors under
TRITON_INTERPRET=1 (tests only).  The operators dispatch to them on CUDA tensors when the
extension has no CUDA kernels or PYHYPERSPHERE_GPU_BACKEND=triton, the contrastive ones
always (pyhypersphere/gpu_backend.py).  Design and precision: docs/triton.md.
"""

from .align import align_loss
from .contrastive import contrastive_lse, contrastive_lse_backward, contrastive_lse_row_grad, contrastive_mean_lse
from .uniform import uniform_lse

__all__ = ["align_loss", "contrastive_lse", "contrastive_lse_backward", "contrastive_lse_row_grad", "contrastive_mean_lse",
           "uniform_lse"]
