"""The contrastive losses in the benchmark (`pyhypersphere bench --loss nt_xent|info_nce|clip|siglip|supcon`).

Each implementation builds a callable on two [N, d] tensors (x, y: the two views, or
queries and keys, or image and text features).  supcon takes x and y as two views of N
samples of SUPCON_CLASSES classes (sample i has class i mod SUPCON_CLASSES): 2N anchors.  "dense" is the PyTorch formula users
write: the logit matrix and ``F.cross_entropy`` (2N x 2N for NT-Xent, N x N for InfoNCE
and CLIP), with in-place ops where autograd allows, so it is not handicapped by copies;
for SigLIP the logits t x y^T + b, the +-1 labels and ``F.logsigmoid``.  SigLIP's "tau" is
1 / t (b = -10, the paper's initialization).
"""

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from pyhypersphere.contrastive import DEFAULT_CLIP_TAU, DEFAULT_INFO_NCE_TAU, DEFAULT_NT_XENT_TAU
from pyhypersphere.ops import siglip
from pyhypersphere.ops.supcon import DEFAULT_SUPCON_TAU

UNIFORM = "uniform"
LOSSES = (UNIFORM, "nt_xent", "info_nce", "clip", "siglip", "supcon")
DEFAULT_TAU = {"nt_xent": DEFAULT_NT_XENT_TAU, "info_nce": DEFAULT_INFO_NCE_TAU, "clip": DEFAULT_CLIP_TAU,
               "siglip": 1.0 / siglip.DEFAULT_T, "supcon": DEFAULT_SUPCON_TAU}
SUPCON_CLASSES = 100  # ImageNet-100 / CIFAR-100-like batches: many positives per anchor

PairLossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def dense_nt_xent(x: torch.Tensor, y: torch.Tensor, tau: float) -> torch.Tensor:
    n = x.shape[0]
    z = torch.cat([x, y])
    logits = z @ z.T
    logits.div_(tau).fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, target)


def dense_info_nce(q: torch.Tensor, k: torch.Tensor, tau: float) -> torch.Tensor:
    logits = (q @ k.T).div_(tau)
    return F.cross_entropy(logits, torch.arange(q.shape[0], device=q.device))


