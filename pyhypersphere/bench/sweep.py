"""Plans the cases of a sweep, runs each in its own worker process, adds the roofline fractions."""

import json
import os
import signal
import subprocess
import sys
import tempfile
from typing import Dict, Iterable, List, Optional

from . import worker
from .contrastive import UNIFORM
from .impls import ROOFLINE
from .record import ERROR, OOM, SKIPPED, TIMEOUT, UNSUPPORTED, CaseSpec, new_record

ISOLATIONS = ("process", "none")
# After these, larger sizes of the same series are not attempted.
_GIVE_UP = (OOM, TIMEOUT)


def plan(impls: Iterable[str], ns: Iterable[int], ds: Iterable[int], dtypes: Iterable[str],
         devices: Iterable[str], **settings) -> List[CaseSpec]:  # fmt: skip
    """Every (device, dtype, d, impl, n), the roofline GEMM first (uniformity only), sizes ascending."""
    impls = [i for i in impls if i != ROOFLINE]
    if settings.get("loss", UNIFORM) == UNIFORM:
        impls = [ROOFLINE] + impls
    return [
        CaseSpec(impl=impl, n=n, d=d, dtype=dtype, device=device, **settings)
        for device in devices
        for dtype in dtypes
        for d in ds
        for impl in impls
        for n in sorted(ns)
    ]


def _package_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _tail(text: str, limit: int = 400) -> str:
    return " ".join(text.split())[-limit:]


def run_in_process(spec: CaseSpec, timeout: Optional[float]) -> dict:
    """Measure in a fresh Python process; a crash, kill or timeout still gives a record."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_package_root(), env.get("PYTHONPATH")) if p)
    with tempfile.TemporaryDirectory(prefix="pyhypersphere-bench-") as tmp:
        out = os.path.join(tmp, "record.json")
        command = [sys.executable, "-m", "pyhypersphere.bench.worker", json.dumps(spec.as_dict()), out]
        try:
            proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return new_record(spec, TIMEOUT, f"no result within --timeout {timeout:g} s")
        if os.path.exists(out):
            with open(out) as f:
                return json.load(f)
    if proc.returncode == -signal.SIGKILL:
        return new_record(spec, OOM, "worker killed by SIGKILL (most likely the kernel's out-of-memory killer)")
    return new_record(spec, ERROR, f"worker exited with {proc.returncode}: {_tail(proc.stderr or proc.stdout)}")


def run_case(spec: CaseSpec, isolation: str, timeout: Optional[float]) -> dict:
    if isolation not in ISOLATIONS:
        raise ValueError(f"isolation must be one of {ISOLATIONS}, got {isolation!r}")
    reason = worker.unsupported_reason(spec)
    if reason is not None:  # no process needed to know that
        return new_record(spec, UNSUPPORTED, reason)
    if isolation == "none":
        return worker.measure(spec, isolation="none")
    return run_in_process(spec, timeout)


def add_roofline_fractions(records: List[dict]) -> None:
    """fraction = torch.mm time for the same flops / implementation time, same (n, d, dtype, device)."""
    key = ("n", "d", "dtype", "device")
    mm = {tuple(r[k] for k in key): r for r in records if r["impl"] == ROOFLINE}
    for r in records:
        ref = mm.get(tuple(r[k] for k in key))
        for phase in ("fwd", "fwdbwd"):
            mm_ms = ref.get(f"{phase}_ms") if ref else None
            r[f"mm_{phase}_ms"] = mm_ms
            ms = r.get(f"{phase}_ms")
            r[f"{phase}_roofline_frac"] = mm_ms / ms if mm_ms and ms else None


def run_sweep(specs: List[CaseSpec], *, isolation: str = "process", timeout: Optional[float] = None,
              progress: bool = True, max_n: Optional[Dict[str, int]] = None) -> List[dict]:  # fmt: skip
    """Runs every case in order; max_n maps an implementation to the largest n it is run at."""
    from tqdm.auto import tqdm

    max_n = max_n or {}
    records = []
    given_up = {}  # series -> why larger sizes are skipped
    bar = tqdm(specs, desc="bench", unit="case", disable=not progress, dynamic_ncols=True)
    for spec in bar:
        bar.set_postfix_str(f"{spec.impl} n={spec.n} d={spec.d} {spec.dtype} {spec.device}")
        if spec.series() in given_up:
            records.append(new_record(spec, SKIPPED, given_up[spec.series()]))
            continue
        if spec.n > max_n.get(spec.impl, spec.n):
            records.append(new_record(spec, SKIPPED, f"n above --max-n {spec.impl}={max_n[spec.impl]}"))
            continue
        record = run_case(spec, isolation, timeout)
        if record["status"] in _GIVE_UP:
            given_up[spec.series()] = f"n={spec.n} already ended with {record['status']}"
        records.append(record)
    bar.close()
    add_roofline_fractions(records)
    return records
