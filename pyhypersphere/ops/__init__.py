"""The operator families, one module each (fake kernel, autograd, public loss and its
distributed specification): the arrangement of issue 27.  Each family module names its
operators in a module-level ``OPS`` ({op: has a C++ CUDA kernel}) that the one registry
(pyhypersphere/gpu_backend.py) reads."""

from . import siglip

FAMILIES = (siglip,)
