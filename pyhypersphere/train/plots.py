"""PNG plots in the run folder (matplotlib's object API: no pyplot, no global backend change).

* ``curves.png``: training loss, held-out alignment and uniformity, probe/k-NN accuracy.
* ``circle.png`` (2-D output only): the paper's picture, test features on S^1 and the
  angle density per class (von Mises kernel density estimate).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import List, Optional

import torch


class PlotsUnavailable(RuntimeError):
    pass


def _figure(width, height, layout=None):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise PlotsUnavailable("plots need matplotlib: pip install matplotlib (or pass --no-plots)") from e
    fig = Figure(figsize=(width, height), dpi=110, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, bbox_inches="tight")
    tmp.replace(path)


def training_curves(history: List[dict], path, title: str = "") -> Optional[Path]:
    fig = curves_figure(history, title)
    if fig is None:
        return None
    path = Path(path)
    _save(fig, path)
    return path


def curves_figure(history: List[dict], title: str = ""):
    """The figure of ``training_curves`` (None without an epoch row)."""
    rows = [h for h in history if "epoch" in h]
    if not rows:
        return None
    fig = _figure(16, 3.6, layout="constrained")  # the figure title clear of the panels' titles
    axes = fig.subplots(1, 4)
    ep = [h["epoch"] for h in rows]

    def series(key):
        pts = [(h["epoch"], h[key]) for h in rows if h.get(key) is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    axes[0].plot(ep, [h["train_loss"] for h in rows], marker=".")
    axes[0].set_title("training loss")
    for ax, key, label in (
        (axes[1], "align", "alignment (lower is better)"),
        (axes[2], "uniform", "uniformity (lower is better)"),
    ):
        x, y = series(key)
        ax.plot(x, y, marker=".", label="held out")
        xt, yt = series("train_" + key)
        ax.plot(xt, yt, marker=".", alpha=0.6, label="training batches")
        ax.set_title(label)
        ax.legend(fontsize=8)
    for key, label in (
        ("linear_probe_acc", "linear, penultimate"),
        ("knn_acc", "k-NN, penultimate"),
        ("linear_probe_acc_output", "linear, output"),
        ("knn_acc_output", "k-NN, output"),
    ):
        x, y = series(key)
        if x:
            axes[3].plot(x, y, marker=".", label=label)
    axes[3].set_title("held-out accuracy")
    axes[3].legend(fontsize=8)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return fig


def _vm_density(angles: torch.Tensor, grid: torch.Tensor, kappa: float = 40.0) -> torch.Tensor:
    """Von Mises kernel density estimate of ``angles`` on ``grid`` (both in radians)."""
    if angles.numel() == 0:
        return torch.zeros_like(grid)
    log_i0 = kappa + math.log(1.0 / math.sqrt(2 * math.pi * kappa))  # I0(k) ~ e^k / sqrt(2 pi k)
    logk = kappa * torch.cos(grid[:, None] - angles[None, :]) - log_i0 - math.log(2 * math.pi)
    return torch.exp(logk).mean(dim=1)


def circle(features: torch.Tensor, labels: torch.Tensor, class_names, path, title: str = "") -> Path:
    """Features on S^1: a scatter on the circle and the angle density of each class."""
    path = Path(path)
    _save(circle_figure(features, labels, class_names, title), path)
    return path


def circle_figure(features: torch.Tensor, labels: torch.Tensor, class_names, title: str = ""):
    """The figure of ``circle``: every feature on the unit circle itself (classes overlap
    where the encoder mixes them; the per-class panels show each class's angles)."""
    x = torch.nn.functional.normalize(features.float(), dim=1)
    theta = torch.atan2(x[:, 1], x[:, 0])
    grid = torch.linspace(-math.pi, math.pi, 361)
    classes = list(range(len(class_names)))
    ncls = len(classes)
    cols = min(ncls, 5)
    crow = math.ceil(ncls / cols)
    fig = _figure(3.0 * (cols + 2), 3.0 * max(crow, 1) + 0.4, layout="constrained")
    gs = fig.add_gridspec(max(crow, 1), cols + 2)
    ax = fig.add_subplot(gs[:, :2])
    cmap = _cmap(ncls)
    t = torch.linspace(0, 2 * math.pi, 200)
    ax.plot(torch.cos(t), torch.sin(t), color="0.8", lw=1)
    for c in classes:
        m = labels == c
        ax.scatter(torch.cos(theta[m]), torch.sin(theta[m]), s=6, alpha=0.5, color=cmap(c), label=str(class_names[c]))
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("held-out features on the unit circle")
    ax.legend(fontsize=7, markerscale=3, loc="center", ncol=2, frameon=False)
    for i, c in enumerate(classes):
        sub = fig.add_subplot(gs[i // cols, 2 + i % cols])
        dens = _vm_density(theta[labels == c], grid)
        sub.fill_between(grid, dens, color=cmap(c), alpha=0.6)
        sub.set_xlim(-math.pi, math.pi)
        sub.set_xticks([-math.pi, 0, math.pi], ["-pi", "0", "pi"])
        sub.set_yticks([])
        sub.set_title(f"class {class_names[c]}", fontsize=9)
    fig.suptitle((title + ": " if title else "") + "features on S^1 and their angle density per class (von Mises KDE)")
    return fig


def _cmap(n):
    from matplotlib import colormaps

    cm = colormaps["tab10" if n <= 10 else "tab20"]
    return lambda i: cm(i % cm.N)
