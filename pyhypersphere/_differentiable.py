"""First derivatives of the losses as plain, differentiable torch expressions.

The fused kernels return d loss / d input as numbers: the backward of a first-order
gradient is cheap, but that gradient has no graph of its own.  When the backward runs
with grad mode on (``create_graph=True``: Hessians, Hessian-vector products, gradient
penalties, ``torch.func.grad``) the autograd formulas in ``_ops.py`` use these
expressions instead, so every derivative order is exact.

Uniformity: with P the pair set, e_ij = -t ||z_i - z_j||^2 and p_ij = exp(e_ij - lse),

    d lse / d z_i = -2t * sum_{j : (i, j) in P} p_ij (z_i - z_j)
                  = -2t * (s_i z_i - sum_j p_ij z_j),   s_i = sum_j p_ij.

It is evaluated one block of rows at a time against all of their partners (each block's
pair matrix holds at most ``PAIR_BLOCK_ELEMENTS`` entries), in float64, on rows centered
by their (detached) mean: the distances are translation invariant, so the expression is
the same function of the inputs, with fewer digits lost in the Gram form.  ``lse`` is
the forward's differentiable output, so the derivative of the normalisation flows
through the fused op (and, at the next order, through this module again).  Autograd
keeps each block's pair matrix for the next derivative: a graph built here holds
O(rows x partners) numbers, as any exact second derivative through the pairs must.
"""

from typing import Optional

import torch

# Entries of one row block's pair matrix (float64: 32 MiB).
PAIR_BLOCK_ELEMENTS = 1 << 22


