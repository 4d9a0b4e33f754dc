"""The operators as PyTorch sees them: opcheck, torch.compile, modules, build facts."""

import pytest
import torch

import pyhypersphere
from conftest import unit_rows
from pyhypersphere import AlignmentLoss, AlignUniformLoss, UniformityLoss, align_loss, uniform_loss
from pyhypersphere.reference import reference_align_loss, reference_uniform_loss


def uniform_samples(device):
    x = unit_rows(70, 5, device=device, seed=1)
    q = unit_rows(33, 5, device=device, seed=2)
    return [
        (x, None, 2.0, True, 0, 1, False, False),
        (x.clone().requires_grad_(), None, 2.0, True, 0, 1, True, False),
        (x.clone().requires_grad_(), q.clone().requires_grad_(), 1.5, True, 0, 1, True, True),
        (x.clone().requires_grad_(), q, 1.5, False, 0, 1, True, False),
        (x, q.clone().requires_grad_(), 1.5, True, 0, 1, False, True),
        (x.clone().requires_grad_(), None, 2.0, True, 1, 3, True, False),
        (x.float(), None, 2.0, True, 0, 1, False, False),
    ]


def test_opcheck_uniform(device):
    for args in uniform_samples(device):
        torch.library.opcheck(torch.ops.pyhypersphere.uniform_lse.default, args)


def test_opcheck_align(device):
    x = unit_rows(20, 3, device=device, seed=1)
    y = unit_rows(20, 3, device=device, seed=2)
    for args in [(x, y, 2.0, False), (x.clone().requires_grad_(), y.clone().requires_grad_(), 1.5, True)]:
        torch.library.opcheck(torch.ops.pyhypersphere.align_loss.default, args)


def test_compile_fullgraph(device):
    torch._dynamo.reset()

    def loss_fn(x, y):
        xn = torch.nn.functional.normalize(x, dim=1)
        yn = torch.nn.functional.normalize(y, dim=1)
        return align_loss(xn, yn) + (uniform_loss(xn) + uniform_loss(yn, t=3.0)) / 2

    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    x = torch.randn(90, 6, dtype=torch.float64, device=device, requires_grad=True)
    y = torch.randn(90, 6, dtype=torch.float64, device=device, requires_grad=True)
    got = compiled(x, y)
    got.backward()
    gx, gy = x.grad.clone(), y.grad.clone()
    x.grad = y.grad = None

    def ref_fn(x, y):
        xn = torch.nn.functional.normalize(x, dim=1)
        yn = torch.nn.functional.normalize(y, dim=1)
        return reference_align_loss(xn, yn) + (reference_uniform_loss(xn) + reference_uniform_loss(yn, 3.0)) / 2

    want = ref_fn(x, y)
    want.backward()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(gx, x.grad)
    torch.testing.assert_close(gy, y.grad)


@pytest.mark.slow
def test_compile_inductor(device):
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: uniform_loss(torch.nn.functional.normalize(x, dim=1)), fullgraph=True)
    x = torch.randn(64, 8, device=device, requires_grad=True)
    got = compiled(x)
    got.backward()
    x2 = x.detach().clone().requires_grad_()
    want = reference_uniform_loss(torch.nn.functional.normalize(x2, dim=1))
    want.backward()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-6)


def test_modules(device):
    x = unit_rows(50, 4, device=device, seed=1)
    y = unit_rows(50, 4, device=device, seed=2)
    torch.testing.assert_close(UniformityLoss(t=3)(x), reference_uniform_loss(x, 3))
    torch.testing.assert_close(AlignmentLoss(alpha=1)(x, y), reference_align_loss(x, y, 1))
    module = AlignUniformLoss(align_w=0.7, unif_w=2.0, alpha=1.5, t=4.0)
    want = 0.7 * reference_align_loss(x, y, 1.5) + 2.0 * (reference_uniform_loss(x, 4.0) + reference_uniform_loss(y, 4.0)) / 2
    torch.testing.assert_close(module(x, y), want)
    assert "align_w=0.7" in repr(module)


def test_defaults_match_reference():
    import inspect

    assert inspect.signature(uniform_loss).parameters["t"].default == 2
    assert inspect.signature(align_loss).parameters["alpha"].default == 2
    assert inspect.signature(AlignUniformLoss).parameters["align_w"].default == 1


def test_build_info():
    info = pyhypersphere.build_info()
    assert set(info) >= {"with_cuda", "cuda_arch_list", "torch_version", "openmp", "num_threads", "cpu_tile_gemm"}
    assert info["torch_version"].split("+")[0] == torch.__version__.split("+")[0]
    assert info["cpu_tile_gemm"] in ("blas", "aten")


def test_cli_info(capsys):
    from pyhypersphere.cli import main

    assert main(["info", "--json"]) == 0
    assert '"with_cuda"' in capsys.readouterr().out


def test_cli_demo_runs_and_agrees(capsys):
    from pyhypersphere.cli import main

    assert main(["demo", "--n", "300", "--d", "16", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: float(line.split()[1]) for line in out.splitlines() if line.startswith(("fused ", "reference "))}
    assert set(rows) == {"fused", "reference"}
    assert abs(rows["fused"] - rows["reference"]) < 1e-5
