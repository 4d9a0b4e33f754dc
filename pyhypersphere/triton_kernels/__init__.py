"""Triton kernels for the pyhypersphere operators: a GPU path that needs no compiler.

`uniform_lse` and `align_loss` take the arguments and give the results of
`torch.ops.pyhypersphere.uniform_lse` / `align_loss` (csrc/ops.h).  They run on CUDA (or
ROCm) tensors, and on CPU tensors under TRITON_INTERPRET=1 (tests only).  The operators
dispatch to them on CUDA tensors when the extension has no CUDA kernels or
PYHYPERSPHERE_GPU_BACKEND=triton (pyhypersphere/gpu_backend.py).  Design and precision:
docs/triton.md.
"""

from .align import align_loss
from .uniform import uniform_lse

__all__ = ["align_loss", "uniform_lse"]
