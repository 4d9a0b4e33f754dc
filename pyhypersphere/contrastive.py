"""Fused contrastive losses: SimCLR's NT-Xent, InfoNCE with a MoCo queue, CLIP's symmetric loss.

The losses the alignment/uniformity paper compares against (its Eq. 1), computed from
the log-sum-exps of the logits <u, v> / tau by a tiled kernel that never holds the
logit matrix: O(N d) extra memory instead of the N x N (CLIP) or 2N x 2N (NT-Xent)
logits.  Same values as the dense PyTorch formulas (``F.cross_entropy`` on the logits).

The inputs need not be normalized; the paper's setting (and SimCLR's, MoCo's, CLIP's)
L2-normalizes the features first, which keeps the logits within [-1/tau, 1/tau].

Each row's cross entropy is log(1 + sum_{j != pos} exp(s_ij - s_pos)), from the
negatives' log-sum-exp (the kernels skip the positive) relative to the positive's logit:
it does not cancel when the positive dominates (lse - s_pos would), is never negative,
and its gradient is sum_{j != pos} p_ij (b_j - b_pos) with the positive's weight exactly 0.
Under autocast the losses return float32, their positives' logits accumulated in float32.

Defined in pyhypersphere/ops/contrastive.py; this module is their public name.
"""

from .ops.contrastive import (
    DEFAULT_CLIP_TAU,
    DEFAULT_INFO_NCE_TAU,
    DEFAULT_NT_XENT_TAU,
    Temperature,
    clip_loss,
    device_problem,
    info_nce_loss,
    kernel_problem,
    nt_xent_loss,
)

__all__ = [
    "DEFAULT_CLIP_TAU",
    "DEFAULT_INFO_NCE_TAU",
    "DEFAULT_NT_XENT_TAU",
    "Temperature",
    "clip_loss",
    "device_problem",
    "info_nce_loss",
    "kernel_problem",
    "nt_xent_loss",
]
