"""supcon_loss (Khosla et al.'s L_out) against the dense float64 formula written in
dense_contrastive.py: values and gradients, labels with 1, 2 and many positives, anchors
without positives, weights, every reduction, tau as a tensor; the operator's parts and
opcheck, autocast, torch.compile, chunked_backward, the module and the errors."""

import pytest
import torch

from conftest import unit_rows
from dense_contrastive import SUPCON_LABELINGS as LABELINGS
from dense_contrastive import dense_supcon, labels_with, supcon_reduction_case, value_and_grads
from pyhypersphere import SupConLoss, supcon_loss
from pyhypersphere.large_batch import chunked_backward

ops = torch.ops.pyhypersphere


@pytest.mark.parametrize("n", [7, 150, 333])  # one tile; several blocks with ragged edges
@pytest.mark.parametrize("labeling", sorted(LABELINGS))
def test_value_and_gradient_match_the_dense_formula(n, labeling):
    x = unit_rows(n, 12, seed=n)
    labels = LABELINGS[labeling](n)
    want, (want_grad,) = value_and_grads(lambda x_: dense_supcon(x_, labels, 0.1), x)
    got, (got_grad,) = value_and_grads(lambda x_: supcon_loss(x_, labels, 0.1), x)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
def test_reductions_and_weights(reduction, weighted):
    n = 140
    x, labels, weight, probe = supcon_reduction_case(n, reduction, weighted)

    def dense(x_):
        return (dense_supcon(x_, labels, 0.2, reduction, weight) * probe).sum()

    def fused(x_):
        out = supcon_loss(x_, labels, 0.2, reduction=reduction, weight=weight)
        assert out.shape == ((n,) if reduction == "none" else ())
        return (out * probe).sum()

    want, (want_grad,) = value_and_grads(dense, x)
    got, (got_grad,) = value_and_grads(fused, x)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-10, atol=1e-12)


def test_none_is_in_row_order_and_zero_without_positives():
    x = unit_rows(9, 4, seed=5)
    labels = torch.tensor([0, 1, 0, 2, 1, 7, 0, 2, 1])  # row 5 has no positive
    got = supcon_loss(x, labels, 0.5, reduction="none")
    want = dense_supcon(x, labels, 0.5, "none")
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert got[5] == 0


def test_tau_tensor_gets_its_gradient():
    x = unit_rows(60, 6, seed=6)
    labels = labels_with(60, 2)
    tau = torch.tensor(0.15, dtype=torch.float64)
    want, want_grads = value_and_grads(lambda x_, t_: dense_supcon(x_, labels, t_), x, tau)
    got, got_grads = value_and_grads(lambda x_, t_: supcon_loss(x_, labels, t_), x, tau)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_float32_close_to_float64():
    x = unit_rows(500, 32, seed=7)
    labels = labels_with(500, 3)
    want, (want_grad,) = value_and_grads(lambda x_: dense_supcon(x_, labels, 0.07), x)
    x32 = x.float().requires_grad_()
    got = supcon_loss(x32, labels, 0.07)
    got.backward()
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=2e-5, atol=0)
    torch.testing.assert_close(x32.grad.double(), want_grad, rtol=0, atol=2e-5 * want_grad.abs().max().item())


def test_autocast_gives_a_float32_loss():
    x = unit_rows(80, 16, seed=8).float().requires_grad_()
    labels = labels_with(80, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = supcon_loss(x.to(torch.bfloat16), labels, 0.1)
    assert loss.dtype == torch.float32
    want = dense_supcon(x.detach().to(torch.bfloat16).double(), labels, 0.1)
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=0)
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_parts_combine_to_the_whole():
    x = unit_rows(400, 9, seed=9)
    labels = LABELINGS["many positives"](400)
    lse, positive, count = ops.supcon_lse(x, labels, 4.0, 0, 1)
    parts = [ops.supcon_lse(x, labels, 4.0, p, 3) for p in range(3)]
    torch.testing.assert_close(torch.stack([p[0] for p in parts]).logsumexp(0), lse, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sum(p[1] for p in parts), positive, rtol=1e-12, atol=1e-10)
    assert torch.equal(sum(p[2] for p in parts), count)
    g, h = torch.rand(400, dtype=torch.float64), torch.rand(400, dtype=torch.float64)
    whole = ops.supcon_lse_backward(x, labels, 4.0, lse, g, h, 0, 1)
    got = sum(ops.supcon_lse_backward(x, labels, 4.0, lse, g, h, p, 3) for p in range(3))
    torch.testing.assert_close(got, whole, rtol=1e-10, atol=1e-12)


def test_counts_are_the_numbers_of_positives():
    labels = LABELINGS["many positives"](300)
    _, _, count = ops.supcon_lse(unit_rows(300, 3), labels, 1.0)
    assert torch.equal(count, (labels[:, None] == labels[None, :]).sum(1) - 1)


