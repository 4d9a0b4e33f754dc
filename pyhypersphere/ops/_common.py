"""What every op family shares: dtypes, argument checks, the row blocks of the
differentiable gradients, and the torch.func machinery of the autograd.Functions.

Each family module (uniform.py, align.py, contrastive.py) holds its fake kernel, autograd,
public loss and distributed specification; this module only what two or more of them use.
"""

import numbers
from typing import Optional

import torch


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def loss_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype of a loss of x: x's dtype, or under autocast on x's device
    float32 (float64 kept), as torch.pdist under CUDA autocast (csrc/autocast.cpp)."""
    # x.is_cpu: a per-call attribute read cheaper than x.device (small batches, issue 26).
    if torch.is_autocast_enabled("cpu" if x.is_cpu else x.device.type):
        return torch.promote_types(x.dtype, torch.float32)
    return x.dtype


def needs_grad(*tensors) -> bool:
    if not torch.is_grad_enabled():
        return False
    for t in tensors:  # a loop, not any(generator): this runs on every call
        if t is not None and t.requires_grad:
            return True
    return False


def as_float(value, name: str, function: str) -> float:
    if type(value) is float:  # the common case, before the slower abstract-class check
        return value
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{function}: {name} must be a number, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    # numbers.Real also admits numpy scalars (np.float32 is no subclass of float).
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{function}: {name} must be a number, got {type(value).__name__}")
    return float(value)


def check_tensor(value, name: str, function: str) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{function}: {name} must be a torch.Tensor, got {type(value).__name__}")


def learned(value) -> Optional[torch.Tensor]:
    """`value` if it is a tensor that autograd must differentiate, else None."""
    if isinstance(value, torch.Tensor) and needs_grad(value):
        return value
    return None


def check_features(t, name: str, function: str, min_rows: int = 1) -> None:
    check_tensor(t, name, function)
    if t.dim() != 2:
        raise ValueError(f"{function}: {name} must be a 2-D tensor of shape [N, d], got shape {tuple(t.shape)}")
    if t.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        raise ValueError(
            f"{function}: {name} must be a floating-point tensor (float16, bfloat16, float32 or float64), got {t.dtype}"
        )
    if t.shape[0] < min_rows or t.shape[1] < 1:
        rows = "one row" if min_rows == 1 else f"{min_rows} rows"
        raise ValueError(f"{function}: {name} must have at least {rows} and one column, got shape {tuple(t.shape)}")


def check_matches(first, first_name: str, other, other_name: str, function: str, same_rows: bool) -> None:
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


# Entries of one row block's pair matrix (float64: 32 MiB).
PAIR_BLOCK_ELEMENTS = 1 << 22


def block_rows(partners: int) -> int:
    return max(1, PAIR_BLOCK_ELEMENTS // max(1, partners))


# ---------------------------------------------------------------- torch.func
#
# The autograd that torch.library registers on an op is not usable under torch.func
# transforms (grad, vmap, jacrev: "must override the setup_context staticmethod").  The
# losses therefore call the ops through autograd.Functions (func_compatible, eager),
# with the same formulas, a vmap rule and a forward-mode rule that raises.  Under torch.compile they
# call the ops directly (their registered autograd and fake kernels are what it traces).

_FORWARD_MODE_MESSAGE = (
    "pyhypersphere: forward-mode AD (torch.func.jvp, jacfwd, torch.func.hessian, "
    "torch.autograd.forward_ad) is not supported by the fused losses; for second "
    "derivatives use reverse mode: torch.autograd.functional.hessian, "
    "torch.func.jacrev(torch.func.jacrev(f)) or autograd.grad(..., create_graph=True)"
)


def no_forward_mode(ctx, *tangents):
    raise RuntimeError(_FORWARD_MODE_MESSAGE)


def vmap_by_loop(function):
    """A vmap rule calling `function` once per batch entry: a kernel call is one whole
    problem whose tiles already use every thread, so a loop is what a batch costs."""

    def rule(info, in_dims, *args):
        results = [
            function(*(a.select(dim, b) if dim is not None else a for a, dim in zip(args, in_dims)))
            for b in range(info.batch_size)
        ]
        outputs = tuple(torch.stack(parts) for parts in zip(*results))
        return outputs, (0,) * len(outputs)

    return staticmethod(rule)


def below_autograd(op, *args):
    """The op called from inside an autograd.Function's forward: straight to its kernel
    (autocast still applies), past the autograd that torch.library registered on it, whose
    Python wrapper (a signature bind and a redispatch, ~15 us a call) would only find grad
    mode off and do the same."""
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)


def func_compatible(name: str, op, setup_context, backward):
    """An autograd.Function calling `op` with the formulas registered on it (setup_context,
    backward), a vmap rule and a forward-mode rule that raises: the op usable by
    torch.func (the contrastive operators use it)."""

    def forward(*args):
        return below_autograd(op, *args)

    function = type(name, (torch.autograd.Function,), {
        "forward": staticmethod(forward), "setup_context": staticmethod(setup_context),
        "backward": staticmethod(backward), "jvp": staticmethod(no_forward_mode),
    })  # fmt: skip
    function.vmap = vmap_by_loop(lambda *args: function.apply(*args))
    return function


def eager(function):
    """`function` (a setup_context-style autograd.Function) in the classic style, for calls
    outside torch.func transforms: the same forward, context and backward, without the
    per-call cost of the style torch.func needs (apply binds the arguments to forward's
    signature with inspect and checks for functorch wrappers: ~30 us, more than the kernel
    at N = 16)."""

    def forward(ctx, *args):
        output = function.forward(*args)
        function.setup_context(ctx, args, output)
        return output

    return type(function.__name__ + "Eager", (torch.autograd.Function,),
                {"forward": staticmethod(forward), "backward": staticmethod(function.backward)})


def apply_autograd(function, eager, *args):
    """`function` under torch.func transforms, else its `eager` twin (see eager)."""
    return (function if torch._C._are_functorch_transforms_active() else eager).apply(*args)


# ---------------------------------------------------------------- per-anchor reductions

REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction, function: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"{function}: reduction must be one of 'mean', 'sum', 'none', got {reduction!r}")


def check_weight(weight, rows: int, like: torch.Tensor, function: str, what: str) -> None:
    """weight: None, or a floating [rows] tensor on like's device (one per anchor row: `what`)."""
    if weight is None:
        return
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{function}: weight must be a torch.Tensor or None, got {type(weight).__name__}")
    if not weight.is_floating_point() or weight.shape != (rows,):
        raise ValueError(
            f"{function}: weight must be a floating-point tensor of shape ({rows},), one weight per {what}, "
            f"got a {weight.dtype} tensor of shape {tuple(weight.shape)}"
        )
    if weight.device != like.device:
        raise ValueError(f"{function}: weight must be on the same device as the features ({like.device}), got {weight.device}")


