"""Batched, seeded augmentations (all torch ops on the batch's device; no per-sample Python).

Each augmenter maps a float batch to a normalized, augmented batch:
``aug(x, generator) -> x'``.  Randomness comes only from ``generator``, so a run is
reproducible from its seed and an epoch can be replayed exactly on resume.

* ``SignalAugment`` (MNIST-1D and 1-D .npy folders): the nuisances the MNIST-1D generator
  itself applies, i.e. a circular time warp (shift plus dilation), amplitude scaling, a
  linear shear, and correlated plus i.i.d. Gaussian noise.
* ``ImageAugment`` (STL-10 and image folders): the paper's pipeline, RandomResizedCrop
  (scale 0.08-1), horizontal flip, ColorJitter(0.4, 0.4, 0.4, 0.4) with p=0.8 and
  RandomGrayscale(p=0.2).
* ``DigitAugment`` (8x8 digits): small random affine maps (no flips: digits are not
  mirror-symmetric) and pixel noise.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from .data import Data


def _uniform(shape, lo, hi, g, device):
    return torch.rand(shape, generator=g, device=device) * (hi - lo) + lo


class SignalAugment:
    def __init__(
        self,
        data: Data,
        shift: float = 1.0,  # fraction of the length; 1.0 = any circular shift
        dilation: float = 0.15,
        amplitude: float = 0.2,
        shear: float = 0.5,
        corr_noise: float = 0.2,
        iid_noise: float = 0.05,
    ):
        self.data = data
        self.shift, self.dilation, self.amplitude = shift, dilation, amplitude
        self.shear, self.corr_noise, self.iid_noise = shear, corr_noise, iid_noise

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        x = self.data.normalize(self.data.to_float(x))
        b, n = x.shape
        dev = x.device
        i = torch.arange(n, dtype=x.dtype, device=dev)[None]
        # circular time warp: position p = (i - c) * s + c + shift, linearly interpolated
        s = _uniform((b, 1), 1 - self.dilation, 1 + self.dilation, g, dev)
        c = _uniform((b, 1), 0, n, g, dev)
        sh = _uniform((b, 1), 0, n * self.shift, g, dev)
        p = torch.remainder((i - c) * s + c + sh, n)
        p0 = p.floor()
        w = p - p0
        i0 = p0.long() % n
        i1 = (i0 + 1) % n
        y = x.gather(1, i0) * (1 - w) + x.gather(1, i1) * w
        y = y * _uniform((b, 1), 1 - self.amplitude, 1 + self.amplitude, g, dev)
        ramp = torch.linspace(-1.0, 1.0, n, device=dev)[None]
        y = y + _uniform((b, 1), -0.5, 0.5, g, dev) * self.shear * ramp
        noise = torch.randn((b, 1, n), generator=g, device=dev)
        k = torch.exp(-(torch.arange(-4.0, 5.0, device=dev) ** 2) / 8.0)
        noise = F.conv1d(noise, (k / k.sum()).view(1, 1, -1), padding=4).squeeze(1)
        noise = noise / noise.std().clamp_min(1e-8)
        y = y + self.corr_noise * noise + self.iid_noise * torch.randn((b, n), generator=g, device=dev)
        return y


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    r, g_, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return 0.299 * r + 0.587 * g_ + 0.114 * b


class ImageAugment:
    def __init__(
        self,
        data: Data,
        size: int,
        scale=(0.08, 1.0),
        ratio=(3 / 4, 4 / 3),
        flip: bool = True,
        jitter: float = 0.4,
        hue: float = 0.4,
        p_jitter: float = 0.8,
        p_gray: float = 0.2,
    ):
        self.data, self.size = data, int(size)
        self.scale, self.ratio, self.flip = scale, ratio, flip
        self.jitter, self.hue, self.p_jitter, self.p_gray = jitter, hue, p_jitter, p_gray

    def _crop(self, x, g):
        b, dev = x.shape[0], x.device
        h, w = x.shape[-2:]
        area = _uniform((b,), self.scale[0], self.scale[1], g, dev)
        logr = _uniform((b,), math.log(self.ratio[0]), math.log(self.ratio[1]), g, dev)
        r = torch.exp(logr) * (h / w)  # aspect ratio in pixels -> in normalized units
        sx = torch.sqrt(area * r).clamp(max=1.0)  # crop width / image width
        sy = torch.sqrt(area / r).clamp(max=1.0)
        cx = _uniform((b,), -1.0, 1.0, g, dev) * (1 - sx)
        cy = _uniform((b,), -1.0, 1.0, g, dev) * (1 - sy)
        if self.flip:
            sx = sx * torch.where(torch.rand((b,), generator=g, device=dev) < 0.5, -1.0, 1.0)
        theta = torch.zeros((b, 2, 3), device=dev, dtype=x.dtype)
        theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, cx, sy, cy
        grid = F.affine_grid(theta, (b, x.shape[1], self.size, self.size), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def _color(self, x, g):
        b, dev = x.shape[0], x.device
        j = self.jitter
        apply = (torch.rand((b, 1, 1, 1), generator=g, device=dev) < self.p_jitter).to(x.dtype)
        y = x * _uniform((b, 1, 1, 1), 1 - j, 1 + j, g, dev)  # brightness
        y = y.clamp(0, 1)
        m = _gray(y).mean(dim=(1, 2, 3), keepdim=True)
        y = ((y - m) * _uniform((b, 1, 1, 1), 1 - j, 1 + j, g, dev) + m).clamp(0, 1)  # contrast
        if x.shape[1] == 3:
            gr = _gray(y)
            y = (gr + (y - gr) * _uniform((b, 1, 1, 1), 1 - j, 1 + j, g, dev)).clamp(0, 1)  # saturation
            # hue: rotate the chroma plane of YIQ (a close, cheap stand-in for HSV hue shifts)
            ang = _uniform((b,), -self.hue, self.hue, g, dev) * 2 * math.pi
            to_yiq = torch.tensor(
                [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], device=dev, dtype=x.dtype
            )
            from_yiq = torch.linalg.inv(to_yiq)
            cos, sin = torch.cos(ang), torch.sin(ang)
            rot = torch.zeros((b, 3, 3), device=dev, dtype=x.dtype)
            rot[:, 0, 0] = 1
            rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
            mat = from_yiq @ rot @ to_yiq  # [b, 3, 3]
            y = torch.einsum("bij,bjhw->bihw", mat, y).clamp(0, 1)
        y = apply * y + (1 - apply) * x
        if x.shape[1] == 3 and self.p_gray > 0:
            gray = (torch.rand((b, 1, 1, 1), generator=g, device=dev) < self.p_gray).to(x.dtype)
            y = gray * _gray(y).expand_as(y) + (1 - gray) * y
        return y

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        x = self.data.to_float(x)
        x = self._crop(x, g)
        if self.jitter > 0 or self.p_gray > 0:
            x = self._color(x, g)
        return self.data.normalize(x)


class DigitAugment:
    def __init__(self, data: Data, degrees=15.0, scale=(0.85, 1.15), translate=0.15, noise=0.1):
        self.data, self.degrees, self.scale, self.translate, self.noise = data, degrees, scale, translate, noise

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        x = self.data.to_float(x)
        b, dev = x.shape[0], x.device
        ang = _uniform((b,), -self.degrees, self.degrees, g, dev) * math.pi / 180
        sc = _uniform((b,), self.scale[0], self.scale[1], g, dev)
        shear = _uniform((b,), -0.15, 0.15, g, dev)
        tx = _uniform((b,), -self.translate, self.translate, g, dev) * 2
        ty = _uniform((b,), -self.translate, self.translate, g, dev) * 2
        cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
        theta = torch.zeros((b, 2, 3), device=dev, dtype=x.dtype)
        theta[:, 0, 0], theta[:, 0, 1], theta[:, 0, 2] = cos, -sin + shear, tx
        theta[:, 1, 0], theta[:, 1, 1], theta[:, 1, 2] = sin, cos, ty
        grid = F.affine_grid(theta, tuple(x.shape), align_corners=False)
        y = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        y = y + self.noise * torch.randn(y.shape, generator=g, device=dev)
        return self.data.normalize(y)


def for_data(data: Data, image_size: Optional[int] = None):
    """The augmentation that fits the dataset."""
    if data.kind == "signal":
        if data.name == "mnist1d":
            return SignalAugment(data)
        # unknown signals: milder, no assumption that a full circular shift is harmless
        return SignalAugment(data, shift=0.1, dilation=0.1, amplitude=0.2, shear=0.2, corr_noise=0.1, iid_noise=0.05)
    if data.name == "digits":
        return DigitAugment(data)
    size = int(image_size or data.x_train.shape[-1])
    if data.name == "stl10":
        return ImageAugment(data, size)  # the paper's
    return ImageAugment(data, size, scale=(0.2, 1.0))
