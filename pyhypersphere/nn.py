"""nn.Module wrappers of the losses.

`t` and `alpha` may be numbers or tensors; an `nn.Parameter` is registered as the
module's parameter and learned (the losses pass it its gradient).  Every module checks its
arguments when it is built: a bad value raises there (ValueError or TypeError naming the
argument), not at the first forward.
"""

import math
import numbers
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
from .ops import siglip


def _shown(value) -> str:
    return str(value.item()) if isinstance(value, torch.Tensor) else str(value)


def _number(value, name: str, module: str, *, positive: bool, tensor_ok: bool = False) -> float:
    """value's float after the construction-time checks: a real number (or, where
    `tensor_ok`, a one-element floating-point tensor), finite, and > 0 or >= 0."""
    if isinstance(value, torch.Tensor) and tensor_ok:
        if value.numel() != 1 or not value.is_floating_point():
            raise ValueError(f"{module}: {name} must be a number or a one-element floating-point tensor, "
                             f"got a {value.dtype} tensor of shape {tuple(value.shape)}")
        number = float(value.detach().reshape(()).item())
    elif isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{module}: {name} must be a number, got {type(value).__name__}")
    else:
        number = float(value)
    if not math.isfinite(number) or number < 0 or (positive and number == 0):
        wanted = "a positive" if positive else "a non-negative"
        raise ValueError(f"{module}: {name} must be {wanted} finite number, got {number}")
    return number


def _flag(value, name: str, module: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{module}: {name} must be True or False, got {value!r}")
    return value


class UniformityLoss(nn.Module):
    """`uniform_loss(x, t)` as a module."""

    def __init__(self, t: float = DEFAULT_T):
        super().__init__()
        _number(t, "t", "UniformityLoss", positive=True, tensor_ok=True)
        self.t = t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return uniform_loss(x, self.t)

    def extra_repr(self) -> str:
        return f"t={_shown(self.t)}"


class AlignmentLoss(nn.Module):
    """`align_loss(x, y, alpha)` as a module."""

    def __init__(self, alpha: float = DEFAULT_ALPHA):
        super().__init__()
        _number(alpha, "alpha", "AlignmentLoss", positive=True, tensor_ok=True)
        self.alpha = alpha

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return align_loss(x, y, self.alpha)

    def extra_repr(self) -> str:
        return f"alpha={_shown(self.alpha)}"


class AlignUniformLoss(nn.Module):
    """The paper's training loss: align_w * align(x, y) + unif_w * (unif(x) + unif(y)) / 2."""

    def __init__(self, align_w: float = 1.0, unif_w: float = 1.0, alpha: float = DEFAULT_ALPHA, t: float = DEFAULT_T):
        super().__init__()
        module = "AlignUniformLoss"
        _number(align_w, "align_w", module, positive=False)
        _number(unif_w, "unif_w", module, positive=False)
        _number(alpha, "alpha", module, positive=True, tensor_ok=True)
        _number(t, "t", module, positive=True, tensor_ok=True)
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
        _number(tau, "tau", "NTXentLoss", positive=True, tensor_ok=True)
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
        _number(tau, "tau", "InfoNCELoss", positive=True, tensor_ok=True)
        self.tau = tau
        self.in_batch = _flag(in_batch, "in_batch", "InfoNCELoss")

    def forward(self, q: torch.Tensor, k: torch.Tensor, queue: Optional[torch.Tensor] = None) -> torch.Tensor:
        return info_nce_loss(q, k, self.tau, queue=queue, in_batch=self.in_batch)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, in_batch={self.in_batch}"


class CLIPLoss(nn.Module):
    """`clip_loss(x, y, tau)` as a module.

    With ``learn_tau=True`` the temperature is learned as CLIP does it: a parameter
    ``logit_scale`` = log(1 / tau), initialized from ``tau``, and tau = exp(-logit_scale)
    in the forward.  The bound 1 / tau <= ``max_logit_scale`` (CLIP: 100) is applied to the
    parameter after each optimizer step, as open_clip does, not in the forward (a clamp
    there would zero the parameter's gradient past the bound, and it could never come
    back)::

        loss_fn = CLIPLoss(learn_tau=True)
        opt = torch.optim.AdamW([*model.parameters(), *loss_fn.parameters()])
        loss_fn.clamp_after(opt)        # or call loss_fn.clamp_() after every opt.step()

    ``tau`` must then be at least 1 / ``max_logit_scale``: a smaller one would be clamped
    away at the first step (raise ``max_logit_scale`` to start lower).
    """

    def __init__(self, tau: float = DEFAULT_CLIP_TAU, learn_tau: bool = False, max_logit_scale: float = 100.0):
        super().__init__()
        module = "CLIPLoss"
        tau_value = _number(tau, "tau", module, positive=True, tensor_ok=True)
        self.learn_tau = _flag(learn_tau, "learn_tau", module)
        self.max_logit_scale = _number(max_logit_scale, "max_logit_scale", module, positive=True)
        if learn_tau:
            if 1.0 / tau_value > self.max_logit_scale:
                raise ValueError(
                    f"{module}: with learn_tau=True, tau must be at least 1 / max_logit_scale = "
                    f"{1.0 / self.max_logit_scale:g} (the bound clamp_() applies after each step), got "
                    f"tau={tau_value:g}; pass max_logit_scale >= {1.0 / tau_value:g} to start there"
                )
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / tau_value)))
        else:
            self.tau = tau

    def temperature(self):
        """The temperature in use: a number, or a tensor that requires grad when learned."""
        if not self.learn_tau:
            return self.tau
        return torch.exp(-self.logit_scale)

    @torch.no_grad()
    def clamp_(self) -> "CLIPLoss":
        """Applies the bound logit_scale <= log(max_logit_scale) to the parameter, in place
        (open_clip's ``logit_scale.clamp_(0, math.log(100))`` after ``optimizer.step()``,
        upper bound only).  Call it after every optimizer step, or let ``clamp_after`` do it.
        Without ``learn_tau`` there is nothing to bound."""
        if self.learn_tau:
            self.logit_scale.clamp_(max=math.log(self.max_logit_scale))
        return self

    def clamp_after(self, optimizer: torch.optim.Optimizer):
        """Registers ``clamp_()`` to run after every ``optimizer.step()``; returns the hook's
        handle (``handle.remove()`` undoes it)."""
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"CLIPLoss.clamp_after: optimizer must be a torch.optim.Optimizer, "
                            f"got {type(optimizer).__name__}")
        return optimizer.register_step_post_hook(lambda *_: self.clamp_())

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return clip_loss(x, y, self.temperature())

    def extra_repr(self) -> str:
        if self.learn_tau:
            return f"learn_tau=True, max_logit_scale={self.max_logit_scale}"
        return f"tau={self.tau}"


