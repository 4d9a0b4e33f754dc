"""Dense contrastive losses for the tests, written from the definitions and independent
of the package: explicit logit matrices, masked log-sum-exps, explicit positive terms.
O(N^2) memory: small inputs only.  Evaluate in float64."""

import torch


def dense_nt_xent(x, y, tau):
    """Mean over the 2N views v of  log sum_{u != v} exp(<v, u> / tau) - <v, pos(v)> / tau."""
    z = torch.cat([x, y])
    m = z.shape[0]
    logits = (z @ z.T) / tau
    lse = logits.masked_fill(torch.eye(m, dtype=torch.bool), float("-inf")).logsumexp(1)
    n = x.shape[0]
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    positive = logits[torch.arange(m), partner]
    return (lse - positive).mean()


def dense_info_nce(q, k, tau, queue=None, in_batch=True):
    """Mean over i of  -log softmax([<q_i, k_j> (j, if in_batch; else only k_i), <q_i, queue_m>] / tau)[positive]."""
    positive = (q * k).sum(1) / tau
    columns = [q @ k.T / tau] if in_batch else [positive[:, None]]
    if queue is not None:
        columns.append(q @ queue.T / tau)
    return (torch.cat(columns, 1).logsumexp(1) - positive).mean()


def dense_clip(x, y, tau):
    """(cross entropy over rows + over columns of x y^T / tau, target the diagonal) / 2."""
    logits = (x @ y.T) / tau
    target = torch.arange(x.shape[0])
    rows = torch.nn.functional.cross_entropy(logits, target)
    cols = torch.nn.functional.cross_entropy(logits.T, target)
    return (rows + cols) / 2


def value_and_grads(fn, *tensors, **kwargs):
    """fn(*tensors) in float64 and its gradients with respect to every tensor argument."""
    leaves = [t.detach().to(torch.float64).requires_grad_(True) for t in tensors]
    out = fn(*leaves, **kwargs)
    grads = torch.autograd.grad(out, leaves)
    return out.detach(), [g.detach() for g in grads]


# ---------------------------------------------------------------- the positive dominating
#
# When the positive's logit dominates its row, lse - positive cancels (issue 26).  The
# exact forms below take each row's negatives relative to its positive instead,
# log1p(sum_{j != pos} exp(l_ij - l_pos)), written as logaddexp(u, 0) with u the
# negatives' log-sum-exp minus the positive: no cancellation, in any dtype.  The naive
# forms are the two lines a user writes (F.cross_entropy on the logit matrix): the bar
# the package must meet in float32.


def _rows_and_targets(name, x, y, tau):
    """The logit rows of a loss and each row's target column (NT-Xent: the self logit -inf)."""
    n = x.shape[0]
    target = torch.arange(n, device=x.device)
    if name == "nt_xent":
        z = torch.cat([x, y])
        logits = (z @ z.T / tau).fill_diagonal_(float("-inf"))
        return [(logits, torch.cat([target + n, target]))]
    logits = x @ y.T / tau
    if name == "info_nce":
        return [(logits, target)]
    return [(logits, target), (logits.T, target)]  # clip


