"""`pyhypersphere sweep ...`: a thin layer over pyhypersphere.sweep (grid.load, runner.run)."""

from __future__ import annotations

import argparse
import sys

from ..train import interrupts
from . import grid as grid_mod
from . import results, runner


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Train many encoders (a grid or random search over TrainConfig fields, with seeds), one process "
        "per run, and write OUT/sweep.jsonl, sweep.csv, correlations.json (Spearman of the alignment and "
        "uniformity metrics with accuracy) and the plots. Shipped grids: "
        + ", ".join(grid_mod.shipped_grids())
    )
    parser.add_argument("--grid", required=True, help="a grid JSON file, or the name of a shipped grid")
    parser.add_argument("--out", required=True, help="the sweep's folder")
    parser.add_argument(
        "--workers",
        type=_positive_int,
        default=None,
        help=f"runs side by side, each with cores/workers threads (default: the usable cores, here {runner.default_workers()})",
    )
    parser.add_argument("--resume", action="store_true", help="continue the sweep in --out: finished runs are skipped")
    parser.add_argument("--quick", action="store_true", help="the grid's 'quick' variant (a few minutes)")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer of at least 1, got {text!r}")
    return value


def main(args: argparse.Namespace) -> int:
    try:
        sweep = grid_mod.load(args.grid, quick=args.quick)
    except grid_mod.GridError as e:
        print(f"pyhypersphere sweep: error: {e}", file=sys.stderr)
        return 2
    print(grid_mod.describe(sweep), file=sys.stderr)
    if args.dry_run:
        for r in sweep.runs:
            print(r.id)
        return 0
    try:
        with interrupts.signals_as_interrupts():
            rows = runner.run(sweep, args.out, workers=args.workers, resume=args.resume, progress=args.progress)
    except (runner.SweepExistsError, ValueError) as e:
        print(f"pyhypersphere sweep: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"pyhypersphere sweep: error: {e.filename + ': ' if e.filename else ''}{e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM, SIGHUP: the workers were stopped
        done = sum(r["status"] == runner.OK for r in results.load_rows(args.out))
        print(
            f"pyhypersphere sweep: interrupted ({interrupts.name(e)}): {done} of {len(sweep.runs)} runs finished, "
            f"kept in {args.out} with the unfinished runs' last checkpoints; continue with `pyhypersphere sweep "
            f"--grid {args.grid}{' --quick' if args.quick else ''} --out {args.out} --resume`",
            file=sys.stderr,
        )
        return interrupts.exit_code(e)
    ok = [r for r in rows if r["status"] == runner.OK]
    failed = [r for r in rows if r["status"] == runner.FAILED]
    print(f"{len(ok)} runs finished, {len(failed)} failed; results in {args.out}")
    for r in failed:
        print(f"  failed: {r['id']} (see {args.out}/{r['dir']}/{runner.LOG_FILE})")
    print(results.format_correlations(results.correlations(rows)))
    print(results.format_joint_fit(results.joint_fit(rows)))
    return 1 if failed else 0
