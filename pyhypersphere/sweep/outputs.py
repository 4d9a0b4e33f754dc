"""A sweep's output folder: sweep.csv, correlations.json, joint_fit.json and the plots.

Apart from results.py (the table's numbers) and plots.py (which reads them), so that
neither imports the other.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Sequence

from .plots import PlotsUnavailable, write_plots
from .results import CORRELATIONS, CSV, JOINT_FIT, correlations, joint_fit, swept_fields, write_csv


def write_outputs(out, rows: Sequence[dict], sweep=None, plots: bool = True) -> Dict[str, object]:
    """sweep.csv, correlations.json and the plots for ``rows`` (``sweep`` names the swept
    fields; without it they are inferred from the rows' points)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fields = list(sweep.swept) if sweep is not None else swept_fields(rows)
    write_csv(out / CSV, rows, fields)
    table = correlations(rows)
    (out / CORRELATIONS).write_text(json.dumps(table, indent=2) + "\n")
    fit = joint_fit(rows)
    (out / JOINT_FIT).write_text(json.dumps(fit, indent=2) + "\n")
    made: List[str] = []
    if plots:
        try:
            made = write_plots(out, rows, fields, table, fit)
        except PlotsUnavailable as e:
            print(f"note: {e}", flush=True)
    return {"csv": str(out / CSV), "correlations": table, "joint_fit": fit, "plots": made}