def _block_rows(partners: int) -> int:
    return max(1, PAIR_BLOCK_ELEMENTS // max(1, partners))


def _rows_gradient(rows, partners, t: float, lse, first_self: Optional[int]):
    """d lse / d rows over the pairs (rows_i, partners_j), excluding the self pairs
    (rows_i, partners_{first_self + i}) when ``first_self`` is given (rows is then a
    slice of partners)."""
    sq_rows = (rows * rows).sum(1)
    sq_partners = (partners * partners).sum(1)
    e = (sq_rows[:, None] + sq_partners[None, :] - 2.0 * (rows @ partners.T)) * -t
    if first_self is not None:
        i = torch.arange(rows.shape[0], device=rows.device)
        j = torch.arange(partners.shape[0], device=rows.device)
        e = torch.where(j[None, :] == (i + first_self)[:, None], float("-inf"), e)
    p = torch.exp(e - lse)
    return (p.sum(1, keepdim=True) * rows - p @ partners) * (-2.0 * t)


def _blocked_gradient(rows, partners, t, lse, with_self_pairs: bool):
    step = _block_rows(partners.shape[0])
    blocks = [
        _rows_gradient(rows[s : s + step], partners, t, lse, s if with_self_pairs else None)
        for s in range(0, rows.shape[0], step)
    ]
    return torch.cat(blocks, 0)


def uniform_lse_gradients(x, queue, t: float, intra_batch: bool, lse, want_x: bool, want_queue: bool):
    """(d lse / d x or None, d lse / d queue or None) in float64, differentiable in x,
    queue and lse (the op's output for the same arguments, whole pair set)."""
    x64 = x.to(torch.float64)
    q64 = queue.to(torch.float64) if queue is not None else None
    stacked = x64 if q64 is None else torch.cat([x64, q64], 0)
    center = stacked.detach().mean(0, keepdim=True)
    zx = x64 - center
    zq = q64 - center if q64 is not None else None
    lse = lse.to(torch.float64)
    grad_x = grad_q = None
    if want_x:
        partners = [zx] if intra_batch else []
        if zq is not None:
            partners.append(zq)
        grad_x = _blocked_gradient(zx, torch.cat(partners, 0), t, lse, with_self_pairs=intra_batch)
    if want_queue:
        grad_q = _blocked_gradient(zq, zx, t, lse, with_self_pairs=False)
    return grad_x, grad_q


def align_row_powers(x, y, alpha):
    """||x_i - y_i||^alpha per row in float32/float64, differentiable to every order in
    x, y and a tensor alpha.  Rows with x_i == y_i give 0 with zero first derivatives
    (the kernel's convention); alpha == 2 is the polynomial ||x_i - y_i||^2, smooth
    everywhere, so its second derivative at such rows is exact too."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    diff = x.to(acc) - y.to(acc)
    sq = (diff * diff).sum(1)
    if not isinstance(alpha, torch.Tensor) and alpha == 2.0:
        return sq
    positive = sq > 0
    # Two wheres: the unselected branch must not produce inf/NaN gradients at sq == 0.
    safe = torch.where(positive, sq, torch.ones_like(sq))
    return torch.where(positive, safe.pow(alpha / 2), torch.zeros_like(sq))


def align_gradient(x, y, alpha: float):
    """d mean_i ||x_i - y_i||^alpha / d x (d / d y is its negative) in closed form,
    (alpha / N) ||x_i - y_i||^(alpha - 2) (x_i - y_i), differentiable to every order;
    0 at rows with x_i == y_i (for alpha == 2 that is the formula itself)."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    diff = x.to(acc) - y.to(acc)
    scale = alpha / x.shape[0]
    if alpha == 2.0:
        return diff * scale
    sq = (diff * diff).sum(1, keepdim=True)
    positive = sq > 0
    safe = torch.where(positive, sq, torch.ones_like(sq))
    return torch.where(positive, safe.pow(alpha / 2 - 1) * scale, torch.zeros_like(sq)) * diff


# ---------------------------------------------------------------- contrastive losses
#
# With logits s_ij = scale <r_i, c_j>, the gradient of sum_i g_i lse_i + sum_j h_j lse_j
# (the rows' and the columns' log-sum-exps over their partners) with respect to the rows
# is scale * sum_j W_ij c_j, W_ij = g_i e^(s_ij - lse_i) + h_j e^(s_ij - lse_j), W = 0
# where (i, j) is not a pair.  Self pairs (rows = columns = the stacked views) give the
# whole gradient this way: the logit matrix is symmetric.  Evaluated in float64, one
# block of rows at a time, as the uniformity's.


def _finite_shift(lse):
    """lse with -inf (a row without partners: all its entries are masked) replaced by 0,
    so that exp(-inf - shift) is 0 and its derivative too."""
    return torch.where(torch.isneginf(lse), torch.zeros_like(lse), lse)


def _weighted_rows(rows, cols, scale, row_terms, col_terms, excluded):
    """scale * W @ cols for every row; row_terms / col_terms are (lse, g) or None;
    excluded(i, j) -> bool mask of the entries that are not pairs (i, j index tensors)."""
    step = _block_rows(cols.shape[0])
    j = torch.arange(cols.shape[0], device=rows.device)
    blocks = []
    for s in range(0, rows.shape[0], step):
        i = torch.arange(s, min(s + step, rows.shape[0]), device=rows.device)
        logits = torch.where(excluded(i[:, None], j[None, :]), float("-inf"), scale * (rows[i] @ cols.T))
        w = torch.zeros_like(logits)
        if row_terms is not None:
            lse, g = row_terms
            w = w + g[i, None] * torch.exp(logits - _finite_shift(lse)[i, None])
        if col_terms is not None:
            lse, g = col_terms
            w = w + g[None, :] * torch.exp(logits - _finite_shift(lse)[None, :])
        blocks.append(scale * (w @ cols))
    return torch.cat(blocks, 0)


def contrastive_lse_gradients(a, b, scale, self_pairs, skip_positives, lse_a, lse_b, g_a, g_b, want_a, want_b):
    """(d/da or None, d/db or None) of sum_i g_a[i] lse_a[i] + sum_j g_b[j] lse_b[j] (g_b
    None: no b terms) as contrastive_lse computes the lse (csrc/ops.h), in float64,
    differentiable in a, b, the lse and the upstream gradients."""
    a64, b64 = a.to(torch.float64), b.to(torch.float64)
    na, nb = a64.shape[0], b64.shape[0]
    f64 = [None if v is None else v.to(torch.float64) for v in (lse_a, lse_b, g_a, g_b)]
    lse_a, lse_b, g_a, g_b = f64
    if self_pairs:
        z = torch.cat([a64, b64])
        terms = (torch.cat([lse_a, lse_b]), torch.cat([g_a, g_b]))

        def excluded(i, j):
            partner = torch.where(i < na, i + na, torch.where(i < 2 * na, i - na, -1))
            return (i == j) | ((j == partner) & skip_positives)

        grad = _weighted_rows(z, z, scale, terms, terms, excluded)
        return (grad[:na] if want_a else None), (grad[na:] if want_b else None)

    def excluded(i, j):
        return (i == j) & skip_positives

    a_terms = (lse_a, g_a)
    b_terms = (lse_b, g_b) if g_b is not None else None
    grad_a = _weighted_rows(a64, b64, scale, a_terms, b_terms, excluded) if want_a else None
    grad_b = _weighted_rows(b64, a64, scale, b_terms, a_terms, excluded) if want_b else None
    return grad_a, grad_b


def mean_cross_entropy_gradients(a, b, scale, want_a, want_b):
    """(d/da or None, d/db or None) of contrastive_mean_lse's mean cross entropy (b_i a_i's
    positive) in float64, differentiable: (scale / N) sum_{j != i} p_ij (b_j - b_i), the
    negatives' weights and, separately, their total times b_i."""
    a64, b64 = a.to(torch.float64), b.to(torch.float64)
    na = a64.shape[0]
    step = _block_rows(b64.shape[0])
    j = torch.arange(b64.shape[0], device=a64.device)
    grad_a, grad_b = [], torch.zeros_like(b64)
    for s in range(0, na, step):
        i = torch.arange(s, min(s + step, na), device=a64.device)
        logits = scale * (a64[i] @ b64.T)
        lse = logits.logsumexp(1, keepdim=True)
        w = torch.where(i[:, None] == j[None, :], 0.0, torch.exp(logits - lse) / na)
        total = w.sum(1, keepdim=True)
        if want_a:
            grad_a.append(scale * (w @ b64 - total * b64[i]))
        if want_b:
            grad_b = grad_b + scale * (w.T @ a64[i])
            grad_b = grad_b.index_add(0, i, -scale * total * a64[i])
    return (torch.cat(grad_a, 0) if want_a else None), (grad_b if want_b else None)
