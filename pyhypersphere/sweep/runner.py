"""Runs a sweep's configurations, one worker process each, a few at a time.

Layout of the output folder::

    OUT/grid.json              the grid as run (after --quick)
    OUT/sweep.jsonl            one row per finished attempt: id, status, point, config, summary
    OUT/runs/<id>/             the trainer's folder (summary.json, metrics.jsonl, ...) and log.txt

Resuming skips the runs that have an "ok" row; failed and interrupted runs run again (an
interrupted one continues from its last checkpoint, since every run trains with resume on).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from . import grid as grid_mod
from . import outputs, results
from .worker import DRIVER_ENV, RUN_CONFIG

OK, FAILED = "ok", "failed"
RUNS_DIR = "runs"
GRID_FILE = "grid.json"
LOG_FILE = "log.txt"
ERROR_TAIL_LINES = 20  # of a failed run's log, kept in its row
POLL_SECONDS = 0.2
STOP_GRACE_SECONDS = 30.0  # for a stopped worker to write its checkpoint before it is killed


class SweepExistsError(RuntimeError):
    """The output folder already holds a sweep and resume was not asked for."""


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def default_workers() -> int:
    """One single-threaded run per usable core: the encoders are small, so runs side by side
    use the cores better than one run's intra-op threads."""
    return usable_cores()


def run(
    sweep: grid_mod.Sweep,
    out,
    workers: Optional[int] = None,
    resume: bool = False,
    progress: bool = True,
    python: str = sys.executable,
) -> List[dict]:
    """Run every configuration of ``sweep`` not yet finished in ``out``; returns all rows
    (the latest per run) and writes sweep.jsonl, sweep.csv, correlations.json and the plots."""
    out = Path(out).expanduser()
    jsonl = out / results.JSONL
    if jsonl.exists() and not resume:
        raise SweepExistsError(f"{out} already holds a sweep ({results.JSONL}): pass --resume to continue it, or another --out")
    if workers is None:
        workers = default_workers()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer of at least 1, got {workers!r}")
    grid_mod.check_runnable(sweep)
    threads = max(1, usable_cores() // workers)
    out.mkdir(parents=True, exist_ok=True)
    (out / GRID_FILE).write_text(json.dumps(sweep.source, indent=2) + "\n")

    torn: List[int] = []
    done = {r["id"] for r in results.load_rows(out, torn) if r["status"] == OK}
    if torn:
        _note(f"{jsonl}: line(s) {', '.join(map(str, torn))} are not whole rows (a crash while writing); "
              "those runs run again", None)
    pending = [r for r in sweep.runs if r.id not in done]
    _note_thread_changes(out, pending, threads, workers)
    bar = _bar(len(sweep.runs), len(sweep.runs) - len(pending), progress)
    failed = 0
    active: Dict[str, tuple] = {}  # id -> (process, run, started, log file)
    try:
        while pending or active:
            while pending and len(active) < workers:
                r = pending.pop(0)
                active[r.id] = _start(r, out, threads, python)
            time.sleep(POLL_SECONDS)
            for rid in [rid for rid, a in active.items() if a[0].poll() is not None]:
                proc, r, started, log = active.pop(rid)
                log.close()
                row = _row(r, out, proc.returncode, time.perf_counter() - started)
                results.append_row(out, row)
                failed += row["status"] == FAILED
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(failed=failed, refresh=False)
                if row["status"] == FAILED:
                    last = (row["error"].splitlines() or [""])[-1]
                    _note(f"run {rid} failed (exit {proc.returncode}): {last}", bar)
                elif bar is None and progress:  # no tqdm: a line per run instead of the bar
                    _note(f"run {rid} ok: linear probe {row['summary']['linear_probe_acc']:.4f}", bar)
    except BaseException:  # Ctrl-C, SIGTERM, SIGHUP (see interrupts), or a bug: no worker outlives the driver
        _stop(proc for proc, *_ in active.values())
        raise
    finally:
        if bar is not None:
            bar.close()
    rows = results.load_rows(out)
    outputs.write_outputs(out, rows, sweep)
    return rows


def _start(r: grid_mod.Run, out: Path, threads: int, python: str):
    run_dir = out / RUNS_DIR / r.id
    run_dir.mkdir(parents=True, exist_ok=True)
    config = dataclasses.replace(
        grid_mod.replace_threads(r.config, threads), out=str(run_dir), resume=True, progress=False
    )
    (run_dir / RUN_CONFIG).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    env = dict(os.environ, **{DRIVER_ENV: str(os.getpid())})
    # numpy/scikit-learn BLAS pools too: runs side by side must not oversubscribe the cores
    env.update({k: str(config.threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")})
    log = open(run_dir / LOG_FILE, "w")
    proc = subprocess.Popen(
        [python, "-m", "pyhypersphere.sweep.worker", str(run_dir)], stdout=log, stderr=subprocess.STDOUT, env=env
    )
    return proc, r, time.perf_counter(), log


def _stop(procs, grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM to each worker (it keeps its last checkpoint and exits), SIGKILL to any that
    is still there after ``grace`` seconds."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _note_thread_changes(out: Path, pending, threads: int, workers: int) -> None:
    """Say when unfinished runs that have a checkpoint continue at another thread count
    than they started with (their results then differ from an uninterrupted sweep's)."""
    changed = {}
    for r in pending:
        run_dir = out / RUNS_DIR / r.id
        if r.config.threads is not None or not (run_dir / "checkpoint.pt").exists():
            continue
        try:
            before = json.loads((run_dir / RUN_CONFIG).read_text()).get("threads")
        except (OSError, ValueError):
            continue
        if before is not None and before != threads:
            changed.setdefault(before, []).append(r.id)
    for before, ids in changed.items():
        _note(
            f"resuming: {len(ids)} unfinished run(s) started with {before} thread(s) continue with {threads} "
            f"(--workers {workers}); their results will differ from an uninterrupted sweep's (pass the "
            f"--workers that gives {before} thread(s) to keep it)",
            None,
        )


def _row(r: grid_mod.Run, out: Path, returncode: int, seconds: float) -> dict:
    run_dir = out / RUNS_DIR / r.id
    row = {
        "id": r.id,
        "status": FAILED,
        "point": r.point,
        "config": r.config.resolved().to_dict(),  # presets filled in (epochs, lr, ...)
        "summary": None,
        "error": None,
        "returncode": returncode,
        "wall_seconds": round(seconds, 3),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "dir": str(Path(RUNS_DIR) / r.id),
    }
    summary_path = run_dir / "summary.json"
    if returncode == 0 and summary_path.exists():
        row["status"] = OK
        row["summary"] = json.loads(summary_path.read_text())
    else:
        try:
            lines = (run_dir / LOG_FILE).read_text(errors="replace").splitlines()
        except OSError:
            lines = []
        row["error"] = "\n".join(lines[-ERROR_TAIL_LINES:]) or f"exit status {returncode}, no output"
    return row


def _bar(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, desc="sweep", unit="run", dynamic_ncols=True, file=sys.stderr)


def _note(msg: str, bar) -> None:
    if bar is not None:
        bar.write(msg, file=sys.stderr)
    else:
        print(msg, file=sys.stderr, flush=True)
