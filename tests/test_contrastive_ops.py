"""The contrastive losses as PyTorch sees them (torch.compile, modules, second derivatives),
the CPU kernel's determinism and float ISA paths, and the losses' argument errors.  The
operators' contract on every implementation (parts, flags, opcheck, their errors):
test_implementations.py."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import unit_rows
from dense_contrastive import dense_clip, dense_info_nce, dense_nt_xent, value_and_grads
from pyhypersphere import CLIPLoss, InfoNCELoss, NTXentLoss, _C, clip_loss, info_nce_loss, nt_xent_loss


def test_bitwise_reproducible_across_runs_and_threads():
    x, y = unit_rows(1000, 24, seed=5).float(), unit_rows(1000, 24, seed=6).float()
    results = []
    threads = torch.get_num_threads()
    try:
        for n_threads in (threads, 1, threads):
            torch.set_num_threads(n_threads)
            out = []
            for fn in (nt_xent_loss, clip_loss, info_nce_loss):
                xx, yy = x.clone().requires_grad_(), y.clone().requires_grad_()
                loss = fn(xx, yy, 0.1)
                loss.backward()
                out += [loss.detach(), xx.grad, yy.grad]
            results.append(out)
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for u, v in zip(results[0], other):
            assert torch.equal(u, v)


def test_compile_fullgraph():
    torch._dynamo.reset()
    tau = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)

    def loss_fn(x, y, queue, tau):
        xn, yn = torch.nn.functional.normalize(x, dim=1), torch.nn.functional.normalize(y, dim=1)
        return nt_xent_loss(xn, yn, 0.5) + clip_loss(xn, yn, tau) + info_nce_loss(xn, yn, 0.2, queue=queue)

    def dense_fn(x, y, queue, tau):
        xn, yn = torch.nn.functional.normalize(x, dim=1), torch.nn.functional.normalize(y, dim=1)
        return dense_nt_xent(xn, yn, 0.5) + dense_clip(xn, yn, tau) + dense_info_nce(xn, yn, 0.2, queue=queue)

    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    x, y, queue = unit_rows(50, 6, seed=7), unit_rows(50, 6, seed=8), unit_rows(30, 6, seed=9)
    leaves = [t.clone().requires_grad_() for t in (x, y, queue)] + [tau]
    got = compiled(*leaves)
    got_grads = torch.autograd.grad(got, leaves)
    want, want_grads = value_and_grads(dense_fn, x, y, queue, tau)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-10)


def test_modules():
    x, y, queue = unit_rows(40, 5, seed=10), unit_rows(40, 5, seed=11), unit_rows(20, 5, seed=12)
    torch.testing.assert_close(NTXentLoss(0.3)(x, y), dense_nt_xent(x, y, 0.3))
    torch.testing.assert_close(InfoNCELoss(0.2, in_batch=False)(x, y, queue), dense_info_nce(x, y, 0.2, queue, False))
    torch.testing.assert_close(CLIPLoss(0.07)(x, y), dense_clip(x, y, 0.07))
    learned = CLIPLoss(0.07, learn_tau=True).double()
    loss = learned(x, y)
    loss.backward()
    t = learned.logit_scale.detach().clone().requires_grad_()
    want = dense_clip(x, y, 1.0 / t.exp())
    want.backward()
    torch.testing.assert_close(loss.detach(), want.detach())
    torch.testing.assert_close(learned.logit_scale.grad, t.grad)
    assert "learn_tau=True" in repr(learned) and "tau=0.3" in repr(NTXentLoss(0.3))


@pytest.mark.parametrize("name", ["nt_xent", "clip", "info_nce", "moco"])
def test_second_derivatives_match_the_dense_formula(name):
    # create_graph=True: the backward's differentiable form (it raised before).
    x, y, queue = unit_rows(10, 3, seed=13), unit_rows(10, 3, seed=14), unit_rows(7, 3, seed=15)
    fused = {"nt_xent": lambda a, b: nt_xent_loss(a, b, 0.3), "clip": lambda a, b: clip_loss(a, b, 0.2),
             "info_nce": lambda a, b: info_nce_loss(a, b, 0.2, queue=queue),
             "moco": lambda a, b: info_nce_loss(a, b, 0.2, queue=queue, in_batch=False)}[name]
    dense = {"nt_xent": lambda a, b: dense_nt_xent(a, b, 0.3), "clip": lambda a, b: dense_clip(a, b, 0.2),
             "info_nce": lambda a, b: dense_info_nce(a, b, 0.2, queue=queue),
             "moco": lambda a, b: dense_info_nce(a, b, 0.2, queue=queue, in_batch=False)}[name]
    v = unit_rows(10, 3, seed=16)
    hvps = []
    for fn in (fused, dense):
        a, b = x.clone().requires_grad_(), y.clone().requires_grad_()
        ga, gb = torch.autograd.grad(fn(a, b), (a, b), create_graph=True)
        hvps.append(torch.autograd.grad((ga * v).sum() + (gb * v.flip(0)).sum(), (a, b)))
    for got, want in zip(*hvps):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_no_grad_needed_no_graph():
    x, y = unit_rows(10, 3, seed=15), unit_rows(10, 3, seed=16)
    assert not nt_xent_loss(x, y).requires_grad
    with torch.no_grad():
        assert not clip_loss(x.requires_grad_(), y).requires_grad


ISA_CHECK = """
import json, torch
from pyhypersphere import build_info, clip_loss, info_nce_loss, nt_xent_loss
g = torch.Generator().manual_seed(5)
out = {"isa": build_info()["cpu_tile_isa"]}
for n, d in [(2, 1), (67, 5), (300, 19)]:
    x, y = (torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1) for _ in range(2))
    for name, fn in [("nt_xent", nt_xent_loss), ("clip", clip_loss), ("info_nce", info_nce_loss)]:
        x32 = x.float().requires_grad_()
        loss = fn(x32, y.float(), 0.1)
        loss.backward()
        out[f"{name} {n}x{d}"] = [loss.item(), x32.grad.double().tolist(), x.tolist(), y.tolist()]