def reduce_rows(losses, weight, reduction: str, counted=None):
    """The per-anchor losses (times the weights) reduced: 'none' -> them, 'sum' -> their
    sum, 'mean' -> their sum over the sum of the counted anchors' weights (their number
    without weights).  `counted`: which anchors count (default: all)."""
    if weight is not None:
        losses = losses * weight.to(losses.dtype)
    if reduction == "none":
        return losses
    total = losses.sum()
    if reduction == "sum":
        return total
    if weight is None:
        norm = losses.new_tensor(losses.shape[0]) if counted is None else counted.sum().to(losses.dtype)
    else:
        w = weight.to(losses.dtype)
        norm = (w if counted is None else torch.where(counted, w, 0)).sum()
    return total / norm


# ---------------------------------------------------------------- ... across ranks (pyhypersphere.distributed)
#
# 'mean' and 'sum' are over the global batch's anchors, the same on every rank; each rank
# passes the weights of its own anchors (constants: a per-anchor weight that requires
# grad is single-process only); 'none' gives each rank its own anchors' losses.

NONE_NEEDS_SYNC = (
    "reduction='none' needs equal_shards=False: its backward is a collective, and only the "
    "checked path makes a failure raise on every rank before it"
)


def row_options(reduction, weight) -> dict:
    """The reduction and whether there are weights, as parameters every rank must agree
    on (an invalid reduction is reported by the loss's input check)."""
    index = float(REDUCTIONS.index(reduction)) if reduction in REDUCTIONS else -1.0
    return {"reduction": (index, None), "weighted": (float(weight is not None), None)}


def constant_weight_problem(weight) -> Optional[str]:
    if isinstance(weight, torch.Tensor) and weight.requires_grad and torch.is_grad_enabled():
        return "weight must not require grad across ranks (the weights are constants there)"
    return None
