"""A sweep's results: rows from sweep.jsonl, the CSV, Spearman correlations and the joint fit
(outputs.py writes them to a folder with the plots)."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .grid import is_number

JSONL = "sweep.jsonl"
CSV = "sweep.csv"
CORRELATIONS = "correlations.json"
JOINT_FIT = "joint_fit.json"
# Accuracies and the metrics correlated with them: the paper's metrics at alpha = t = 2,
# comparable across every run whatever its own alpha, t or objective.
ACCURACIES = ("linear_probe_acc", "knn_acc")
METRICS = ("align_alpha2", "uniform_t2")
SUMMARY_COLUMNS = (
    "linear_probe_acc",
    "knn_acc",
    "linear_probe_acc_output",
    "knn_acc_output",
    "align_alpha2",
    "uniform_t2",
    "align",
    "uniform",
    "train_loss",
    "seconds",
)


def append_row(out, row: dict) -> None:
    """Append one row as a single write, fsynced.  A crash can leave a torn last line (no
    newline); the row is then written on a line of its own, so the fragment never swallows it."""
    path = Path(out) / JSONL
    line = json.dumps(row, sort_keys=True) + "\n"
    with open(path, "ab+") as f:
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                line = "\n" + line
        f.write(line.encode())
        f.flush()
        os.fsync(f.fileno())


def load_rows(out, torn: Optional[List[int]] = None) -> List[dict]:
    """The latest row of each run in ``out/sweep.jsonl`` (a resumed sweep appends a new row
    when it reruns a failed run), in the order the runs first appeared.  Lines that are not
    a whole row (cut short by a crash) are skipped, their run reruns on resume; their line
    numbers are appended to ``torn`` when it is given."""
    path = Path(out) / JSONL
    if not path.exists():
        return []
    latest: Dict[str, dict] = {}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if not isinstance(row, dict) or "id" not in row:
                if torn is not None:
                    torn.append(number)
                continue
            latest[row["id"]] = row
    return list(latest.values())


def ok_rows(rows: Sequence[dict]) -> List[dict]:
    return [r for r in rows if r.get("status") == "ok" and r.get("summary")]


def value(row: dict, name: str):
    """A summary value, else a configuration field (the point's value first)."""
    summary = row.get("summary") or {}
    if name in summary:
        return summary[name]
    if name in row.get("point", {}):
        return row["point"][name]
    return row.get("config", {}).get(name)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (``scipy.stats.spearmanr``: ties get their average rank);
    NaN when either side is constant or there are fewer than 3 pairs."""
    if len(x) != len(y):
        raise ValueError(f"spearman: x and y must have the same length, got {len(x)} and {len(y)}")
    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return math.nan
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def correlations(rows: Sequence[dict]) -> Dict[str, Dict[str, dict]]:
    """Spearman's rho of each metric with each accuracy over the finished runs with finite
    values: ``{accuracy: {metric: {"rho": ..., "n": ...}}}``.  The paper's finding is that
    lower alignment and lower uniformity go with higher accuracy: rho < 0."""
    table: Dict[str, Dict[str, dict]] = {}
    for acc in ACCURACIES:
        table[acc] = {}
        for metric in METRICS:
            pairs = [(value(r, metric), value(r, acc)) for r in ok_rows(rows)]
            pairs = [(m, a) for m, a in pairs if is_number(m) and is_number(a)]
            rho = spearman([m for m, _ in pairs], [a for _, a in pairs])
            table[acc][metric] = {"rho": None if math.isnan(rho) else round(rho, 4), "n": len(pairs)}
    return table


def joint_fit(rows: Sequence[dict]) -> Dict[str, dict]:
    """Least-squares fit of each accuracy on both metrics together,
    ``accuracy ~ intercept + a * align_alpha2 + b * uniform_t2``, over the finished runs
    with finite values: ``{accuracy: {"intercept", "align_alpha2", "uniform_t2", "r2",
    "rho", "n"}}`` with ``rho`` Spearman's rho of the fitted values with the accuracy
    (in-sample).  The paper's claim is about both metrics at once: encoders can trade one
    for the other (collapse: perfect alignment, no uniformity), so each metric's own rho
    can be weak while the pair predicts accuracy well."""
    import numpy as np

    out: Dict[str, dict] = {}
    for acc in ACCURACIES:
        data = [[value(r, m) for m in METRICS] + [value(r, acc)] for r in ok_rows(rows)]
        data = np.array([d for d in data if all(is_number(v) for v in d)], dtype=float).reshape(-1, len(METRICS) + 1)
        n = len(data)
        if n <= len(METRICS) + 1:
            out[acc] = {"n": n, "r2": None, "rho": None}
            continue
        design = np.column_stack([np.ones(n), data[:, :-1]])
        coef, *_ = np.linalg.lstsq(design, data[:, -1], rcond=None)
        fitted = design @ coef
        spread = float(((data[:, -1] - data[:, -1].mean()) ** 2).sum())
        r2 = 1.0 - float(((data[:, -1] - fitted) ** 2).sum()) / spread if spread > 0 else math.nan
        rho = spearman(list(fitted), list(data[:, -1]))
        out[acc] = {"intercept": round(float(coef[0]), 4),
                    **{m: round(float(c), 4) for m, c in zip(METRICS, coef[1:])},
                    "r2": None if math.isnan(r2) else round(r2, 4),
                    "rho": None if math.isnan(rho) else round(rho, 4), "n": n}
    return out


# Fewer runs per fitted parameter than this, and an in-sample R^2 says little (with n runs
# and p parameters, R^2 of random data averages (p - 1) / (n - 1)).
FEW_RUNS_PER_PARAMETER = 5


def format_joint_fit(fit: Dict[str, dict]) -> str:
    lines = []
    parameters = len(METRICS) + 1
    for acc, f in fit.items():
        if f.get("r2") is None:
            lines.append(f"joint fit of {acc}: too few runs ({f['n']})")
            continue
        terms = " ".join(f"{f[m]:+.4f}*{m}" for m in METRICS)
        lines.append(f"joint fit of {acc} over {f['n']} runs: {f['intercept']:.4f} {terms}, "
                     f"R^2={f['r2']}, rho(fit, {acc})={f['rho']}")
        if f["n"] < FEW_RUNS_PER_PARAMETER * parameters:
            chance = (parameters - 1) / (f["n"] - 1)
            lines.append(f"  caution: {f['n']} runs for {parameters} parameters; this R^2 is in-sample, and random "
                         f"accuracies would give {chance:.2f} on average: read it as a description of these runs, "
                         f"not evidence (at least {FEW_RUNS_PER_PARAMETER * parameters} runs for that)")
    return "\n".join(lines)


def write_csv(path, rows: Sequence[dict], fields: Sequence[str]) -> None:
    """One line per run: id, status, the swept fields, the summary's main numbers, the error."""
    columns = ["id", "status", *fields, *SUMMARY_COLUMNS, "wall_seconds", "error"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for r in rows:
            line = []
            for c in columns:
                v = r.get(c) if c in ("id", "status", "wall_seconds") else value(r, c)
                if c == "error":
                    v = (r.get("error") or "").strip().splitlines()[-1:] or [""]
                    v = v[0]
                line.append("" if v is None else v)
            w.writerow(line)


def swept_fields(rows: Sequence[dict]) -> List[str]:
    names: List[str] = []
    for r in rows:
        names += [n for n in r.get("point", {}) if n not in names]
    return [n for n in names if len({json.dumps(value(r, n)) for r in rows}) > 1]


def format_correlations(table: Dict[str, Dict[str, dict]], accuracy: Optional[str] = None) -> str:
    lines = []
    for acc, by_metric in table.items():
        if accuracy and acc != accuracy:
            continue
        cells = [f"{m} rho={c['rho'] if c['rho'] is not None else 'n/a'}" for m, c in by_metric.items()]
        n = next(iter(by_metric.values()))["n"] if by_metric else 0
        lines.append(f"Spearman with {acc} over {n} runs: " + ", ".join(cells))
    return "\n".join(lines)
