"""Large-batch steps on one device: the encoder runs in chunks, the loss sees the whole batch.

    from pyhypersphere.large_batch import chunked_backward
    opt.zero_grad()
    loss = chunked_backward(model, [view1, view2], objective, chunk_size=1024)
    opt.step()

Uniformity and contrastive losses couple every sample of the batch, so gradient
accumulation over micro-batches optimizes a different (per-micro-batch) loss.  Gradient
caching (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory
Limited Setup") keeps the full-batch loss and still holds the encoder's activations for
one chunk at a time:

1. embed every view chunk by chunk under ``torch.no_grad()`` (no graph is kept),
2. evaluate the loss on the full-batch features and its gradient with respect to them
   (O(B * d) memory with the fused losses),
3. re-run each chunk with a graph and back-propagate its slice of that gradient.

The encoder's forward runs twice (measured on the trainer's MNIST-1D step: 1.4x the time
of as many plain steps of ``chunk_size`` samples, docs/large_batch.md); the peak memory is
that of a plain step at ``chunk_size`` plus the features of the whole batch and their
gradient (measured: 1.3x a plain batch-1024 step at B = 16384).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable, Optional, Sequence

import torch

_FUNCTION = "pyhypersphere.large_batch.chunked_backward"
# Where the running statistics of normalization layers (BatchNorm...) are updated.
BATCHNORM_STATS = ("first_pass", "both_passes")
# Buffers a module with ``track_running_stats`` updates in a training-mode forward.
_RUNNING_STAT_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


# --------------------------------------------------------------------------- batches


def _leaves(obj: Any) -> list:
    """The tensors of a view or of a model output (a tensor, or a tuple/list/dict of them)."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for item in obj for t in _leaves(item)]
    if isinstance(obj, dict):
        return [t for item in obj.values() for t in _leaves(item)]
    return []


