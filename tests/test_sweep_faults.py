"""The sweep driver under signals (issue 28): real driver and worker processes, stopped with
SIGTERM and kill -9; no worker outlives its driver, and a resume says when the thread
count of its unfinished runs changes."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("mnist1d")

from helpers import REPO, signal_and_wait  # noqa: E402
from pyhypersphere.sweep import runner  # noqa: E402
from pyhypersphere.train import checkpoint, runlock  # noqa: E402

# Two runs of a few epochs of about a second each on one thread.
GRID = {"base": {"num_samples": 2000, "batch_size": 64, "feature_dim": 8, "epochs": 3, "eval_every": 100},
        "grid": {"unif_w": [0.5, 1.0]}, "seeds": [0]}  # fmt: skip


def sweep_process(tmp_path, *args):
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps(GRID))
    env = dict(os.environ, PYTHONPATH=str(REPO), PYHYPERSPHERE_CACHE=str(tmp_path / "cache"))
    command = [sys.executable, "-m", "pyhypersphere", "sweep", "--grid", str(grid), "--out", str(tmp_path / "out"),
               "--no-progress", *args]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def worker_pids(tmp_path, driver):
    """The pids of both runs' trainers, once each has written its first checkpoint."""
    runs = tmp_path / "out" / runner.RUNS_DIR
    deadline = time.monotonic() + 240
    while True:
        dirs = list(runs.glob("*")) if runs.exists() else []
        locks = [d / runlock.LOCK for d in dirs]
        if len(dirs) == 2 and all((d / checkpoint.CHECKPOINT).exists() for d in dirs) and all(p.exists() for p in locks):
            try:
                return [json.loads(p.read_text())["pid"] for p in locks]
            except (OSError, ValueError, KeyError):
                pass  # being written
        assert driver.poll() is None, driver.communicate()
        assert time.monotonic() < deadline, "the runs did not start"
        time.sleep(0.1)


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


def wait_gone(pids, timeout=60):
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids):
        assert time.monotonic() < deadline, [p for p in pids if alive(p)]
        time.sleep(0.1)


@pytest.mark.slow
def test_sigterm_to_the_driver_stops_its_workers_and_ends_in_one_line(tmp_path):
    driver = sweep_process(tmp_path, "--workers", "2")
    try:
        pids = worker_pids(tmp_path, driver)
    except BaseException:
        driver.kill()
        raise
    err = signal_and_wait(driver, signal.SIGTERM)
    assert driver.returncode == 143, err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("pyhypersphere sweep: interrupted (SIGTERM): 0 of 2 runs finished") and line.endswith("--resume`")
    wait_gone(pids, timeout=5)  # the driver waited for them


@pytest.mark.slow
def test_a_killed_driver_leaves_no_orphan_and_a_resume_names_the_thread_change(tmp_path):
    if not sys.platform.startswith("linux"):
        pytest.skip("the worker follows its driver through Linux's PR_SET_PDEATHSIG")
    if runner.usable_cores() < 2:
        pytest.skip("needs 2 cores: 2 workers of 1 thread, then 1 worker of 2")
    driver = sweep_process(tmp_path, "--workers", "2")
    try:
        pids = worker_pids(tmp_path, driver)
        driver.kill()  # kill -9: no handler runs in the driver
        driver.communicate()
        wait_gone(pids)  # each worker got SIGTERM from the kernel and stopped
    finally:
        if driver.poll() is None:
            driver.kill()
    resumed = sweep_process(tmp_path, "--workers", "1", "--resume")
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert "2 unfinished run(s) started with 1 thread(s) continue with" in err
    rows = [json.loads(line) for line in (tmp_path / "out" / "sweep.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert all(0 < r["summary"]["resumed_from_epoch"] < GRID["base"]["epochs"] for r in rows)
