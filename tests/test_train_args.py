"""The trainer's arguments, device, threads and interruptions: bad settings fail with one
line before anything is written; a resumed run reuses the thread count; Ctrl-C says how
to resume; warnings point at the caller's line."""

import argparse
import os
import warnings

import pytest
import torch

pytest.importorskip("mnist1d")

from helpers import isolated_cache, tiny_config  # noqa: E402,F401  (isolated_cache: autouse fixture)
from pyhypersphere.train import checkpoint, cli, loop, resources, train  # noqa: E402

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")


def tiny(out, **kw):
    return tiny_config(out, **{"epochs": 1, **kw})


def run_cli(argv):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.main(parser.parse_args(argv))


TINY_ARGS = ["--num-samples", "400", "--epochs", "1", "--batch-size", "64", "--no-progress", "--no-plots"]


# ----------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--device", "bogus"], "device 'bogus' is not a device: expected auto, cpu, cuda"),
        (["--device", "cpu:x"], "device 'cpu:x' is not a device"),
        (["--threads", "0"], "threads must be at least 1"),
        (["--threads", "-2"], "threads must be at least 1"),
        (["--batch-size", "100000"], "batch_size 100000 is larger than the training set"),
        (["--batch-size", "1"], "batch_size must be at least 2"),
        (["--epochs", "0"], "epochs must be at least 1"),
        (["--lr", "nan"], "lr must be a finite number"),
        (["--lr", "-0.1"], "lr must be positive"),
        (["--momentum", "1.5"], "momentum must be in"),
        (["--t", "inf"], "t must be a finite number"),
        (["--weight-decay", "-1"], "weight_decay must not be negative"),
        (["--lr-milestones", "0.5", "nan"], r"lr_milestones\[1\] must be a finite number"),
        pytest.param(["--device", "cuda"], "CUDA is not available", marks=NO_CUDA),
        pytest.param(["--device", "cuda:1"], "CUDA is not available", marks=NO_CUDA),
    ],
)
def test_bad_argument_fails_in_one_line_before_writing(tmp_path, capsys, extra, match):
    import re

    out = tmp_path / "run"
    assert run_cli(TINY_ARGS + ["--out", str(out)] + extra) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pyhypersphere train: error: "), err
    assert re.search(match, err), err
    assert not out.exists()


