"""pyhypersphere.sweep: grid validation and expansion, the runner (rows, resume, failures,
plots), Spearman against an independent formula, and the CLI."""

import json
import math
import random
import re

import pytest

from pyhypersphere import sweep
from pyhypersphere.cli import main as cli_main
from pyhypersphere.sweep import grid as grid_mod
from pyhypersphere.sweep import outputs, results

# Two tiny one-epoch runs (a few seconds each on one thread).
TINY_BASE = dict(num_samples=200, epochs=1, batch_size=32, feature_dim=8, eval_every=1)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PYHYPERSPHERE_CACHE", str(tmp_path / "cache"))


def tiny_grid(**extra):
    return {"base": dict(TINY_BASE), "grid": {"unif_w": [0.5, 1.0]}, "seeds": [0], **extra}


# --------------------------------------------------------------------------- grids


def test_grid_is_the_cartesian_product_for_each_seed():
    s = sweep.expand({"base": {"epochs": 2}, "grid": {"t": [1.0, 2.0, 4.0], "alpha": [1, 2]}, "seeds": [0, 1]})
    got = sorted((r.point["t"], r.point["alpha"], r.point["seed"]) for r in s.runs)
    want = sorted((t, a, seed) for t in (1.0, 2.0, 4.0) for a in (1, 2) for seed in (0, 1))
    assert got == want
    assert all(r.config.epochs == 2 and r.config.t == r.point["t"] for r in s.runs)
    assert len({r.id for r in s.runs}) == 12
    assert set(s.swept) == {"t", "alpha", "seed"}


def test_grid_blocks_are_a_union_and_random_search_is_seeded_and_in_range():
    raw = {
        "grid": [{"loss": ["infonce"], "tau": [0.1, 0.5]}, {"align_w": [0.0, 1.0]}],
        "random": {"count": 5, "seed": 3, "fields": {"t": {"log_uniform": [0.5, 8]}, "alpha": {"choice": [1, 3]}}},
    }
    s = sweep.expand(raw)
    assert len(s.runs) == 2 + 2 + 5
    drawn = [r.point for r in s.runs if "t" in r.point]
    assert all(0.5 <= p["t"] <= 8 and p["alpha"] in (1, 3) for p in drawn)
    assert [r.id for r in sweep.expand(raw).runs] == [r.id for r in s.runs]  # same seed, same draws


def test_run_id_depends_on_the_configuration_not_the_grid_order():
    a = sweep.expand({"grid": {"t": [1.0, 2.0]}})
    b = sweep.expand({"grid": {"t": [2.0, 1.0]}})
    assert {r.id for r in a.runs} == {r.id for r in b.runs}
    c = sweep.expand({"base": {"epochs": 3}, "grid": {"t": [1.0, 2.0]}})
    assert not {r.id for r in a.runs} & {r.id for r in c.runs}


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"grid": {"temperature": [1.0]}}, "unknown TrainConfig field 'temperature'"),
        ({"base": {"epochs": "ten"}}, "epochs = 'ten' is not a valid int"),
        ({"grid": {"t": [1.0, -2.0]}}, "must be positive"),
        ({"grid": {"loss": ["triplet"]}}, "unknown loss 'triplet'"),
        ({"grid": {"t": []}}, "'t' must be a non-empty list"),
        ({"grid": {"align_w": [True]}}, "align_w = True is not a valid float"),
        ({"base": {"out": "x"}}, "'out' is set by the sweep"),
        ({"seeds": []}, "seeds must be a non-empty list"),
        ({"grid": {"seed": [0]}, "seeds": [1]}, "either in 'seeds' or as a grid field"),
        ({"gird": {"t": [1.0]}}, "unknown key(s) 'gird'"),
        ({"random": {"count": 2, "fields": {"t": {"normal": [0, 1]}}}}, "expected one of"),
        ({"random": {"count": 2, "fields": {"t": {"log_uniform": [0, 1]}}}}, "log_uniform needs positive bounds"),
        ({"grid": {"t": [1.0]}}, None),
    ],
)
def test_bad_grids_are_rejected_before_anything_runs(raw, message):
    if message is None:
        sweep.expand(raw)
        return
    with pytest.raises(sweep.GridError) as e:
        sweep.expand(raw)
    assert message in str(e.value)


