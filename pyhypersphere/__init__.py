"""pyhypersphere: fused, O(N*d)-memory alignment, uniformity and contrastive losses for PyTorch.

    from pyhypersphere import uniform_loss, align_loss

replaces the reference code of Wang & Isola (ICML 2020) with the same values.
"""

from . import _ops  # noqa: F401  (registers the operators)
from . import _contrastive_ops  # noqa: F401  (registers the contrastive operators' autograd)
from .contrastive import clip_loss, info_nce_loss, nt_xent_loss
from .gpu_backend import build_info
from .losses import align_loss, uniform_loss
from .nn import AlignmentLoss, AlignUniformLoss, CLIPLoss, InfoNCELoss, NTXentLoss, UniformityLoss

__version__ = "0.1.0"

__all__ = [
    "AlignUniformLoss",
    "AlignmentLoss",
    "CLIPLoss",
    "InfoNCELoss",
    "NTXentLoss",
    "UniformityLoss",
    "align_loss",
    "build_info",
    "clip_loss",
    "info_nce_loss",
    "nt_xent_loss",
    "uniform_loss",
]
