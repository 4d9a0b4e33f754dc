"""Drop-in alignment and uniformity losses (Wang & Isola, ICML 2020).

Same names, signatures, defaults and values as the paper's reference code::

    align_loss(x, y, alpha=2) = (x - y).norm(p=2, dim=1).pow(alpha).mean()
    uniform_loss(x, t=2)      = torch.pdist(x, p=2).pow(2).mul(-t).exp().mean().log()

computed by fused kernels in O(N * d) memory, stable where the reference underflows.
Defined in pyhypersphere/ops/uniform.py and ops/align.py; this module is their public name.
"""

from .ops.align import DEFAULT_ALPHA, align_loss
from .ops.uniform import DEFAULT_T, uniform_loss

__all__ = ["DEFAULT_ALPHA", "DEFAULT_T", "align_loss", "uniform_loss"]
