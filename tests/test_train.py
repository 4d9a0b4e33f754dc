"""Fast tests of the thin trainer (pyhypersphere.train): tiny configs, a few seconds each."""

import json
import math
import os
import sys

import pytest
import torch

pytest.importorskip("mnist1d")

from helpers import isolated_cache, tiny_config  # noqa: E402,F401  (isolated_cache: autouse fixture)
from pyhypersphere.train import NonFiniteLossError, RunExistsError, TrainConfig, train  # noqa: E402
from pyhypersphere.train import augment, checkpoint, cli, data, evaluate, loop, losses  # noqa: E402

TIMING_KEYS = {"train_seconds", "epoch_seconds", "elapsed_seconds"}


tiny = tiny_config


def read_log(path):
    return [json.loads(line) for line in open(path)]


def strip_timing(rows):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def test_summary_and_outputs(tmp_path):
    out = tmp_path / "run"
    s = train(tiny(out, epochs=2))
    on_disk = json.load(open(out / "summary.json"))
    assert on_disk == s
    for key in ("linear_probe_acc", "knn_acc", "linear_probe_acc_output", "knn_acc_output"):
        assert 0.0 <= s[key] <= 1.0
    assert s["linear_probe_acc"] > 0.2  # well above chance (0.1) even after two tiny epochs
    assert math.isfinite(s["align"]) and 0.0 <= s["align"] <= 4.0
    assert math.isfinite(s["uniform"]) and s["uniform"] < 0.0
    assert s["seconds"] > 0
    assert s["loss_backend"] in ("pyhypersphere", "reference")
    rows = read_log(out / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all("linear_probe_acc" in r and "train_loss" in r for r in rows)
    ck = checkpoint.load(out / "checkpoint.pt")
    assert ck["epoch"] == 2 and ck["config"]["epochs"] == 2
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]


def test_uses_fused_losses_when_the_extension_imports():
    try:
        import pyhypersphere  # noqa: F401
        from pyhypersphere import uniform_loss
    except ImportError:
        pytest.skip("the compiled extension is not built")
    u, _, backend = losses.loss_functions()
    assert backend == "pyhypersphere" and u is uniform_loss


