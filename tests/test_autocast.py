"""Autocast: the losses return float32 under autocast, as the reference formula under
CUDA autocast (pdist and norm are on autocast's float32 list); csrc/autocast.cpp.
The CPU rule here; the CUDA rule in tests/test_cuda.py (test_cuda_autocast)."""

import math

import pytest
import torch

from conftest import dense_uniform_loss, unit_rows
from pyhypersphere import align_loss, uniform_loss
from pyhypersphere.reference import reference_align_loss


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_uniform_loss_is_float32_under_cpu_autocast(dtype):
    x = unit_rows(300, 16, seed=1).to(dtype).requires_grad_()
    want = dense_uniform_loss(x.detach().double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        # As a user would: features from a Linear, which autocast runs in bfloat16.
        loss = uniform_loss(x)
    assert loss.dtype == torch.float32
    # float32 accuracy, not bfloat16's three digits (-2.46875 for -2.4650 before).
    assert abs(loss.item() - want.item()) <= 2e-5 * abs(want.item())
    loss.backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad).all()


def test_uniform_loss_of_autocast_features_matches_float64():
    lin = torch.nn.Linear(32, 16)
    inp = torch.randn(200, 32, generator=torch.Generator().manual_seed(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats = lin(inp)  # bfloat16: linear is on CPU autocast's lower-precision list
        loss = uniform_loss(feats, queue=feats[:50].detach())
    assert feats.dtype == torch.bfloat16 and loss.dtype == torch.float32
    x = feats.detach().double()
    rows = torch.cat([x, x[:50]])
    d2 = (x[:, None, :] - rows[None, :, :]).pow(2).sum(-1)
    keep = torch.ones(200, 250, dtype=torch.bool).triu(1)
    keep[:, 200:] = True
    want = torch.logsumexp(-2.0 * d2[keep], 0) - math.log(keep.sum().item())
    assert abs(loss.item() - want.item()) <= 2e-5 * abs(want.item())


def test_align_loss_is_float32_under_cpu_autocast():
    x = unit_rows(100, 8, seed=3).to(torch.bfloat16).requires_grad_()
    y = unit_rows(100, 8, seed=4).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = align_loss(x, y)
    want = reference_align_loss(x.detach().double(), y.double())
    assert loss.dtype == torch.float32
    assert abs(loss.item() - want.item()) <= 1e-6 * abs(want.item())
    loss.backward()
    assert x.grad.dtype == torch.bfloat16


def test_without_autocast_the_loss_keeps_the_input_dtype():
    x = unit_rows(100, 8, seed=5).to(torch.bfloat16)
    assert uniform_loss(x).dtype == torch.bfloat16
    assert align_loss(x, x.flip(0)).dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert uniform_loss(x.double()).dtype == torch.float64  # float64 kept
