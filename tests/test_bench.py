"""The benchmark suite: CLI outputs, failure handling, and the peers' formulations.

The peers are checked against the float64 pdist formula of Wang & Isola, never
against the fused op they are compared with.
"""

import argparse
import csv
import json
import math
import sys

import pytest
import torch

from pyhypersphere.bench import cli, peers, roofline, sweep, worker
from pyhypersphere.bench.impls import ROOFLINE
from pyhypersphere.bench.record import FIELDS, OK, OOM, SKIPPED, UNSUPPORTED, CaseSpec
from pyhypersphere.reference import blocked_uniform_loss, reference_uniform_loss


def run_cli(argv):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.main(parser.parse_args(argv))


def unit_rows(n, d, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=gen, dtype=dtype), dim=1)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_cli_writes_well_formed_results(tmp_path, capsys):
    out = tmp_path / "out"
    # Each measured case costs two collections of the whole heap: one size measured, one skipped.
    rc = run_cli(["--device", "cpu", "--n", "48,80", "--max-n", "reference=48,blocked=48,flex=48,pyhypersphere=48",
                  "--d", "8", "--impl", "pyhypersphere,reference,blocked,flex",
                  "--isolation", "none", "--repeat", "2", "--max-seconds", "0.2", "--out", str(out), "--no-progress"])  # fmt: skip
    assert rc == 0
    records = json.loads((out / "results.json").read_text())
    impls = [ROOFLINE, "pyhypersphere", "reference", "blocked", "flex"]
    assert sorted((r["impl"], r["n"]) for r in records) == sorted((i, n) for i in impls for n in (48, 80))
    skipped = [r for r in records if r["n"] == 80]
    assert all(r["status"] == SKIPPED for r in skipped if r["impl"] != ROOFLINE)
    for r in (r for r in records if r["n"] < 80):
        assert set(FIELDS) <= set(r), set(FIELDS) - set(r)
        assert (r["d"], r["dtype"], r["device"]) == (8, "float32", "cpu")
        assert r["status"] == OK, r["message"]
        assert r["fwd_ms"] > 0 and r["fwdbwd_ms"] > 0
        assert r["peak_mem_bytes"] is not None and r["peak_mem_bytes"] >= 0
        assert r["pairs"] == r["n"] * (r["n"] - 1) // 2
        assert r["fwdbwd_flops"] == 3 * r["fwd_flops"] == 3 * r["n"] ** 2 * r["d"]
        assert r["fwd_pairs_per_s"] == pytest.approx(r["pairs"] / (r["fwd_ms"] / 1e3))
        assert r["fwd_roofline_frac"] == pytest.approx(r["mm_fwd_ms"] / r["fwd_ms"])
        if r["impl"] != ROOFLINE:
            x = unit_rows(r["n"], 8, seed=0)
            assert r["loss"] == pytest.approx(reference_uniform_loss(x).item(), abs=1e-4)

    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(records) and tuple(rows[0]) == FIELDS
    assert (out / "bench_cpu_float32_d8.png").stat().st_size > 0
    assert "pyhypersphere" in capsys.readouterr().out


def test_out_of_memory_is_recorded_and_larger_sizes_skipped(tmp_path):
    # In worker processes capped at 20 MiB: pdist's [N(N-1)/2] float32 output alone is
    # 33 MB at N=4096, while the fused op needs O(N d).
    # (The roofline's 4096 x 2048 output block is 33 MB too: it runs out as well.)
    out = tmp_path / "out"
    rc = run_cli(["--device", "cpu", "--n", "4096,8192", "--d", "4", "--impl", "reference",
                  "--max-host-mem-gb", str(20 / 1024), "--repeat", "1", "--max-seconds", "0.1",
                  "--threads", "1", "--no-plot", "--no-progress", "--out", str(out)])  # fmt: skip
    assert rc == 0
    by_case = {(r["impl"], r["n"]): r for r in json.loads((out / "results.json").read_text())}
    for impl in ("reference", ROOFLINE):
        assert by_case[impl, 4096]["status"] == OOM, by_case[impl, 4096]["message"]
        assert "allocate" in by_case[impl, 4096]["message"]
        assert by_case[impl, 8192]["status"] == SKIPPED
    assert by_case["reference", 4096]["isolation"] == "process"
    assert by_case["reference", 4096]["fwd_status"] == OOM


def test_unavailable_device_is_recorded_not_raised():
    spec = CaseSpec(impl="pyhypersphere", n=8, d=4, dtype="float32", device="cuda")
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    record = sweep.run_case(spec, "process", timeout=60)
    assert record["status"] == UNSUPPORTED and "CUDA" in record["message"]


@pytest.mark.parametrize(
    "exc, status",
    [
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), OOM),
        (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 bytes"), OOM),
        (MemoryError(), OOM),
        (NotImplementedError("FlexAttention does not support backward on CPU"), UNSUPPORTED),
        (RuntimeError("shape mismatch"), "error"),
    ],
)
def test_failures_are_classified(exc, status):
    assert worker.classify(exc) == status


def test_phase_failure_keeps_the_other_phase(monkeypatch):
    """A phase that runs out of memory is recorded; the sweep's record survives."""
    spec = CaseSpec(
        impl="blocked", n=2 * worker.WARM_UP_N, d=4, dtype="float32", device="cpu", repeat=1, max_seconds=0.1
    )
    real_phases = worker.phases

    def phases_with_oom_backward(spec, n=None):
        result = real_phases(spec, n)
        if n is not None:  # the small warm-up runs fine
            return result

        def oom():
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 PiB")

        return [(p, oom if p == "fwdbwd" else fn, s) for p, fn, s in result]

    monkeypatch.setattr(worker, "phases", phases_with_oom_backward)
    record = worker.measure(spec, isolation="none")
    assert record["status"] == OOM and record["fwd_status"] == OK and record["fwdbwd_status"] == OOM
    assert record["fwd_ms"] > 0 and record["fwdbwd_ms"] is None


