"""Global-batch uniformity across processes (torch.distributed, any backend).

    from pyhypersphere.distributed import uniform_loss
    loss = align_loss(x, y) + lam * uniform_loss(x, t=2)   # x: this rank's shard
    u1, u2 = uniform_loss([z1, z2], t=2)                     # two views: one set of collectives

``uniform_loss`` returns the uniformity loss of the concatenation of every rank's shard
(in rank order), the same value on every rank, so the N^2 pairs of the global batch are
all counted, not just the (N/W)^2 within each shard.  The collective steps (metadata,
gather, status, reduce-scatter, the backward as a scale) are the generic global-batch
layer in ``_global_batch.py``.  ``nt_xent_loss``, ``clip_loss`` and ``info_nce_loss`` are
the global-batch contrastive losses, ``siglip_loss`` SigLIP's, ``supcon_loss`` the
supervised contrastive loss; they take the single-process losses' ``reduction`` and
``weight`` (each rank its own anchors': docs/distributed.md).  Defined in
pyhypersphere/ops/uniform_distributed.py, ops/contrastive_distributed.py and ops/siglip.py
(what is specific to each family); this module is their public name.

How the pair work is split (backend-independent): rank r takes the rows [a_r, a_{r+1})
of the gathered batch and sums the pairs (i, j), i < j, whose first row i is one of
them: the pairs within its rows and those with every later row, one operator call
with the later rows as the queue.  The boundaries cut the upper triangle into W parts
of equal pair counts, and coverage is exact whatever block size each rank's kernel
uses (CPU and CUDA ranks may be mixed).  Below a size where a split leaves a GPU idle
(``split_pays_off``) every rank computes the whole loss instead.

Gradient scaling under DistributedDataParallel: DDP *averages* the parameter gradients
over the W ranks.  This loss has the same value L on every rank, and its backward
returns W * g * dL/dx_r for an upstream gradient g, the same g on every rank (as with
any loss written the same way on every rank: ``lam * loss``, GradScaler's scale).  DDP's
division by W then gives exactly the gradient of single-process training on the
concatenated batch.  If you sum gradients over ranks instead of averaging them,
divide this loss by W.
"""

from .ops.contrastive_distributed import clip_loss, info_nce_loss, nt_xent_loss
from .ops.siglip import global_siglip_loss as siglip_loss
from .ops.supcon import distributed_supcon_loss as supcon_loss
from .ops.uniform_distributed import pair_rows, split_pays_off, uniform_loss

__all__ = ["clip_loss", "info_nce_loss", "nt_xent_loss", "pair_rows", "siglip_loss", "split_pays_off", "supcon_loss", "uniform_loss"]
