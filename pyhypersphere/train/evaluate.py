"""Held-out evaluation: linear probe and k-NN accuracy on the penultimate layer and on the
output (the paper's Table 1), plus the alignment and uniformity metrics."""

from __future__ import annotations

from typing import Dict, Tuple

import torch
import torch.nn.functional as F

from pyhypersphere import metrics
from pyhypersphere.losses import DEFAULT_ALPHA, DEFAULT_T

EVAL_SEED = 12345  # the views used for the alignment metric are the same every epoch
# The paper compares encoders trained with any alpha, t or objective on the metrics at its
# defaults (alpha = 2, t = 2): these keys are comparable across runs, "align"/"uniform" (at
# the run's own alpha and t) are not.
FIXED_METRIC_KEYS = {"align_alpha2": DEFAULT_ALPHA, "uniform_t2": DEFAULT_T}


class NonFiniteFeatures(ArithmeticError):
    """The model's held-out features are NaN or Inf: the model diverged."""


@torch.no_grad()
def features(model, data, x: torch.Tensor, device, batch: int = 1024) -> Tuple[torch.Tensor, torch.Tensor]:
    """(penultimate, output) features of un-augmented samples, on the CPU in float32."""
    was_training = model.training
    model.eval()
    pens, outs = [], []
    try:
        for start in range(0, x.shape[0], batch):
            xb = data.eval_view(x[start : start + batch].to(device, non_blocking=True))
            p, o = model(xb)
            pens.append(p.float().cpu())
            outs.append(o.float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(pens), torch.cat(outs)


def linear_probe(
    f_train: torch.Tensor,
    y_train: torch.Tensor,
    f_test: torch.Tensor,
    y_test: torch.Tensor,
    num_classes: int,
    iters: int = 100,
    l2: float = 1e-4,
) -> float:
    """Multinomial logistic regression on standardized features (L-BFGS, zero init: deterministic)."""
    mu = f_train.mean(dim=0)
    sd = f_train.std(dim=0).clamp_min(1e-6)
    a = (f_train - mu) / sd
    b = (f_test - mu) / sd
    w = torch.zeros(a.shape[1], num_classes, requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, bias], lr=1.0, max_iter=iters, history_size=10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(a @ w + bias, y_train) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return (b @ w + bias).argmax(dim=1).eq(y_test).float().mean().item()


@torch.no_grad()
def knn(
    f_train: torch.Tensor,
    y_train: torch.Tensor,
    f_test: torch.Tensor,
    y_test: torch.Tensor,
    num_classes: int,
    k: int = 5,
    chunk: int = 1024,
) -> float:
    """k-nearest-neighbour vote under cosine similarity (ties go to the closer neighbours)."""
    tr = F.normalize(f_train, dim=1)
    te = F.normalize(f_test, dim=1)
    k = min(k, tr.shape[0])
    correct = 0
    for start in range(0, te.shape[0], chunk):
        sim = te[start : start + chunk] @ tr.T
        top, idx = sim.topk(k, dim=1)
        votes = torch.zeros(sim.shape[0], num_classes)
        votes.scatter_add_(1, y_train[idx], 1.0 + 1e-3 * top)
        correct += votes.argmax(dim=1).eq(y_test[start : start + chunk]).sum().item()
    return correct / te.shape[0]


@torch.no_grad()
def align_uniform(
    model, data, augment, device, alpha: float, t: float, out_test=None, batch: int = 1024
) -> Dict[str, float]:
    """The paper's metrics on the held-out split (pyhypersphere.metrics): alignment over two
    augmented views of each test sample (fixed views), uniformity over all pairs of the
    un-augmented test outputs; also both at the paper's alpha = t = 2 (FIXED_METRIC_KEYS)."""
    was_training = model.training
    model.eval()
    g = torch.Generator(device=device).manual_seed(EVAL_SEED)
    views1, views2 = [], []
    try:
        for start in range(0, data.x_test.shape[0], batch):
            xb = data.x_test[start : start + batch].to(device)
            views1.append(model(augment(xb, g))[1].float())
            views2.append(model(augment(xb, g))[1].float())
    finally:
        model.train(was_training)
    if out_test is None:
        _, out_test = features(model, data, data.x_test, device, batch)
    v1, v2, o = torch.cat(views1), torch.cat(views2), out_test.to(device).float()
    return {
        "align": metrics.alignment(v1, v2, alpha),
        "uniform": metrics.uniformity(o, t),
        "align_alpha2": metrics.alignment(v1, v2, FIXED_METRIC_KEYS["align_alpha2"]),
        "uniform_t2": metrics.uniformity(o, FIXED_METRIC_KEYS["uniform_t2"]),
    }


def evaluate(model, data, augment, device, config) -> Dict[str, float]:
    p_tr, o_tr = features(model, data, data.x_train, device)
    p_te, o_te = features(model, data, data.x_test, device)
    for name, f in (("penultimate", p_tr), ("penultimate", p_te), ("output", o_tr), ("output", o_te)):
        if not torch.isfinite(f).all():  # the probe would fail with an overflow, not a clear message
            raise NonFiniteFeatures(f"the model's {name} features are not finite at evaluation (the model diverged)")
    c = data.num_classes
    result = {
        "linear_probe_acc": linear_probe(p_tr, data.y_train, p_te, data.y_test, c),
        "knn_acc": knn(p_tr, data.y_train, p_te, data.y_test, c, config.knn_k),
        "linear_probe_acc_output": linear_probe(o_tr, data.y_train, o_te, data.y_test, c),
        "knn_acc_output": knn(o_tr, data.y_train, o_te, data.y_test, c, config.knn_k),
    }
    result.update(align_uniform(model, data, augment, device, config.alpha, config.t, out_test=o_te))
    return result