def test_roofline_flops_match_the_mm():
    for n in (7, 64, 1000):
        for phase in roofline.PHASES:
            mm_flops = 2 * n * 16 * roofline.mm_columns(phase, n)
            assert mm_flops * roofline.mm_scale(phase, n, 16) == pytest.approx(roofline.flops(phase, n, 16))
    assert roofline.flops("fwd", 10, 3) == 10 * 10 * 3  # N^2/2 pairs x 2d


@pytest.mark.parametrize("n, block", [(37, 8), (64, 1024)])
def test_blocked_matches_reference(n, block):
    x = unit_rows(n, 5, seed=n).requires_grad_(True)
    got = blocked_uniform_loss(x, t=2.0, block=block)
    (grad_got,) = torch.autograd.grad(got, x)
    x_ref = x.detach().clone().requires_grad_(True)
    want = reference_uniform_loss(x_ref, t=2.0)
    (grad_want,) = torch.autograd.grad(want, x_ref)
    assert got.item() == pytest.approx(want.item(), rel=1e-10)
    torch.testing.assert_close(grad_got, grad_want, rtol=1e-8, atol=1e-10)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("n, d, t", [(50, 8, 2.0), (129, 16, 0.5)])
def test_flex_attention_value_matches_reference_on_cpu(n, d, t):
    # CPU runs FlexAttention's eager path (forward only); the fused kernel is CUDA's.
    x = unit_rows(n, d, seed=1, dtype=torch.float32)
    got = peers.flex_uniform_loss(x, t)
    want = reference_uniform_loss(x.double(), t)
    assert got.item() == pytest.approx(want.item(), abs=1e-5)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("scale", [1.0, 1.7])
def test_flex_attention_closed_form_gradient_on_cpu(scale):
    # Any rows (not only unit ones): the score_mod's -t ||x_j||^2 and the row term make
    # the value exact, and the closed-form gradient is the full one, against float64
    # autograd through explicit pair differences.
    n, d, t = 70, 8, 2.0
    x = (scale * unit_rows(n, d, seed=3, dtype=torch.float64)).requires_grad_(True)
    got = peers.flex_uniform_loss(x, t)
    (grad_got,) = torch.autograd.grad(2.0 * got, x)
    x_ref = x.detach().clone().requires_grad_(True)
    want = reference_uniform_loss(x_ref, t)
    (grad_want,) = torch.autograd.grad(2.0 * want, x_ref)
    assert got.item() == pytest.approx(want.item(), rel=1e-12)
    torch.testing.assert_close(grad_got, grad_want, rtol=1e-10, atol=1e-12)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_flex_attention_compiled_on_cuda_matches_reference():
    from torch.nn.attention.flex_attention import flex_attention

    n, d, t = 300, 64, 2.0
    x = unit_rows(n, d, seed=2, dtype=torch.float32).cuda()
    z = x.clone().requires_grad_(True)
    got = peers.flex_uniform_loss(z, t, attention=torch.compile(flex_attention))
    (grad_got,) = torch.autograd.grad(got, z)
    x_ref = x.double().requires_grad_(True)
    want = reference_uniform_loss(x_ref, t)
    (grad_want,) = torch.autograd.grad(want, x_ref)
    assert got.item() == pytest.approx(want.item(), abs=1e-4)

    # equal up to a component along each row (removed by F.normalize's Jacobian)
    def tangential(g):
        return g - (g * x.double()).sum(1, keepdim=True) * x.double()

    torch.testing.assert_close(tangential(grad_got.double()), tangential(grad_want), rtol=1e-3, atol=1e-5)


@pytest.mark.slow  # KeOps compiles each formula with g++ on first use
@pytest.mark.skipif(not peers.keops_available(), reason=peers.KEOPS_MISSING)
def test_keops_matches_reference():
    x = unit_rows(200, 16, seed=3).requires_grad_(True)  # not unit norm-dependent: also scale it
    z = (x * 1.3).detach().requires_grad_(True)
    got = peers.keops_uniform_loss(z, 2.0)
    (grad_got,) = torch.autograd.grad(got, z)
    z_ref = z.detach().clone().requires_grad_(True)
    want = reference_uniform_loss(z_ref, 2.0)
    (grad_want,) = torch.autograd.grad(want, z_ref)
    assert got.item() == pytest.approx(want.item(), rel=1e-9)
    torch.testing.assert_close(grad_got, grad_want, rtol=1e-7, atol=1e-10)


def test_cli_rejects_bad_sizes():
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--n", "1024,abc"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--impl", "pyhypersphere,nope"])
    assert math.isfinite(cli.DEFAULT_HOST_MEM_SHARE)


def test_missing_optional_packages_give_clear_messages(monkeypatch, tmp_path):
    from pyhypersphere.bench import report
    from pyhypersphere.bench.impls import IMPLS

    monkeypatch.setattr(peers, "keops_available", lambda: False)
    assert IMPLS["keops"].unsupported(torch.device("cpu"), torch.float32) == peers.KEOPS_MISSING
    assert "(pip install pykeops)" in peers.KEOPS_MISSING

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    record = dict.fromkeys(FIELDS)
    record.update(impl="reference", n=8, d=2, dtype="float32", device="cpu", status=OK, fwd_ms=1.0)
    written = report.write_all([record], str(tmp_path))
    assert written["png"] == [] and "(pip install matplotlib)" in written["note"]
    assert json.loads((tmp_path / "results.json").read_text()) == [record]
