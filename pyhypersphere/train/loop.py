"""The training loop: two augmented views per sample, align+uniform (or InfoNCE), SGD with
step decay, evaluation every epoch, JSON-lines log, atomic checkpoints, exact resume."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
import warnings
from dataclasses import fields
from pathlib import Path
from typing import Optional

import torch

from ..large_batch import chunked_backward
from . import augment as augment_mod
from . import checkpoint as ckpt
from . import data as data_mod
from . import evaluate as eval_mod
from . import interrupts
from . import losses
from . import models
from . import runlock
from .config import RESULT_FIELDS, TrainConfig
from .resources import auto_threads, choose_threads, pick_device  # noqa: F401  (auto_threads: public here too)

LOG = "metrics.jsonl"
SUMMARY = "summary.json"
RUN_FILES = (ckpt.CHECKPOINT, LOG, SUMMARY, "config.json", "curves.png", "circle.png")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or Inf; the run stopped and kept its last good checkpoint."""


class RunExistsError(RuntimeError):
    """The output folder already holds a run and neither resume nor overwrite was asked for."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM, SIGHUP: ``signum``) during a run; the message says what was kept
    and how to resume."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


def _warn(message: str) -> None:
    """A UserWarning attributed to the first caller outside this package (the user's
    ``train(...)`` line, or the command line's dispatcher), however deep it is raised."""
    here = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(0), 1
    while frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == here:
        frame, level = frame.f_back, level + 1
    warnings.warn(message, UserWarning, stacklevel=level)


# --------------------------------------------------------------------------- setup


def _init_distributed():
    """Join the torchrun process group when launched with WORLD_SIZE > 1."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    rank, world = losses.distributed_world()
    return rank, world, int(os.environ.get("LOCAL_RANK", "0"))


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def resolve_out(cfg: TrainConfig) -> Path:
    if cfg.out:
        return Path(cfg.out).expanduser()
    prefix = f"{cfg.dataset}-{cfg.loss}-"
    runs = Path("runs")
    if cfg.resume and runs.is_dir():  # resume the newest run of this kind
        found = sorted(p for p in runs.glob(prefix + "*") if (p / ckpt.CHECKPOINT).exists())
        if found:
            return found[-1]
    return runs / (prefix + time.strftime("%Y%m%d-%H%M%S"))


def _check_out(out: Path, cfg: TrainConfig) -> None:
    """Raise if ``out`` cannot take this run; writes nothing."""
    taken = [name for name in (ckpt.CHECKPOINT, SUMMARY, LOG) if (out / name).exists()]
    if taken and not cfg.resume and not cfg.overwrite:
        raise RunExistsError(
            f"{out} already holds a run ({', '.join(taken)}): pass --resume to continue it, "
            f"--overwrite to start over, or another --out"
        )
    if cfg.resume and not cfg.overwrite and not (out / ckpt.CHECKPOINT).exists():
        results = [name for name in (SUMMARY,) if (out / name).exists()] + [LOG] * _has_epoch_rows(out / LOG)
        if results:
            raise RunExistsError(
                f"--resume: {out} holds a run ({', '.join(results)}) but no {ckpt.CHECKPOINT} to continue it "
                f"from; pass --overwrite to start it over, or another --out"
            )


def _has_epoch_rows(path: Path) -> bool:
    """True if the log records a finished epoch (not only a stop event, nor nothing)."""
    try:
        with open(path) as f:
            return any('"train_loss"' in line for line in f)
    except FileNotFoundError:
        return False


def _make_out(out: Path) -> list:
    """Create ``out``; the folders this call created, deepest first."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"out {str(out)!r} exists and is not a folder")
    created = [p for p in [out, *out.parents] if not p.exists()]
    out.mkdir(parents=True, exist_ok=True)
    return created


def _clear_for_overwrite(out: Path, cfg: TrainConfig) -> None:
    if cfg.overwrite and not cfg.resume:
        for name in RUN_FILES:
            try:
                (out / name).unlink()
            except FileNotFoundError:
                pass


def _remove_unfinished(out: Path, mine) -> None:
    """Remove the files this invocation created (``mine``) for a run that ended before its
    first checkpoint; never anything that was there before."""
    for name in mine:
        try:
            (out / name).unlink()
        except FileNotFoundError:
            pass


def check_batch_size(batch_size: int, train_samples: int, world: int) -> None:
    if batch_size % world:
        raise ValueError(f"batch_size {batch_size} must be divisible by the number of processes {world}")
    if batch_size // world < 2:
        raise ValueError(f"batch_size {batch_size} gives each of the {world} processes fewer than 2 samples")
    if batch_size > train_samples:
        raise ValueError(f"batch_size {batch_size} is larger than the training set ({train_samples} samples)")


# Settings that may be changed on purpose when resuming (e.g. a lower lr after a NaN stop).
RESUME_OVERRIDES = ("lr", "epochs", "lr_milestones", "lr_gamma", "momentum", "weight_decay")


def _merge_resumed_config(cfg: TrainConfig, raw: TrainConfig, saved: dict) -> TrainConfig:
    """On resume the checkpoint's settings win, except the optimization settings in
    RESUME_OVERRIDES that the caller set explicitly (different from the defaults)."""
    default = TrainConfig()
    ignored, changed = [], []
    for name in RESULT_FIELDS:
        if name not in saved:
            continue
        given, theirs = getattr(raw, name), saved[name]
        if name == "lr_milestones":
            theirs = tuple(theirs)
        explicit = given != getattr(default, name) and given != theirs and getattr(cfg, name) != theirs
        if explicit and name in RESUME_OVERRIDES:
            changed.append(f"{name}={getattr(cfg, name)!r} (was {theirs!r})")
            continue
        if explicit:
            ignored.append(f"{name}={given!r} (the run uses {theirs!r})")
        setattr(cfg, name, theirs)
    if ignored:
        _warn("resuming: ignored settings that differ from the checkpoint: " + ", ".join(ignored))
    if changed:
        _warn(
            "resuming with changed settings: " + ", ".join(changed) + "; the result will differ from the "
            "uninterrupted run"
        )
    return cfg


def lr_at(cfg: TrainConfig, epoch: int) -> float:
    """Step decay: lr * gamma^(number of milestones passed); milestones are epoch fractions."""
    passed = sum(1 for m in cfg.lr_milestones if epoch >= int(round(m * cfg.epochs)))
    return cfg.lr * (cfg.lr_gamma**passed)


def _seed_for(seed: int, epoch: int, rank: int = 0, stream: int = 0) -> int:
    """Independent per-(seed, epoch, rank, stream) seeds: an epoch replays exactly on resume."""
    return (((seed * 1_000_003 + epoch) * 4099 + rank) * 7 + stream) % (2**63 - 1)


# --------------------------------------------------------------------------- one epoch


class _Objective:
    def __init__(self, cfg: TrainConfig, world: int):
        self.cfg = cfg
        self.world = world
        self.uniform, self.align, self.backend = losses.loss_functions()
        self.dist_uniform = losses.distributed_uniform_loss() if world > 1 else None
        # InfoNCE over the global batch too: each view's negatives are every rank's views.
        self.dist_nt_xent = losses.distributed_nt_xent_loss() if world > 1 else None
        self.dist_siglip = losses.distributed_siglip_loss() if world > 1 else None
        self.unif_scale: Optional[float] = None  # see _calibrate

    def _calibrate(self, z: torch.Tensor) -> float:
        """Scale for the distributed uniformity term so that, after DDP averages the gradients
        over ranks, the step is the exact gradient of the global-batch loss, whichever backward
        convention pyhypersphere.distributed uses (checked once against an all-gather)."""
        import torch.distributed as dist

        z = z.detach().float()
        parts = [torch.empty_like(z) for _ in range(self.world)]
        dist.all_gather(parts, z)
        rank = dist.get_rank()
        local = z.clone().requires_grad_(True)
        full = torch.cat(parts[:rank] + [local] + parts[rank + 1 :])
        (g_exact,) = torch.autograd.grad(self.uniform(full, self.cfg.t), local)
        local2 = z.clone().requires_grad_(True)
        (g_impl,) = torch.autograd.grad(self.dist_uniform(local2, self.cfg.t), local2)
        num = torch.stack([(g_impl * g_exact).sum(), g_exact.pow(2).sum()])
        dist.all_reduce(num)
        c = (num[0] / num[1].clamp_min(1e-30)).item()  # g_impl ~= c * g_exact
        if not math.isfinite(c) or c <= 0:
            raise RuntimeError(f"pyhypersphere.distributed.uniform_loss has an unexpected gradient (scale {c})")
        return self.world / c

    def _global_mean(self, local: torch.Tensor) -> torch.Tensor:
        """A per-sample mean over the global batch from each rank's (equal shards: the
        ranks' average), detached; the local value with one process."""
        local = local.detach()
        if self.world == 1:
            return local
        import torch.distributed as dist

        total = local.clone()
        dist.all_reduce(total)
        return total / self.world

    def __call__(self, z1: torch.Tensor, z2: torch.Tensor):
        """(loss for backward, loss value, align value, uniform value)."""
        cfg = self.cfg
        z1, z2 = z1.float(), z2.float()
        if cfg.loss in ("infonce", "siglip"):
            if cfg.loss == "siglip":
                loss = losses.siglip(z1, z2) if self.dist_siglip is None else self.dist_siglip(z1, z2, equal_shards=True)
            elif self.dist_nt_xent is None:
                loss = losses.info_nce(z1, z2, cfg.tau)
            else:
                loss = self.dist_nt_xent(z1, z2, cfg.tau, equal_shards=True)  # equal shards, as below
            with torch.no_grad():
                a = self._global_mean(self.align(z1, z2, cfg.alpha))
                if self.dist_uniform is None:
                    u = (self.uniform(z1, cfg.t) + self.uniform(z2, cfg.t)) / 2
                else:
                    u = sum(self.dist_uniform([z1, z2], cfg.t, equal_shards=True)) / 2
            return loss, loss.detach(), a, u
        a = self.align(z1, z2, cfg.alpha)
        if self.dist_uniform is None:
            u = (self.uniform(z1, cfg.t) + self.uniform(z2, cfg.t)) / 2
            loss = cfg.align_w * a + cfg.unif_w * u
            return loss, loss.detach(), a.detach(), u.detach()
        if self.unif_scale is None:
            self.unif_scale = self._calibrate(z1)
        # Both views in one call (one set of collectives); the shards are equal (the batch
        # size is a multiple of the world size), so the no-sync path applies.
        u1, u2 = self.dist_uniform([z1, z2], cfg.t, equal_shards=True)
        u = (u1 + u2) / 2
        loss = cfg.align_w * a + cfg.unif_w * u * self.unif_scale
        a = self._global_mean(a)  # the logged value: the global batch's, as the uniformity's
        value = cfg.align_w * a + cfg.unif_w * u.detach()
        return loss, value, a, u.detach()


def _check_finite(value: torch.Tensor, world: int) -> bool:
    ok = torch.isfinite(value).to(torch.float32).reshape(1)
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item() > 0)


