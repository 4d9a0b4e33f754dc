"""The trainer's figures: readable layout, and features drawn where they are (on S^1)."""

import math

import pytest
import torch

pytest.importorskip("matplotlib")

from pyhypersphere.train import plots  # noqa: E402


def _history(epochs=3):
    return [
        {
            "epoch": e,
            "train_loss": -1.0 - e,
            "train_align": 0.5,
            "train_uniform": -3.0,
            "align": 0.4,
            "uniform": -3.1,
            "linear_probe_acc": 0.5,
            "knn_acc": 0.4,
            "linear_probe_acc_output": 0.45,
            "knn_acc_output": 0.35,
        }
        for e in range(1, epochs + 1)
    ]


def _extent(fig, artist):
    return artist.get_window_extent(fig.canvas.get_renderer())


def test_curves_title_does_not_touch_the_panel_titles():
    fig = plots.curves_figure(_history(), "mnist1d, align_uniform, conv1d, seed 0")
    fig.canvas.draw()
    title = _extent(fig, fig._suptitle)
    for ax in fig.axes:
        panel = _extent(fig, ax.title)
        assert panel.y1 < title.y0, (ax.get_title(), panel, title)


def test_circle_draws_every_feature_on_the_unit_circle():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(60, 2, generator=g) * 5  # any norm: drawn normalized
    labels = torch.arange(60) % 3
    fig = plots.circle_figure(features, labels, ["a", "b", "c"], "run")
    scatter = fig.axes[0].collections
    assert len(scatter) == 3  # one per class
    points = torch.cat([torch.as_tensor(c.get_offsets().data, dtype=torch.float64) for c in scatter])
    assert points.shape == (60, 2)
    torch.testing.assert_close(points.norm(dim=1), torch.ones(60, dtype=torch.float64), rtol=0, atol=1e-6)
    # and at the features' angles
    theta = torch.atan2(points[:, 1], points[:, 0]).sort().values
    want = torch.atan2(features[:, 1], features[:, 0]).double().sort().values
    torch.testing.assert_close(theta, want, rtol=0, atol=1e-5)
    assert "angle density per class" in fig._suptitle.get_text()


def test_circle_title_does_not_touch_the_panel_titles():
    labels = torch.arange(40) % 10
    features = torch.stack([torch.cos(labels * 0.6), torch.sin(labels * 0.6)], dim=1)
    fig = plots.circle_figure(features, labels, [str(i) for i in range(10)], "mnist1d, seed 0")
    fig.canvas.draw()
    title = _extent(fig, fig._suptitle)
    for ax in fig.axes:
        assert _extent(fig, ax.title).y1 < title.y0, ax.get_title()
    assert math.isclose(fig.axes[0].get_aspect(), 1.0)