def test_opcheck():
    x = unit_rows(70, 5, seed=10)
    labels = labels_with(70, 2)
    for args in [(x, labels, 2.0, 0, 1), (x.clone().requires_grad_(), labels, 3.0, 0, 1),
                 (x.float().requires_grad_(), labels, 2.0, 1, 2)]:
        torch.library.opcheck(ops.supcon_lse.default, args)
    lse = ops.supcon_lse(x, labels, 2.0)[0]
    g, h = torch.rand(70, dtype=torch.float64), torch.rand(70, dtype=torch.float64)
    torch.library.opcheck(ops.supcon_lse_backward.default, (x, labels, 2.0, lse, g, h, 0, 1),
                          test_utils=("test_schema", "test_faketensor"))


def test_compile_fullgraph():
    torch._dynamo.reset()
    x = unit_rows(50, 6, seed=11).requires_grad_()
    labels = labels_with(50, 1)
    tau = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    compiled = torch.compile(lambda x_, t_: supcon_loss(x_, labels, t_, weight=torch.ones(50, dtype=torch.float64)),
                             fullgraph=True, backend="aot_eager")
    got = compiled(x, tau)
    got_grads = torch.autograd.grad(got, (x, tau))
    want, want_grads = value_and_grads(lambda x_, t_: dense_supcon(x_, labels, t_), x, tau)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_chunked_backward_equals_the_plain_step():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.Tanh(), torch.nn.Linear(16, 8)).double()
    inputs = torch.randn(48, 10, dtype=torch.float64)
    labels = labels_with(48, 3)

    def loss_fn(z):
        return supcon_loss(torch.nn.functional.normalize(z, dim=1), labels, 0.1)

    loss_fn(model(inputs)).backward()
    want = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    chunked_backward(model, [inputs], loss_fn, 10)
    for p, w in zip(model.parameters(), want):
        torch.testing.assert_close(p.grad, w, rtol=1e-10, atol=1e-12)


def test_module():
    x, labels = unit_rows(30, 5, seed=12), labels_with(30, 2)
    weight = torch.rand(30, dtype=torch.float64)
    fn = SupConLoss(tau=0.3, reduction="sum")
    torch.testing.assert_close(fn(x, labels, weight), dense_supcon(x, labels, 0.3, "sum", weight), rtol=1e-12, atol=0)
    assert "tau=0.3" in repr(fn)
    assert SupConLoss().tau == 0.1
    with pytest.raises(ValueError, match="reduction"):
        SupConLoss(reduction="avg")
    with pytest.raises(ValueError, match="tau"):
        SupConLoss(tau=-1.0)


def test_int32_labels_and_nonfinite_inputs():
    x, labels = unit_rows(20, 4, seed=13), labels_with(20, 1)
    torch.testing.assert_close(supcon_loss(x, labels.int()), supcon_loss(x, labels), rtol=0, atol=0)
    x[3, 0] = float("nan")
    assert torch.isnan(supcon_loss(x, labels))


def test_errors():
    x = unit_rows(6, 3)
    with pytest.raises(ValueError, match="supcon_loss: no two rows of x share a label"):
        supcon_loss(x, torch.arange(6))
    with pytest.raises(ValueError, match="supcon_loss: labels must be an integer tensor"):
        supcon_loss(x, torch.zeros(6))
    with pytest.raises(ValueError, match=r"supcon_loss: labels must be a 1-D tensor with one label per row of x \(6\)"):
        supcon_loss(x, torch.zeros(5, dtype=torch.int64))
    with pytest.raises(TypeError, match="supcon_loss: labels must be a torch.Tensor"):
        supcon_loss(x, [0, 0, 1, 1, 2, 2])
    with pytest.raises(ValueError, match="supcon_loss: reduction must be one of"):
        supcon_loss(x, torch.zeros(6, dtype=torch.int64), reduction="avg")
    with pytest.raises(ValueError, match=r"supcon_loss: weight must be a floating-point tensor of shape \(6,\)"):
        supcon_loss(x, torch.zeros(6, dtype=torch.int64), weight=torch.ones(3))
    with pytest.raises(ValueError, match="supcon_loss: tau must be a positive finite number"):
        supcon_loss(x, torch.zeros(6, dtype=torch.int64), tau=0.0)
    with pytest.raises(ValueError, match="supcon_loss: x must be a 2-D tensor"):
        supcon_loss(x[0], torch.zeros(6, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"supcon_lse: labels must be an int64 tensor \(labels.long\(\)\)"):
        ops.supcon_lse(x, torch.zeros(6, dtype=torch.int32), 1.0)


def test_the_benchmarks_dense_baseline_is_supcon():
    # pyhypersphere bench --loss supcon's "dense" row: pytorch-metric-learning's computation.
    from pyhypersphere.bench.contrastive import dense_supcon_pml, supcon_views

    x, y = unit_rows(40, 6, seed=14), unit_rows(40, 6, seed=15)
    z, labels = supcon_views(x, y)
    torch.testing.assert_close(dense_supcon_pml(z, labels, 0.1), dense_supcon(z, labels, 0.1), rtol=1e-12, atol=0)