def train_one_epoch(model, opt, objective, data, aug, pool, cfg, epoch, device, rank, world, progress):
    """One pass over the training pool; raises NonFiniteLossError at the first NaN/Inf loss."""
    b = cfg.batch_size
    check_batch_size(b, pool.shape[0], world)
    per_rank = b // world
    chunk = cfg.chunk_size or per_rank
    steps = pool.shape[0] // b
    perm = torch.randperm(pool.shape[0], generator=torch.Generator().manual_seed(_seed_for(cfg.seed, epoch)))
    g = torch.Generator(device=device).manual_seed(_seed_for(cfg.seed, epoch, rank, 1))
    sums = torch.zeros(3, dtype=torch.float64)
    bar = _progress(steps, f"epoch {epoch + 1}/{cfg.epochs}", progress and rank == 0)
    model.train()
    try:
        for step in range(steps):
            idx = perm[step * b + rank * per_rank : step * b + (rank + 1) * per_rank]
            xb = pool[idx].to(device, non_blocking=True)
            v1, v2 = aug(xb, g), aug(xb, g)
            opt.zero_grad(set_to_none=True)
            value, a, u = backward_step(model, objective, v1, v2, chunk, progress and rank == 0)
            if not _check_finite(value, world):
                raise NonFiniteLossError(f"the loss is {value.item()} at epoch {epoch + 1}, step {step + 1}")
            opt.step()
            sums += torch.tensor([value.item(), a.item(), u.item()], dtype=torch.float64)
            if bar is not None:
                bar.update(1)
                if step % 5 == 4 or step == steps - 1:
                    m = sums / (step + 1)
                    bar.set_postfix(loss=f"{m[0]:.4f}", align=f"{m[1]:.4f}", unif=f"{m[2]:.4f}", refresh=False)
    finally:
        if bar is not None:
            bar.close()
    m = (sums / steps).tolist()
    return {"train_loss": m[0], "train_align": m[1], "train_uniform": m[2], "steps": steps}


