"""The trainer under faults (issue 28): real processes killed and signalled, real files
corrupted, truncated and crafted.  Tiny MNIST-1D runs on one thread, a few seconds each."""

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("mnist1d")

from helpers import REPO, isolated_cache, signal_and_wait, tiny_config  # noqa: E402,F401  (isolated_cache: autouse fixture)
from pyhypersphere.train import NonFiniteLossError, RunExistsError, TrainingInterrupted, train  # noqa: E402
from pyhypersphere.train import checkpoint, cli, data, evaluate, loop, runlock  # noqa: E402

TINY_ARGS = ["--num-samples", "400", "--batch-size", "64", "--feature-dim", "8", "--threads", "1",
             "--no-progress", "--no-plots"]  # fmt: skip


def trainer(out, *args, cache):
    """`python -m pyhypersphere train` in its own process (stdout/stderr piped), on the
    dataset cached here first (the child's start-up is then the import only)."""
    data.mnist1d_arrays(400)
    env = dict(os.environ, PYTHONPATH=str(REPO), PYHYPERSPHERE_CACHE=str(cache), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "pyhypersphere", "train", *TINY_ARGS, "--out", str(out), *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for(predicate, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def run_cli(argv):
    import argparse

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.main(parser.parse_args(TINY_ARGS + argv))


def last_error_line(err):
    assert "Traceback" not in err, err
    return err.strip().splitlines()[-1]


# ----------------------------------------------------------------------------- divergence


def test_a_diverged_step_is_never_checkpointed_and_a_resume_recovers(tmp_path):
    """One step per epoch and an lr blown up from the second epoch: the second epoch's only
    step leaves finite but huge parameters whose loss was never seen; its state must not
    replace the good checkpoint (it used to, and every resume then stopped with NaN)."""
    out = tmp_path / "run"
    blow_up = dict(batch_size=320, lr_milestones=(0.3,), lr_gamma=1e12, eval_every=10)
    with pytest.raises(NonFiniteLossError, match=r"after epoch 2 overflow.*last good checkpoint .*after epoch 1"):
        train(tiny_config(out, **blow_up))
    ck = checkpoint.load(out / "checkpoint.pt")
    assert ck["epoch"] == 1
    with pytest.warns(UserWarning, match="changed settings"):
        s = train(tiny_config(out, **{**blow_up, "lr_gamma": 1.0, "lr": 1e-6}, resume=True))
    assert s["resumed_from_epoch"] == 1 and 0.0 <= s["linear_probe_acc"] <= 1.0


def test_evaluating_a_diverged_model_ends_with_the_nan_message(tmp_path):
    """Non-finite features used to reach the linear probe ("value cannot be converted to
    type float without overflow")."""
    cfg = tiny_config(tmp_path / "run").resolved()
    d = data.load(cfg)
    from pyhypersphere.train import augment, models

    model = models.build(cfg.encoder, d, cfg.feature_dim, cfg.image_size)
    with torch.no_grad():
        next(model.parameters()).fill_(float("inf"))
    with pytest.raises(evaluate.NonFiniteFeatures, match="not finite at evaluation"):
        evaluate.evaluate(model, d, augment.for_data(d, cfg.image_size), torch.device("cpu"), cfg)


# ----------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished one-epoch run, copied by each test that damages it."""
    root = tmp_path_factory.mktemp("finished")
    os.environ["PYHYPERSPHERE_CACHE"], saved = str(root / "cache"), os.environ.get("PYHYPERSPHERE_CACHE")
    try:
        train(tiny_config(root / "run", epochs=1, feature_dim=8))
    finally:
        if saved is None:
            del os.environ["PYHYPERSPHERE_CACHE"]
        else:
            os.environ["PYHYPERSPHERE_CACHE"] = saved
    return root / "run"


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


@pytest.mark.parametrize("damage, match", [("zeros", "is corrupted"), ("truncate", "is truncated")])
def test_a_damaged_checkpoint_is_refused_in_one_line(tmp_path, finished_run, damage, match, capsys):
    out = _copy(finished_run, tmp_path / "run")
    path = out / "checkpoint.pt"
    raw = bytearray(path.read_bytes())
    if damage == "zeros":  # 4 KiB of zeros in the middle: torch's reader loads it silently
        middle = len(raw) // 2
        raw[middle : middle + 4096] = bytes(4096)
    else:
        raw = raw[: len(raw) // 2]
    path.write_bytes(bytes(raw))
    assert run_cli(["--out", str(out), "--epochs", "2", "--resume"]) == 2
    line = last_error_line(capsys.readouterr().err)
    assert line.startswith("pyhypersphere train: error: ") and str(path) in line and match in line
    assert path.read_bytes() == bytes(raw)  # left as it was for the user to look at


class _RunsCode:
    """A pickled object that would create a file when unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_crafted_checkpoint_is_refused_without_running_its_code(tmp_path, finished_run, capsys):
    out = _copy(finished_run, tmp_path / "run")
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    marker = tmp_path / "code-ran"
    state["history"].append(_RunsCode(str(marker)))
    torch.save(state, out / "checkpoint.pt")
    with pytest.raises(checkpoint.CheckpointError, match=r"refused: it holds objects other than tensors .*\(it asks for \S+\); it was not loaded"):
        checkpoint.load(out / "checkpoint.pt")
    assert run_cli(["--out", str(out), "--epochs", "2", "--resume"]) == 2
    assert "refused" in last_error_line(capsys.readouterr().err)
    assert not marker.exists()


def test_what_the_trainer_saves_loads_with_weights_only(finished_run):
    state = torch.load(finished_run / "checkpoint.pt", weights_only=True)  # raises on anything else
    assert state["epoch"] == 1 and type(state["torch"]) is str


def test_a_full_disk_keeps_the_last_checkpoint_and_names_the_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(path, {"epoch": 1})

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint.os, "fsync", no_space)
    with pytest.raises(OSError) as e:
        checkpoint.save(path, {"epoch": 2})
    assert e.value.filename == str(path) and e.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert checkpoint.load(path)["epoch"] == 1 and os.listdir(tmp_path) == ["checkpoint.pt"]


def test_a_file_size_limit_ends_in_one_error_line(tmp_path):
    """A real OS error from a real write: RLIMIT_FSIZE below the checkpoint's size (the
    dataset cache and the small files fit), SIGXFSZ ignored so the write fails with EFBIG."""
    import resource

    data.mnist1d_arrays(400)  # cached (in the isolated_cache fixture's folder) before the limit

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "pyhypersphere", "train", *TINY_ARGS, "--epochs", "1", "--out", str(out)],
                          capture_output=True, text=True, env=env, preexec_fn=limit, timeout=300)  # fmt: skip
    assert done.returncode == 1, done.stderr
    line = last_error_line(done.stderr)
    assert line.startswith("pyhypersphere train: error: ") and "checkpoint.pt: File too large" in line
    assert not out.exists()  # nothing was kept: the run's own files and folder are gone


def test_an_out_that_cannot_be_a_folder_ends_in_one_error_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert run_cli(["--out", str(blocker / "run"), "--epochs", "1"]) == 1
    line = last_error_line(capsys.readouterr().err)
    assert line.startswith("pyhypersphere train: error: ") and str(blocker / "run") in line and "Not a directory" in line


# ----------------------------------------------------------------------------- one writer


def test_one_writer_per_folder_and_a_killed_owner_leaves_no_stale_lock_or_temp(tmp_path):
    out = tmp_path / "run"
    owner = trainer(out, "--epochs", "500", cache=tmp_path / "cache")
    try:
        wait_for(lambda: (out / "checkpoint.pt").exists(), owner)
        with pytest.raises(runlock.RunLockedError, match=rf"in use by pid {owner.pid} on "):
            train(tiny_config(out, epochs=500, feature_dim=8, resume=True))
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    finally:
        if owner.poll() is None:
            owner.kill()
        owner.communicate()
    epoch = checkpoint.load(out / "checkpoint.pt")["epoch"]
    stale = out / ".checkpoint.pt.99999999.abcd.tmp"  # as a kill -9 mid-write leaves it
    stale.write_bytes(b"half a checkpoint")
    with pytest.warns(UserWarning, match="changed settings: epochs"):
        s = train(tiny_config(out, epochs=epoch + 1, feature_dim=8, resume=True))
    assert s["resumed_from_epoch"] == epoch
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "config.json", "metrics.jsonl", "summary.json"]


def test_resume_without_a_checkpoint_does_not_overwrite_a_finished_run(tmp_path, finished_run):
    out = _copy(finished_run, tmp_path / "run")
    (out / "checkpoint.pt").unlink()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(RunExistsError, match=r"no checkpoint.pt to continue it from; pass --overwrite"):
        train(tiny_config(out, epochs=1, feature_dim=8, resume=True))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    s = train(tiny_config(out, epochs=1, feature_dim=8, resume=True, overwrite=True, seed=3))
    assert s["seed"] == 3


def test_a_failed_run_removes_only_what_it_wrote(tmp_path, monkeypatch):
    """An empty log left by a kill -9 before the first checkpoint and the user's notes are
    kept; only the config.json this invocation wrote goes."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("the user's own file")
    (out / "metrics.jsonl").write_text("")

    def interrupted(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "train_one_epoch", interrupted)
    with pytest.raises(TrainingInterrupted, match="nothing was kept"):
        train(tiny_config(out, resume=True))
    assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl", "notes.txt"]


# ----------------------------------------------------------------------------- signals


def test_sigterm_keeps_the_checkpoint_and_says_how_to_resume(tmp_path):
    out = tmp_path / "run"
    proc = trainer(out, "--epochs", "500", cache=tmp_path / "cache")
    try:
        wait_for(lambda: (out / "checkpoint.pt").exists(), proc)
    except BaseException:
        proc.kill()
        raise
    err = signal_and_wait(proc, signal.SIGTERM)
    assert proc.returncode == 143, err
    line = last_error_line(err)
    assert re.match(r"pyhypersphere train: interrupted .*epoch \d+.*: the checkpoint after epoch \d+ is kept", line), line
    assert line.endswith(f"continue with `pyhypersphere train --resume --out {out}`")
    assert checkpoint.load(out / "checkpoint.pt")["epoch"] >= 1 and not (out / runlock.LOCK).exists()


@pytest.mark.parametrize("where", ["evaluate", "checkpoint"])
def test_ctrl_c_after_training_an_epoch_says_what_was_kept(tmp_path, monkeypatch, capsys, where):
    """Ctrl-C in the second epoch's evaluation or checkpoint write: the first epoch's
    checkpoint is kept (it used to say "before training started; nothing was written")."""
    out = tmp_path / "run"
    target = (evaluate, "evaluate") if where == "evaluate" else (checkpoint, "save")
    real = getattr(*target)
    calls = []

    def interrupted_second(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(*target, interrupted_second)
    assert run_cli(["--out", str(out), "--epochs", "3"]) == 130
    line = last_error_line(capsys.readouterr().err)
    phase = "while evaluating" if where == "evaluate" else "while writing the checkpoint of"
    assert line.startswith(f"pyhypersphere train: interrupted {phase} epoch 2: the checkpoint after epoch 1 is kept")
    assert checkpoint.load(out / "checkpoint.pt")["epoch"] == 1



# ----------------------------------------------------------------------------- the dataset cache


@pytest.mark.parametrize("damage", ["truncate", "zeros", "other arrays"])
def test_an_unreadable_cache_file_is_made_again(tmp_path, damage):
    fresh = data.mnist1d_arrays(200)
    path = tmp_path / "cache" / f"mnist1d-n200-s{data.MNIST1D_SEED}.npz"
    raw = bytearray(path.read_bytes())
    if damage == "truncate":  # BadZipFile (a crash or a full disk mid-write, before atomic writes)
        path.write_bytes(bytes(raw[: len(raw) // 2]))
    elif damage == "zeros":
        raw[100:4196] = bytes(4096)
        path.write_bytes(bytes(raw))
    else:
        import numpy as np

        np.savez(path, x=fresh["x"][:3])
    again = data.mnist1d_arrays(200)
    assert all((again[k] == fresh[k]).all() for k in fresh)
    assert all((v == again[k]).all() for k, v in data.mnist1d_arrays(200).items())  # the file was replaced


def test_stale_cache_temps_of_dead_writers_are_removed(tmp_path):
    folder = tmp_path / "cache"
    folder.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    host = data._HOST
    stale = folder / f".mnist1d-n200-s42.npz.{dead_pid}@{host}.tmp.npz"
    live = folder / f".mnist1d-n200-s42.npz.{os.getppid()}@{host}.tmp.npz"  # a live process other than this one
    elsewhere = folder / f".mnist1d-n200-s42.npz.{dead_pid}@another-host.tmp.npz"
    for p in (stale, live, elsewhere):
        p.write_bytes(b"partial")
    data.mnist1d_arrays(200)
    assert not stale.exists() and live.exists() and elsewhere.exists()


def test_the_public_loader_gives_the_trainers_data():
    from pyhypersphere.train import load_mnist1d

    d = load_mnist1d(num_samples=200)
    a = data.mnist1d_arrays(200)
    assert d.x_train.shape == (160, 40) and d.y_test.dtype == torch.int64
    assert (d.x_train.numpy() == a["x"]).all() and (d.y_test.numpy() == a["y_test"]).all()
    with pytest.raises(ValueError, match="num_samples must be an integer of at least 20"):
        load_mnist1d(num_samples=10)


def test_a_checkpoint_from_before_the_str_version_still_loads(tmp_path, finished_run):
    """Checkpoints written before this change hold torch's TorchVersion (allowlisted)."""
    out = _copy(finished_run, tmp_path / "run")
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    state["torch"] = torch.__version__  # a TorchVersion, as the trainer used to save it
    torch.save(state, out / "checkpoint.pt")
    assert checkpoint.load(out / "checkpoint.pt")["torch"] == str(torch.__version__)


def test_the_run_lock_refuses_a_second_holder_and_ignores_a_dead_ones_file(tmp_path):
    first = runlock.RunLock(tmp_path).acquire()
    with pytest.raises(runlock.RunLockedError, match=rf"in use by pid {os.getpid()} on "):
        runlock.RunLock(tmp_path).acquire()
    first.release()
    assert not (tmp_path / runlock.LOCK).exists()
    (tmp_path / runlock.LOCK).write_text(json.dumps({"pid": 99999999, "host": "gone"}))  # its owner died
    second = runlock.RunLock(tmp_path).acquire()
    assert json.loads((tmp_path / runlock.LOCK).read_text())["pid"] == os.getpid()
    second.release()


def test_a_log_with_only_a_stop_event_does_not_block_a_resume(tmp_path):
    """A NaN stop before the first checkpoint, in a folder whose empty log a kill -9 left,
    leaves its event row; a resume (a sweep's retry) starts over instead of refusing."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text(json.dumps({"event": "nonfinite_loss", "epoch": 1, "message": "nan"}) + "\n")
    s = train(tiny_config(out, epochs=1, feature_dim=8, resume=True))
    assert s["resumed_from_epoch"] is None
