"""Issue 25's options of the contrastive losses against dense float64 formulas written in
tests/dense_contrastive.py: decoupled=True (the positive out of the denominator, Yeh et
al.) on nt_xent_loss and info_nce_loss, reduction='mean'|'sum'|'none' and per-anchor
weights on nt_xent_loss, info_nce_loss and clip_loss; values and gradients, tau as a
tensor, the nn modules, autocast, and the errors.  Across ranks:
tests/test_distributed_supcon.py."""

import pytest
import torch

from conftest import unit_rows
from dense_contrastive import dense_clip_rows, dense_info_nce_rows, dense_nt_xent_rows, dense_reduce, value_and_grads
from pyhypersphere import CLIPLoss, InfoNCELoss, NTXentLoss, clip_loss, info_nce_loss, nt_xent_loss

N, D, K = 37, 6, 23  # 37 rows: one CPU tile block and a ragged one
QUEUE = unit_rows(K, D, seed=99)


def _weight(rows, seed=0):
    return torch.rand(rows, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) + 0.1


CASES = {
    # name: (fused(x, y, tau, **opts), dense rows(x, y, tau, decoupled), anchors per pair, decoupled allowed)
    "nt_xent": (nt_xent_loss, lambda x, y, t, dec: dense_nt_xent_rows(x, y, t, dec), 2, True),
    "info_nce": (info_nce_loss, lambda x, y, t, dec: dense_info_nce_rows(x, y, t, decoupled=dec), 1, True),
    "info_nce_queue": (lambda x, y, t, **o: info_nce_loss(x, y, t, queue=QUEUE, **o),
                       lambda x, y, t, dec: dense_info_nce_rows(x, y, t, QUEUE, decoupled=dec), 1, True),
    "moco": (lambda x, y, t, **o: info_nce_loss(x, y, t, queue=QUEUE, in_batch=False, **o),
             lambda x, y, t, dec: dense_info_nce_rows(x, y, t, QUEUE, in_batch=False, decoupled=dec), 1, True),
    "clip": (clip_loss, lambda x, y, t, dec: dense_clip_rows(x, y, t), 2, False),
}


def _options():
    for name, (_, _, _, decoupled_ok) in CASES.items():
        for reduction in ("mean", "sum", "none"):
            for weighted in (False, True):
                for decoupled in ((False, True) if decoupled_ok else (False,)):
                    yield name, reduction, weighted, decoupled


@pytest.mark.parametrize("name,reduction,weighted,decoupled", list(_options()))
def test_values_and_gradients_match_the_dense_rows(name, reduction, weighted, decoupled):
    fused, dense_rows, per_pair, _ = CASES[name]
    x, y = unit_rows(N, D, seed=1) * 1.3, unit_rows(N, D, seed=2)
    weight = _weight(per_pair * N) if weighted else None
    opts = {"reduction": reduction, "weight": weight}
    if decoupled:
        opts["decoupled"] = True
    probe = torch.randn(per_pair * N, dtype=torch.float64) if reduction == "none" else torch.tensor(1.0, dtype=torch.float64)

    def with_fused(x_, y_):
        out = fused(x_, y_, 0.2, **opts)
        assert out.shape == ((per_pair * N,) if reduction == "none" else ())
        return (out * probe).sum()

    def with_dense(x_, y_):
        return (dense_reduce(dense_rows(x_, y_, 0.2, decoupled), reduction, weight) * probe).sum()

    want, want_grads = value_and_grads(with_dense, x, y)
    got, got_grads = value_and_grads(with_fused, x, y)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", sorted(CASES))
def test_tau_tensor_with_options(name):
    fused, dense_rows, per_pair, decoupled_ok = CASES[name]
    x, y = unit_rows(N, D, seed=3), unit_rows(N, D, seed=4)
    weight = _weight(per_pair * N, seed=5)
    opts = {"reduction": "sum", "weight": weight, **({"decoupled": True} if decoupled_ok else {})}
    tau = torch.tensor(0.3, dtype=torch.float64)
    want, want_grads = value_and_grads(
        lambda x_, y_, t_: dense_reduce(dense_rows(x_, y_, t_, decoupled_ok), "sum", weight), x, y, tau)
    got, got_grads = value_and_grads(lambda x_, y_, t_: fused(x_, y_, t_, **opts), x, y, tau)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_the_default_mean_is_unchanged():
    x, y = unit_rows(N, D, seed=6), unit_rows(N, D, seed=7)
    for fused, dense_rows in [(nt_xent_loss, dense_nt_xent_rows), (clip_loss, dense_clip_rows),
                              (info_nce_loss, dense_info_nce_rows)]:
        torch.testing.assert_close(fused(x, y, 0.1), dense_rows(x, y, 0.1).mean(), rtol=1e-12, atol=0)
        # unit weights: the same mean through the per-row path
        rows = dense_rows(x, y, 0.1).shape[0]
        torch.testing.assert_close(fused(x, y, 0.1, weight=torch.ones(rows, dtype=torch.float64)),
                                   dense_rows(x, y, 0.1).mean(), rtol=1e-12, atol=0)