def test_quick_merges_base_and_replaces_the_rest():
    raw = {"base": {"epochs": 20, "t": 4.0}, "grid": {"alpha": [1, 2, 3]}, "seeds": [0, 1],
           "quick": {"base": {"epochs": 2}, "grid": {"alpha": [2]}, "seeds": [0]}}
    s = sweep.expand(raw, quick=True)
    assert [(r.config.epochs, r.config.t, r.config.alpha, r.config.seed) for r in s.runs] == [(2, 4.0, 2, 0)]
    with pytest.raises(sweep.GridError, match="needs a 'quick' section"):
        sweep.expand({"grid": {"t": [1.0]}}, quick=True)


@pytest.mark.parametrize("name", sorted(grid_mod.shipped_grids()))
def test_shipped_grids_are_valid_and_cover_the_issue(name):
    full, quick = sweep.load(name), sweep.load(name, quick=True)
    assert quick.runs and len(quick.runs) < len(full.runs)
    ts = {r.config.t for r in full.runs}
    if name == "weights":
        aw = sorted({r.config.align_w for r in full.runs})
        uw = sorted({r.config.unif_w for r in full.runs})
        assert len(aw) >= 4 and len(uw) >= 4 and aw[0] == 0 and uw[0] == 0
        assert len({r.config.seed for r in full.runs}) >= 2
    if name == "scales":
        assert {0.5, 1.0, 2.0, 4.0, 8.0} <= ts and {1.0, 2.0, 3.0} <= {r.config.alpha for r in full.runs}
    if name == "encoders":
        assert len(full.runs) >= 40
        assert len({r.config.tau for r in full.runs if r.config.loss == "infonce"}) >= 3


# --------------------------------------------------------------------------- Spearman


def test_spearman_matches_the_no_ties_formula_and_handles_ties():
    rng = random.Random(0)
    x = [rng.random() for _ in range(30)]
    y = [v + rng.gauss(0, 0.3) for v in x]
    rank = lambda v: {i: r + 1 for r, i in enumerate(sorted(range(len(v)), key=v.__getitem__))}
    rx, ry = rank(x), rank(y)
    n = len(x)
    d2 = sum((rx[i] - ry[i]) ** 2 for i in range(n))
    assert sweep.spearman(x, y) == pytest.approx(1 - 6 * d2 / (n * (n * n - 1)), abs=1e-12)
    assert sweep.spearman([1, 2, 3, 4], [8, 6, 4, 2]) == pytest.approx(-1.0)
    # ties take the average rank: ranks (1.5, 1.5, 3, 4) against (1, 2, 3, 4)
    r1, r2 = [1.5, 1.5, 3, 4], [1, 2, 3, 4]
    m1, m2 = sum(r1) / 4, sum(r2) / 4
    cov = sum((a - m1) * (b - m2) for a, b in zip(r1, r2))
    want = cov / math.sqrt(sum((a - m1) ** 2 for a in r1) * sum((b - m2) ** 2 for b in r2))
    assert sweep.spearman([5, 5, 6, 7], [1, 2, 3, 4]) == pytest.approx(want)
    assert math.isnan(sweep.spearman([1, 1, 1], [1, 2, 3]))


def test_spearman_agrees_with_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(1)
    x = [rng.choice([0.1, 0.2, 0.3, 0.4]) for _ in range(25)]
    y = [rng.random() for _ in range(25)]
    assert sweep.spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)


# --------------------------------------------------------------------------- the runner


