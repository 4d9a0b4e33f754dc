"""Writes a sweep's records: results.json, results.csv, PNG plots, and a printed table."""

import csv
import json
import math
import os
from typing import List, Optional

from .impls import ROOFLINE
from .record import FIELDS

MATPLOTLIB_MISSING = "matplotlib is not installed (pip install matplotlib): no plots written"
_MIB = 2**20


def write_json(records: List[dict], path: str) -> None:
    with open(path, "w") as f:
        json.dump(records, f, indent=1)
        f.write("\n")


def write_csv(records: List[dict], path: str) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(FIELDS), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)


def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec)


_COLUMNS = (
    # header, field, format, scale
    ("impl", "impl", "", None),
    ("device", "device", "", None),
    ("dtype", "dtype", "", None),
    ("N", "n", "d", None),
    ("d", "d", "d", None),
    ("fwd ms", "fwd_ms", ".3g", None),
    ("fwd+bwd ms", "fwdbwd_ms", ".3g", None),
    ("peak MiB", "peak_mem_bytes", ".3g", _MIB),
    ("Mpairs/s fwd+bwd", "fwdbwd_pairs_per_s", ".4g", 1e6),
    ("mm frac fwd", "fwd_roofline_frac", ".2f", None),
    ("mm frac fwd+bwd", "fwdbwd_roofline_frac", ".2f", None),
    ("loss", "loss", ".5f", None),
    ("status", "status", "", None),
)


def _cells(record: dict) -> List[str]:
    """One record's formatted cells, in _COLUMNS order."""
    cells = []
    for _header, field, spec, scale in _COLUMNS:
        value = record.get(field)
        if scale and value is not None:
            value = value / scale
        cells.append(_fmt(value, spec))
    return cells


def format_table(records: List[dict]) -> str:
    rows = [[header for header, *_ in _COLUMNS]]
    rows += [_cells(r) for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines = ["  ".join(cell.rjust(w) if i >= 3 else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]  # fmt: skip
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"  {r['impl']} n={r['n']} {r['device']} {r['dtype']}: {r['status']}: {r['message']}"
             for r in records if r.get("message")]  # fmt: skip
    if notes:
        lines += ["", "notes:"] + notes
    return "\n".join(lines)


def to_markdown(records: List[dict]) -> str:
    """The same table in Markdown (for docs)."""
    out = ["| " + " | ".join(h for h, *_ in _COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    out += ["| " + " | ".join(_cells(r)) + " |" for r in records]
    return "\n".join(out)


def plot(records: List[dict], out_dir: str) -> List[str]:
    """One PNG per (device, dtype, d): fwd time, fwd+bwd time and peak memory against N, log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = {}
    for r in records:
        groups.setdefault((r["device"], r["dtype"], r["d"]), []).append(r)
    paths = []
    panels = (("fwd_ms", "forward time (ms)"), ("fwdbwd_ms", "forward + backward time (ms)"),
              ("peak_mem_bytes", "peak extra memory, fwd+bwd (MiB)"))  # fmt: skip
    for (device, dtype, d), group in sorted(groups.items()):
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2))
        impls = list(dict.fromkeys(r["impl"] for r in group))
        drawn = False
        for ax, (field, title) in zip(axes, panels):
            for impl in impls:
                if impl == ROOFLINE and field == "peak_mem_bytes":
                    continue  # the GEMM's output matrix says nothing about the loss
                points = sorted((r["n"], r[field]) for r in group if r["impl"] == impl and r.get(field))
                if not points:
                    continue
                xs = [p[0] for p in points]
                ys = [p[1] / _MIB if field == "peak_mem_bytes" else p[1] for p in points]
                style = {"linestyle": "--", "color": "gray"} if impl == ROOFLINE else {}
                label = "torch.mm, same flops (roofline)" if impl == ROOFLINE else impl
                ax.plot(xs, ys, marker="o", label=label, **style)
                drawn = True
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("N (rows)")
            ax.set_title(title)
            ax.grid(True, which="both", alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"uniformity loss, d={d}, {dtype}, {device}")
        fig.tight_layout()
        if drawn:
            path = os.path.join(out_dir, f"bench_{device}_{dtype}_d{d}.png")
            fig.savefig(path, dpi=110)
            paths.append(path)
        plt.close(fig)
    return paths


def write_all(records: List[dict], out_dir: str, *, plots: bool = True, meta: Optional[dict] = None) -> dict:
    """Writes everything; returns the paths written by kind, and a note when plots are missing."""
    os.makedirs(out_dir, exist_ok=True)
    written = {"json": os.path.join(out_dir, "results.json"), "csv": os.path.join(out_dir, "results.csv")}
    write_json(records, written["json"])
    write_csv(records, written["csv"])
    if meta is not None:
        written["meta"] = os.path.join(out_dir, "meta.json")
        with open(written["meta"], "w") as f:
            json.dump(meta, f, indent=1)
    written["png"] = []
    if plots:
        try:
            written["png"] = plot(records, out_dir)
        except ImportError:
            written["note"] = MATPLOTLIB_MISSING
    return written