def backward_step(model, objective, v1, v2, chunk: int, progress: bool = False):
    """The gradient of one step's objective into the parameters' .grad; returns (loss value,
    align value, uniform value).  ``chunk`` < batch runs the encoder on ``chunk`` samples
    (both views) at a time, the loss still over the whole batch."""
    if chunk < v1.shape[0]:
        return _chunked_step(model, objective, v1, v2, chunk, progress)
    _, z = model(torch.cat([v1, v2]))  # one pass over both views, as the paper's code does
    z1, z2 = z.chunk(2)
    loss, value, a, u = objective(z1, z2)
    loss.backward()
    return value, a, u


def _paired_order(b: int, chunk: int, device) -> torch.Tensor:
    """Rows of ``cat([v1, v2])`` reordered so that each run of 2 * chunk rows holds both views
    of the same ``chunk`` samples: every encoder call sees both views together (BatchNorm
    statistics over both), as the unchunked step's single call over the whole batch does."""
    rows = torch.arange(b)
    parts = []
    for s in range(0, b, chunk):
        parts += [rows[s : s + chunk], rows[s : s + chunk] + b]
    return torch.cat(parts).to(device)


def _chunked_step(model, objective, v1, v2, chunk, progress):
    """Gradient of the full-batch objective with the encoder run on ``chunk`` samples (both
    views) at a time; returns (loss value, align value, uniform value)."""
    b = v1.shape[0]
    order = _paired_order(b, chunk, v1.device)
    restore = torch.argsort(order)
    values = {}

    def loss_fn(out):
        z1, z2 = out[1][restore].chunk(2)
        loss, values["value"], values["align"], values["uniform"] = objective(z1, z2)
        return loss

    calls = 2 * ((b + chunk - 1) // chunk)
    bar = _progress(calls, "chunks", progress)
    try:
        chunked_backward(
            model,
            [torch.cat([v1, v2])[order]],
            loss_fn,
            2 * chunk,
            on_chunk=(lambda done, total: bar.update(1)) if bar is not None else None,
        )
    finally:
        if bar is not None:
            bar.close()
    return values["value"], values["align"], values["uniform"]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _progress(total, desc, enabled):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)


