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
"""

import math
from typing import Optional, Tuple, Union

import torch

from ._contrastive_ops import contrastive_lse, contrastive_mean_lse
from ._ops import accumulate_dtype, loss_dtype
from .losses import _as_float, _check_tensor

DEFAULT_NT_XENT_TAU = 0.5  # SimCLR (and lightly's NTXentLoss)
DEFAULT_INFO_NCE_TAU = 0.07  # MoCo
DEFAULT_CLIP_TAU = 0.07  # CLIP's initial temperature

Temperature = Union[float, torch.Tensor]


def _check_features(t, name: str, function: str, min_rows: int = 1) -> None:
    _check_tensor(t, name, function)
    if t.dim() != 2:
        raise ValueError(f"{function}: {name} must be a 2-D tensor of shape [N, d], got shape {tuple(t.shape)}")
    if t.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        raise ValueError(
            f"{function}: {name} must be a floating-point tensor (float16, bfloat16, float32 or float64), got {t.dtype}"
        )
    if t.shape[0] < min_rows or t.shape[1] < 1:
        rows = "one row" if min_rows == 1 else f"{min_rows} rows"
        raise ValueError(f"{function}: {name} must have at least {rows} and one column, got shape {tuple(t.shape)}")


def _check_matches(first, first_name: str, other, other_name: str, function: str, same_rows: bool) -> None:
    if same_rows and other.shape != first.shape:
        raise ValueError(
            f"{function}: {other_name} must have the same shape as {first_name}, got {first_name} "
            f"{tuple(first.shape)} and {other_name} {tuple(other.shape)}"
        )
    if other.shape[1] != first.shape[1]:
        raise ValueError(
            f"{function}: {other_name} must have the same feature dimension as {first_name} "
            f"({first.shape[1]}), got shape {tuple(other.shape)}"
        )
    if other.device != first.device:
        raise ValueError(f"{function}: {other_name} must be on the same device as {first_name} ({first.device}), got {other.device}")
    if other.dtype != first.dtype:
        raise ValueError(f"{function}: {other_name} must have the same dtype as {first_name} ({first.dtype}), got {other.dtype}")


def _check_pair(first, second, names: Tuple[str, str], function: str) -> None:
    """Both [N, d] features of a loss, the same shape, dtype and device, on a device with a kernel."""
    _check_features(first, names[0], function)
    _check_features(second, names[1], function)
    _check_matches(first, names[0], second, names[1], function, same_rows=True)
    _check_kernel(first, function)


def device_problem(device: torch.device) -> Optional[str]:
    """Why the contrastive kernel cannot run on this device in this build, or None (CUDA
    needs triton: gpu_backend.py)."""
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device.type)
    if key is not None and not torch._C._dispatch_has_kernel_for_dispatch_key("pyhypersphere::contrastive_lse", key):
        hint = " (the CUDA kernels are Triton's: install triton)" if key == "CUDA" else ""
        return f"no {device.type} kernel for the contrastive losses in this build{hint}"
    return None


def kernel_problem(x: torch.Tensor) -> Optional[str]:
    """Why the contrastive kernel cannot run on x's device in this build, or None."""
    return device_problem(x.device)


def _check_kernel(x: torch.Tensor, function: str) -> None:
    if torch.compiler.is_compiling():  # fake tensors; the dispatcher raises for real ones
        return
    problem = kernel_problem(x)
    if problem is not None:
        raise NotImplementedError(f"{function}: {problem}")


def _temperature(tau: Temperature, function: str) -> Tuple[float, Optional[torch.Tensor]]:
    """(scale, tau_tensor): for a number, scale = 1 / tau and no tensor; for a tensor,
    scale = 1 and the tensor, by which the caller divides the features (so that the loss
    is differentiable with respect to it)."""
    if isinstance(tau, torch.Tensor):
        if tau.numel() != 1 or not tau.is_floating_point():
            raise ValueError(
                f"{function}: tau must be a number or a one-element floating-point tensor, got a "
                f"{tau.dtype} tensor of shape {tuple(tau.shape)}"
            )
        if not torch.compiler.is_compiling():
            value = float(tau.detach().reshape(()).item())
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{function}: tau must be a positive finite number, got {value}")
        return 1.0, tau.reshape(())
    value = _as_float(tau, "tau", function)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{function}: tau must be a positive finite number, got {value}")
    return 1.0 / value, None


