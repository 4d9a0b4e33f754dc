"""pyhypersphere.metrics against the paper's formulas on sets small enough for them."""

import pytest
import torch
import torch.nn.functional as F

from pyhypersphere import metrics
from pyhypersphere.reference import (
    logsumexp_uniform_loss,
    reference_align_loss,
    reference_uniform_loss,
)


def _features(n, d, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1).to(dtype)


@pytest.mark.parametrize("alpha", [1.0, 2.0, 3.0])
def test_alignment_matches_reference(alpha):
    x, y = _features(500, 16, seed=1), _features(500, 16, seed=2)
    value = metrics.alignment(x, y, alpha)
    assert isinstance(value, float)
    assert value == pytest.approx(reference_align_loss(x, y, alpha).item(), rel=1e-12)


def test_alignment_spans_several_chunks(monkeypatch):
    # A chunk size that does not divide N: the last chunk is short and weighted by its rows.
    monkeypatch.setattr(metrics, "ALIGN_CHUNK_ROWS", 128)
    x, y = _features(1000, 8, seed=3), _features(1000, 8, seed=4)
    assert metrics.alignment(x, y) == pytest.approx(reference_align_loss(x, y).item(), rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_alignment_of_low_precision_inputs_is_accumulated_in_float32(dtype):
    x, y = _features(3000, 32, seed=5, dtype=dtype), _features(3000, 32, seed=6, dtype=dtype)
    expected = reference_align_loss(x.double(), y.double()).item()  # the same rounded inputs
    assert metrics.alignment(x, y) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("n", [2, 3, 65, 300, 2100])
def test_uniformity_matches_reference(n):
    x = _features(n, 12, seed=n)
    value = metrics.uniformity(x, 2.0)
    assert isinstance(value, float)
    assert value == pytest.approx(reference_uniform_loss(x, 2.0).item(), rel=1e-10)


def test_uniformity_is_finite_where_the_reference_underflows():
    x = 100.0 * _features(200, 8, seed=7)  # every pair's potential exp(-2 ||.||^2) underflows
    assert reference_uniform_loss(x).item() == float("-inf")
    assert metrics.uniformity(x) == pytest.approx(logsumexp_uniform_loss(x).item(), rel=1e-10)


@pytest.mark.parametrize("n", [3, 300, 2100])
def test_uniformity_with_progress_equals_one_call(n, capsys):
    x = _features(n, 12, seed=10 + n)
    with_bar = metrics.uniformity(x, 2.0, progress=True)
    assert with_bar == pytest.approx(metrics.uniformity(x, 2.0), rel=1e-12)
    assert with_bar == pytest.approx(logsumexp_uniform_loss(x, 2.0).item(), rel=1e-10)
    bar = capsys.readouterr().err
    assert f"{metrics.PROGRESS_PARTS}/{metrics.PROGRESS_PARTS}" in bar


def test_uniformity_of_float32_features_with_progress():
    x = _features(1200, 64, seed=11, dtype=torch.float32)
    expected = logsumexp_uniform_loss(x.double(), 2.0).item()
    assert metrics.uniformity(x, progress=True) == pytest.approx(expected, rel=1e-5)
    assert metrics.uniformity(x) == pytest.approx(expected, rel=1e-5)


def test_metrics_compute_no_gradient_even_for_inputs_that_require_one(monkeypatch):
    """No autograd graph and no fused gradient (it would triple the work)."""
    calls = []

    def spy(original):
        def call(*args):
            calls.append((torch.is_grad_enabled(), args[-1]))
            return original(*args)

        return call

    monkeypatch.setattr(metrics, "uniform_lse", spy(metrics.uniform_lse))
    monkeypatch.setattr(metrics, "align", spy(metrics.align))
    x = _features(50, 4, seed=12).requires_grad_(True)
    y = _features(50, 4, seed=13).requires_grad_(True)
    metrics.uniformity(x)
    metrics.uniformity(x, progress=True)
    metrics.alignment(x, y)
    assert len(calls) == 1 + metrics.PROGRESS_PARTS + 1
    assert all(call == (False, False) for call in calls), calls


def test_metric_argument_errors():
    with pytest.raises(ValueError, match="alignment: x and y must have the same shape"):
        metrics.alignment(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="uniformity: x must be a 2-D tensor"):
        metrics.uniformity(torch.randn(4))
    with pytest.raises(TypeError, match="uniformity: x must be a torch.Tensor"):
        metrics.uniformity([[0.0, 1.0], [1.0, 0.0]])


@pytest.mark.parametrize("progress", [False, True])
def test_metric_errors_from_the_operator_name_the_metric(progress):
    # The operators label their checks "uniform_loss:" / "align_loss:"; a metric's caller
    # must read the name of the function they called.
    cases = [
        (lambda: metrics.uniformity(torch.randn(1, 3), progress=progress), "x must have at least 2 rows"),
        (lambda: metrics.uniformity(torch.ones(4, 3, dtype=torch.int64), progress=progress), "floating-point"),
        (lambda: metrics.uniformity(torch.randn(4, 3), t=-1.0, progress=progress), "t must be a positive finite"),
    ]
    for call, what in cases:
        with pytest.raises(ValueError) as info:
            call()
        assert str(info.value).startswith("metrics.uniformity: ") and what in str(info.value), str(info.value)
        assert "uniform_loss" not in str(info.value)
    with pytest.raises(ValueError) as info:
        metrics.alignment(torch.randn(4, 3), torch.randn(4, 3), alpha=0.0)
    assert str(info.value).startswith("metrics.alignment: alpha must be a positive finite number"), str(info.value)