def _say(msg: str, enabled: bool) -> None:
    if not enabled:
        return
    try:
        from tqdm.auto import tqdm

        tqdm.write(msg, file=sys.stderr)
    except ImportError:
        print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the run


def _write_log(path: Path, rows) -> None:
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    ckpt.atomic_write(path, lambda f: f.write(text), mode="w")


def _append_log(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")
        f.flush()


def train(config: Optional[TrainConfig] = None, **overrides) -> dict:
    """Train an encoder; returns the summary (also written to ``OUT/summary.json``)."""
    t_start = time.perf_counter()
    raw = config if config is not None else TrainConfig()
    if overrides:
        names = {f.name for f in fields(TrainConfig)}
        unknown = set(overrides) - names
        if unknown:
            raise TypeError(f"unknown TrainConfig fields: {', '.join(sorted(unknown))}")
        raw = dataclasses.replace(raw, **overrides)
    cfg = raw.resolved()
    threads_before = torch.get_num_threads()
    had_group = _group_exists()
    try:
        summary = _train(cfg, raw, t_start)
    finally:
        torch.set_num_threads(threads_before)
    if not had_group and _group_exists():
        # The group this call created (torchrun): a gloo group left to interpreter shutdown can
        # abort the process ("terminate called without an active exception": its worker threads
        # release tensors after Python is gone).  Only after success: on an error another rank
        # may still wait in a collective, and destroying would wait for it.
        import torch.distributed as dist

        dist.destroy_process_group()
    return summary


def _group_exists() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _train(cfg: TrainConfig, raw: TrainConfig, t_start: float) -> dict:
    # Everything that can reject the settings runs before the first write to the run folder
    # (rank 0 creates the folder to hold its lock, and removes it again if it refuses).
    rank, world, local_rank = _init_distributed()
    main = rank == 0
    device = pick_device(cfg.device, local_rank)

    out = resolve_out(cfg)
    if world > 1:  # the default folder name has a time stamp: take rank 0's
        import torch.distributed as dist

        box = [str(out)]
        dist.broadcast_object_list(box, src=0)
        out = Path(box[0])
    lock, created, before = None, [], set()
    state = _RunState(out)
    try:
        if main:
            created = _make_out(out)
            lock = runlock.RunLock(out).acquire()
            before = {name for name in RUN_FILES if (out / name).exists()}
            ckpt.remove_stale_temps(out, RUN_FILES)  # left by a killed writer: the lock says it is gone
            _check_out(out, cfg)
        saved = ckpt.load(out / ckpt.CHECKPOINT) if cfg.resume else None
        if saved is not None:
            cfg = _merge_resumed_config(cfg, raw, saved["config"])
            state.checkpoint_epoch = int(saved["epoch"])
        threads, threads_warning = choose_threads(cfg.threads, saved.get("threads") if saved else None, device)
        if threads_warning and main:
            _warn(threads_warning)
        if threads:
            torch.set_num_threads(int(threads))

        data = data_mod.load(cfg)
        pool = data.train_pool()
        check_batch_size(cfg.batch_size, pool.shape[0], world)
        aug = augment_mod.for_data(data, cfg.image_size)
        cfg.encoder = models.resolve_name(cfg.encoder, data, cfg.image_size)
        torch.manual_seed(cfg.seed)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        model = models.build(cfg.encoder, data, cfg.feature_dim, cfg.image_size).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        objective = _Objective(cfg, world)

        start_epoch, history, elapsed_before = 0, [], 0.0
        if saved is not None:
            model.load_state_dict(saved["model"])
            opt.load_state_dict(saved["optimizer"])
            start_epoch, history = int(saved["epoch"]), list(saved["history"])
            elapsed_before = float(saved.get("elapsed", 0.0))
        elif cfg.resume and main:
            _say(f"--resume: no checkpoint in {out}, starting a new run", cfg.verbose)

        if main:
            _clear_for_overwrite(out, cfg)
            before = {name for name in RUN_FILES if (out / name).exists()}
        _barrier(world)
        return _run_epochs(
            cfg, out, data, aug, pool, model, opt, objective, device, rank, world,
            start_epoch, history, elapsed_before, saved, t_start, state,
        )  # fmt: skip
    except KeyboardInterrupt as e:
        if isinstance(e, TrainingInterrupted):
            raise
        raise TrainingInterrupted(f"interrupted {state.where}: {state.kept()}", interrupts.signal_of(e)) from None
    finally:
        if lock is not None:
            unfinished = state.checkpoint_epoch is None  # no empty or half-written run left behind
            if unfinished:
                _remove_unfinished(out, [name for name in RUN_FILES if name not in before])
            lock.release()
            for folder in created if unfinished else []:
                try:
                    folder.rmdir()
                except OSError:
                    break  # something else is in there: leave it


class _RunState:
    """What a run has kept so far, for the message of an interrupted or failed run."""

    def __init__(self, out: Path):
        self.out = out
        self.checkpoint_epoch: Optional[int] = None  # the epoch of the checkpoint on disk
        self.where = "before training started"

    def kept(self) -> str:
        if self.checkpoint_epoch is None:
            return "no epoch had finished, nothing was kept"
        return (
            f"the checkpoint after epoch {self.checkpoint_epoch} is kept ({self.out / ckpt.CHECKPOINT}); continue "
            f"with `pyhypersphere train --resume --out {self.out}`"
        )


def _run_epochs(
    cfg, out, data, aug, pool, model, opt, objective, device, rank, world, start_epoch, history, elapsed_before,
    saved, t_start, state,
) -> dict:  # fmt: skip
    main = rank == 0
    log_path = out / LOG
    if main:
        _write_log(log_path, history)  # drops lines of an epoch that never reached its checkpoint
        ckpt.write_json(out / "config.json", {**cfg.to_dict(), "loss_backend": objective.backend})

    train_model = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    if device.type == "cuda" and pool.numel() * pool.element_size() < (4 << 30):
        pool = pool.to(device)  # small enough: keep the whole training set on the GPU
    _say(
        f"training {cfg.encoder} on {data.name} ({pool.shape[0]} training / {data.x_test.shape[0]} held-out samples), "
        f"loss {cfg.loss} [{objective.backend}], {_count(cfg.epochs, 'epoch')}, batch {cfg.batch_size}"
        + (f" in chunks of {cfg.chunk_size}" if cfg.chunk_size and cfg.chunk_size < cfg.batch_size else "")
        + f", lr {cfg.lr:g}, "
        f"device {device}{f' x{world}' if world > 1 else ''}"
        + (f" ({_count(torch.get_num_threads(), 'thread')})" if device.type == "cpu" else "")
        + f", out {out}"
        + (f"; resuming after epoch {start_epoch}" if start_epoch else ""),
        main and cfg.verbose,
    )

    last_eval = None
    for epoch in range(start_epoch, cfg.epochs):
        state.where = f"during epoch {epoch + 1}"
        t0 = time.perf_counter()
        lr = lr_at(cfg, epoch)
        for group in opt.param_groups:
            group["lr"] = lr
        try:
            stats = train_one_epoch(
                train_model, opt, objective, data, aug, pool, cfg, epoch, device, rank, world, cfg.progress
            )
            _check_resumable(model, opt, data, pool, cfg, device, world, epoch)
            train_seconds = time.perf_counter() - t0
            row = {"epoch": epoch + 1, "lr": lr, **stats, "train_seconds": round(train_seconds, 3)}
            if main and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
                state.where = f"while evaluating epoch {epoch + 1}"
                last_eval = eval_mod.evaluate(model, data, aug, device, cfg)
                row.update(last_eval)
        except (NonFiniteLossError, eval_mod.NonFiniteFeatures) as e:
            if main:
                _append_log(log_path, {"event": "nonfinite_loss", "epoch": epoch + 1, "message": str(e)})
            raise NonFiniteLossError(f"{e}: training stopped; {_where_good(state)}.") from None
        row["epoch_seconds"] = round(time.perf_counter() - t0, 3)
        row["elapsed_seconds"] = round(elapsed_before + time.perf_counter() - t_start, 3)
        history.append(row)
        if main:
            state.where = f"while writing the checkpoint of epoch {epoch + 1}"
            checkpoint = {
                "format": 1,
                "epoch": epoch + 1,
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "config": cfg.to_dict(),
                "history": history,
                "elapsed": row["elapsed_seconds"],
                "loss_backend": objective.backend,
                "torch": str(torch.__version__),  # a str: TorchVersion is not a plain value
                "threads": torch.get_num_threads(),  # reused on resume: the rounding depends on it
            }
            ckpt.save(out / ckpt.CHECKPOINT, checkpoint)
            state.checkpoint_epoch = epoch + 1
            _append_log(log_path, row)
            _say(_epoch_line(row, cfg), cfg.verbose)
        _barrier(world)

    state.where = "after the last epoch, before the summary was written"
    if not main:
        return {}
    if last_eval is None:  # resumed a finished run: evaluate the saved model once more
        try:
            last_eval = eval_mod.evaluate(model, data, aug, device, cfg)
        except eval_mod.NonFiniteFeatures as e:
            raise NonFiniteLossError(f"{e}: {_where_good(state)}.") from None
    plots = _plots(cfg, out, history, model, data, device)
    final = history[-1] if history else {}
    summary = {
        **{
            k: last_eval[k]
            for k in ("linear_probe_acc", "knn_acc", "linear_probe_acc_output", "knn_acc_output", "align", "uniform")
            + tuple(eval_mod.FIXED_METRIC_KEYS)
        },
        "seconds": round(time.perf_counter() - t_start, 3),
        "seconds_all_sessions": round(elapsed_before + time.perf_counter() - t_start, 3),
        "epochs": cfg.epochs,
        "resumed_from_epoch": start_epoch if saved is not None else None,
        "train_loss": final.get("train_loss"),
        "dataset": data.name,
        "train_samples": int(pool.shape[0]),
        "test_samples": int(data.x_test.shape[0]),
        "loss": cfg.loss,
        "loss_backend": objective.backend,
        "encoder": cfg.encoder,
        "feature_dim": cfg.feature_dim,
        "batch_size": cfg.batch_size,
        "chunk_size": min(cfg.chunk_size or cfg.batch_size, cfg.batch_size),
        "device": str(device),
        "world_size": world,
        "threads": torch.get_num_threads(),
        "torch": str(torch.__version__),
        "seed": cfg.seed,
        "knn_k": cfg.knn_k,
        "layers": "linear_probe_acc/knn_acc: penultimate layer; *_output: the normalized output",
        "plots": plots,
        "out": str(out),
    }
    ckpt.write_json(out / SUMMARY, summary)
    return summary


def _where_good(state: _RunState) -> str:
    if state.checkpoint_epoch is None:
        return "no checkpoint had been written yet"
    return (
        f"the last good checkpoint ({state.out / ckpt.CHECKPOINT}, after epoch {state.checkpoint_epoch}) is kept; "
        f"lower --lr or check the data, then run again with --resume"
    )


def _check_resumable(model, opt, data, pool, cfg, device, world, epoch) -> None:
    """Raise NonFiniteLossError unless the state after ``epoch`` is one the trainer can go on
    from: parameters, buffers and optimizer state finite, and the model's output on a
    training batch, and the running statistics that forward gives, finite.  The loss check
    before each step cannot see a step that diverges on an epoch's last step (with one step
    per epoch, every divergence): its parameters can be finite yet so large that the next
    forward overflows.  The probe runs in training mode without a gradient; running
    statistics and generators are restored after it."""
    reason = None
    named = list(model.state_dict().items()) + [
        (f"optimizer {key}", t) for s in opt.state.values() for key, t in s.items() if isinstance(t, torch.Tensor)
    ]
    for name, t in named:
        if t.is_floating_point() and not torch.isfinite(t).all():
            reason = f"{name} is not finite after epoch {epoch + 1}"
            break
    if reason is None:
        probe = data.eval_view(pool[: cfg.batch_size // world].to(device))
        buffers = [(b, b.clone()) for b in model.buffers()]
        gpus = [device.index or 0] if device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=gpus):
            _, z = model(probe)
        overflowed = not torch.isfinite(z).all() or any(
            b.is_floating_point() and not torch.isfinite(b).all() for b, _ in buffers
        )  # e.g. a running variance that overflows while the normalized output stays finite
        for b, value in buffers:
            b.copy_(value)
        if overflowed:
            reason = f"the parameters after epoch {epoch + 1} overflow in the next forward (a step diverged)"
    if not _check_finite(torch.tensor(math.nan if reason else 0.0), world):  # every rank stops together
        raise NonFiniteLossError(reason or f"another process's parameters diverged in epoch {epoch + 1}")


def _epoch_line(row: dict, cfg: TrainConfig) -> str:
    s = (
        f"epoch {row['epoch']:>3}/{cfg.epochs}  loss {row['train_loss']:.4f}  "
        f"align {row['train_align']:.4f}  unif {row['train_uniform']:.4f}"
    )
    if "linear_probe_acc" in row:
        s += (
            f" | held out: linear {row['linear_probe_acc']:.3f} ({row['linear_probe_acc_output']:.3f} out)"
            f"  {cfg.knn_k}-NN {row['knn_acc']:.3f} ({row['knn_acc_output']:.3f} out)"
            f"  align {row['align']:.4f}  unif {row['uniform']:.4f}"
        )
    return s + f"  [{row['epoch_seconds']:.1f}s]"


def _plots(cfg, out: Path, history, model, data, device) -> list:
    if not cfg.plots:
        return []
    from . import plots

    made = []
    title = f"{data.name}, {cfg.loss}, {cfg.encoder}, seed {cfg.seed}"
    try:
        p = plots.training_curves(history, out / "curves.png", title)
        if p:
            made.append(p.name)
        if cfg.feature_dim == 2:
            _, o = eval_mod.features(model, data, data.x_test, device)
            made.append(plots.circle(o, data.y_test, data.class_names, out / "circle.png", title).name)
    except plots.PlotsUnavailable as e:
        _say(f"note: {e}", True)
    return made