def _map(obj: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    """``obj`` with every tensor replaced by ``fn(tensor)``, other values kept."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, (tuple, list)):
        mapped = [_map(item, fn) for item in obj]
        return type(obj)(mapped) if not hasattr(obj, "_fields") else type(obj)(*mapped)
    if isinstance(obj, dict):
        return type(obj)((k, _map(v, fn)) for k, v in obj.items())
    return obj


def _batch_size(view: Any, index: int) -> int:
    tensors = _leaves(view)
    if not tensors:
        raise TypeError(
            f"{_FUNCTION}: views[{index}] must be a tensor or a tuple/list/dict of tensors, got {type(view).__name__}"
        )
    sizes = {t.shape[0] if t.dim() > 0 else None for t in tensors}
    if None in sizes:
        raise ValueError(f"{_FUNCTION}: views[{index}] holds a 0-dim tensor; every input needs a batch dimension")
    if len(sizes) > 1:
        raise ValueError(
            f"{_FUNCTION}: the tensors of views[{index}] have different batch sizes {sorted(sizes)}; "
            "they must share their first dimension"
        )
    return sizes.pop()


def _check_arguments(model, views, loss_fn, chunk_size, batchnorm_stats) -> int:
    """Validates the arguments; returns the batch size B shared by every view."""
    if not callable(model):
        raise TypeError(f"{_FUNCTION}: model must be a module or a callable, got {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"{_FUNCTION}: loss_fn must be callable, got {type(loss_fn).__name__}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise TypeError(f"{_FUNCTION}: chunk_size must be an int, got {type(chunk_size).__name__}")
    if chunk_size < 1:
        raise ValueError(f"{_FUNCTION}: chunk_size must be at least 1, got {chunk_size}")
    if batchnorm_stats not in BATCHNORM_STATS:
        raise ValueError(
            f"{_FUNCTION}: batchnorm_stats must be one of {', '.join(BATCHNORM_STATS)}, got {batchnorm_stats!r}"
        )
    if isinstance(views, (torch.Tensor, dict)) or not isinstance(views, Sequence) or len(views) == 0:
        raise TypeError(
            f"{_FUNCTION}: views must be a non-empty list or tuple of views (one per model call), "
            f"got {type(views).__name__}; wrap a single view as [view]"
        )
    sizes = [_batch_size(v, i) for i, v in enumerate(views)]
    if len(set(sizes)) > 1:
        raise ValueError(
            f"{_FUNCTION}: every view must have the same batch size B, got {sizes} for views 0..{len(views) - 1}"
        )
    if sizes[0] < 1:
        raise ValueError(f"{_FUNCTION}: the views are empty (batch size 0)")
    if not torch.is_grad_enabled():
        raise RuntimeError(f"{_FUNCTION}: grad mode is disabled (torch.no_grad()?); it back-propagates a loss")
    return sizes[0]


def _call(model, chunk):
    """tensor -> model(x); tuple/list -> model(*x); dict -> model(**x)."""
    if isinstance(chunk, dict):
        return model(**chunk)
    if isinstance(chunk, (tuple, list)) and not hasattr(chunk, "_fields"):
        return model(*chunk)
    return model(chunk)


def _concat(outputs: list) -> Any:
    """The per-chunk outputs of one view joined along the batch dimension."""
    first = outputs[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(outputs)
    if isinstance(first, (tuple, list)):
        joined = [_concat([o[i] for o in outputs]) for i in range(len(first))]
        return type(first)(joined) if not hasattr(first, "_fields") else type(first)(*joined)
    if isinstance(first, dict):
        return type(first)((k, _concat([o[k] for o in outputs])) for k in first)
    return first  # a non-tensor output (a constant): taken from the first chunk


# --------------------------------------------------------------------------- state kept in step


class _RngReplay:
    """CPU and CUDA generator states recorded before a chunk's first pass, restored for its
    second, so dropout and other stochastic layers draw the same numbers in both.  CUDA: the
    current device and the devices of the inputs (as torch.utils.checkpoint does), so no
    context is created on devices the step does not use."""

    def __init__(self, views):
        self.devices = sorted({t.device.index for v in views for t in _leaves(v) if t.is_cuda})

    def _cuda_devices(self):
        if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
            return []
        return sorted(set(self.devices) | {torch.cuda.current_device()})

    def record(self):
        cuda = [(i, torch.cuda.get_rng_state(i)) for i in self._cuda_devices()]
        return torch.get_rng_state(), cuda

    def restore(self, state) -> None:
        cpu, cuda = state
        torch.set_rng_state(cpu)
        for i, value in cuda:
            torch.cuda.set_rng_state(value, i)


def _running_stats(model) -> list:
    """(tensor, saved copy) for every running statistic a training-mode forward updates."""
    if not isinstance(model, torch.nn.Module):
        return []
    saved = []
    for module in model.modules():
        if module.training and getattr(module, "track_running_stats", False):
            for name in _RUNNING_STAT_BUFFERS:
                buffer = getattr(module, name, None)
                if isinstance(buffer, torch.Tensor):
                    saved.append((buffer, buffer.detach().clone()))
    return saved


def _sync_contexts(model, chunks: int):
    """DDP: ``no_sync`` for every backward but the last, which all-reduces the sum."""
    no_sync = getattr(model, "no_sync", None)
    for i in range(chunks):
        yield no_sync() if no_sync is not None and i < chunks - 1 else nullcontext()


def _backward_chunk(model, chunk, part: slice, pairs) -> None:
    """Runs the model on one chunk with a graph and back-propagates, from each output the loss
    used, its rows ``part`` of the full-batch gradient; ``pairs``: (first-pass output, gradient)."""
    out = _leaves(_call(model, chunk))
    if len(out) != len(pairs):
        raise RuntimeError(
            f"{_FUNCTION}: the model returned {len(out)} tensors in the second pass and "
            f"{len(pairs)} in the first; its output must not depend on anything but the input"
        )
    rows = part.stop - part.start
    roots, seeds = [], []
    for o, (whole, g) in zip(out, pairs):
        if g is None:
            continue  # an output the loss does not use
        if o.shape[0] != rows or o.shape[1:] != whole.shape[1:]:
            raise RuntimeError(
                f"{_FUNCTION}: the model's output has shape {tuple(o.shape)} in the second pass "
                f"and a slice of shape {(rows, *whole.shape[1:])} in the first"
            )
        if not o.requires_grad:
            raise ValueError(
                f"{_FUNCTION}: the model's output does not require grad (no trainable "
                "parameter reaches it, or the model runs under torch.no_grad())"
            )
        roots.append(o)
        seeds.append(g[part])
    torch.autograd.backward(roots, seeds)


# --------------------------------------------------------------------------- the step


def chunked_backward(
    model: Callable,
    views: Sequence[Any],
    loss_fn: Callable[..., torch.Tensor],
    chunk_size: int,
    *,
    batchnorm_stats: str = "first_pass",
    scaler: Optional[Any] = None,
    on_chunk: Optional[Callable[[int, int], None]] = None,
) -> torch.Tensor:
    """Back-propagates ``loss_fn(*[model(v) for v in views])`` running the model on at most
    ``chunk_size`` samples at a time; returns the loss, detached.

    Args:
        model: a module (DDP-wrapped or not) or any callable mapping a batch to features: a
            tensor, or a tuple/list/dict of tensors whose first dimension is the batch.
        views: a list of inputs of the same batch size B, one model call each: a tensor
            (``model(x)``), a tuple/list (``model(*x)``) or a dict (``model(**x)``) of tensors
            sharing their first dimension.
        loss_fn: ``loss_fn(*features)`` -> a scalar tensor, where ``features[i]`` is the
            model's output for the whole of ``views[i]`` (the chunks concatenated).  It may
            couple all samples (uniformity, InfoNCE) and may be a collective
            (``pyhypersphere.distributed.uniform_loss``).
        chunk_size: samples per model call; need not divide B (the last chunk is smaller).
        batchnorm_stats: ``"first_pass"`` (default) restores, after the second pass, the
            running statistics of every layer with ``track_running_stats`` (BatchNorm,
            SyncBatchNorm, InstanceNorm with tracking) to their values after the first
            pass, so each chunk updates them once, as a plain step on it would;
            ``"both_passes"`` leaves PyTorch's behaviour (every chunk updates them twice).
        scaler: a ``torch.amp.GradScaler``: the backward uses ``scaler.scale(loss)``; call
            ``scaler.step(opt)`` and ``scaler.update()`` after, as usual.
        on_chunk: called as ``on_chunk(done, total)`` after each chunk of either pass
            (``total`` = 2 x chunks x views), e.g. for a progress bar.

    The parameters' ``.grad`` accumulate (add to what is there, as ``backward`` does) the
    gradient of the full-batch loss, exactly as after ``loss_fn(*[model(v) for v in
    views]).backward()`` for a model whose forward treats samples independently (no
    BatchNorm in training mode), up to floating-point summation order.  That holds for the
    parameters ``loss_fn`` itself uses too (e.g. ``nn.CLIPLoss(learn_tau=True)``'s
    ``logit_scale``, a projection head applied inside it): they get their gradient from
    the full-batch loss, once, with any chunk size.

    When it raises (the model or ``loss_fn`` fails on some chunk, e.g. out of memory), the
    ``.grad`` of the parameters of ``model`` (and of ``loss_fn`` when it is a module) are
    as they were before the call, the chunks already back-propagated undone: a retry
    without ``zero_grad`` (say, with smaller chunks) gives the right sum.

    Randomness: the CPU and CUDA generator states are recorded before each chunk's first
    pass and restored for its second, so dropout draws the same masks in both passes
    (masks differ from an unchunked step's, which draws them for all B rows at once).
    Generators passed explicitly to random ops inside the model are not replayed.

    BatchNorm in training mode normalizes each chunk with the chunk's statistics (both
    passes see the same chunk, so the gradient is consistent, but it is not the gradient
    of a step that normalizes over all B); see ``batchnorm_stats`` for the running ones.

    autocast: call it inside ``torch.autocast(...)``; both passes and the loss run under it.
    DDP: every backward but the last runs under ``model.no_sync()``, so gradients are
    all-reduced once, after the last chunk (and buffers broadcast once per step: DDP does
    that only in forwards that follow a synchronized backward); ranks may run different
    numbers of chunks (different local B, e.g. the last batch of an epoch).
    """
    batch = _check_arguments(model, views, loss_fn, chunk_size, batchnorm_stats)
    grads_before = _saved_grads(model, loss_fn)
    try:
        return _chunked_backward(model, views, loss_fn, chunk_size, batch, batchnorm_stats, scaler, on_chunk)
    except BaseException:
        for p, grad in grads_before:  # a retry (e.g. smaller chunks after running out of memory) starts clean
            p.grad = grad
        raise


def _saved_grads(*owners) -> list:
    """(parameter, a copy of its .grad or None) for the parameters of the modules among
    ``owners``; no copy is made for the usual ``zero_grad(set_to_none=True)`` state."""
    saved = {}
    for owner in owners:
        if isinstance(owner, torch.nn.Module):
            for p in owner.parameters():
                if id(p) not in saved:
                    saved[id(p)] = (p, None if p.grad is None else p.grad.detach().clone())
    return list(saved.values())


def _chunked_backward(model, views, loss_fn, chunk_size, batch, batchnorm_stats, scaler, on_chunk) -> torch.Tensor:
    starts = list(range(0, batch, chunk_size))
    slices = [slice(s, min(s + chunk_size, batch)) for s in starts]
    total = 2 * len(slices) * len(views)
    done = 0

    def tick():
        nonlocal done
        done += 1
        if on_chunk is not None:
            on_chunk(done, total)

    # 1. Features of every chunk without a graph, recording the generators before each.
    rng = _RngReplay(views)
    states, features = [], []
    with torch.no_grad():
        for view in views:
            outputs = []
            for part in slices:
                states.append(rng.record())
                outputs.append(_call(model, _map(view, lambda t: t[part])))
                tick()
            features.append(_concat(outputs))
            del outputs
    keep_stats = _running_stats(model) if batchnorm_stats == "first_pass" else []

    # 2. The loss on the full batch and its gradient with respect to the features.
    features = [_map(f, lambda t: t.detach().requires_grad_(t.is_floating_point())) for f in features]
    leaves = [t for f in features for t in _leaves(f) if t.requires_grad]
    loss = loss_fn(*features)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        what = f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(f"{_FUNCTION}: loss_fn must return a scalar tensor (one element), got {what}")
    if not loss.requires_grad:
        raise ValueError(
            f"{_FUNCTION}: the loss does not require grad: loss_fn(*features) must be computed from "
            "the features it is given (floating-point model outputs), not from detached copies"
        )
    scaled = scaler.scale(loss) if scaler is not None else loss
    # A plain backward, not autograd.grad on the features alone: every parameter loss_fn
    # uses (a learned temperature such as CLIP's logit_scale, a bias, a loss head)
    # accumulates its .grad here, as in an unchunked step; the features are fresh leaves
    # of this graph, so their .grad is the gradient the second pass needs.
    scaled.reshape(()).backward()
    grad_of = {id(t): t.grad for t in leaves}
    for i, f in enumerate(features):
        if all(grad_of.get(id(t)) is None for t in _leaves(f)):
            raise ValueError(f"{_FUNCTION}: the loss does not depend on the model's output for views[{i}]")
    loss = loss.detach()
    del leaves, scaled
    after_loss = rng.record()  # where the generators continue once the step is done

    # 3. Each chunk again with a graph, the same random numbers, and its slice of the gradient.
    try:
        syncs = _sync_contexts(model, len(slices) * len(views))
        index = 0
        for view, feats in zip(views, features):
            pairs = [(t, grad_of.get(id(t))) for t in _leaves(feats)]
            for part in slices:
                rng.restore(states[index])
                index += 1
                with next(syncs):
                    _backward_chunk(model, _map(view, lambda t: t[part]), part, pairs)
                tick()
    finally:  # also when the model raises: the generators and running statistics as promised
        rng.restore(after_loss)
        for buffer, value in keep_stats:
            buffer.copy_(value)
    return loss