def test_decoupled_is_larger_by_the_positive_share():
    # Yeh et al.: with the positive in the denominator the loss is log(1 + e^(lse_neg - s_pos)),
    # decoupled lse_neg - s_pos: their difference is log(1 + e^(s_pos - lse_neg)) > 0 per row.
    x, y = unit_rows(N, D, seed=8), unit_rows(N, D, seed=9)
    coupled = nt_xent_loss(x, y, 0.5, reduction="none")
    decoupled = nt_xent_loss(x, y, 0.5, reduction="none", decoupled=True)
    u = decoupled  # lse_neg - s_pos
    torch.testing.assert_close(coupled - decoupled, torch.nn.functional.softplus(-u), rtol=1e-12, atol=1e-12)


def test_modules_pass_the_options():
    x, y = unit_rows(N, D, seed=10), unit_rows(N, D, seed=11)
    w2, w1 = _weight(2 * N), _weight(N)
    torch.testing.assert_close(NTXentLoss(0.3, decoupled=True, reduction="sum")(x, y, w2),
                               dense_reduce(dense_nt_xent_rows(x, y, 0.3, True), "sum", w2), rtol=1e-12, atol=0)
    torch.testing.assert_close(InfoNCELoss(0.3, decoupled=True, reduction="none")(x, y, QUEUE, w1),
                               dense_reduce(dense_info_nce_rows(x, y, 0.3, QUEUE, decoupled=True), "none", w1),
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(CLIPLoss(0.3, reduction="none")(x, y, w2),
                               dense_reduce(dense_clip_rows(x, y, 0.3), "none", w2), rtol=1e-12, atol=1e-12)
    assert "decoupled=True" in repr(NTXentLoss(decoupled=True))
    with pytest.raises(ValueError, match="NTXentLoss: reduction must be one of"):
        NTXentLoss(reduction="avg")
    with pytest.raises(TypeError, match="InfoNCELoss: decoupled must be"):
        InfoNCELoss(decoupled="yes")


def test_autocast_keeps_float32_rows():
    x, y = unit_rows(N, D, seed=12).float(), unit_rows(N, D, seed=13).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rows = nt_xent_loss(x.bfloat16(), y.bfloat16(), 0.2, reduction="none", decoupled=True)
    assert rows.dtype == torch.float32 and rows.shape == (2 * N,)
    want = dense_nt_xent_rows(x.bfloat16().double(), y.bfloat16().double(), 0.2, True)
    torch.testing.assert_close(rows.double(), want, rtol=1e-5, atol=1e-5)


def test_errors():
    x, y = unit_rows(4, 3), unit_rows(4, 3, seed=1)
    with pytest.raises(ValueError, match=r"nt_xent_loss: weight must be a floating-point tensor of shape \(8,\), one weight per anchor row of \[x; y\] \(2N\)"):
        nt_xent_loss(x, y, weight=torch.ones(4))
    with pytest.raises(ValueError, match=r"clip_loss: weight must be a floating-point tensor of shape \(8,\)"):
        clip_loss(x, y, weight=torch.ones(8, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"info_nce_loss: weight must be a floating-point tensor of shape \(4,\), one weight per query"):
        info_nce_loss(x, y, weight=torch.ones(8))
    with pytest.raises(ValueError, match="info_nce_loss: reduction must be one of 'mean', 'sum', 'none', got 'avg'"):
        info_nce_loss(x, y, reduction="avg")
    with pytest.raises(TypeError, match="nt_xent_loss: decoupled must be True or False"):
        nt_xent_loss(x, y, decoupled=1)
    with pytest.raises(ValueError, match="nt_xent_loss: decoupled=True needs N >= 2"):
        nt_xent_loss(x[:1], y[:1], decoupled=True)
    with pytest.raises(ValueError, match="info_nce_loss: decoupled=True needs a negative"):
        info_nce_loss(x[:1], y[:1], decoupled=True)
    info_nce_loss(x[:1], y[:1], decoupled=True, queue=QUEUE[:, :3].contiguous())  # the queue's negatives suffice
