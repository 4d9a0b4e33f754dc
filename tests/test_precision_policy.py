"""The shared precision policy (csrc/uniform_rows.cpp, plan_uniform_rows) with the CUDA
glue's options, decided on the host: which rows and operands a kernel gets.

The CUDA kernels are not run here (tests/test_cuda.py does that on a GPU); these tests
hold the decision the glue acts on to the error budget it promises (docs/cuda.md):
exponent error t * 16 * u * max ||z||^2 <= 1e-3 for the operands' unit roundoff u.
"""

import math

import pytest
import torch

from conftest import unit_rows
from pyhypersphere import _C

TF32 = _C.TF32_UNIT_ROUNDOFF
FP32 = _C.FLOAT32_UNIT_ROUNDOFF
BUDGET = 1e-3


def policy(x, queue=None, t=2.0, roundoff=FP32, raw=True, host_read=True):
    return _C._uniform_rows_policy(x, queue, t, roundoff, raw, host_read)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16bit_inputs_near_the_origin_are_raw_operands(dtype):
    # |x| = 1: 16-bit products are exact in float32, so the raw inputs (not the centered
    # rows rounded back to 16 bits) are the operands.
    got = policy(unit_rows(300, 16, seed=1).to(dtype))
    assert got["raw_operands_ok"] and got["finite"]
    assert 2.0 * 16 * FP32 * got["max_input_sq_norm"] <= BUDGET


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16bit_inputs_far_from_the_origin_use_centered_float32_rows(dtype):
    # Uncentered norms ~30^2 * 16: raw operands would miss the budget; centered, the rows
    # are about unit vectors again, computed as float32 with float32-accurate products.
    x = (unit_rows(300, 16, seed=2) + 30.0).to(dtype)
    got = policy(x)
    assert not got["raw_operands_ok"]
    assert 2.0 * 16 * FP32 * got["max_input_sq_norm"] > BUDGET
    assert got["dtype"] == "Float" and got["operand_precision_ok"]
    assert got["max_sq_norm"] < 50.0


def test_float16_edge_of_range_stays_finite_after_centering():
    # Rows at +60000 but for two at -60000: centered, those reach -1.2e5 < -65504 and
    # overflowed when the centered rows were rounded back to float16.  Centered rows
    # stay float32 now; and the raw inputs, exact, are the operands where t allows.
    x = torch.full((64, 8), 60000.0, dtype=torch.float64)
    x[:2] = -60000.0
    x += unit_rows(64, 8, seed=3)
    x = x.half()
    assert torch.isfinite(x).all()
    centered = policy(x, t=1e-9, raw=False)
    assert centered["finite"] and centered["dtype"] == "Float"
    assert math.isfinite(centered["max_sq_norm"]) and centered["max_sq_norm"] > 65504.0**2
    # t = 1e-12: |loss| <= t * mean ||z_i - z_j||^2 ~ 2e-3, too small for float32 sums
    # (loss_too_small_for_float32): float64 rows, never the raw inputs.
    small = policy(x, t=1e-12)
    assert small["finite"] and small["dtype"] == "Double" and not small["raw_operands_ok"]
    # Half the rows at -60000: t * mean d^2 ~ 0.6, and the raw inputs, exact, are the operands.
    halves = x.double()
    halves[:32] = -60000.0 + unit_rows(32, 8, seed=4)
    raw = policy(halves.half(), t=1e-11)
    assert raw["finite"] and raw["raw_operands_ok"]


def test_tf32_falls_back_to_float32_accuracy_then_float64():
    x = unit_rows(200, 8, seed=4, scale=3.0).float()
    # |z|^2 ~ 9: TF32 (2^-11) gives 2 * 16 * 2^-11 * 9 = 0.14 > 1e-3, float32 suffices.
    got = policy(x, roundoff=TF32)
    assert got["dtype"] == "Float" and not got["operand_precision_ok"]
    # Radius 100 (the case): float32 misses the budget too, float64 rows.
    far = unit_rows(200, 8, seed=5, scale=100.0).float()
    got = policy(far, roundoff=TF32)
    assert got["dtype"] == "Double"
    # Near the origin TF32 is fine: 2 * 16 * 2^-11 * |z|^2 <= 1e-3 needs |z|^2 <= 0.064.
    near = unit_rows(200, 8, seed=6, scale=0.2).float()
    got = policy(near, roundoff=TF32)
    assert got["dtype"] == "Float" and got["operand_precision_ok"]


def test_float32_operands_budget_matches_the_formula():
    for scale in (1.0, 30.0, 100.0):
        x = unit_rows(100, 4, seed=7, scale=scale).float()
        got = policy(x, raw=False)
        fits = 2.0 * 16 * FP32 * got["max_sq_norm"] <= BUDGET
        assert (got["dtype"] == "Float") == fits, (scale, got)


def test_without_host_read_the_decision_is_blind_and_the_flag_stays_on_device():
    # CUDA-graph capture: no facts read, float32-accurate operands, non-finite inputs
    # flagged in a device tensor (the glue masks the outputs with it).
    x = unit_rows(50, 4, seed=8).to(torch.bfloat16)
    x[7, 1] = math.inf
    got = policy(x, roundoff=TF32, host_read=False)
    assert got["dtype"] == "Float" and not got["operand_precision_ok"]
    assert not got["raw_operands_ok"]
    flag = got["finite_on_device"]
    assert flag.dtype == torch.bool and flag.dim() == 0 and not flag.item()
    assert got["max_sq_norm"] == 0.0  # unknown: nothing was read
    ok = policy(unit_rows(50, 4, seed=9).float(), host_read=False)
    assert ok["finite_on_device"].item()


def test_nonfinite_inputs_are_reported_with_the_read():
    x = unit_rows(20, 3, seed=10).float()
    x[3, 0] = math.nan
    got = policy(x)
    assert not got["finite"] and not got["finite_on_device"].item()