def _row_dots(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """<a_i, b_i> for every row, in the accumulation dtype (a product and a sum, not
    torch.linalg.vecdot, which autocast would run in 16 bits)."""
    acc = accumulate_dtype(a.dtype)
    return (a.to(acc) * b.to(acc)).sum(1)


def _cross_entropy(lse_negatives: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Each row's -log softmax at its positive, log(1 + exp(lse_negatives - positive)):
    no cancellation, never negative, 0 for a row without negatives (lse -inf)."""
    u = lse_negatives - positive
    return torch.logaddexp(u, torch.zeros_like(u))


def _divide(features: torch.Tensor, divisor: torch.Tensor) -> torch.Tensor:
    acc = accumulate_dtype(features.dtype)
    return features.to(acc) / divisor.to(acc)


def nt_xent_loss(x: torch.Tensor, y: torch.Tensor, tau: Temperature = DEFAULT_NT_XENT_TAU) -> torch.Tensor:
    """SimCLR's NT-Xent (normalized temperature-scaled cross entropy) over the 2N views.

    Each of the 2N rows of [x; y] is a view whose positive is its pair (x_i <-> y_i) and
    whose negatives are the other 2N - 2 views; the loss is the cross entropy of the
    logits <u, v> / tau averaged over the 2N views (the value of lightly's
    ``NTXentLoss(temperature=tau)`` on L2-normalized inputs: lightly normalizes inside).

    Args:
        x, y: the two views' features [N, d], same shape, dtype and device.
        tau: the temperature: a positive number, or a one-element tensor (differentiable).

    Returns a 0-dim tensor in x's dtype (float16/bfloat16 are accumulated in float32;
    float32 under autocast).
    """
    function = "nt_xent_loss"
    _check_pair(x, y, ("x", "y"), function)
    out_dtype = loss_dtype(x)
    scale, tau_tensor = _temperature(tau, function)
    if tau_tensor is not None:  # <x_i, y_j> / tau = <x_i / sqrt(tau), y_j / sqrt(tau)>
        root = tau_tensor.sqrt()
        x, y = _divide(x, root), _divide(y, root)
    lse_x, lse_y = contrastive_lse(x, y, scale, True, True, skip_positives=True)
    positive = _row_dots(x, y) * scale
    loss = (_cross_entropy(lse_x, positive).mean() + _cross_entropy(lse_y, positive).mean()) / 2
    return loss.to(out_dtype)


def info_nce_loss(
    q: torch.Tensor,
    k: torch.Tensor,
    tau: Temperature = DEFAULT_INFO_NCE_TAU,
    *,
    queue: Optional[torch.Tensor] = None,
    in_batch: bool = True,
) -> torch.Tensor:
    """InfoNCE: each query q_i against its positive key k_i, mean over i.

    The negatives of q_i are the other keys k_j (when ``in_batch``) and the rows of
    ``queue`` (MoCo's memory of earlier keys): the loss is the cross entropy of
    [<q_i, k_j> / tau for all j, <q_i, queue_m> / tau for all m] with target k_i.

    Args:
        q, k: queries and their positive keys [N, d], same shape, dtype and device.
        tau: the temperature: a positive number, or a one-element tensor (differentiable).
        queue: optional negatives [K, d], same dtype and device.
        in_batch: use the other keys of the batch as negatives; False (MoCo) needs a queue.

    Returns a 0-dim tensor in q's dtype (float32 under autocast).  Differentiable with respect to q, k, queue
    (those that require grad; MoCo's keys and queue usually do not).
    """
    function = "info_nce_loss"
    _check_pair(q, k, ("q", "k"), function)
    if queue is not None:
        _check_features(queue, "queue", function)
        _check_matches(q, "q", queue, "queue", function, same_rows=False)
    elif not in_batch:
        raise ValueError(f"{function}: in_batch=False needs a queue (there would be no negatives)")
    out_dtype = loss_dtype(q)
    scale, tau_tensor = _temperature(tau, function)
    if tau_tensor is not None:
        q = _divide(q, tau_tensor)
        k = k.to(q.dtype)
        queue = queue.to(q.dtype) if queue is not None else None
    if in_batch:
        # Every row's loss enters with weight 1/N: the kernel's gradients come out of its
        # single pass over the logits (contrastive_mean_lse; k_i is column i).
        keys = k if queue is None else torch.cat([k, queue])
        return contrastive_mean_lse(q, keys, scale).to(out_dtype)
    # The positive is not among the keys: the queue's lse is the negatives' (two passes:
    # contrastive_lse and its backward).
    lse, _ = contrastive_lse(q, queue, scale, False, False)
    return _cross_entropy(lse, _row_dots(q, k) * scale).mean().to(out_dtype)


def clip_loss(x: torch.Tensor, y: torch.Tensor, tau: Temperature = DEFAULT_CLIP_TAU) -> torch.Tensor:
    """CLIP's symmetric InfoNCE: (info_nce(x, y) + info_nce(y, x)) / 2 with in-batch negatives.

    The mean of the cross entropies of the logits x y^T / tau over rows and over columns,
    target the diagonal.

    Args:
        x, y: paired features [N, d] (e.g. image and text embeddings), same shape, dtype, device.
        tau: the temperature: a positive number, or a one-element tensor that requires grad
            (CLIP learns it: pass ``1 / logit_scale.exp()``); the loss is then
            differentiable with respect to it.

    Returns a 0-dim tensor in x's dtype (float32 under autocast).
    """
    function = "clip_loss"
    _check_pair(x, y, ("x", "y"), function)
    out_dtype = loss_dtype(x)
    scale, tau_tensor = _temperature(tau, function)
    if tau_tensor is not None:
        x = _divide(x, tau_tensor)
        y = y.to(x.dtype)
    lse_x, lse_y = contrastive_lse(x, y, scale, False, True, skip_positives=True)
    positive = _row_dots(x, y) * scale
    return ((_cross_entropy(lse_x, positive) + _cross_entropy(lse_y, positive)) / 2).mean().to(out_dtype)