def dense_clip(x: torch.Tensor, y: torch.Tensor, tau: float) -> torch.Tensor:
    logits = (x @ y.T).div_(tau)
    target = torch.arange(x.shape[0], device=x.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def dense_siglip(x: torch.Tensor, y: torch.Tensor, tau: float) -> torch.Tensor:
    logits = (x @ y.T).mul_(1.0 / tau).add_(siglip.DEFAULT_B)
    labels = 2 * torch.eye(x.shape[0], device=x.device, dtype=logits.dtype) - 1
    return -F.logsigmoid(labels * logits).sum() / x.shape[0]



def supcon_views(x: torch.Tensor, y: torch.Tensor):
    """The two views stacked [2N, d] and their labels (sample i: class i mod SUPCON_CLASSES)."""
    labels = torch.arange(x.shape[0], device=x.device) % SUPCON_CLASSES
    return torch.cat([x, y]), torch.cat([labels, labels])


def dense_supcon_pml(z: torch.Tensor, labels: torch.Tensor, tau: float) -> torch.Tensor:
    """SupCon as pytorch-metric-learning's SupConLoss computes it (its _compute_loss on the
    cosine-similarity matrix, the pair masks of get_all_pairs_indices, lmu.logsumexp with
    a keep mask, AvgNonZeroReducer): N x N similarity, masks and log-probabilities."""
    z = F.normalize(z, dim=1)
    mat = z @ z.T
    matches = labels[:, None] == labels[None, :]
    pos_mask = matches.fill_diagonal_(False).to(mat.dtype)
    neg_mask = (labels[:, None] != labels[None, :]).to(mat.dtype)
    mat = mat / tau
    mat = mat - mat.max(dim=1, keepdim=True)[0].detach()
    keep = (pos_mask + neg_mask).bool()
    denominator = mat.masked_fill(~keep, torch.finfo(mat.dtype).min).logsumexp(dim=1, keepdim=True)
    denominator = denominator.masked_fill(~keep.any(dim=1, keepdim=True), 0)
    log_prob = mat - denominator
    mean_log_prob_pos = (pos_mask * log_prob).sum(dim=1) / (pos_mask.sum(dim=1) + torch.finfo(mat.dtype).tiny)
    losses = -mean_log_prob_pos
    nonzero = losses > 0
    return losses[nonzero].mean()


def dense_supcon(x: torch.Tensor, y: torch.Tensor, tau: float) -> torch.Tensor:
    return dense_supcon_pml(*supcon_views(x, y), tau)


def fused_supcon(x: torch.Tensor, y: torch.Tensor, tau: float) -> torch.Tensor:
    import pyhypersphere

    return pyhypersphere.supcon_loss(*supcon_views(x, y), tau)


_DENSE = {"nt_xent": dense_nt_xent, "info_nce": dense_info_nce, "clip": dense_clip, "siglip": dense_siglip, "supcon": dense_supcon}


def _fused(loss: str):
    import pyhypersphere

    if loss == "siglip":
        return lambda x, y, tau: pyhypersphere.siglip_loss(x, y, 1.0 / tau, siglip.DEFAULT_B)
    return {"nt_xent": pyhypersphere.nt_xent_loss, "info_nce": pyhypersphere.info_nce_loss, "clip": pyhypersphere.clip_loss,
            "supcon": fused_supcon}[loss]


def _inf_cl_unsupported(loss: str, device: torch.device, _dtype) -> Optional[str]:
    if loss in ("nt_xent", "siglip", "supcon"):
        return "inf-cl computes softmax image-text (cross) losses only, not self-pair losses (NT-Xent, SupCon) or SigLIP's sigmoid loss"
    if device.type != "cuda":
        return "inf-cl is CUDA-only (Triton kernels)"
    try:
        import inf_cl  # noqa: F401
    except ImportError:
        return "inf-cl is not installed (pip install inf-cl)"
    return None


def _inf_cl(loss: str, tau: float) -> PairLossFn:
    from inf_cl import cal_inf_loss

    def one_way(q, k):
        return cal_inf_loss(q, k, scale=1.0 / tau).mean()

    if loss == "info_nce":
        return one_way
    return lambda x, y: (one_way(x, y) + one_way(y, x)) / 2


@dataclass(frozen=True)
class ContrastiveImpl:
    name: str
    description: str
    # (loss, device, dtype) -> why it cannot run, or None.
    unsupported: Callable[[str, torch.device, torch.dtype], Optional[str]]
    # (loss, tau) -> loss callable on (x, y).
    build: Callable[[str, float], PairLossFn]


def _fused_unsupported(loss, device, _dtype) -> Optional[str]:
    from .. import contrastive

    return siglip.kernel_problem(device) if loss == "siglip" else contrastive.device_problem(device)


CONTRASTIVE_IMPLS = {
    impl.name: impl
    for impl in (
        ContrastiveImpl(
            "pyhypersphere", "the fused op (nt_xent_loss / info_nce_loss / clip_loss / siglip_loss)", _fused_unsupported,
            lambda loss, tau: (lambda x, y, f=_fused(loss): f(x, y, tau)),
        ),
        ContrastiveImpl(
            "dense", "PyTorch: logit matrix + F.cross_entropy", lambda *_: None,
            lambda loss, tau: (lambda x, y, f=_DENSE[loss]: f(x, y, tau)),
        ),
        ContrastiveImpl("inf-cl", "Inf-CL's cal_inf_loss (Cheng et al. 2024)", _inf_cl_unsupported, _inf_cl),
    )
}  # fmt: skip


def logits(loss: str, n: int) -> int:
    """Entries of the logit matrix the loss reduces over (the 'pairs' of a record)."""
    return 2 * n * (2 * n - 1) if loss in ("nt_xent", "supcon") else n * n


def tau_for(loss: str, tau: Optional[float]) -> float:
    return DEFAULT_TAU[loss] if tau is None else tau
