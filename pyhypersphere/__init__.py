"""pyhypersphere: fused, O(N*d)-memory alignment and uniformity losses for PyTorch.

    from pyhypersphere import uniform_loss, align_loss

replaces the reference code of Wang & Isola (ICML 2020) with the same values.
"""

from . import _ops  # noqa: F401  (registers the operators)
from ._C import build_info
from ._ops import PrecisionWarning
from .losses import align_loss, uniform_loss
from .nn import AlignmentLoss, AlignUniformLoss, UniformityLoss

__version__ = "0.1.0"

__all__ = [
    "AlignUniformLoss",
    "AlignmentLoss",
    "PrecisionWarning",
    "UniformityLoss",
    "align_loss",
    "build_info",
    "uniform_loss",
]