def exact_cross_entropy(logits, target):
    """Per row -log softmax(logits)[target], from the negatives relative to the positive
    (float64: the non-pairs are set to -1e300)."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    positive = logits[rows, target]
    negatives = logits.index_put((rows, target), torch.tensor(float("-inf"), dtype=logits.dtype))
    # -1e300 for the non-pairs: a row without negatives (N = 1) gets u ~ -1e300, a loss of
    # 0 and zero gradients instead of logsumexp's NaN derivative at all -inf.
    negatives = torch.where(torch.isneginf(negatives), -1e300, negatives)
    u = (negatives - positive[:, None]).logsumexp(1)
    return torch.logaddexp(u, torch.zeros_like(u))


def exact_loss(name, x, y, tau):
    """NT-Xent, in-batch InfoNCE or CLIP without cancellation (evaluate in float64)."""
    sides = [exact_cross_entropy(l, t).mean() for l, t in _rows_and_targets(name, x, y, tau)]
    return sum(sides) / len(sides)


def naive_loss(name, x, y, tau):
    """The same losses by F.cross_entropy on the logit matrix (what a user writes)."""
    sides = [torch.nn.functional.cross_entropy(l, t) for l, t in _rows_and_targets(name, x, y, tau)]
    return sum(sides) / len(sides)


def mean_cross_entropy_and_grads(a, b, scale):
    """contrastive_mean_lse's contract in float64 with autograd: the mean over a's rows of
    the cross entropy of scale a_i b^T, target column i; (value, d/da, d/db)."""
    ar, br = (t.detach().cpu().double().requires_grad_() for t in (a, b))
    mean = exact_cross_entropy(scale * ar @ br.T, torch.arange(ar.shape[0])).mean()
    mean.backward()
    return mean.detach(), ar.grad, br.grad


# ---------------------------------------------------------------- the operators' contract
#
# contrastive_lse and its backward (csrc/ops.h) from the explicit float64 logit matrix.


def dense_contrastive_lse(a, b, scale, self_pairs, skip_positives=False):
    """(lse over a's rows, lse over b's rows) of the logits scale <u, v> over each row's
    partners (csrc/ops.h), without the positive pairs (a_i, b_i) when `skip_positives`."""
    na, nb = a.shape[0], b.shape[0]
    i = torch.arange(min(na, nb), device=a.device)
    if self_pairs:
        z = torch.cat([a, b])
        excluded = torch.eye(na + nb, dtype=torch.bool, device=z.device)
        if skip_positives:
            excluded[i, na + i] = excluded[na + i, i] = True
        lse = (scale * z @ z.T).masked_fill(excluded, float("-inf")).logsumexp(1)
        return lse[:na], lse[na:]
    logits = scale * a @ b.T
    if skip_positives:
        logits = logits.index_put((i, i), torch.tensor(float("-inf"), dtype=logits.dtype, device=a.device))
    return logits.logsumexp(1), logits.logsumexp(0)


def dense_contrastive_lse_and_grads(a, b, scale, self_pairs, g, h, skip_positives=False):
    """float64 (lse_a, lse_b) and the gradients with respect to a and b of
    sum_i g_i lse_a[i] + sum_j h_j lse_b[j] (h None: no b terms), on the CPU."""
    ar, br = (t.detach().cpu().double().requires_grad_() for t in (a, b))
    lse_a, lse_b = dense_contrastive_lse(ar, br, scale, self_pairs, skip_positives)
    # A row without partners (lse -inf) has no gradient terms.
    total = (g.cpu().double() * lse_a).nan_to_num(neginf=0.0).sum()
    if h is not None:
        total = total + (h.cpu().double() * lse_b).nan_to_num(neginf=0.0).sum()
    total.backward()
    return lse_a.detach(), lse_b.detach(), ar.grad, br.grad


# ---------------------------------------------------------------- supervised contrastive


def dense_supcon_rows(x, labels, tau):
    """Khosla et al.'s L_out per anchor, from the definition: -(1/|P(i)|) sum_{p in P(i)}
    log(e^{s_ip} / sum_{a != i} e^{s_ia}); 0 for an anchor without positives.  Also
    returns which anchors have positives."""
    n = x.shape[0]
    logits = x @ x.T / tau
    eye = torch.eye(n, dtype=torch.bool, device=x.device)
    log_prob = logits - logits.masked_fill(eye, float("-inf")).logsumexp(1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~eye
    count = positives.sum(1)
    per_anchor = -(log_prob * positives).sum(1) / count.clamp(min=1)
    return per_anchor, count > 0


def dense_supcon(x, labels, tau, reduction="mean", weight=None):
    """dense_supcon_rows reduced: weighted per-anchor losses; 'mean' over the anchors with
    positives (divided by their weights' sum when weighted)."""
    per_anchor, has = dense_supcon_rows(x, labels, tau)
    w = torch.ones_like(per_anchor) if weight is None else weight.to(per_anchor.dtype)
    weighted = per_anchor * w
    if reduction == "none":
        return weighted
    if reduction == "sum":
        return weighted.sum()
    return weighted.sum() / w[has].sum()


def labels_with(n, positives, seed=0):
    """n labels in random order where every class has `positives` + 1 members (the last
    class takes the remainder: possibly a singleton, an anchor without positives)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) // (positives + 1)
    return labels[torch.randperm(n, generator=g)]


SUPCON_LABELINGS = {
    "one positive": lambda n: labels_with(n, 1),
    "two positives": lambda n: labels_with(n, 2, seed=1),
    "many positives": lambda n: torch.randint(0, 3, (n,), generator=torch.Generator().manual_seed(2)),
    "some without": lambda n: torch.cat([labels_with(n - 3, 1), torch.tensor([1000, 1001, 1002])]),
}


def supcon_reduction_case(n, reduction, weighted):
    """(unit rows x [n, 8], labels with anchors without positives, weight or None, probe):
    the loss's output times probe, summed, is a scalar for every reduction."""
    g = torch.Generator().manual_seed(3)
    x = torch.nn.functional.normalize(torch.randn(n, 8, generator=g, dtype=torch.float64), dim=1)
    weight = torch.rand(n, dtype=torch.float64, generator=g) if weighted else None
    probe = torch.randn(n, dtype=torch.float64, generator=g)
    probe = probe if reduction == "none" else torch.tensor(1.0, dtype=torch.float64)
    return x, SUPCON_LABELINGS["some without"](n), weight, probe


# ---------------------------------------------------------------- per-anchor losses (issue 25)


def _masked_lse(logits, keep):
    return logits.masked_fill(~keep, float("-inf")).logsumexp(1)


def dense_nt_xent_rows(x, y, tau, decoupled=False):
    """The 2N anchors' losses, x's rows then y's: -log softmax at the positive over the
    other 2N - 1 views, or with `decoupled` lse over the 2N - 2 negatives minus the positive."""
    z = torch.cat([x, y])
    m, n = z.shape[0], x.shape[0]
    logits = z @ z.T / tau
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    keep = ~torch.eye(m, dtype=torch.bool)
    if decoupled:
        keep[torch.arange(m), partner] = False
    return _masked_lse(logits, keep) - logits[torch.arange(m), partner]


def dense_info_nce_rows(q, k, tau, queue=None, in_batch=True, decoupled=False):
    """The N queries' losses: columns [<q_i, k_j> (all j if in_batch, else only k_i), <q_i, queue_m>] / tau,
    the positive k_i; with `decoupled` the positive's column left out of the lse."""
    n = q.shape[0]
    positive = (q * k).sum(1) / tau
    columns = [q @ k.T / tau] if in_batch else [positive[:, None]]
    if queue is not None:
        columns.append(q @ queue.T / tau)
    logits = torch.cat(columns, 1)
    keep = torch.ones_like(logits, dtype=torch.bool)
    if decoupled:
        keep[torch.arange(n), torch.arange(n) if in_batch else 0] = False
    return _masked_lse(logits, keep) - positive


def dense_clip_rows(x, y, tau):
    """The 2N anchors' losses: x_i's cross entropy over the rows of x y^T / tau, then y_i's over its columns."""
    logits = x @ y.T / tau
    target = torch.arange(x.shape[0])
    f = torch.nn.functional.cross_entropy
    return torch.cat([f(logits, target, reduction="none"), f(logits.T, target, reduction="none")])


def dense_reduce(rows, reduction, weight=None):
    """'none': w_i l_i; 'sum': their sum; 'mean': their sum / sum w_i (the number of rows unweighted)."""
    w = torch.ones_like(rows) if weight is None else weight.to(rows.dtype)
    if reduction == "none":
        return rows * w
    if reduction == "sum":
        return (rows * w).sum()
    return (rows * w).sum() / w.sum()
