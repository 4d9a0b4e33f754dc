"""`pyhypersphere bench`: sweep sizes, dtypes, devices and implementations; write
results.json, results.csv, PNG plots and a table to --out.

Example:  pyhypersphere bench --device cpu --n 1024,4096 --d 128 --out bench-out
          pyhypersphere bench --loss clip --n 4096,16384 --impl pyhypersphere,dense
"""

import argparse
import os
import platform
import sys

from . import memory, peers
from .contrastive import CONTRASTIVE_IMPLS, DEFAULT_TAU, LOSSES, UNIFORM, tau_for
from .impls import IMPLS, ROOFLINE
from .record import CaseSpec
from .sweep import ISOLATIONS
from ..machine import cpu_model
from .timing import MIN_SAMPLES

_DEFAULTS = CaseSpec(impl="", n=0, d=0, dtype="", device="")  # one source for the measurement defaults
DEFAULT_N = "1024,4096"
DEFAULT_D = "128"
DEFAULT_DTYPE = "float32"
DEFAULT_OUT = "bench-out"
DTYPES = ("float32", "float64", "float16", "bfloat16")
DEVICES = ("cpu", "cuda")
DEFAULT_TIMEOUT_S = 1800.0
# Share of the host memory available at start that one case may use before it counts
# as out of memory (see memory.cap_address_space).
DEFAULT_HOST_MEM_SHARE = 0.8
_ALL_IMPLS = tuple(dict.fromkeys([*IMPLS, *CONTRASTIVE_IMPLS]))


def _int_list(name, least):
    def parse(text):
        try:
            values = [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be comma-separated integers, got {text!r}") from None
        if not values or any(v < least for v in values):
            raise argparse.ArgumentTypeError(f"{name} must be integers >= {least}, got {text!r}")
        return values

    return parse


def _choice_list(name, choices):
    def parse(text):
        values = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in values if v not in choices]
        if not values or bad:
            raise argparse.ArgumentTypeError(
                f"{name}: expected a comma-separated subset of {', '.join(choices)}, got {text!r}"
            )
        return values

    return parse