def test_sweep_writes_rows_resumes_records_failures_and_plots(tmp_path):
    pytest.importorskip("mnist1d")
    pytest.importorskip("matplotlib")
    out = tmp_path / "sweep"
    s = sweep.expand(tiny_grid())
    rows = sweep.run(s, out, workers=2, progress=False)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    for r in rows:
        summary = r["summary"]
        assert 0.0 <= summary["linear_probe_acc"] <= 1.0
        assert summary["align_alpha2"] >= 0 and summary["uniform_t2"] <= 0
        # trained at the paper's alpha = t = 2: the fixed-scale metrics are the run's own
        assert summary["align_alpha2"] == summary["align"] and summary["uniform_t2"] == summary["uniform"]
        assert r["config"]["unif_w"] == r["point"]["unif_w"]
        assert (out / r["dir"] / "summary.json").exists()
    lines = (out / "sweep.jsonl").read_text().splitlines()
    assert len(lines) == 2
    csv_lines = (out / "sweep.csv").read_text().splitlines()
    assert len(csv_lines) == 3 and "unif_w" in csv_lines[0].split(",")
    for png in ("scatter.png", "accuracy_vs_params.png"):
        assert (out / png).stat().st_size > 1000
    assert json.loads((out / "correlations.json").read_text())["linear_probe_acc"]["align_alpha2"]["n"] == 2
    assert json.loads((out / "joint_fit.json").read_text())["linear_probe_acc"]["n"] == 2  # too few for a fit

    with pytest.raises(sweep.SweepExistsError, match="--resume"):
        sweep.run(s, out, progress=False)

    # Resume with a configuration added before a good one that fails at run time (an lr that
    # diverges; what can be checked in advance is: see test_values_that_cannot_run_are_refused_before_any_run):
    # the finished runs are not rerun, the failure is recorded, the sweep goes on.
    bigger = tiny_grid(grid=[{"lr": [1e15]}, {"unif_w": [0.5, 1.0, 2.0]}])
    rows = sweep.run(sweep.expand(bigger), out, workers=1, resume=True, progress=False)
    lines = [json.loads(x) for x in (out / "sweep.jsonl").read_text().splitlines()]
    assert len(lines) == 4  # the two new runs only, the failing one first (workers=1)
    assert [x["status"] for x in lines[2:]] == ["failed", "ok"]
    by_status = {}
    for r in rows:
        by_status.setdefault(r["status"], []).append(r)
    assert len(by_status["ok"]) == 3 and len(by_status["failed"]) == 1
    bad = by_status["failed"][0]
    assert bad["point"]["lr"] == 1e15 and bad["returncode"] == 3
    assert "the loss is nan" in bad["error"] and "Traceback" not in bad["error"]
    assert bad["summary"] is None


def test_weights_heatmap_when_both_weights_are_swept(tmp_path):
    pytest.importorskip("matplotlib")
    rows = []
    for i, (a, u) in enumerate([(0.0, 1.0), (1.0, 0.0), (1.0, 1.0), (0.0, 0.0)]):
        rows.append({
            "id": f"r{i}", "status": "ok", "point": {"align_w": a, "unif_w": u},
            "config": {"align_w": a, "unif_w": u, "loss": "align_uniform"},
            "summary": {"linear_probe_acc": 0.1 + 0.2 * i, "knn_acc": 0.5, "align_alpha2": 0.1 * i, "uniform_t2": -i},
        })
    made = outputs.write_outputs(tmp_path / "pooled", rows, plots=True)  # a new folder: pooled rows
    assert set(made["plots"]) == {"scatter.png", "accuracy_vs_params.png", "weights_heatmap.png"}
    assert made["correlations"]["linear_probe_acc"]["uniform_t2"]["rho"] == pytest.approx(-1.0)


