"""The Triton path of the supervised contrastive loss (pyhypersphere/triton_kernels/supcon.py:
the contrastive family's lse and two-sided gradient kernels plus O(N d) class sums) against
float64 formulas written here and in dense_contrastive.py, and against the CPU operator.
Under TRITON_INTERPRET=1 (conftest.py) on CPU tensors, the launchers registered for the
CPU key for the loss-level tests; compiled on CUDA with TRITON_INTERPRET=0."""

import pytest
import torch

triton = pytest.importorskip("triton")

from dense_contrastive import (  # noqa: E402
    SUPCON_LABELINGS as LABELINGS, dense_supcon, dense_supcon_rows, supcon_reduction_case, value_and_grads,
)
from implementations import dispatching_to  # noqa: E402
from pyhypersphere import supcon_loss  # noqa: E402
from pyhypersphere.triton_kernels import supcon as tk  # noqa: E402
from triton_device import DEVICE, INTERPRET, RUNNABLE, assert_same_value_error  # noqa: E402

ops = torch.ops.pyhypersphere
pytestmark = RUNNABLE


def rows(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)


def reference(x, labels, scale, g, h):
    """(lse, positive sums, counts, d/dx of sum g lse + h positive), dense float64."""
    n = x.shape[0]
    x = x.clone().requires_grad_()
    s = scale * x @ x.T
    eye = torch.eye(n, dtype=torch.bool)
    lse = s.masked_fill(eye, float("-inf")).logsumexp(1)
    same = (labels[:, None] == labels[None, :]) & ~eye
    positive = (s * same).sum(1)
    (grad,) = torch.autograd.grad((g * lse + h * positive).sum(), x)
    return lse.detach(), positive.detach(), same.sum(1), grad


