"""The nn modules (pyhypersphere/nn.py): CLIPLoss's learned temperature bounded after the
optimizer step (open_clip's way), not clamped in the forward; every module's arguments
checked at construction (issue 26, item 5)."""

import math

import pytest
import torch

from conftest import unit_rows
from dense_contrastive import dense_clip
from pyhypersphere import AlignmentLoss, AlignUniformLoss, CLIPLoss, InfoNCELoss, NTXentLoss, UniformityLoss


def features(seed=0):
    return unit_rows(16, 6, seed=seed), unit_rows(16, 6, seed=seed + 1)


def test_learned_logit_scale_has_a_gradient_past_the_bound():
    # A step can take logit_scale past ln 100; the forward must not clamp it, or its gradient
    # is exactly 0 there and the parameter can never come back.
    x, y = features()
    module = CLIPLoss(learn_tau=True).double()
    with torch.no_grad():
        module.logit_scale.fill_(math.log(150.0))
    module(x, y).backward()
    scale = torch.tensor(math.log(150.0), dtype=torch.float64, requires_grad=True)
    dense_clip(x, y, torch.exp(-scale)).backward()
    assert scale.grad.abs() > 0
    torch.testing.assert_close(module.logit_scale.grad, scale.grad, rtol=1e-10, atol=1e-12)


def test_clamp_applies_the_bound_to_the_parameter():
    module = CLIPLoss(learn_tau=True, max_logit_scale=50.0)
    with torch.no_grad():
        module.logit_scale.fill_(10.0)
    assert module.clamp_() is module
    assert module.logit_scale.item() == pytest.approx(math.log(50.0))
    with torch.no_grad():
        module.logit_scale.fill_(1.0)
    module.clamp_()
    assert module.logit_scale.item() == 1.0  # below the bound: untouched
    CLIPLoss(0.1).clamp_()  # nothing to bound without learn_tau


def test_clamp_after_bounds_every_optimizer_step():
    x, y = features(2)
    module = CLIPLoss(tau=0.0105, learn_tau=True).double()  # just under the bound, ln 100
    opt = torch.optim.SGD(module.parameters(), lr=1.0)
    handle = module.clamp_after(opt)
    for _ in range(3):
        opt.zero_grad()
        # Minus the loss: drives logit_scale up, past the bound, at every step.
        (-module(x, y)).backward()
        opt.step()
        assert module.logit_scale.item() <= math.log(100.0) + 1e-12
    assert module.logit_scale.item() == pytest.approx(math.log(100.0))
    handle.remove()
    opt.zero_grad()
    (-module(x, y)).backward()
    opt.step()
    assert module.logit_scale.item() > math.log(100.0)  # the hook is gone
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer"):
        module.clamp_after([module.logit_scale])


def test_learned_tau_starts_where_asked():
    # tau = 0.001 with the default bound (1 / tau <= 100) would train at 0.01 (the issue:
    # loss 92.38 against 923.66): refused, with the way out; with the bound raised it
    # trains at 0.001.
    with pytest.raises(ValueError, match=r"tau must be at least 1 / max_logit_scale = 0\.01.*max_logit_scale >= 1000"):
        CLIPLoss(tau=0.001, learn_tau=True)
    x, y = features(4)
    module = CLIPLoss(tau=0.001, learn_tau=True, max_logit_scale=1000.0).double()
    tau = torch.exp(-module.logit_scale.detach())  # 0.001 up to the float32 parameter's rounding
    assert tau.item() == pytest.approx(0.001, rel=1e-6)
    torch.testing.assert_close(module(x, y), dense_clip(x, y, tau), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(module(x, y), CLIPLoss(tau=0.001)(x, y), rtol=1e-6, atol=0)


BAD = [
    (CLIPLoss, {"tau": 0}, ValueError, r"CLIPLoss: tau must be a positive finite number, got 0"),
    (CLIPLoss, {"tau": 0, "learn_tau": True}, ValueError, r"CLIPLoss: tau must be a positive"),
    (CLIPLoss, {"tau": -0.1, "learn_tau": True}, ValueError, r"CLIPLoss: tau must be a positive finite number, got -0.1"),
    (CLIPLoss, {"tau": float("nan")}, ValueError, r"CLIPLoss: tau must be a positive finite number, got nan"),
    (CLIPLoss, {"tau": "0.07"}, TypeError, r"CLIPLoss: tau must be a number, got str"),
    (CLIPLoss, {"learn_tau": 1}, TypeError, r"CLIPLoss: learn_tau must be True or False"),
    (CLIPLoss, {"learn_tau": True, "max_logit_scale": 0}, ValueError, r"CLIPLoss: max_logit_scale must be a positive"),
    (CLIPLoss, {"tau": torch.tensor([0.1, 0.2])}, ValueError, r"CLIPLoss: tau must be a number or a one-element"),
    (NTXentLoss, {"tau": 0}, ValueError, r"NTXentLoss: tau must be a positive finite number, got 0"),
    (NTXentLoss, {"tau": float("inf")}, ValueError, r"NTXentLoss: tau must be a positive finite number, got inf"),
    (InfoNCELoss, {"tau": -1}, ValueError, r"InfoNCELoss: tau must be a positive finite number, got -1"),
    (InfoNCELoss, {"in_batch": "yes"}, TypeError, r"InfoNCELoss: in_batch must be True or False"),
    (UniformityLoss, {"t": -1}, ValueError, r"UniformityLoss: t must be a positive finite number, got -1"),
    (UniformityLoss, {"t": 0}, ValueError, r"UniformityLoss: t must be a positive finite number, got 0"),
    (UniformityLoss, {"t": True}, TypeError, r"UniformityLoss: t must be a number, got bool"),
    (UniformityLoss, {"t": torch.nn.Parameter(torch.tensor(-2.0))}, ValueError, r"UniformityLoss: t must be a positive"),
    (AlignmentLoss, {"alpha": 0}, ValueError, r"AlignmentLoss: alpha must be a positive finite number, got 0"),
    (AlignUniformLoss, {"t": 0}, ValueError, r"AlignUniformLoss: t must be a positive"),
    (AlignUniformLoss, {"alpha": -2}, ValueError, r"AlignUniformLoss: alpha must be a positive"),
    (AlignUniformLoss, {"align_w": -1}, ValueError, r"AlignUniformLoss: align_w must be a non-negative finite number"),
    (AlignUniformLoss, {"unif_w": float("nan")}, ValueError, r"AlignUniformLoss: unif_w must be a non-negative"),
    (AlignUniformLoss, {"unif_w": None}, TypeError, r"AlignUniformLoss: unif_w must be a number, got NoneType"),
]


@pytest.mark.parametrize("cls,kwargs,error,match", BAD, ids=[f"{c.__name__}-{k}" for c, k, _, _ in BAD])
def test_bad_arguments_raise_at_construction(cls, kwargs, error, match):
    with pytest.raises(error, match=match):
        cls(**kwargs)


def test_good_arguments_still_construct():
    # Zero weights switch a term off; parameters are learned; tensors are accepted.
    AlignUniformLoss(align_w=0.0, unif_w=0.0)
    UniformityLoss(t=torch.nn.Parameter(torch.tensor(2.0)))
    NTXentLoss(tau=torch.tensor(0.5))
    InfoNCELoss(0.2, in_batch=False)
    CLIPLoss(tau=0.01, learn_tau=True)  # exactly at the bound