print(json.dumps(out))
"""


@pytest.mark.parametrize("isa", ["baseline", "avx2"])
def test_every_float_isa_path_matches_float64(isa):
    env = dict(os.environ, PYHYPERSPHERE_CPU_ISA=isa, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", ISA_CHECK], env=env, capture_output=True, text=True, check=True)
    got = json.loads(done.stdout)
    levels = ["baseline", "avx2", "avx512"]
    assert got.pop("isa") == min(isa, _C.build_info()["cpu_tile_isa"], key=levels.index)
    dense = {"nt_xent": dense_nt_xent, "clip": dense_clip, "info_nce": dense_info_nce}
    for key, (loss, grad, x, y) in got.items():
        want, (want_grad,) = value_and_grads(lambda x: dense[key.split()[0]](x, torch.tensor(y, dtype=torch.float64), 0.1),
                                             torch.tensor(x, dtype=torch.float64))
        assert loss == pytest.approx(want.item(), rel=3e-5, abs=3e-5), key
        torch.testing.assert_close(torch.tensor(grad, dtype=torch.float64), want_grad, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------- errors

X = unit_rows(8, 4, seed=17)


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda: nt_xent_loss([[1.0]], X), TypeError, "nt_xent_loss: x must be a torch.Tensor"),
        (lambda: nt_xent_loss(X, X[0]), ValueError, "nt_xent_loss: y must be a 2-D tensor"),
        (lambda: nt_xent_loss(X, X[:5]), ValueError, "nt_xent_loss: y must have the same shape as x"),
        (lambda: nt_xent_loss(X, X.float()), ValueError, "nt_xent_loss: y must have the same dtype as x"),
        (lambda: nt_xent_loss(X.long(), X.long()), ValueError, "nt_xent_loss: x must be a floating-point tensor"),
        (lambda: nt_xent_loss(X[:0], X[:0]), ValueError, "nt_xent_loss: x must have at least one row"),
        (lambda: nt_xent_loss(X, X, tau=0.0), ValueError, "nt_xent_loss: tau must be a positive finite number"),
        (lambda: nt_xent_loss(X, X, tau=float("nan")), ValueError, "tau must be a positive finite number"),
        (lambda: nt_xent_loss(X, X, tau="0.5"), TypeError, "nt_xent_loss: tau must be a number"),
        (lambda: clip_loss(X, X, tau=torch.tensor([0.1, 0.2])), ValueError, "clip_loss: tau must be a number or a one-element"),
        (lambda: clip_loss(X, X, tau=torch.tensor(-0.1)), ValueError, "clip_loss: tau must be a positive finite number"),
        (lambda: clip_loss(X, X[:, :3]), ValueError, "clip_loss: y must have the same shape as x"),
        (lambda: info_nce_loss(X, X, in_batch=False), ValueError, "info_nce_loss: in_batch=False needs a queue"),
        (lambda: info_nce_loss(X, X, queue=X[:, :2]), ValueError, "info_nce_loss: queue must have the same feature dimension as q"),
        (lambda: info_nce_loss(X, X, queue=X.float()), ValueError, "info_nce_loss: queue must have the same dtype as q"),
        (lambda: info_nce_loss(X, X, queue=X.to("meta")), ValueError, "info_nce_loss: queue must be on the same device as q"),
    ],
)
def test_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()