def test_same_seed_same_result_and_resume_matches(tmp_path, monkeypatch):
    full = tmp_path / "full"
    s_full = train(tiny(full))

    part = tmp_path / "part"
    real = loop.train_one_epoch

    def interrupted(*args, **kw):
        epoch = args[7]
        if epoch == 2:
            raise KeyboardInterrupt  # the machine went away during the third epoch
        return real(*args, **kw)

    monkeypatch.setattr(loop, "train_one_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(tiny(part))
    assert checkpoint.load(part / "checkpoint.pt")["epoch"] == 2
    assert not (part / "summary.json").exists()
    monkeypatch.setattr(loop, "train_one_epoch", real)

    s_part = train(tiny(part, resume=True))
    assert s_part["resumed_from_epoch"] == 2
    a = checkpoint.load(full / "checkpoint.pt")
    b = checkpoint.load(part / "checkpoint.pt")
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert strip_timing(a["history"]) == strip_timing(b["history"])
    assert strip_timing(read_log(full / "metrics.jsonl")) == strip_timing(read_log(part / "metrics.jsonl"))
    for key in ("linear_probe_acc", "knn_acc", "align", "uniform"):
        assert s_full[key] == s_part[key]


def test_resume_ignores_changed_settings_with_a_warning(tmp_path):
    out = tmp_path / "run"
    train(tiny(out, epochs=1))
    with pytest.warns(UserWarning, match="batch_size"):
        s = train(tiny(out, epochs=1, batch_size=32, resume=True))
    assert json.load(open(out / "config.json"))["batch_size"] == 64
    assert s["epochs"] == 1


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    u, a, _ = losses.loss_functions()
    calls = {"n": 0}
    steps_per_epoch = 320 // 64

    def poisoned_uniform(x, t=2):
        calls["n"] += 1
        value = u(x, t)
        # two calls per step: poison the second step of the second epoch
        return value * float("nan") if calls["n"] > 2 * (steps_per_epoch + 1) else value

    monkeypatch.setattr(loop.losses, "loss_functions", lambda: (poisoned_uniform, a, "test"))
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"nan.*epoch 2.*last good checkpoint"):
        train(tiny(out))
    ck = checkpoint.load(out / "checkpoint.pt")
    assert ck["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    rows = read_log(out / "metrics.jsonl")
    assert rows[0]["epoch"] == 1 and rows[-1]["event"] == "nonfinite_loss"
    assert not (out / "summary.json").exists()


def test_cli_reports_nan_clearly(tmp_path, monkeypatch, capsys):
    u, a, _ = losses.loss_functions()
    monkeypatch.setattr(loop.losses, "loss_functions", lambda: (lambda x, t=2: u(x, t) * float("inf"), a, "t"))
    import argparse

    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    args = p.parse_args(
        [
            "--num-samples",
            "400",
            "--epochs",
            "1",
            "--batch-size",
            "64",
            "--out",
            str(tmp_path / "r"),
            "--no-progress",
            "--no-plots",
        ]
    )
    assert cli.main(args) == 3
    err = capsys.readouterr().err
    assert "error:" in err and "no checkpoint had been written yet" in err


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(path, {"epoch": 1, "w": torch.arange(4)})

    def torn_save(obj, f, *a, **k):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(path, {"epoch": 2, "w": torch.zeros(4)})
    monkeypatch.undo()
    ck = checkpoint.load(path)
    assert ck["epoch"] == 1 and torch.equal(ck["w"], torch.arange(4))
    assert os.listdir(tmp_path) == ["checkpoint.pt"]


def test_existing_run_is_not_clobbered(tmp_path):
    out = tmp_path / "run"
    train(tiny(out, epochs=1))
    with pytest.raises(RunExistsError, match="--resume"):
        train(tiny(out, epochs=1))
    s = train(tiny(out, epochs=1, overwrite=True, seed=1))
    assert s["seed"] == 1


def test_lr_schedule_is_step_decay():
    c = TrainConfig(epochs=200, batch_size=768).resolved()
    assert c.lr == pytest.approx(0.12 * 768 / 256)
    assert loop.lr_at(c, 154) == pytest.approx(c.lr)
    assert loop.lr_at(c, 155) == pytest.approx(c.lr * 0.1)
    assert loop.lr_at(c, 170) == pytest.approx(c.lr * 0.01)
    assert loop.lr_at(c, 199) == pytest.approx(c.lr * 0.001)


def test_augmentations_are_seeded_and_shaped():
    d = data.Data(
        "x",
        "image",
        torch.rand(6, 3, 24, 24),
        torch.zeros(6, dtype=torch.long),
        torch.rand(2, 3, 24, 24),
        torch.zeros(2, dtype=torch.long),
        ["a", "b"],
        torch.zeros(3),
        torch.ones(3),
        eval_size=16,
    )
    aug = augment.ImageAugment(d, 16)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    y1, y2 = aug(d.x_train, g1), aug(d.x_train, g2)
    assert y1.shape == (6, 3, 16, 16) and torch.equal(y1, y2)
    assert not torch.equal(y1, aug(d.x_train, g1))
    assert d.eval_view(d.x_test).shape == (2, 3, 16, 16)
    s = data.Data(
        "mnist1d",
        "signal",
        torch.randn(5, 40),
        torch.zeros(5, dtype=torch.long),
        torch.randn(2, 40),
        torch.zeros(2, dtype=torch.long),
        ["a", "b"],
        torch.tensor(0.0),
        torch.tensor(1.0),
    )
    ys = augment.for_data(s)(s.x_train, torch.Generator().manual_seed(0))
    assert ys.shape == (5, 40) and torch.isfinite(ys).all()


def test_mnist1d_is_generated_offline(tmp_path, monkeypatch):
    import requests

    def no_network(*a, **k):
        raise AssertionError("tried to download")

    monkeypatch.setattr(requests, "get", no_network)
    a = data.mnist1d_arrays(200)
    assert a["x"].shape == (160, 40) and a["x_test"].shape == (40, 40)
    assert set(a["y"].tolist()) <= set(range(10))
    again = data.mnist1d_arrays(200)  # from the cache now
    assert (again["x"] == a["x"]).all()


def test_probe_and_knn_on_separable_features():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(200) % 4
    f = torch.nn.functional.one_hot(y, 4).float() * 3 + 0.1 * torch.randn(200, 4, generator=g)
    assert evaluate.linear_probe(f[:150], y[:150], f[150:], y[150:], 4) == 1.0
    assert evaluate.knn(f[:150], y[:150], f[150:], y[150:], 4, k=5) == 1.0


def test_infonce_baseline_runs(tmp_path):
    s = train(tiny(tmp_path / "nce", loss="infonce", epochs=1))
    assert s["loss"] == "infonce" and 0.0 <= s["linear_probe_acc"] <= 1.0


def test_siglip_runs(tmp_path):
    s = train(tiny(tmp_path / "siglip", loss="siglip", epochs=1))
    assert s["loss"] == "siglip" and 0.0 <= s["linear_probe_acc"] <= 1.0


def test_info_nce_matches_a_direct_formula():
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(5, 3, generator=g), dim=1)
    y = torch.nn.functional.normalize(torch.randn(5, 3, generator=g), dim=1)
    tau = 0.5
    z = torch.cat([x, y])
    total = 0.0
    for i in range(10):
        pos = (i + 5) % 10
        logits = torch.stack([z[i] @ z[j] / tau for j in range(10) if j != i])
        total += -(z[i] @ z[pos] / tau - torch.logsumexp(logits, 0))
    assert losses.info_nce(x, y, tau).item() == pytest.approx(total.item() / 10, rel=1e-5)


