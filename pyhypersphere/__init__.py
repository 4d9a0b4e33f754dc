"""pyhypersphere: fused, O(N*d)-memory alignment, uniformity and contrastive losses for PyTorch.

    from pyhypersphere import uniform_loss, align_loss

replaces the reference code of Wang & Isola (ICML 2020) with the same values.
"""

from ._extension import load_extension as _load_extension

_load_extension()  # first: a missing build gets a clear ImportError (see _extension.py)
from . import ops  # noqa: E402,F401  (registers every family's fake kernels and autograd)
from .contrastive import clip_loss, info_nce_loss, nt_xent_loss  # noqa: E402
from .gpu_backend import build_info  # noqa: E402
from .losses import align_loss, uniform_loss  # noqa: E402
from .nn import AlignmentLoss, AlignUniformLoss, CLIPLoss, InfoNCELoss, NTXentLoss, SigLIPLoss, UniformityLoss  # noqa: E402
from .ops.siglip import siglip_loss  # noqa: E402
from .ops.uniform import PrecisionWarning  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "AlignUniformLoss",
    "AlignmentLoss",
    "CLIPLoss",
    "InfoNCELoss",
    "NTXentLoss",
    "PrecisionWarning",
    "SigLIPLoss",
    "UniformityLoss",
    "align_loss",
    "build_info",
    "clip_loss",
    "info_nce_loss",
    "nt_xent_loss",
    "siglip_loss",
    "uniform_loss",
]