class SigLIPLoss(nn.Module):
    """`siglip_loss(x, y, t, b)` (SigLIP's sigmoid loss) as a module.

    With ``learn=True`` (the default) t and b are learned as the paper does it: parameters
    ``logit_scale`` = t' = log t and ``logit_bias`` = b, initialized from ``t`` and ``b``
    (the paper: t' = log 10, b = -10), and t = exp(t') in the forward (open_clip's names)::

        loss_fn = SigLIPLoss()
        opt = torch.optim.AdamW([*model.parameters(), *loss_fn.parameters()])

    With ``learn=False`` they are the fixed numbers given.
    """

    def __init__(self, t: float = siglip.DEFAULT_T, b: float = siglip.DEFAULT_B, learn: bool = True):
        super().__init__()
        module = "SigLIPLoss"
        t_value = _number(t, "t", module, positive=True)
        if isinstance(b, bool) or not isinstance(b, numbers.Real):
            raise TypeError(f"{module}: b must be a number, got {type(b).__name__}")
        if not math.isfinite(b):
            raise ValueError(f"{module}: b must be a finite number, got {b}")
        self.learn = _flag(learn, "learn", module)
        if learn:
            self.logit_scale = nn.Parameter(torch.tensor(math.log(t_value)))
            self.logit_bias = nn.Parameter(torch.tensor(float(b)))
        else:
            self.t, self.b = t_value, float(b)

    def scale_and_bias(self):
        """(t, b) in use: numbers, or tensors that require grad when learned."""
        if self.learn:
            return self.logit_scale.exp(), self.logit_bias
        return self.t, self.b

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return siglip.siglip_loss(x, y, *self.scale_and_bias())

    def extra_repr(self) -> str:
        t, b = self.scale_and_bias()
        return f"t={_shown(t)}, b={_shown(b)}, learn={self.learn}"