def _max_n(text):
    limits = {}
    for item in (v.strip() for v in text.split(",") if v.strip()):
        impl, _, n = item.partition("=")
        if impl not in _ALL_IMPLS or not n.isdigit():
            raise argparse.ArgumentTypeError(f"--max-n: expected IMPL=N with IMPL in {', '.join(_ALL_IMPLS)}, got {item!r}")
        limits[impl] = int(n)
    return limits


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add(
        "--n",
        type=_int_list("--n", 2),
        default=_int_list("--n", 2)(DEFAULT_N),
        help=f"rows, comma-separated (default {DEFAULT_N})",
    )
    add(
        "--d",
        type=_int_list("--d", 1),
        default=_int_list("--d", 1)(DEFAULT_D),
        help=f"feature dims, comma-separated (default {DEFAULT_D})",
    )
    add(
        "--dtype",
        type=_choice_list("--dtype", DTYPES),
        default=[DEFAULT_DTYPE],
        help=f"comma-separated subset of {','.join(DTYPES)} (default {DEFAULT_DTYPE})",
    )
    add(
        "--device",
        type=_choice_list("--device", DEVICES),
        default=None,
        help="cpu, cuda or cpu,cuda (default: cuda if available, else cpu)",
    )
    add(
        "--loss",
        choices=LOSSES,
        default=UNIFORM,
        help="the loss measured (default uniform); nt_xent, info_nce, clip and siglip compare the fused "
        "contrastive losses with the dense PyTorch formula (logits + F.cross_entropy, or F.logsigmoid)",
    )
    add(
        "--impl",
        type=_choice_list("--impl", _ALL_IMPLS),
        default=None,
        help=f"comma-separated implementations (default: all of the loss's); uniform: {','.join(IMPLS)} "
        f"({ROOFLINE}, the roofline, always runs); contrastive: {','.join(CONTRASTIVE_IMPLS)}",
    )
    add(
        "--max-n",
        type=_max_n,
        default={},
        metavar="IMPL=N[,IMPL=N]",
        help="run IMPL only up to N rows, e.g. keops=4096 (larger sizes are recorded as skipped)",
    )
    add("--t", type=float, default=_DEFAULTS.t, help=f"the uniformity loss's t (default {_DEFAULTS.t:g})")
    add(
        "--tau",
        type=float,
        default=None,
        help="the contrastive temperature (default: " + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_TAU.items()) + ")",
    )
    add("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    add("--warmup", type=int, default=_DEFAULTS.warmup, help=f"untimed calls per phase (default {_DEFAULTS.warmup})")
    add(
        "--repeat",
        type=int,
        default=_DEFAULTS.repeat,
        help=f"timed samples per phase, median reported (default {_DEFAULTS.repeat})",
    )
    add(
        "--max-seconds",
        type=float,
        default=_DEFAULTS.max_seconds,
        help=f"stop sampling a phase after this long, once it has {MIN_SAMPLES} samples (default {_DEFAULTS.max_seconds:g})",
    )
    add(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds per case (process isolation) before it is recorded as timeout (default {DEFAULT_TIMEOUT_S:g})",
    )
    add(
        "--max-host-mem-gb",
        type=float,
        default=None,
        help=f"CPU: memory one case may add before it counts as out of memory "
        f"(default {DEFAULT_HOST_MEM_SHARE * 100:.0f}%% of what is available)",
    )
    add("--threads", type=int, default=None, help="torch threads in each case (default: torch's)")
    add(
        "--isolation",
        choices=ISOLATIONS,
        default="process",
        help="process: each case in a fresh process (default; sound memory figures); "
        "none: all in this process (quick checks)",
    )
    add("--seed", type=int, default=_DEFAULTS.seed, help=f"input seed (default {_DEFAULTS.seed})")
    add("--no-plot", action="store_true", help="skip the PNG plots")
    add("--no-progress", action="store_true", help="no progress bar")


def machine_info(devices) -> dict:
    import torch

    import pyhypersphere

    info = {
        "argv": sys.argv,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "pyhypersphere": pyhypersphere.__version__,
        "pyhypersphere_with_cuda": pyhypersphere.build_info().get("with_cuda"),
        "python": platform.python_version(),
    }
    if "cuda" in devices and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    try:
        from importlib.metadata import version

        info["pykeops"] = version("pykeops")
    except Exception:
        info["pykeops"] = None
    return info


def main(args) -> int:
    from . import report, sweep

    for name, least in (("warmup", 0), ("repeat", 1), ("timeout", 1e-9), ("max_seconds", 1e-9)):
        if getattr(args, name) < least:
            flag = "--" + name.replace("_", "-")
            print(f"pyhypersphere bench: {flag} must be >= {least:g}, got {getattr(args, name)}", file=sys.stderr)
            return 2
    impls = CONTRASTIVE_IMPLS if args.loss != UNIFORM else IMPLS
    if args.impl is None:
        args.impl = list(impls)
    unknown = [i for i in args.impl if i not in impls]
    if unknown:
        print(f"pyhypersphere bench: --impl {','.join(unknown)} is not an implementation of --loss {args.loss} "
              f"(expected a subset of {','.join(impls)})", file=sys.stderr)  # fmt: skip
        return 2
    devices = args.device or [_default_device()]
    if "cuda" in devices:
        import torch

        if not torch.cuda.is_available():
            print("pyhypersphere bench: --device cuda but torch sees no CUDA device here "
                  f"(torch {torch.__version__}); use --device cpu", file=sys.stderr)  # fmt: skip
            return 2
    if args.max_host_mem_gb is not None:
        cap = int(args.max_host_mem_gb * 2**30)
    else:
        available = memory.available_host_bytes()
        cap = int(available * DEFAULT_HOST_MEM_SHARE) if available else None
    specs = sweep.plan(
        args.impl, args.n, args.d, args.dtype, devices,
        t=args.t, warmup=args.warmup, repeat=args.repeat, max_seconds=args.max_seconds,
        seed=args.seed, host_mem_cap_bytes=cap, threads=args.threads, loss=args.loss,
        tau=None if args.loss == UNIFORM else tau_for(args.loss, args.tau),
    )  # fmt: skip
    if "keops" in args.impl and not peers.keops_available():
        print(f"note: {peers.KEOPS_MISSING}; its rows are recorded as unsupported", file=sys.stderr)
    records = sweep.run_sweep(
        specs, isolation=args.isolation, timeout=args.timeout, progress=not args.no_progress, max_n=args.max_n
    )
    written = report.write_all(records, args.out, plots=not args.no_plot, meta=machine_info(devices))
    print(report.format_table(records))
    print()
    print(f"wrote {written['json']}, {written['csv']}" + "".join(f", {p}" for p in written["png"]))
    if "note" in written:
        print(f"note: {written['note']}", file=sys.stderr)
    return 0
