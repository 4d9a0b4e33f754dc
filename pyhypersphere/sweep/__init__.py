"""Many trainer runs at once: grid and random search over TrainConfig fields, with seeds.

    from pyhypersphere import sweep
    s = sweep.load("weights", quick=True)         # a shipped grid's name, a file, or a dict
    rows = sweep.run(s, "runs/weights", workers=2)  # one process per run; resume=True skips finished runs
    sweep.correlations(sweep.load_rows("runs/weights"))

Also ``pyhypersphere sweep --grid GRID --out DIR`` on the command line; the grid format is
documented in ``pyhypersphere.sweep.grid`` and docs/reproduction.md.
"""

from .grid import GridError, Run, Sweep, describe, expand, load, shipped_grids
from .outputs import write_outputs
from .results import correlations, joint_fit, load_rows, spearman
from .runner import FAILED, OK, SweepExistsError, default_workers, run

__all__ = [
    "FAILED",
    "OK",
    "GridError",
    "Run",
    "Sweep",
    "SweepExistsError",
    "correlations",
    "joint_fit",
    "default_workers",
    "describe",
    "expand",
    "load",
    "load_rows",
    "run",
    "shipped_grids",
    "spearman",
    "write_outputs",
]