@pytest.mark.parametrize("n,d,classes", [(5, 3, 2), (70, 20, 7), (130, 33, 40)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_forward_and_backward_against_float64(n, d, classes, dtype):
    x = rows(n, d, seed=n)
    labels = torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(d))
    g, h = torch.rand(n, dtype=torch.float64), torch.randn(n, dtype=torch.float64)
    want = reference(x, labels, 5.0, g, h)
    xd, ld = x.to(dtype).to(DEVICE), labels.to(DEVICE)
    lse, positive, count = tk.supcon_lse(xd, ld, 5.0)
    grad = tk.supcon_lse_backward(xd, ld, 5.0, lse, g.to(DEVICE), h.to(DEVICE))
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(lse.cpu().double(), want[0], rtol=tol, atol=tol)
    torch.testing.assert_close(positive.cpu().double(), want[1], rtol=tol, atol=tol * n)
    assert torch.equal(count.cpu(), want[2])
    torch.testing.assert_close(grad.cpu().double(), want[3], rtol=tol, atol=tol * n)


def test_16bit_inputs_on_16bit_tensor_cores():
    # bf16 rows go to the contrastive kernels as they are (exact products, float32
    # accumulation); the gradient's second product rounds its weights to bf16 (2^-9).
    x = rows(70, 20, seed=10).to(torch.bfloat16)
    labels = torch.randint(0, 7, (70,), generator=torch.Generator().manual_seed(11))
    g, h = torch.rand(70, dtype=torch.float64), torch.randn(70, dtype=torch.float64)
    want = reference(x.double(), labels, 5.0, g, h)
    xd, ld = x.to(DEVICE), labels.to(DEVICE)
    lse, positive, count = tk.supcon_lse(xd, ld, 5.0)
    grad = tk.supcon_lse_backward(xd, ld, 5.0, lse, g.to(DEVICE), h.to(DEVICE))
    assert lse.dtype == positive.dtype == grad.dtype == torch.float32
    torch.testing.assert_close(lse.cpu().double(), want[0], rtol=2e-6, atol=2e-5)
    torch.testing.assert_close(positive.cpu().double(), want[1], rtol=2e-6, atol=2e-5)
    assert torch.equal(count.cpu(), want[2])
    torch.testing.assert_close(grad.cpu().double(), want[3], rtol=0, atol=1e-2 * want[3].abs().max().item())


def test_matches_the_cpu_operator_and_parts_combine():
    x = rows(90, 10, seed=1)
    labels = torch.randint(0, 5, (90,), generator=torch.Generator().manual_seed(2))
    want = ops.supcon_lse(x, labels, 3.0)
    parts = [tk.supcon_lse(x.to(DEVICE), labels.to(DEVICE), 3.0, p, 3) for p in range(3)]
    torch.testing.assert_close(torch.stack([p[0].cpu() for p in parts]).logsumexp(0), want[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sum(p[1].cpu() for p in parts), want[1], rtol=1e-12, atol=1e-10)
    assert torch.equal(sum(p[2].cpu() for p in parts), want[2])
    g, h = torch.rand(90, dtype=torch.float64), torch.rand(90, dtype=torch.float64)
    whole = ops.supcon_lse_backward(x, labels, 3.0, want[0], g, h)
    args = [t.to(DEVICE) for t in (x, labels)] + [3.0] + [t.to(DEVICE) for t in (want[0], g, h)]
    got = sum(tk.supcon_lse_backward(*args, p, 3).cpu() for p in range(3))
    torch.testing.assert_close(got, whole, rtol=1e-10, atol=1e-12)


def test_the_loss_through_the_kernels_matches_the_dense_definition():
    x = rows(40, 8, seed=3)
    labels = torch.arange(40) % 6
    lse, positive, count = tk.supcon_lse(x.to(DEVICE), labels.to(DEVICE), 10.0)
    per_anchor = (lse - positive / count).cpu()
    want, _ = dense_supcon_rows(x, labels, 0.1)
    torch.testing.assert_close(per_anchor, want, rtol=1e-12, atol=1e-12)


def test_nonfinite_inputs_give_nan():
    x = rows(10, 4, seed=4)
    x[2, 1] = float("inf")
    labels = torch.arange(10) % 2
    lse, positive, count = tk.supcon_lse(x.to(DEVICE), labels.to(DEVICE), 1.0)
    assert torch.isnan(lse).all() and torch.isnan(positive).all()
    assert torch.equal(count.cpu(), torch.full((10,), 4))


@pytest.mark.parametrize("case", ["labels shape", "labels dtype", "part", "num_parts"])
def test_bad_input_gets_the_operators_error(case):
    x, labels = rows(6, 3, seed=5), torch.arange(6) % 3
    args = {
        "labels shape": (x, labels[:5], 1.0, 0, 1),
        "labels dtype": (x, labels.int(), 1.0, 0, 1),
        "part": (x, labels, 1.0, 3, 3),
        "num_parts": (x, labels, 1.0, 0, 0),
    }[case]
    assert_same_value_error(ops.supcon_lse, tk.supcon_lse, args)


def test_one_row_has_no_pairs():
    x, labels = rows(1, 3, seed=6), torch.zeros(1, dtype=torch.int64)
    lse, positive, count = tk.supcon_lse(x.to(DEVICE), labels.to(DEVICE), 2.0)
    assert lse.item() == float("-inf") and positive.item() == 0 and count.item() == 0
    g = torch.ones(1, dtype=torch.float64, device=DEVICE)
    assert torch.equal(tk.supcon_lse_backward(x.to(DEVICE), labels.to(DEVICE), 2.0, lse, g, g).cpu(),
                       torch.zeros(1, 3, dtype=torch.float64))


def test_opcheck_on_the_triton_launchers():
    x, labels = rows(9, 4, seed=9).to(DEVICE), (torch.arange(9) % 3).to(DEVICE)
    with dispatching_to("triton-interpreter" if INTERPRET else "gpu"):
        lse, _, _ = ops.supcon_lse(x, labels, 3.0)
        g, h = torch.rand_like(lse), torch.rand_like(lse)
        for args in [(x, labels, 3.0, 0, 1), (x.float().requires_grad_(), labels, 2.0, 1, 2)]:
            torch.library.opcheck(ops.supcon_lse.default, args)
        torch.library.opcheck(ops.supcon_lse_backward.default, (x, labels, 3.0, lse, g, h, 0, 1),
                              test_utils=("test_schema", "test_faketensor"))


# ---------------------------------------------------------------- the public loss on the Triton path


def fused_value_and_grads(labels, tensors, **kwargs):
    """supcon_loss(x, labels, tau=..., ...) on the Triton launchers and its gradients with
    respect to `tensors` (x, and tau when it is a tensor), on DEVICE."""
    leaves = [t.detach().to(DEVICE).requires_grad_(True) for t in tensors]
    probe = kwargs.pop("probe", None)
    with dispatching_to("triton-interpreter" if INTERPRET else "gpu"):
        out = supcon_loss(leaves[0], labels.to(DEVICE), *leaves[1:], **kwargs)
        total = out if probe is None else (out * probe.to(DEVICE)).sum()
        grads = torch.autograd.grad(total, leaves)
    return out.detach().cpu(), [g.cpu() for g in grads]


@pytest.mark.parametrize("n,labeling,dtype", [
    (7, "one positive", torch.float64),  # one tile
    (150, "two positives", torch.float64),  # several blocks, a ragged tail, both stacked halves
    (300, "many positives", torch.float64),  # a class of ~100 rows
    (150, "some without", torch.float64),
    (150, "one positive", torch.float32),  # the static shift (unit rows, tau = 0.1)
])  # fmt: skip
def test_loss_value_and_gradient_against_float64(n, labeling, dtype):
    x = rows(n, 12, seed=n).to(dtype)
    labels = LABELINGS[labeling](n)
    want, (want_grad,) = value_and_grads(lambda x_: dense_supcon(x_, labels, 0.1), x)
    got, (got_grad,) = fused_value_and_grads(labels, [x], tau=0.1)
    assert got.dtype == dtype
    tol = 1e-11 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)
    torch.testing.assert_close(got_grad.double(), want_grad, rtol=0, atol=tol * want_grad.abs().max().item())


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
def test_reductions_weights_and_tau_as_a_tensor(reduction, weighted):
    n = 140
    x, labels, weight, probe = supcon_reduction_case(n, reduction, weighted)
    tau = torch.tensor(0.2, dtype=torch.float64)

    def dense(x_, tau_):
        return (dense_supcon(x_, labels, tau_, reduction, weight) * probe).sum()

    want, want_grads = value_and_grads(dense, x, tau)
    w = None if weight is None else weight.to(DEVICE)
    got, got_grads = fused_value_and_grads(labels, [x, tau], reduction=reduction, weight=w, probe=probe)
    assert got.shape == ((n,) if reduction == "none" else ())
    torch.testing.assert_close((got * probe).sum(), want, rtol=1e-11, atol=1e-11)
    if reduction == "none":
        assert (got[-3:] == 0).all()  # the anchors without positives
    for g, w_ in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w_, rtol=1e-10, atol=1e-11)


