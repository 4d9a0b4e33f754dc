"""`pyhypersphere train ...`: the dispatcher calls ``add_arguments(parser)`` and ``main(args)``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

from . import interrupts
from .config import DATASETS, LOSSES, TrainConfig

_D = TrainConfig()


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" only where it informs: not for switches (--no-plots has no
    default to show), not for None (the help says what unset means), not when the help
    already gives the default."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.nargs == 0 or action.default is None or "default" in text:
            return text
        return super()._get_help_string(action)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = _DefaultsFormatter
    parser.description = (
        "Train an encoder with Wang & Isola's alignment + uniformity loss (or InfoNCE) on two "
        "augmented views per sample; evaluates a linear probe, k-NN and the alignment/uniformity "
        "metrics on the held-out split every epoch. Everything goes to --out."
    )
    d = parser.add_argument_group("data")
    d.add_argument(
        "--dataset",
        choices=DATASETS,
        default=_D.dataset,
        help="mnist1d: generated locally; digits: scikit-learn's; folder: --data-dir ROOT/<class>/<files>; "
        "stl10: a local torchvision copy under --data-dir",
    )
    d.add_argument("--data-dir", default=None, help="folder/stl10 root")
    d.add_argument("--num-samples", type=int, default=_D.num_samples, help="mnist1d samples (80%% train, 20%% test)")
    d.add_argument("--test-fraction", type=float, default=_D.test_fraction, help="held-out fraction (digits, folder)")
    d.add_argument(
        "--image-size", type=int, default=None, help="folder images are resized to this; stl10 crop size (64)"
    )
    o = parser.add_argument_group("objective")
    o.add_argument("--loss", choices=LOSSES, default=_D.loss)
    o.add_argument("--align-w", type=float, default=_D.align_w, help="weight of the alignment term")
    o.add_argument("--unif-w", type=float, default=_D.unif_w, help="weight of the uniformity term")
    o.add_argument("--alpha", type=float, default=_D.alpha, help="alignment exponent")
    o.add_argument("--t", type=float, default=_D.t, help="uniformity potential scale")
    o.add_argument("--tau", type=float, default=_D.tau, help="InfoNCE temperature")
    m = parser.add_argument_group("model and optimization (unset: the dataset's preset)")
    m.add_argument("--encoder", choices=("conv1d", "conv2d", "small_alexnet", "mlp", "auto"), default=None)
    m.add_argument("--feature-dim", type=int, default=None, help="output dimension; 2 also draws circle.png")
    m.add_argument("--epochs", type=int, default=None)
    m.add_argument("--batch-size", type=int, default=None, help="global batch (split over torchrun processes)")
    m.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help="samples per encoder call (both views of each), when smaller than the batch: the loss still "
        "sees the whole batch (gradient caching, pyhypersphere.large_batch); default: the whole batch",
    )
    m.add_argument("--lr", type=float, default=None, help="default 0.12 * batch / 256")
    m.add_argument("--momentum", type=float, default=_D.momentum)
    m.add_argument("--weight-decay", type=float, default=_D.weight_decay)
    m.add_argument(
        "--lr-milestones",
        type=float,
        nargs="*",
        default=list(_D.lr_milestones),
        help="epochs (as fractions of --epochs) where the lr is multiplied by --lr-gamma",
    )
    m.add_argument("--lr-gamma", type=float, default=_D.lr_gamma)
    e = parser.add_argument_group("evaluation")
    e.add_argument("--eval-every", type=int, default=_D.eval_every, help="epochs between evaluations (the last always)")
    e.add_argument("--knn-k", type=int, default=_D.knn_k)
    r = parser.add_argument_group("run")
    r.add_argument("--out", default=None, help="run folder (default runs/<dataset>-<loss>-<time>)")
    r.add_argument("--seed", type=int, default=_D.seed)
    r.add_argument(
        "--device",
        default=_D.device,
        help="auto (cuda, then mps, then cpu), cpu, cuda (under torchrun: the process's GPU), cuda:N or mps",
    )
    r.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads, at least 1 (default: torch's, or fewer when the CPU is already busy; "
        "on --resume, the count the run used)",
    )
    r.add_argument("--resume", action="store_true", help="continue the run in --out (default: the newest in runs/)")
    r.add_argument("--overwrite", action="store_true", help="replace a finished or interrupted run in --out")
    r.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    r.add_argument("--quiet", dest="verbose", action="store_false", help="no line per epoch either")
    r.add_argument("--no-plots", dest="plots", action="store_false", help="skip the PNG plots")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    names = set(TrainConfig.__dataclass_fields__)
    kwargs = {k: v for k, v in vars(args).items() if k in names}
    if "lr_milestones" in kwargs:
        kwargs["lr_milestones"] = tuple(kwargs["lr_milestones"])
    return TrainConfig(**kwargs)


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line for the command line (no file:line of the library's caller)."""
    print(f"pyhypersphere train: warning: {message}", file=sys.stderr)


def main(args: argparse.Namespace) -> int:
    code, summary = train_reporting(config_from_args(args))
    if summary:  # rank 0 only under torchrun
        keys = (
            "linear_probe_acc",
            "knn_acc",
            "linear_probe_acc_output",
            "knn_acc_output",
            "align",
            "uniform",
            "seconds",
        )
        print(json.dumps({k: summary[k] for k in keys} | {"out": summary["out"]}, indent=2))
    return code


def train_reporting(config, prog: str = "pyhypersphere train"):
    """``train(config)`` for a command line: (exit status, summary or None).  Every failure
    ends in one line on stderr; SIGTERM and SIGHUP stop the run as Ctrl-C does.  Exit status:
    0 done, 1 an OS error (full disk, unwritable folder), 2 a setting, the data, the run
    folder or its checkpoint, 3 the loss diverged, 128 + the signal when interrupted."""
    from .checkpoint import CheckpointError
    from .data import DataError
    from .loop import NonFiniteLossError, RunExistsError, train
    from .runlock import RunLockedError

    try:
        with warnings.catch_warnings(), interrupts.signals_as_interrupts():
            warnings.showwarning = _print_warning
            return 0, train(config)
    except NonFiniteLossError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 3, None
    except (RunExistsError, RunLockedError, CheckpointError, DataError, ValueError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2, None
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        print(f"{prog}: error: {where}{e.strerror or e}{_KEPT}", file=sys.stderr)
        return 1, None
    except KeyboardInterrupt as e:  # TrainingInterrupted says what was kept
        print(f"{prog}: {str(e) or 'interrupted'}", file=sys.stderr)
        return interrupts.exit_code(e), None


_KEPT = " (the run's last good checkpoint, if it had one, is kept)"


def run(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pyhypersphere.train")
    add_arguments(parser)
    return main(parser.parse_args(argv))


def exit_process(code: int) -> None:
    """``sys.exit(code)`` for the command-line entry points, except that a process of a
    multi-process run (WORLD_SIZE > 1, as torchrun sets) that succeeded leaves without
    finalizing the interpreter: a gloo worker thread can still be releasing the last
    collective's work when the group is destroyed, and if that happens during finalization
    its destructor needs the GIL and the process aborts ("terminate called without an
    active exception", about 1 run in 15 of a 2-process run; torch's behaviour).  Every
    output is flushed and the run's files are closed by then."""
    if code == 0 and os.environ.get("WORLD_SIZE", "1") not in ("", "0", "1"):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    sys.exit(code)

