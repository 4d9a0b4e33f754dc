"""pyhypersphere: fused, O(N*d)-memory alignment and uniformity losses for PyTorch.

    from pyhypersphere import uniform_loss, align_loss

replaces the reference code of Wang & Isola (ICML 2020) with the same values.
"""

from ._extension import load_extension as _load_extension

_load_extension()  # first: a missing build gets a clear ImportError (see _extension.py)
from . import _ops  # noqa: E402,F401  (registers the operators)
from ._C import build_info  # noqa: E402
from .losses import align_loss, uniform_loss  # noqa: E402
from .nn import AlignmentLoss, AlignUniformLoss, UniformityLoss  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "AlignUniformLoss",
    "AlignmentLoss",
    "UniformityLoss",
    "align_loss",
    "build_info",
    "uniform_loss",
]
