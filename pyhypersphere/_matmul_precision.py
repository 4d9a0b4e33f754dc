"""The CUDA float32 matmul setting (TF32 or IEEE float32), read and set the way the CUDA
glue reads it (tf32_allowed in csrc/cuda/uniform_cuda.cpp), on every torch we support.

Not torch.get_float32_matmul_precision(): from torch 2.9 it raises once the legacy
(allow_tf32) and the new (fp32_precision) settings have both been used.
"""

import contextlib

import torch


def cuda_matmul_allows_tf32() -> bool:
    matmul = torch.backends.cuda.matmul
    precision = getattr(matmul, "fp32_precision", None)
    if precision is None:  # torch before 2.9
        return bool(matmul.allow_tf32)
    if precision == "none":  # inherits the generic setting
        precision = getattr(torch.backends, "fp32_precision", "ieee")
    return precision == "tf32"


@contextlib.contextmanager
def cuda_fp32_matmul(precision):
    """The CUDA float32 matmul setting set to `precision` ("tf32" or "ieee"; None leaves
    it) for the block: fp32_precision from torch 2.9, allow_tf32 before."""
    matmul = torch.backends.cuda.matmul
    name = "fp32_precision" if hasattr(matmul, "fp32_precision") else "allow_tf32"
    old = getattr(matmul, name)
    if precision is not None:
        setattr(matmul, name, precision if name == "fp32_precision" else precision == "tf32")
    try:
        yield
    finally:
        setattr(matmul, name, old)
