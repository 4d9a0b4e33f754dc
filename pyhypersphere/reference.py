"""Plain-PyTorch implementations used as references and as benchmark peers.

`reference_uniform_loss` and `reference_align_loss` are the two lines published
with Wang & Isola (ICML 2020).  `blocked_uniform_loss` is what a careful user
would write without a custom kernel: a chunked Gram matrix with a log-sum-exp,
O(N * block) memory but no fused gradient.
"""

import math

import torch


def reference_align_loss(x: torch.Tensor, y: torch.Tensor, alpha: float = 2) -> torch.Tensor:
    return (x - y).norm(p=2, dim=1).pow(alpha).mean()


def reference_uniform_loss(x: torch.Tensor, t: float = 2) -> torch.Tensor:
    return torch.pdist(x, p=2).pow(2).mul(-t).exp().mean().log()


def logsumexp_uniform_loss(x: torch.Tensor, t: float = 2) -> torch.Tensor:
    """The same quantity in log-sum-exp form: finite where the reference underflows.

    Materializes the N x N matrix; meant for tests on small inputs.
    """
    n = x.shape[0]
    d2 = torch.cdist(x, x).pow(2)
    iu = torch.triu_indices(n, n, offset=1, device=x.device)
    e = d2[iu[0], iu[1]].mul(-t)
    return torch.logsumexp(e, dim=0) - math.log(e.numel())


def blocked_uniform_loss(x: torch.Tensor, t: float = 2, block: int = 1024) -> torch.Tensor:
    """Chunked-Gram uniformity loss in plain torch ops (autograd through every chunk).

    Memory for the forward is O(N * block); autograd keeps each chunk's
    intermediates alive for the backward, so a backward pass still costs O(N^2)
    memory in total.  This is the honest "no custom kernel" baseline.
    """
    n = x.shape[0]
    sq = (x * x).sum(dim=1)
    parts = []
    for start in range(0, n, block):
        stop = min(start + block, n)
        xb = x[start:stop]
        # only columns j > i: the rows of this chunk against everything after its first row
        cols = x[start:]
        d2 = (sq[start:stop, None] + sq[None, start:] - 2.0 * xb @ cols.T).clamp_min(0)
        e = d2.mul(-t)
        rows = torch.arange(start, stop, device=x.device)[:, None]
        colidx = torch.arange(start, n, device=x.device)[None, :]
        e = e.masked_fill(colidx <= rows, float("-inf"))
        parts.append(torch.logsumexp(e.reshape(-1), dim=0))
    lse = torch.logsumexp(torch.stack(parts), dim=0)
    return lse - math.log(n * (n - 1) / 2)


def logsumexp_queue_uniform_loss(
    x: torch.Tensor, queue: torch.Tensor, t: float = 2, intra_batch: bool = True
) -> torch.Tensor:
    """Uniformity with a feature queue (the paper's MoCo variant), dense, for tests."""
    e_cross = torch.cdist(x, queue).pow(2).mul(-t).reshape(-1)
    terms = [e_cross]
    if intra_batch:
        n = x.shape[0]
        iu = torch.triu_indices(n, n, offset=1, device=x.device)
        terms.append(torch.cdist(x, x).pow(2)[iu[0], iu[1]].mul(-t))
    e = torch.cat(terms)
    return torch.logsumexp(e, dim=0) - math.log(e.numel())
