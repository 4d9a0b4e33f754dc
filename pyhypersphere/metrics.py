"""Alignment and uniformity as evaluation metrics over whole held-out sets.

Exact over all pairs (no subsampling), O(N * d) memory, no autograd graph: a million
features of dimension 128 need a few hundred MB, not the N^2 / 2 = 5 * 10^11 pair terms.
Both return Python floats, computed in float32 (float64 for float64 inputs).
"""

from __future__ import annotations

import contextlib
import math

import torch

from .ops._common import accumulate_dtype, as_float, check_tensor
from .ops.align import DEFAULT_ALPHA, align
from .ops.uniform import DEFAULT_T, uniform_lse

# Rows per alignment chunk: bounds the float32 copy made of float16/bfloat16 inputs.
ALIGN_CHUNK_ROWS = 65536
# Slices of the pair tiles with a progress bar: one bar step per slice.
PROGRESS_PARTS = 64


@contextlib.contextmanager
def _errors_named(function: str, op_label: str):
    """The operators label their argument errors with the loss they serve (e.g.
    "uniform_loss: x must have at least 2 rows"); name the metric that was called."""
    try:
        yield
    except (ValueError, TypeError) as e:
        message = str(e)
        if not message.startswith(op_label + ":"):
            raise
        raise type(e)(function + message[len(op_label) :]) from None


def _check_features(x, name: str, function: str) -> None:
    check_tensor(x, name, function)
    if x.dim() != 2:
        raise ValueError(f"{function}: {name} must be a 2-D tensor of shape [N, d], got shape {tuple(x.shape)}")


@torch.no_grad()
def alignment(x: torch.Tensor, y: torch.Tensor, alpha: float = DEFAULT_ALPHA) -> float:
    """Mean over rows of ||x_i - y_i||^alpha (x_i, y_i: the two views of sample i)."""
    function = "metrics.alignment"
    _check_features(x, "x", function)
    _check_features(y, "y", function)
    if x.shape != y.shape:
        raise ValueError(f"{function}: x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    alpha = as_float(alpha, "alpha", function)
    n = x.shape[0]
    if n == 0:
        raise ValueError(f"{function}: x must have at least one row, got shape {tuple(x.shape)}")
    acc = accumulate_dtype(x.dtype)
    total = 0.0
    for start in range(0, n, ALIGN_CHUNK_ROWS):
        xc = x[start : start + ALIGN_CHUNK_ROWS].to(acc)
        yc = y[start : start + ALIGN_CHUNK_ROWS].to(acc)
        with _errors_named(function, "align_loss"):
            mean, _ = align(xc, yc, alpha, False)
        total += mean.item() * xc.shape[0]
    return total / n


@torch.no_grad()
def uniformity(x: torch.Tensor, t: float = DEFAULT_T, *, progress: bool = False) -> float:
    """log of the mean of exp(-t ||x_i - x_j||^2) over all pairs i < j of x's rows.

    With ``progress`` the pair tiles are summed in PROGRESS_PARTS slices (the operator's
    ``part``/``num_parts``) with a tqdm bar advancing per slice; the slices' log-sum-exps
    are combined with a max shift, so the value equals the one-call value up to rounding.
    """
    function = "metrics.uniformity"
    _check_features(x, "x", function)
    t = as_float(t, "t", function)
    n = x.shape[0]
    if not progress:
        with _errors_named(function, "uniform_loss"):
            lse, _, _ = uniform_lse(x, None, t, True, 0, 1, False, False)
    else:
        from tqdm.auto import tqdm

        parts = []
        for part in tqdm(range(PROGRESS_PARTS), desc=function, unit="part"):
            with _errors_named(function, "uniform_loss"):
                lse_part, _, _ = uniform_lse(x, None, t, True, part, PROGRESS_PARTS, False, False)
            parts.append(lse_part)
        lse = torch.logsumexp(torch.stack(parts), dim=0)
    return lse.item() - math.log(n * (n - 1) // 2)