def test_no_positive_pair_is_a_clear_error():
    with pytest.raises(ValueError, match="no two rows of x share a label"):
        fused_value_and_grads(torch.arange(6), [rows(6, 3, seed=7)])


@pytest.mark.parametrize("tau,noise", [(0.005, 0.02), (0.02, 0.001), (0.05, 0.02)])
def test_dominating_positive_in_float32(tau, noise):
    # Two views per sample, the second a near-duplicate of the first: one positive per
    # anchor whose logit dominates its row, the loss near 0 while lse and the positive's
    # logit are near 1/tau.  The kernels' lse (its GEMM's rounding of s_ip, and float32's
    # rounding of an lse near 1/tau) and the class sums' positive logit differ by float32's
    # epsilon times 1/tau: the loss is within a few of those of float64 and never below
    # its bound log |P| = 0.  (The CPU kernel takes both from one tile: consistent, its
    # error there is the dense float32 formula's; docs/supcon.md.)
    n = 64
    g = torch.Generator().manual_seed(8)
    z1 = torch.nn.functional.normalize(torch.randn(n, 16, generator=g, dtype=torch.float64), dim=1)
    z2 = torch.nn.functional.normalize(z1 + noise * torch.randn(n, 16, generator=g, dtype=torch.float64), dim=1)
    x = torch.cat([z1, z2]).float()
    labels = torch.cat([torch.arange(n), torch.arange(n)])
    want_rows, _ = dense_supcon_rows(x.double(), labels, tau)
    got_rows, _ = fused_value_and_grads(labels, [x], tau=tau, reduction="none", probe=torch.ones(2 * n))
    assert (got_rows >= 0).all()
    rounding = torch.finfo(torch.float32).eps / tau
    assert (got_rows.double() - want_rows).abs().max().item() <= 4 * rounding
    want, (want_grad,) = value_and_grads(lambda x_: dense_supcon(x_, labels, tau), x)
    got, (got_grad,) = fused_value_and_grads(labels, [x], tau=tau)
    assert abs(got.item() - want.item()) <= 4 * rounding
    # The mean's gradient: the softmax-weighted rows less the positive, each about
    # (1 / tau) / 2n in size, their weights rounded as the lse.
    assert (got_grad.double() - want_grad).abs().max().item() <= 2 * rounding * (1 / tau) / (2 * n)
