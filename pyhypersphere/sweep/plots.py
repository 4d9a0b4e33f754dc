"""A sweep's PNG plots (matplotlib's object API, as the trainer's plots).

* ``scatter.png``: each encoder at (alignment, uniformity), both at alpha = t = 2, colored by
  linear-probe accuracy (the paper's Figure 5 / 9); circles for align+uniform, triangles for
  InfoNCE.
* ``accuracy_vs_params.png``: linear-probe accuracy against each swept field (seed aside),
  over the runs whose objective uses it: every run a dot, the mean over the rest a line.
* ``weights_heatmap.png`` (when both align_w and unif_w are swept): mean accuracy per pair of
  weights (the paper's Figure 6).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Sequence

from pyhypersphere.train.plots import PlotsUnavailable, _figure, _save

from .grid import is_number
from .results import METRICS, ok_rows, value

__all__ = ["PlotsUnavailable", "write_plots"]

ACCURACY = "linear_probe_acc"
# Fields that shape only one objective (InfoNCE ignores the weights, t and alpha; align+uniform
# ignores tau): their panels show only that objective's runs.
ONLY_FOR_LOSS = {"tau": "infonce", "align_w": "align_uniform", "unif_w": "align_uniform", "t": "align_uniform",
                 "alpha": "align_uniform"}
MARKERS = {"align_uniform": "o", "infonce": "^"}


def write_plots(out, rows: Sequence[dict], fields: Sequence[str], table: Dict[str, Dict[str, dict]],
                fit: Dict[str, dict]) -> List[str]:
    """Draws the plots that the rows support (``table`` and ``fit``: their correlations and
    joint fit, for the scatter's title); returns the file names written."""
    out = Path(out)
    rows = [r for r in ok_rows(rows) if is_number(value(r, ACCURACY))]
    if not rows:
        return []
    made = [scatter(rows, out / "scatter.png", table, fit).name]
    params = [f for f in fields if f != "seed"]
    if params:
        made.append(accuracy_vs_params(rows, params, out / "accuracy_vs_params.png").name)
    if "align_w" in fields and "unif_w" in fields:
        made.append(weights_heatmap(rows, out / "weights_heatmap.png").name)
    return made


def scatter(rows: Sequence[dict], path: Path, table: Dict[str, Dict[str, dict]], fit: Dict[str, dict]) -> Path:
    fig = _figure(6.4, 5.2)
    ax = fig.add_subplot(1, 1, 1)
    xs_all = [value(r, METRICS[0]) for r in rows]
    ys_all = [value(r, METRICS[1]) for r in rows]
    accs = [value(r, ACCURACY) for r in rows]
    lo, hi = min(accs), max(accs)
    mappable = None
    for loss, marker in MARKERS.items():
        idx = [i for i, r in enumerate(rows) if value(r, "loss") == loss and is_number(xs_all[i]) and is_number(ys_all[i])]
        if not idx:
            continue
        mappable = ax.scatter(
            [xs_all[i] for i in idx],
            [ys_all[i] for i in idx],
            c=[accs[i] for i in idx],
            cmap="viridis",
            vmin=lo,
            vmax=hi if hi > lo else lo + 1e-9,
            marker=marker,
            s=42,
            edgecolors="black",
            linewidths=0.4,
            label=f"{loss} ({len(idx)})",
        )
    if mappable is not None:
        fig.colorbar(mappable, ax=ax, label="linear-probe accuracy (held out)")
        ax.legend(loc="best", fontsize=8)
    ax.set_xlabel("alignment metric (alpha = 2), lower is better")
    ax.set_ylabel("uniformity metric (t = 2), lower is better")
    rho = table.get(ACCURACY, {})
    fit = fit.get(ACCURACY, {})
    r2 = "n/a" if fit.get("r2") is None else f"{fit['r2']:.2f}"
    ax.set_title(
        f"{len(rows)} encoders; Spearman with accuracy: "
        + ", ".join(f"{m.split('_')[0]} {_fmt(rho.get(m, {}).get('rho'))}" for m in METRICS)
        + f"\nboth metrics together (linear fit): R^2 {r2}, Spearman {_fmt(fit.get('rho'))}",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    _save(fig, path)
    return path


def accuracy_vs_params(rows: Sequence[dict], params: Sequence[str], path: Path) -> Path:
    cols = min(3, len(params))
    nrows = math.ceil(len(params) / cols)
    fig = _figure(4.2 * cols, 3.4 * nrows)
    for k, name in enumerate(params):
        ax = fig.add_subplot(nrows, cols, k + 1)
        pairs = [(value(r, name), value(r, ACCURACY)) for r in rows if _applies(name, r)]
        numeric = all(is_number(v) for v, _ in pairs)
        keys = sorted({json.dumps(v) for v, _ in pairs}, key=lambda s: (json.loads(s) if numeric else s))
        pos = {s: (json.loads(s) if numeric else i) for i, s in enumerate(keys)}
        xs = [pos[json.dumps(v)] for v, _ in pairs]
        ax.scatter(xs, [a for _, a in pairs], s=16, alpha=0.6)
        groups = defaultdict(list)
        for x, (_, a) in zip(xs, pairs):
            groups[x].append(a)
        gx = sorted(groups)
        ax.plot(gx, [sum(groups[x]) / len(groups[x]) for x in gx], color="black", lw=1, label="mean")
        if numeric and len(gx) > 2 and gx[0] > 0 and gx[-1] / gx[0] >= 10:
            ax.set_xscale("log")
            if len(gx) <= 12:  # label the grid values, not a log axis' minor ticks
                ax.set_xticks(gx)
                ax.set_xticklabels([f"{x:g}" for x in gx])
                ax.minorticks_off()
        if not numeric:
            ax.set_xticks(range(len(keys)))
            ax.set_xticklabels([str(json.loads(s)) for s in keys], rotation=30, fontsize=8)
        ax.set_xlabel(name)
        ax.set_ylabel("linear-probe accuracy")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    return path


def weights_heatmap(rows: Sequence[dict], path: Path) -> Path:
    cells = defaultdict(list)
    for r in rows:
        if value(r, "loss") == "align_uniform":
            cells[(value(r, "align_w"), value(r, "unif_w"))].append(value(r, ACCURACY))
    aws = sorted({a for a, _ in cells})
    uws = sorted({u for _, u in cells})
    grid = [[_mean(cells.get((a, u))) for a in aws] for u in uws]
    fig = _figure(1.1 * len(aws) + 2.4, 0.9 * len(uws) + 1.6)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(grid, cmap="viridis", origin="lower", aspect="auto")
    for i, line in enumerate(grid):
        for j, v in enumerate(line):
            if not math.isnan(v):
                ax.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=8, color="white" if v < _mid(grid) else "black")
    ax.set_xticks(range(len(aws)))
    ax.set_xticklabels([f"{a:g}" for a in aws])
    ax.set_yticks(range(len(uws)))
    ax.set_yticklabels([f"{u:g}" for u in uws])
    ax.set_xlabel("align_w (weight of the alignment loss)")
    ax.set_ylabel("unif_w (weight of the uniformity loss)")
    ax.set_title("linear-probe accuracy (mean over seeds)", fontsize=9)
    fig.colorbar(im, ax=ax)
    _save(fig, path)
    return path


def _applies(name: str, row: dict) -> bool:
    return value(row, name) is not None and ONLY_FOR_LOSS.get(name, value(row, "loss")) == value(row, "loss")


def _mean(values) -> float:
    return sum(values) / len(values) if values else math.nan


def _mid(grid) -> float:
    flat = [v for line in grid for v in line if not math.isnan(v)]
    return (min(flat) + max(flat)) / 2 if flat else 0.0


def _fmt(rho) -> str:
    return "n/a" if rho is None else f"{rho:+.2f}"
