"""The table of implementations (pyhypersphere/gpu_backend.py): one choice per operator and
device, PYHYPERSPHERE_GPU_BACKEND applied to every operator, no silent override, and the
same table in `info`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pyhypersphere
from pyhypersphere import gpu_backend
from pyhypersphere.cli import main

WITH_CPP_CUDA = [op for op, has in gpu_backend.OPS.items() if has]
TRITON_ONLY = [op for op, has in gpu_backend.OPS.items() if not has]


def test_every_registered_operator_is_in_the_table():
    registered = {name.split("::")[1] for name in torch._C._dispatch_get_registrations_for_dispatch_key("CPU")
                  if name.startswith("pyhypersphere::")}  # fmt: skip
    assert set(gpu_backend.OPS) == registered
    assert set(gpu_backend.IMPLEMENTATIONS) == set(gpu_backend.OPS)
    for op, by_device in gpu_backend.IMPLEMENTATIONS.items():
        assert by_device["cpu"] == "cpu"
        assert by_device["cuda"] in ("cuda", "triton", "none")


@pytest.mark.parametrize("requested,with_cuda,has_triton,cpp_op,triton_op", [
    ("auto", True, True, "triton", "triton"),
    ("auto", True, False, "cuda", "none"),
    ("auto", False, True, "triton", "triton"),
    ("auto", False, False, "none", "none"),
    ("cuda", True, True, "cuda", "none"),
    ("triton", True, True, "triton", "triton"),
    ("triton", False, False, "none", "none"),
])  # fmt: skip
def test_the_backend_choice_applies_to_every_operator(requested, with_cuda, has_triton, cpp_op, triton_op):
    for op in WITH_CPP_CUDA:
        assert gpu_backend.choose_for_op(op, requested, with_cuda, has_triton)[0] == cpp_op
    for op in TRITON_ONLY:
        backend, reason = gpu_backend.choose_for_op(op, requested, with_cuda, has_triton)
        assert backend == triton_op, (op, reason)
        if requested == "cuda":  # said, not silently replaced by Triton
            assert f"{op} has no C++ CUDA kernel" in reason


def test_only_the_table_registers_kernels_for_cuda_tensors():
    """The C++ CUDA kernels register under their own namespace; gpu_backend alone registers
    pyhypersphere::<op> for the CUDA key, so no registration silently overrides another."""
    root = Path(__file__).resolve().parents[1] / "csrc"
    sources = [p for p in root.rglob("*") if p.suffix in (".cpp", ".cu", ".h", ".cuh")]
    assert sources
    for path in sources:
        assert "TORCH_LIBRARY_IMPL(pyhypersphere, CUDA" not in path.read_text(), path


def test_an_operator_without_an_implementation_raises_a_clear_error():
    fail = gpu_backend._unavailable("contrastive_lse", "PYHYPERSPHERE_GPU_BACKEND=cuda but ...")
    with pytest.raises(RuntimeError, match="no implementation of contrastive_lse for CUDA tensors: "
                                           "PYHYPERSPHERE_GPU_BACKEND=cuda"):  # fmt: skip
        fail(torch.zeros(2, 2))


def test_a_requested_backend_reaches_every_operator_in_a_fresh_process():
    script = ("import json, torch, pyhypersphere\n"
              "from pyhypersphere import gpu_backend\n"
              "print(json.dumps([gpu_backend.IMPLEMENTATIONS, {op: torch._C._dispatch_has_kernel_for_dispatch_key("
              "f'pyhypersphere::{op}', 'CUDA') for op in gpu_backend.OPS}]))\n")  # fmt: skip
    env = dict(os.environ, PYHYPERSPHERE_GPU_BACKEND="cuda")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    table, has_cuda_kernel = json.loads(done.stdout)
    with_cuda = bool(pyhypersphere.build_info()["with_cuda"])
    for op in WITH_CPP_CUDA:
        assert table[op]["cuda"] == ("cuda" if with_cuda else "none")
    for op in TRITON_ONLY:
        assert table[op]["cuda"] == "none"
        assert has_cuda_kernel[op]  # the clear error, not torch's "could not run"


def test_info_prints_the_table(capsys):
    assert main(["info", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["implementations"] == gpu_backend.IMPLEMENTATIONS
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    for op, by_device in gpu_backend.IMPLEMENTATIONS.items():
        assert f"    {op}: cpu={by_device['cpu']}, cuda={by_device['cuda']}\n" in text
