"""Encoders.  Each returns ``(penultimate, output)``: the last hidden layer (what the paper
calls fc7 for SmallAlexNet) and the L2-normalized output, a point on S^{feature_dim - 1}."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import Data


class Encoder(nn.Module):
    """A trunk producing the penultimate features and a linear head onto the sphere."""

    def __init__(self, trunk: nn.Module, hidden: int, feature_dim: int):
        super().__init__()
        self.trunk = trunk
        self.head = nn.Linear(hidden, feature_dim)
        self.hidden_dim = hidden
        self.feature_dim = feature_dim

    def forward(self, x: torch.Tensor):
        h = self.trunk(x)
        return h, F.normalize(self.head(h), dim=1)


class _GlobalPool1d(nn.Module):
    def forward(self, h):  # mean and max over time: shift invariant
        return torch.cat([h.mean(dim=2), h.amax(dim=2)], dim=1)


def conv1d_trunk(width: int = 64, hidden: int = 128) -> nn.Module:
    """A small 1-D CNN with circular padding (MNIST-1D's translations are circular)."""
    w = width

    def block(cin, cout, k, stride):
        return [
            nn.Conv1d(cin, cout, k, stride=stride, padding=k // 2, padding_mode="circular", bias=False),
            nn.BatchNorm1d(cout),
            nn.ReLU(inplace=True),
        ]

    return nn.Sequential(
        nn.Unflatten(1, (1, -1)),  # [B, L] -> [B, 1, L]
        *block(1, w, 5, 1),
        *block(w, 2 * w, 3, 2),
        *block(2 * w, 2 * w, 3, 2),
        _GlobalPool1d(),
        nn.Linear(4 * w, hidden, bias=False),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
    )


def conv2d_trunk(channels: int, width: int = 32, hidden: int = 128) -> nn.Module:
    """A small 2-D CNN for any image size (global average pooling at the end)."""
    w = width

    def block(cin, cout, stride):
        return [
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        ]

    return nn.Sequential(
        *block(channels, w, 1),
        *block(w, 2 * w, 2),
        *block(2 * w, 4 * w, 2),
        *block(4 * w, 4 * w, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4 * w, hidden, bias=False),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
    )


def small_alexnet_trunk(channels: int = 3, image_size: int = 64) -> nn.Module:
    """Wang & Isola's SmallAlexNet up to fc7 (4096 units); 64x64 inputs as in the paper."""
    layers = []
    cin = channels
    for cout, pool in ((96, True), (192, True), (384, False), (384, False), (192, True)):
        layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        if pool:
            layers.append(nn.MaxPool2d(3, 2))
        cin = cout
    side = image_size
    for _ in range(3):
        side = (side - 3) // 2 + 1
    if side < 1:
        raise ValueError(f"small_alexnet needs images of at least 15x15, got {image_size}")
    layers += [
        nn.Flatten(),
        nn.Linear(192 * side * side, 4096, bias=False),  # fc6
        nn.BatchNorm1d(4096),
        nn.ReLU(inplace=True),
        nn.Linear(4096, 4096, bias=False),  # fc7
        nn.BatchNorm1d(4096),
        nn.ReLU(inplace=True),
    ]
    return nn.Sequential(*layers)


def mlp_trunk(in_dim: int, hidden: int = 256) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_dim, hidden, bias=False),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, hidden, bias=False),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
    )


ENCODERS = ("conv1d", "conv2d", "small_alexnet", "mlp")


def resolve_name(name: str, data: Data, image_size: int) -> str:
    if name == "auto":
        return "conv1d" if data.kind == "signal" else ("small_alexnet" if _side(data, image_size) >= 64 else "conv2d")
    return name


def build(name: str, data: Data, feature_dim: int, image_size: int) -> Encoder:
    name = resolve_name(name, data, image_size)
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; choose one of {', '.join(ENCODERS)}")
    if name == "conv1d":
        if data.kind != "signal":
            raise ValueError("encoder conv1d needs 1-D signals")
        return Encoder(conv1d_trunk(), 128, feature_dim)
    if name == "mlp":
        if data.kind == "signal":
            in_dim = int(data.x_train.shape[1])
        else:
            in_dim = data.channels * _side(data, image_size) ** 2
        return Encoder(mlp_trunk(in_dim), 256, feature_dim)
    if data.kind != "image":
        raise ValueError(f"encoder {name} needs images")
    if name == "conv2d":
        return Encoder(conv2d_trunk(data.channels), 128, feature_dim)
    return Encoder(small_alexnet_trunk(data.channels, _side(data, image_size)), 4096, feature_dim)


def _side(data: Data, image_size: int) -> int:
    """The side length the encoder sees (after cropping/resizing)."""
    return int(data.eval_size) if data.eval_size is not None else int(data.x_train.shape[-1])
