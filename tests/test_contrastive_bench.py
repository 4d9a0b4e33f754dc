"""`pyhypersphere bench --loss nt_xent|info_nce|clip|supcon`: the fused losses against the dense
PyTorch formula, whose values are checked against the tests' own dense formulas."""

import argparse
import json

import pytest
import torch

from dense_contrastive import dense_clip, dense_info_nce, dense_nt_xent, dense_supcon
from pyhypersphere.bench import cli, contrastive, worker
from pyhypersphere.bench.record import OK, UNSUPPORTED, CaseSpec

DENSE = {
    "nt_xent": dense_nt_xent, "info_nce": dense_info_nce, "clip": dense_clip,
    # the two views of n samples, sample i of class i mod SUPCON_CLASSES
    "supcon": lambda x, y, tau: dense_supcon(*contrastive.supcon_views(x, y), tau),
}


def run_cli(argv):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.main(parser.parse_args(argv))


@pytest.mark.parametrize("loss", ["nt_xent", "info_nce", "clip", "supcon"])
def test_cli_measures_fused_and_dense(loss, tmp_path):
    out = tmp_path / loss
    rc = run_cli(["--loss", loss, "--device", "cpu", "--n", "16,40", "--d", "8", "--isolation", "none",
                  "--repeat", "1", "--max-seconds", "0.2", "--out", str(out), "--no-progress", "--no-plot"])  # fmt: skip
    assert rc == 0
    records = json.loads((out / "results.json").read_text())
    assert sorted((r["impl"], r["n"]) for r in records) == sorted(
        (i, n) for i in contrastive.CONTRASTIVE_IMPLS for n in (16, 40)
    )
    for r in records:
        assert r["loss_name"] == loss and r["tau"] == contrastive.DEFAULT_TAU[loss]
        if r["impl"] == "inf-cl":
            assert r["status"] == UNSUPPORTED and "inf-cl" in r["message"]
            continue
        assert r["status"] == OK, r["message"]
        assert r["fwdbwd_ms"] > 0 and r["pairs"] == contrastive.logits(loss, r["n"])
        x = worker.unit_rows(r["n"], 8, torch.float64, torch.device("cpu"), 0)
        y = worker.unit_rows(r["n"], 8, torch.float64, torch.device("cpu"), 1)
        assert r["loss"] == pytest.approx(DENSE[loss](x, y, r["tau"]).item(), abs=1e-4)


def test_impl_must_belong_to_the_loss(capsys):
    assert run_cli(["--loss", "clip", "--impl", "reference", "--n", "16", "--isolation", "none"]) == 2
    assert "--impl reference is not an implementation of --loss clip" in capsys.readouterr().err
    spec = CaseSpec(impl="blocked", n=8, d=2, dtype="float32", device="cpu", loss="nt_xent")
    assert "unknown implementation" in worker.unsupported_reason(spec)
