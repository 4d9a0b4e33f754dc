"""Where the Triton kernels' tests run: on CPU tensors under the interpreter
(TRITON_INTERPRET=1, set by conftest.py before triton is imported), or compiled on CUDA
tensors when TRITON_INTERPRET=0 on a GPU machine.  Import after pytest.importorskip("triton")."""

import pytest
import torch
import triton

INTERPRET = bool(triton.knobs.runtime.interpret)
DEVICE = "cpu" if INTERPRET else "cuda"
RUNNABLE = pytest.mark.skipif(
    not INTERPRET and not torch.cuda.is_available(),
    reason="needs TRITON_INTERPRET=1 before triton is imported, or a CUDA device",
)


def assert_same_value_error(operator, launcher, args, match=None):
    """The C++ operator on CPU tensors and the Triton launcher on DEVICE (tensors moved
    there) both raise ValueError for `args`, with the same message."""
    with pytest.raises(ValueError, match=match) as want:
        operator(*(a.cpu() if isinstance(a, torch.Tensor) else a for a in args))
    with pytest.raises(ValueError) as got:
        launcher(*(a.to(DEVICE) if isinstance(a, torch.Tensor) else a for a in args))
    assert str(got.value) == str(want.value)
