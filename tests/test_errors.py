"""Bad input gets an error that names the argument and what was expected."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pyhypersphere import AlignUniformLoss, align_loss, uniform_loss

X = torch.randn(8, 4)


@pytest.mark.parametrize(
    "x,match",
    [
        (torch.randn(8), "x must be a 2-D tensor"),
        (torch.randn(2, 3, 4), "x must be a 2-D tensor"),
        (torch.randn(1, 4), "x must have at least 2 rows"),
        (torch.randn(0, 4), "x must have at least 2 rows"),
        (torch.randn(5, 0), "x must have at least one feature column"),
        (torch.ones(5, 3, dtype=torch.int64), "x must be a floating-point tensor"),
        (torch.ones(5, 3, dtype=torch.bool), "x must be a floating-point tensor"),
        (torch.ones(5, 3, dtype=torch.complex64), "x must be a floating-point tensor"),
        (torch.ones(5, 3).to(torch.float8_e4m3fn), "x must be a floating-point tensor"),
    ],
)
def test_uniform_bad_x(x, match):
    with pytest.raises(ValueError, match=match):
        uniform_loss(x)


@pytest.mark.parametrize("t", [0.0, -1.0, math.inf, math.nan, -math.inf])
def test_uniform_bad_t(t):
    with pytest.raises(ValueError, match="t must be a positive finite number"):
        uniform_loss(X, t)


@pytest.mark.parametrize("t,exc", [("2", TypeError), (None, TypeError), (True, TypeError), (torch.ones(2), ValueError)])
def test_uniform_t_not_a_number(t, exc):
    with pytest.raises(exc, match="t must be a number"):
        uniform_loss(X, t)


def test_uniform_x_not_a_tensor():
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        uniform_loss([[0.0, 1.0], [1.0, 0.0]])


def test_uniform_queue_errors():
    with pytest.raises(ValueError, match="queue must have the same feature dimension as x"):
        uniform_loss(X, queue=torch.randn(5, 3))
    with pytest.raises(ValueError, match="queue must have the same dtype as x"):
        uniform_loss(X, queue=torch.randn(5, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="queue must be a 2-D tensor"):
        uniform_loss(X, queue=torch.randn(5))
    with pytest.raises(ValueError, match="intra_batch=False needs a queue"):
        uniform_loss(X, intra_batch=False)


@pytest.mark.parametrize(
    "x,y,match",
    [
        (torch.randn(8, 4), torch.randn(8, 5), "y must have the same shape as x"),
        (torch.randn(8, 4), torch.randn(7, 4), "y must have the same shape as x"),
        (torch.randn(8), torch.randn(8), "x must be a 2-D tensor"),
        (torch.randn(8, 4), torch.randn(8, 4, dtype=torch.float64), "y must have the same dtype as x"),
        (torch.ones(8, 4, dtype=torch.int32), torch.ones(8, 4, dtype=torch.int32), "x must be a floating-point tensor"),
        (torch.randn(0, 4), torch.randn(0, 4), "x must have at least 1 row"),
    ],
)
def test_align_bad_inputs(x, y, match):
    with pytest.raises(ValueError, match=match):
        align_loss(x, y)


@pytest.mark.parametrize("alpha", [0.0, -2.0, math.inf, math.nan])
def test_align_bad_alpha(alpha):
    with pytest.raises(ValueError, match="alpha must be a positive finite number"):
        align_loss(X, X, alpha)


def test_module_reports_argument():
    with pytest.raises(ValueError, match="y must have the same shape as x"):
        AlignUniformLoss()(X, X[:4])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_mismatch():
    with pytest.raises(ValueError, match="y must be on the same device as x"):
        align_loss(X, X.cuda())
    with pytest.raises(ValueError, match="queue must be on the same device as x"):
        uniform_loss(X, queue=X.cuda())


def test_device_mismatch_with_meta():
    # A mixed-device call reaches the fake kernel, which must raise rather than return
    # an uninitialized tensor on x's device.
    with pytest.raises(ValueError, match="y must be on the same device as x"):
        align_loss(X, X.to("meta"))
    with pytest.raises(ValueError, match="queue must be on the same device as x"):
        uniform_loss(X, queue=X.to("meta"))


def test_numpy_scalars_are_numbers():
    import numpy as np

    torch.testing.assert_close(uniform_loss(X, np.float32(3.0)), uniform_loss(X, 3.0))
    torch.testing.assert_close(align_loss(X, X.flip(0), np.int64(1)), align_loss(X, X.flip(0), 1.0))
    with pytest.raises(TypeError, match="t must be a number"):
        uniform_loss(X, np.bool_(True))


def test_error_path_check_script_passes_here():
    # benchmarks/error_path_check.py (run by benchmarks/gpu_run.sh after a build): C++
    # errors and warnings reach Python in fresh processes, no crash.
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "error_path_check.py"
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("ok  ") >= 3