def test_digits(tmp_path):
    pytest.importorskip("sklearn")
    s = train(TrainConfig(dataset="digits", epochs=1, out=str(tmp_path / "d"), progress=False, plots=False, threads=1))
    assert s["train_samples"] + s["test_samples"] == 1797


def test_folder_of_npy_signals_and_images(tmp_path):
    import numpy as np

    g = np.random.default_rng(0)
    root = tmp_path / "signals"
    for c in range(2):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(20):
            np.save(
                root / f"class{c}" / f"{i}.npy", np.sin(np.linspace(0, 3 + 3 * c, 32)) + 0.1 * g.standard_normal(32)
            )
    s = train(
        TrainConfig(
            dataset="folder",
            data_dir=str(root),
            epochs=1,
            batch_size=16,
            out=str(tmp_path / "r1"),
            progress=False,
            plots=False,
            threads=1,
        )
    )
    assert s["encoder"] == "conv1d" and s["train_samples"] == 32 and s["test_samples"] == 8

    PIL = pytest.importorskip("PIL.Image")
    root = tmp_path / "images"
    for split, n in (("train", 12), ("test", 4)):
        for c, color in enumerate(((255, 0, 0), (0, 0, 255))):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(n):
                PIL.new("RGB", (20 + i, 18), color).save(root / split / f"c{c}" / f"{i}.png")
    s = train(
        TrainConfig(
            dataset="folder",
            data_dir=str(root),
            image_size=16,
            epochs=1,
            batch_size=8,
            out=str(tmp_path / "r2"),
            progress=False,
            plots=False,
            threads=1,
        )
    )
    assert s["encoder"] == "conv2d" and s["train_samples"] == 24 and s["test_samples"] == 8


def test_missing_data_gives_clear_errors(tmp_path):
    with pytest.raises(data.DataError, match="--data-dir"):
        train(TrainConfig(dataset="folder", out=str(tmp_path / "a"), progress=False))
    with pytest.raises(data.DataError, match="(STL-10 was not found|torchvision)"):
        train(TrainConfig(dataset="stl10", data_dir=str(tmp_path), out=str(tmp_path / "b"), progress=False))


def test_plots_and_circle_for_2d_output(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "circle"
    s = train(tiny(out, epochs=1, feature_dim=2, plots=True))
    assert s["plots"] == ["curves.png", "circle.png"]
    for name in s["plots"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dispatcher_runs_train(tmp_path, capsys):
    climod = pytest.importorskip("pyhypersphere.cli")
    rc = climod.main(
        [
            "train",
            "--num-samples",
            "400",
            "--epochs",
            "1",
            "--batch-size",
            "64",
            "--out",
            str(tmp_path / "r"),
            "--no-progress",
            "--no-plots",
            "--threads",
            "1",
        ]
    )
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) >= {"linear_probe_acc", "knn_acc", "align", "uniform", "seconds"}


# ----------------------------------------------------------------------------- torchrun


def _ddp_step(rank, world, result_path, loss_name):
    """One DDP step of the objective on this rank's half of the batch; rank 0 saves it."""
    cfg = TrainConfig(batch_size=16, loss=loss_name).resolved()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 6, generator=g)
    w0 = torch.randn(4, 6, generator=g)
    lin = torch.nn.Linear(6, 4, bias=False)
    with torch.no_grad():
        lin.weight.copy_(w0)
    model = torch.nn.parallel.DistributedDataParallel(lin)
    obj = loop._Objective(cfg, world)
    xs = x[rank * 8 : (rank + 1) * 8]
    z1 = torch.nn.functional.normalize(model(xs), dim=1)
    z2 = torch.nn.functional.normalize(model(xs.flip(1)), dim=1)
    loss, value, _, u = obj(z1, z2)
    loss.backward()
    if rank == 0:
        torch.save({"grad": lin.weight.grad, "u": u, "value": value, "x": x, "w0": w0}, result_path)


