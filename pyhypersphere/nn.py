"""nn.Module wrappers of the losses.

`t` and `alpha` may be numbers or tensors; an `nn.Parameter` is registered as the
module's parameter and learned (the losses pass it its gradient).
"""

import math
from typing import Optional

import torch
from torch import nn

from .contrastive import (
    DEFAULT_CLIP_TAU,
    DEFAULT_INFO_NCE_TAU,
    DEFAULT_NT_XENT_TAU,
    clip_loss,
    info_nce_loss,
    nt_xent_loss,
)
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


class NTXentLoss(nn.Module):
    """`nt_xent_loss(x, y, tau)` (SimCLR) as a module."""

    def __init__(self, tau: float = DEFAULT_NT_XENT_TAU):
        super().__init__()
        self.tau = tau

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nt_xent_loss(x, y, self.tau)

    def extra_repr(self) -> str:
        return f"tau={self.tau}"


class InfoNCELoss(nn.Module):
    """`info_nce_loss(q, k, tau, queue=queue, in_batch=in_batch)` as a module; the queue
    (MoCo's negatives) is passed to forward, since it changes every step."""

    def __init__(self, tau: float = DEFAULT_INFO_NCE_TAU, in_batch: bool = True):
        super().__init__()
        self.tau = tau
        self.in_batch = in_batch

    def forward(self, q: torch.Tensor, k: torch.Tensor, queue: Optional[torch.Tensor] = None) -> torch.Tensor:
        return info_nce_loss(q, k, self.tau, queue=queue, in_batch=self.in_batch)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, in_batch={self.in_batch}"


class CLIPLoss(nn.Module):
    """`clip_loss(x, y, tau)` as a module.

    With ``learn_tau=True`` the temperature is learned as CLIP does it: a parameter
    ``logit_scale`` = log(1 / tau), initialized from ``tau``, and 1 / tau = exp(logit_scale)
    clamped at ``max_logit_scale`` (CLIP: 100) so the logits cannot grow without bound.
    """

    def __init__(self, tau: float = DEFAULT_CLIP_TAU, learn_tau: bool = False, max_logit_scale: float = 100.0):
        super().__init__()
        self.learn_tau = learn_tau
        self.max_logit_scale = max_logit_scale
        if learn_tau:
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / tau)))
        else:
            self.tau = tau

    def temperature(self):
        """The temperature in use: a number, or a tensor that requires grad when learned."""
        if not self.learn_tau:
            return self.tau
        return 1.0 / self.logit_scale.exp().clamp(max=self.max_logit_scale)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return clip_loss(x, y, self.temperature())

    def extra_repr(self) -> str:
        if self.learn_tau:
            return f"learn_tau=True, max_logit_scale={self.max_logit_scale}"
        return f"tau={self.tau}"