def test_cli_rejects_a_bad_grid_before_running(tmp_path, capsys):
    path = tmp_path / "g.json"
    path.write_text(json.dumps({"grid": {"lr": ["fast"]}}))
    assert cli_main(["sweep", "--grid", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "lr = 'fast' is not a valid" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert cli_main(["sweep", "--grid", "no-such-grid", "--out", str(tmp_path / "o")]) == 2
    assert "neither a file nor a shipped grid" in capsys.readouterr().err


def test_cli_dry_run_lists_the_quick_runs(capsys):
    assert cli_main(["sweep", "--grid", "weights", "--quick", "--out", "unused", "--dry-run"]) == 0
    ids = capsys.readouterr().out.split()
    assert ids == [r.id for r in sweep.load("weights", quick=True).runs]


def test_workers_default_to_the_usable_cores_with_one_thread_each(monkeypatch):
    from pyhypersphere.sweep import runner

    monkeypatch.setattr(runner.os, "sched_getaffinity", lambda pid: {0, 1, 2, 5}, raising=False)
    assert runner.default_workers() == 4
    run = sweep.expand({"grid": {"t": [1.0]}}).runs[0]
    assert grid_mod.replace_threads(run.config, 1).threads == 1
    pinned = sweep.expand({"base": {"threads": 3}}).runs[0]
    assert grid_mod.replace_threads(pinned.config, 1).threads == 3  # a grid's own choice wins


def test_joint_fit_recovers_an_exact_linear_relation_and_reports_its_quality():
    # accuracy = 0.9 - 0.2 * align - 0.05 * uniform exactly, on points where each metric
    # alone is a poor predictor (they trade off), so the fit is what shows the relation.
    aligns = [0.0, 0.1, 0.8, 0.5, 0.3, 1.2, 0.05]
    unifs = [-0.1, -1.0, -3.7, -2.4, -3.0, -3.6, -0.4]
    rows = [{"id": f"r{i}", "status": "ok", "point": {}, "config": {},
             "summary": {"align_alpha2": a, "uniform_t2": u, "linear_probe_acc": 0.9 - 0.2 * a - 0.05 * u,
                         "knn_acc": 0.5}}
            for i, (a, u) in enumerate(zip(aligns, unifs))]
    rows.append({"id": "failed", "status": "failed", "point": {}, "config": {}, "summary": None})
    fit = sweep.joint_fit(rows)["linear_probe_acc"]
    assert fit["n"] == 7 and fit["r2"] == pytest.approx(1.0, abs=1e-4) and fit["rho"] == pytest.approx(1.0)
    assert (fit["intercept"], fit["align_alpha2"], fit["uniform_t2"]) == pytest.approx((0.9, -0.2, -0.05), abs=1e-4)
    knn = sweep.joint_fit(rows)["knn_acc"]  # constant accuracy: no spread to explain
    assert knn["n"] == 7 and knn["r2"] is None
    assert sweep.joint_fit(rows[:2])["linear_probe_acc"] == {"n": 2, "r2": None, "rho": None}


def test_a_torn_last_row_does_not_swallow_the_next_one(tmp_path):
    """A crash mid-append leaves half a line without its newline; the row appended on resume
    must still be read back (it used to be glued to the fragment and dropped)."""
    rows = [{"id": f"r{i}", "status": "ok", "point": {}, "config": {}, "summary": {"knn_acc": i / 4}} for i in range(3)]
    for r in rows:
        results.append_row(tmp_path, r)
    path = tmp_path / results.JSONL
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:2]) + lines[2][: len(lines[2]) // 2])  # the last row, torn
    torn = []
    assert [r["id"] for r in results.load_rows(tmp_path, torn)] == ["r0", "r1"] and torn == [3]
    results.append_row(tmp_path, rows[2])  # the resumed run's row
    torn = []
    assert results.load_rows(tmp_path, torn) == rows and torn == [3]


@pytest.mark.parametrize(
    "base, point, message",
    [
        ({"device": "bogus"}, {}, "device 'bogus' is not a device"),
        ({"dataset": "folder"}, {}, "needs --data-dir"),
        ({"dataset": "folder", "data_dir": "/no/such/folder"}, {}, "is not a folder"),
        ({}, {"num_samples": [10]}, "num_samples >= 20"),
        ({}, {"batch_size": [100000]}, "larger than the training set"),
    ],
)
def test_values_that_cannot_run_are_refused_before_any_run(tmp_path, base, point, message):
    s = sweep.expand({"base": {**TINY_BASE, **base}, "grid": {"unif_w": [1.0], **point}})
    with pytest.raises(sweep.GridError, match=f"cannot run here: .*{re.escape(message)}"):
        sweep.run(s, tmp_path / "sweep", workers=1, progress=False)
    assert not (tmp_path / "sweep").exists()


def test_a_missing_dataset_package_is_reported_once_before_any_run(tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mnist1d" else real(name, *a))
    assert cli_main(["sweep", "--grid", "weights", "--quick", "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("pip install mnist1d") == 1 and "Spearman" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("raw", [{}, {"description": "nothing"}, {"grid": {}}, {"grid": []}])
def test_an_empty_grid_is_refused(raw):
    with pytest.raises(sweep.GridError, match="(defines no runs|grid is empty)"):
        sweep.expand(raw)


def test_zero_workers_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli_main(["sweep", "--grid", "weights", "--quick", "--out", str(tmp_path / "o"), "--workers", "0"])
    assert "--workers: expected an integer of at least 1, got '0'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="workers must be an integer of at least 1, got 0"):
        sweep.run(sweep.expand(tiny_grid()), tmp_path / "o", workers=0, progress=False)


@pytest.mark.parametrize("name", sorted(grid_mod.shipped_grids()))
@pytest.mark.parametrize("quick", [False, True])
def test_shipped_descriptions_say_how_many_seeds_and_runs_are_run(name, quick):
    s = sweep.load(name, quick=quick)
    seeds = len({r.config.seed for r in s.runs})
    words = {"one seed": 1, "two seeds": 2, "three seeds": 3}
    said = [n for w, n in words.items() if w in s.description]
    assert said in ([], [seeds]), (s.description, seeds)
    runs = re.findall(r"\((\d+) runs\)", s.description)
    assert runs in ([], [str(len(s.runs))]), (s.description, len(s.runs))
    if quick:
        assert "quick" in s.description


def test_a_joint_fit_over_few_runs_comes_with_a_caution():
    rows = [{"id": f"r{i}", "status": "ok", "point": {}, "config": {},
             "summary": {"align_alpha2": a, "uniform_t2": u, "linear_probe_acc": acc, "knn_acc": acc}}
            for i, (a, u, acc) in enumerate([(0.1, -1.0, 0.5), (0.5, -2.0, 0.6), (0.9, -2.5, 0.4), (0.2, -3.0, 0.7)])]
    text = results.format_joint_fit(sweep.joint_fit(rows))
    assert "joint fit of linear_probe_acc over 4 runs" in text
    assert "caution: 4 runs for 3 parameters" in text and "random accuracies would give 0.67" in text
    many = rows * 5  # 20 rows: enough runs per parameter, no caution
    many = [dict(r, id=f"{r['id']}-{i}", summary=dict(r["summary"], align_alpha2=r["summary"]["align_alpha2"] + i / 100))
            for i, r in enumerate(many)]
    assert "caution" not in results.format_joint_fit(sweep.joint_fit(many))


def test_ctrl_c_to_a_sweep_ends_in_one_line(tmp_path, monkeypatch, capsys):
    from pyhypersphere.sweep import runner

    def interrupted(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run", interrupted)
    assert cli_main(["sweep", "--grid", "weights", "--quick", "--out", str(tmp_path / "o"), "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("pyhypersphere sweep: interrupted (Ctrl-C): 0 of 4 runs finished")
    assert line.endswith(f"--grid weights --quick --out {tmp_path / 'o'} --resume`")


def test_a_resume_says_when_unfinished_runs_change_thread_count(tmp_path, capsys):
    from pyhypersphere.sweep import runner

    s = sweep.expand(tiny_grid())
    for r, threads in zip(s.runs, (1, 2)):
        run_dir = tmp_path / runner.RUNS_DIR / r.id
        run_dir.mkdir(parents=True)
        (run_dir / "checkpoint.pt").write_bytes(b"")
        (run_dir / runner.RUN_CONFIG).write_text(json.dumps({"threads": threads}))
    runner._note_thread_changes(tmp_path, s.runs, threads=2, workers=1)
    err = capsys.readouterr().err
    assert "1 unfinished run(s) started with 1 thread(s) continue with 2 (--workers 1)" in err
    runner._note_thread_changes(tmp_path, s.runs[1:], threads=2, workers=1)
    assert capsys.readouterr().err == ""