def _ddp_worker(rank, world, store_path, result_path, loss_names):
    """Two gloo processes: the distributed step of each objective must equal one process on
    the global batch."""
    import torch.distributed as dist
    from dist_harness import leave_without_finalizing

    # a file rendezvous: no TCP port that a concurrent job could take
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        for loss_name in loss_names:
            _ddp_step(rank, world, f"{result_path}.{loss_name}", loss_name)
        dist.barrier()  # neither rank tears the group down while the other still uses it
    finally:
        dist.destroy_process_group()
    leave_without_finalizing()


def test_distributed_gradient_equals_single_process(tmp_path):
    import torch.multiprocessing as mp

    # Every objective in one pair of processes: starting them is most of the cost.
    loss_names = ["align_uniform", "infonce", "siglip"]
    path = str(tmp_path / "r.pt")
    store = str(tmp_path / "store")
    mp.start_processes(_ddp_worker, args=(2, store, path, loss_names), nprocs=2, join=True, start_method="spawn")
    for loss_name in loss_names:
        r = torch.load(f"{path}.{loss_name}")
        cfg = TrainConfig(batch_size=16, loss=loss_name).resolved()
        w = r["w0"].clone().requires_grad_(True)
        x = r["x"]
        z1 = torch.nn.functional.normalize(x @ w.T, dim=1)
        z2 = torch.nn.functional.normalize(x.flip(1) @ w.T, dim=1)
        obj = loop._Objective(cfg, 1)
        loss, value, _, u = obj(z1, z2)
        loss.backward()
        assert r["u"].item() == pytest.approx(u.item(), rel=1e-5, abs=1e-6), loss_name
        assert r["value"].item() == pytest.approx(value.item(), rel=1e-5, abs=1e-6), loss_name
        torch.testing.assert_close(r["grad"], w.grad, rtol=1e-4, atol=1e-6)


def test_cli_module_entry_point(tmp_path):
    import subprocess

    rc = subprocess.run(
        [sys.executable, "-m", "pyhypersphere.train", "--help"], capture_output=True, text=True, timeout=120
    )
    assert rc.returncode == 0 and "--resume" in rc.stdout


def test_stl10_pipeline_shapes_with_small_alexnet():
    """The paper's STL-10 path on fake 96x96 images: 64x64 crops, eval resize+center-crop."""
    from pyhypersphere.train import models

    x = torch.randint(0, 256, (4, 3, 96, 96), dtype=torch.uint8)
    d = data.Data(
        "stl10",
        "image",
        x,
        torch.arange(4) % 2,
        x[:2],
        torch.arange(2),
        ["a", "b"],
        torch.tensor(data.STL10_MEAN),
        torch.tensor(data.STL10_STD),
        eval_size=64,
        eval_crop=True,
    )
    aug = augment.for_data(d, 64)
    v = aug(x, torch.Generator().manual_seed(0))
    assert v.shape == (4, 3, 64, 64) and torch.isfinite(v).all()
    assert d.eval_view(x).shape == (4, 3, 64, 64)
    torch.manual_seed(0)
    m = models.build("small_alexnet", d, 128, 64).eval()
    with torch.no_grad():
        h, z = m(v)
    assert h.shape == (4, 4096) and z.shape == (4, 128)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(4))


def test_auto_threads_backs_off_when_the_cpu_is_busy(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.05, 0.0, 0.0))
    assert loop.auto_threads() == 2
    monkeypatch.setattr(os, "getloadavg", lambda: (1.4, 0.0, 0.0))
    assert loop.auto_threads() == 1
    monkeypatch.setattr(os, "getloadavg", lambda: (7.0, 0.0, 0.0))
    assert loop.auto_threads() == 1


def test_resume_may_lower_the_lr_after_a_nan_stop(tmp_path):
    out = tmp_path / "run"
    train(tiny(out, epochs=1))
    with pytest.warns(UserWarning, match=r"changed settings: .*lr=0.01"):
        s = train(tiny(out, epochs=2, lr=0.01, resume=True))
    assert s["epochs"] == 2
    rows = read_log(out / "metrics.jsonl")
    assert rows[1]["lr"] == pytest.approx(0.01) and rows[0]["lr"] == pytest.approx(0.12 * 64 / 256)
