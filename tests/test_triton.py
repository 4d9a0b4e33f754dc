"""The Triton uniformity kernel's own machinery (pyhypersphere/triton_kernels) and the GPU
backend's choice.

TRITON_INTERPRET=1 (set in conftest.py before triton is imported) runs the kernels on CPU
tensors through numpy; on a GPU machine with TRITON_INTERPRET=0 the same tests run compiled
on CUDA tensors.  The operator's contract (values, gradients, flags, parts, non-finite and
bad input), which every implementation meets, is tested in test_implementations.py; here
the column split and its merge.  The GPU-only checks (tl.dot operand types, registers,
spills, tensor-core instructions) are `python -m pyhypersphere.triton_kernels.compile_check`, run by .ci/run.
"""

import pytest
import torch

triton = pytest.importorskip("triton")

import pyhypersphere  # noqa: E402
from pyhypersphere import gpu_backend  # noqa: E402
from pyhypersphere import triton_kernels as tk  # noqa: E402
from implementations import rows  # noqa: E402
from triton_device import DEVICE, RUNNABLE  # noqa: E402

pytestmark = RUNNABLE


def test_column_split_merge_and_bitwise_reproducibility():
    # Few rows, many columns (a queue shape): the columns split over programs and merge.
    x, queue = rows(10, 16, torch.float32, 12).to(DEVICE), rows(300, 16, torch.float32, 13).to(DEVICE)
    one = tk.uniform_lse(x, queue, 2.0, True, 0, 1, True, True, col_splits=1)
    split = tk.uniform_lse(x, queue, 2.0, True, 0, 1, True, True, col_splits=3)
    again = tk.uniform_lse(x, queue, 2.0, True, 0, 1, True, True, col_splits=3)
    for a, b, c in zip(one, split, again):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)
        assert torch.equal(b, c)


# ---------------------------------------------------------------- dispatch


@pytest.mark.parametrize("requested,with_cuda,has_triton,backend", [
    ("auto", True, True, "triton"),
    ("auto", True, False, "cuda"),
    ("auto", False, True, "triton"),
    ("auto", False, False, "none"),
    ("cuda", True, True, "cuda"),
    ("cuda", False, True, "none"),
    ("triton", True, True, "triton"),
    ("triton", True, False, "none"),
])
def test_backend_choice(requested, with_cuda, has_triton, backend):
    chosen, reason = gpu_backend.choose(requested, with_cuda, has_triton)
    assert chosen == backend and reason


def test_backend_choice_rejects_unknown_names():
    with pytest.raises(ValueError, match="PYHYPERSPHERE_GPU_BACKEND must be one of auto, cuda, triton"):
        gpu_backend.choose("tritonn", False, True)


def test_build_info_names_the_gpu_backend_and_registers_it():
    info = pyhypersphere.build_info()
    assert info["gpu_backend"] == gpu_backend.BACKEND and info["gpu_backend_reason"] == gpu_backend.REASON
    has_cuda_kernel = torch._C._dispatch_has_kernel_for_dispatch_key("pyhypersphere::uniform_lse", "CUDA")
    assert has_cuda_kernel == (info["gpu_backend"] != "none")


def test_tf32_rule_survives_mixed_legacy_and_new_settings():
    # torch 2.9+ raises in torch.get_float32_matmul_precision() once both the legacy
    # (allow_tf32) and the new (fp32_precision) settings were used (seen on the GPU
    # machine, torch 2.11); the launcher reads the CUDA matmul setting itself.
    from pyhypersphere._matmul_precision import cuda_matmul_allows_tf32

    matmul = torch.backends.cuda.matmul
    if not hasattr(matmul, "fp32_precision"):
        pytest.skip("torch before 2.9 has only allow_tf32")
    old = matmul.fp32_precision
    try:
        matmul.allow_tf32 = True  # legacy
        assert cuda_matmul_allows_tf32()
        matmul.fp32_precision = "ieee"  # new
        assert not cuda_matmul_allows_tf32()
        matmul.fp32_precision = "tf32"
        assert cuda_matmul_allows_tf32()
    finally:
        matmul.fp32_precision = old


def test_plan_without_host_read_flags_nonfinite_rows_on_the_device():
    # The CUDA-graph-capture path: no device-to-host read, the decision made blind, the
    # finiteness fact left on the device for the launcher to mask its outputs with.
    x = torch.randn(6, 3)
    for bad, want in ((False, True), (True, False)):
        if bad:
            x[2, 1] = float("inf")
        z, sq, finite, operand_ok, raw_ok, finite_dev = pyhypersphere._C._plan_uniform_rows(
            x, None, 2.0, pyhypersphere._C.FLOAT32_UNIT_ROUNDOFF, raw_16bit_operands=True, host_read=False)
        assert finite and not raw_ok and finite_dev.dim() == 0 and bool(finite_dev) == want
        assert z.shape == x.shape and sq.shape == (6,)
