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
