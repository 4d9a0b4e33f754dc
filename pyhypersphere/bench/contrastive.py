"""The contrastive losses in the benchmark (`pyhypersphere bench --loss nt_xent|info_nce|clip|siglip`).

Each implementation builds a callable on two [N, d] tensors (x, y: the two views, or
queries and keys, or image and text features).  "dense" is the PyTorch formula users
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

UNIFORM = "uniform"
LOSSES = (UNIFORM, "nt_xent", "info_nce", "clip", "siglip")
DEFAULT_TAU = {"nt_xent": DEFAULT_NT_XENT_TAU, "info_nce": DEFAULT_INFO_NCE_TAU, "clip": DEFAULT_CLIP_TAU,
               "siglip": 1.0 / siglip.DEFAULT_T}

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


_DENSE = {"nt_xent": dense_nt_xent, "info_nce": dense_info_nce, "clip": dense_clip, "siglip": dense_siglip}


def _fused(loss: str):
    import pyhypersphere

    if loss == "siglip":
        return lambda x, y, tau: pyhypersphere.siglip_loss(x, y, 1.0 / tau, siglip.DEFAULT_B)
    return {"nt_xent": pyhypersphere.nt_xent_loss, "info_nce": pyhypersphere.info_nce_loss, "clip": pyhypersphere.clip_loss}[loss]


def _inf_cl_unsupported(loss: str, device: torch.device, _dtype) -> Optional[str]:
    if loss in ("nt_xent", "siglip"):
        return "inf-cl computes softmax image-text (cross) losses only, not SimCLR's NT-Xent or SigLIP's sigmoid loss"
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
    return 2 * n * (2 * n - 1) if loss == "nt_xent" else n * n


def tau_for(loss: str, tau: Optional[float]) -> float:
    return DEFAULT_TAU[loss] if tau is None else tau