def test_bad_argument_leaves_no_default_run_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run_cli(TINY_ARGS + ["--batch-size", "100000"]) == 2
    assert "larger than the training set" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_out_that_is_a_file_is_rejected(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert run_cli(TINY_ARGS + ["--out", str(f)]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    assert f.read_text() == "x"


# ----------------------------------------------------------------------------- device


@pytest.fixture
def two_fake_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_cuda_without_an_index_is_this_process_gpu(two_fake_gpus):
    assert resources.pick_device("cuda") == torch.device("cuda", 0)
    assert resources.pick_device("cuda", local_rank=1) == torch.device("cuda", 1)
    assert resources.pick_device("cuda", local_rank=3) == torch.device("cuda", 1)
    assert resources.pick_device("cuda:1") == torch.device("cuda", 1)
    assert resources.pick_device("auto", local_rank=1) == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"only 2 CUDA device\(s\) visible"):
        resources.pick_device("cuda:2")


@pytest.mark.parametrize("local_rank,index", [(None, 0), ("1", 1)])
def test_train_with_device_cuda_sets_an_indexed_device(tmp_path, two_fake_gpus, monkeypatch, local_rank, index):
    # torch.cuda.set_device(torch.device("cuda")) raised "Expected a torch.device with a
    # specified index"; the trainer must hand it cuda:N.  Stop right after that call.
    calls = []

    class Stop(Exception):
        pass

    def set_device(device):
        calls.append(device)
        if not isinstance(device, torch.device) or device.index is None:
            raise ValueError("Expected a torch.device with a specified index")
        raise Stop

    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    if local_rank is not None:  # torchrun's process on the second GPU
        monkeypatch.setenv("LOCAL_RANK", local_rank)
    out = tmp_path / "run"
    with pytest.raises(Stop):
        train(tiny(out, device="cuda", threads=None))
    assert calls == [torch.device("cuda", index)]
    assert not out.exists()


def test_unknown_device_type_is_rejected():
    with pytest.raises(ValueError, match="the trainer runs on auto, cpu, cuda, cuda:N or mps"):
        resources.pick_device("meta")


# ----------------------------------------------------------------------------- threads


def test_resume_reuses_the_checkpoint_thread_count(tmp_path, monkeypatch):
    out = tmp_path / "run"
    train(tiny(out, threads=1))
    assert checkpoint.load(out / "checkpoint.pt")["threads"] == 1
    # the automatic count would now pick 2 (an idle machine); the run must keep 1
    monkeypatch.setattr(resources, "auto_threads", lambda: 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = train(tiny(out, epochs=2, threads=None, resume=True))
    assert not [w for w in caught if "threads" in str(w.message)]  # nothing to warn about
    assert s["threads"] == 1 and s["resumed_from_epoch"] == 1


def test_resume_warnings_point_at_the_callers_line(tmp_path):
    out = tmp_path / "run"
    train(tiny(out, threads=1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = train(tiny(out, batch_size=32, threads=2, resume=True))  # a finished run: evaluated again
    messages = [w for w in caught if "resum" in str(w.message)]
    assert len(messages) == 2  # the ignored batch_size and the changed thread count
    assert all(w.filename == __file__ for w in messages), [(w.filename, w.lineno) for w in messages]
    # Another thread count is used, with a warning that the result will differ.
    threads = [w for w in messages if "threads=2, but the run so far used 1: the result will differ" in str(w.message)]
    assert len(threads) == 1 and issubclass(threads[0].category, UserWarning)
    assert s["threads"] == 2


def test_cli_prints_resume_warnings_as_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(TINY_ARGS + ["--threads", "1", "--quiet", "--out", str(out)]) == 0
    capsys.readouterr()
    assert run_cli(TINY_ARGS + ["--threads", "1", "--quiet", "--out", str(out), "--resume", "--batch-size", "32"]) == 0
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "pyhypersphere train: warning: resuming: ignored settings that differ from the checkpoint: "
        "batch_size=32 (the run uses 64)"
    ]


# ----------------------------------------------------------------------------- Ctrl-C


def _interrupt_at(monkeypatch, epoch_index):
    real = loop.train_one_epoch

    def interrupted(*args, **kw):
        if args[7] == epoch_index:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(loop, "train_one_epoch", interrupted)


def test_ctrl_c_prints_how_to_resume(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    _interrupt_at(monkeypatch, 1)
    assert run_cli(TINY_ARGS + ["--epochs", "3", "--threads", "1", "--out", str(out)]) == 130
    err = capsys.readouterr().err
    last = err.splitlines()[-1]  # after the per-epoch lines: one line, no traceback
    assert "Traceback" not in err
    assert last.startswith("pyhypersphere train: interrupted during epoch 2: the checkpoint after epoch 1 is kept")
    assert last.endswith(f"continue with `pyhypersphere train --resume --out {out}`")
    assert checkpoint.load(out / "checkpoint.pt")["epoch"] == 1


def test_ctrl_c_in_the_first_epoch_leaves_no_folder(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    _interrupt_at(monkeypatch, 0)
    assert run_cli(TINY_ARGS + ["--threads", "1", "--out", str(out)]) == 130
    assert "no epoch had finished, nothing was kept" in capsys.readouterr().err
    assert not out.exists()


def test_interrupt_is_still_a_keyboard_interrupt(tmp_path, monkeypatch):
    _interrupt_at(monkeypatch, 0)
    with pytest.raises(KeyboardInterrupt, match="interrupted during epoch 1"):
        train(tiny(tmp_path / "run"))


def test_failed_first_epoch_in_an_existing_folder_keeps_the_folder(tmp_path, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    _interrupt_at(monkeypatch, 0)
    with pytest.raises(KeyboardInterrupt):
        train(tiny(out))
    assert sorted(os.listdir(out)) == ["notes.txt"]


# ----------------------------------------------------------------------------- torchrun


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path):
    """`torchrun --nproc_per_node 2 -m pyhypersphere train`, as the README spells it (gloo)."""
    import json
    import subprocess
    import sys

    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "pyhypersphere", "train", *TINY_ARGS, "--threads", "1", "--out", str(out)]  # fmt: skip
    env = dict(os.environ, PYHYPERSPHERE_CACHE=str(tmp_path / "cache"))
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.load(open(out / "summary.json"))
    assert summary["world_size"] == 2 and summary["loss_backend"] == "pyhypersphere"


def test_dataset_cache_goes_to_PYHYPERSPHERE_CACHE(tmp_path):
    from pyhypersphere.train import data

    data.mnist1d_arrays(200)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["mnist1d-n200-s%d.npz" % data.MNIST1D_SEED]


def test_help_shows_only_defaults_that_inform():
    import argparse

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    text = " ".join(parser.format_help().split())
    assert "(default: True)" not in text and "(default: False)" not in text and "(default: None)" not in text
    assert "--lr LR default 0.12 * batch / 256 --momentum" in text
    assert "(80% train, 20% test) (default: 10000)" in text  # real defaults are still shown


def test_the_start_line_counts_in_the_singular(tmp_path, capsys):
    assert run_cli(TINY_ARGS + ["--threads", "1", "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert ", 1 epoch, batch 64," in err and "(1 thread)," in err
