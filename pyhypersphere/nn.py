"""nn.Module wrappers of the losses.

`t` and `alpha` may be numbers or tensors; an `nn.Parameter` is registered as the
module's parameter and learned (the losses pass it its gradient).
"""

import torch
from torch import nn

from .losses import DEFAULT_ALPHA, DEFAULT_T, align_loss, uniform_loss


def _shown(value) -> str:
    return str(value.item()) if isinstance(value, torch.Tensor) else str(value)


class UniformityLoss(nn.Module):
    """`uniform_loss(x, t)` as a module."""

    def __init__(self, t: float = DEFAULT_T):
        super().__init__()
        self.t = t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return uniform_loss(x, self.t)

    def extra_repr(self) -> str:
        return f"t={_shown(self.t)}"


class AlignmentLoss(nn.Module):
    """`align_loss(x, y, alpha)` as a module."""

    def __init__(self, alpha: float = DEFAULT_ALPHA):
        super().__init__()
        self.alpha = alpha

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return align_loss(x, y, self.alpha)

    def extra_repr(self) -> str:
        return f"alpha={_shown(self.alpha)}"


class AlignUniformLoss(nn.Module):
    """The paper's training loss: align_w * align(x, y) + unif_w * (unif(x) + unif(y)) / 2."""

    def __init__(self, align_w: float = 1.0, unif_w: float = 1.0, alpha: float = DEFAULT_ALPHA, t: float = DEFAULT_T):
        super().__init__()
        self.align_w = align_w
        self.unif_w = unif_w
        self.alpha = alpha
        self.t = t

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        align = align_loss(x, y, self.alpha)
        unif = (uniform_loss(x, self.t) + uniform_loss(y, self.t)) / 2
        return self.align_w * align + self.unif_w * unif

    def extra_repr(self) -> str:
        return f"align_w={self.align_w}, unif_w={self.unif_w}, alpha={_shown(self.alpha)}, t={_shown(self.t)}"
