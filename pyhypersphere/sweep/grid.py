"""Grid files: parse, validate and expand into runs, before anything runs.

A grid file is JSON::

    {
      "description": "what the study shows",                 (optional)
      "base":   {TrainConfig fields shared by every run},
      "grid":   {"field": [values, ...], ...}                 Cartesian product; or a list of
                                                              such dicts (the union of their products)
      "random": {"count": 8, "seed": 0,                       random search (optional), drawn
                 "fields": {"t": {"log_uniform": [0.5, 8]},   on top of "base"
                            "align_w": {"uniform": [0, 2]},
                            "epochs": {"choice": [2, 5, 20]}}},
      "seeds":  [0, 1],                                       each configuration once per seed
      "quick":  {"base": {...}, "grid": ..., "seeds": [0]}    (optional) what `--quick` changes:
                                                              "base" is merged, the rest replaced
    }

Every run is ``TrainConfig(**base, **point, seed=seed)``, checked field by field (names and
types) and through ``TrainConfig.resolved()`` (values); its id is a readable slug of what
differs from the base plus a hash of the whole configuration, so a resumed sweep recognises
its finished runs even after the grid file was edited or reordered.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import random
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from pyhypersphere.train.config import TrainConfig

GRID_KEYS = ("description", "base", "grid", "random", "seeds", "quick")
RANDOM_KEYS = ("count", "seed", "fields")
DISTRIBUTIONS = ("uniform", "log_uniform", "int_uniform", "choice")
# Set by the sweep for every run: a grid may not choose them.
RESERVED_FIELDS = ("out", "resume", "overwrite", "progress")
# Fields that do not change a run's result: left out of its id.
NOT_IN_ID = RESERVED_FIELDS + ("threads", "device", "verbose", "plots")
# The sweep's own defaults for its runs (a grid's "base" may change them).
RUN_DEFAULTS = {"plots": False, "verbose": True}
SLUG_CHARS = 80
SHIPPED_DIR = Path(__file__).with_name("grids")


class GridError(ValueError):
    """The grid file is invalid; the message names the key and what was expected."""


@dataclass(frozen=True)
class Run:
    """One configuration of a sweep."""

    id: str
    point: Dict[str, Any]  # the fields this run sets on top of the base (seed included)
    config: TrainConfig  # the whole configuration (out and threads set by the runner)


@dataclass
class Sweep:
    description: str
    base: Dict[str, Any]
    runs: List[Run]
    swept: List[str]  # fields that take more than one value across the runs (seed included)
    source: Dict[str, Any]  # the grid as read (after --quick), saved with the results

    def has_both_weights(self) -> bool:
        return "align_w" in self.swept and "unif_w" in self.swept


def shipped_grids() -> Dict[str, Path]:
    """The grids installed with the package, by name (file name without .json)."""
    return {p.stem: p for p in sorted(SHIPPED_DIR.glob("*.json"))}


def find_grid(name_or_path: Union[str, Path]) -> Path:
    """A path to a grid file, or the name of a shipped grid (see ``shipped_grids()``)."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    shipped = shipped_grids()
    if str(name_or_path) in shipped:
        return shipped[str(name_or_path)]
    raise GridError(
        f"grid {str(name_or_path)!r} is neither a file nor a shipped grid ({', '.join(shipped) or 'none installed'})"
    )


def load(name_or_path: Union[str, Path, dict], quick: bool = False) -> Sweep:
    """Read (a file, a shipped grid's name, or a dict), validate and expand a grid."""
    if isinstance(name_or_path, dict):
        raw, where = name_or_path, "grid"
    else:
        path = find_grid(name_or_path)
        where = str(path)
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise GridError(f"{where}: not valid JSON: {e}") from None
    return expand(raw, quick=quick, where=where)


def expand(raw: dict, quick: bool = False, where: str = "grid") -> Sweep:
    if not isinstance(raw, dict):
        raise GridError(f"{where}: expected a JSON object with keys {', '.join(GRID_KEYS)}")
    _no_unknown(raw, GRID_KEYS, where)
    if quick:
        raw = _apply_quick(raw, where)
    raw = {k: v for k, v in raw.items() if k != "quick"}
    base = dict(raw.get("base") or {})
    _check_fields(base, f"{where}: base")
    seeds = raw.get("seeds", [base.get("seed", TrainConfig.seed)])
    if not isinstance(seeds, list) or not seeds or not all(_is_int(s) for s in seeds):
        raise GridError(f"{where}: seeds must be a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise GridError(f"{where}: seeds has repeated values {seeds!r}")

    if not any(k in raw for k in ("base", "grid", "random", "seeds")):
        raise GridError(f"{where}: defines no runs: give at least one of 'base', 'grid', 'random', 'seeds'")
    points = _grid_points(raw.get("grid"), where) + _random_points(raw.get("random"), where)
    if "grid" in raw and not any(points):
        raise GridError(f"{where}: grid is empty: give it fields with lists of values, or leave it out")
    if not points:
        points = [{}]
    if "seeds" in raw and any("seed" in p for p in points):
        raise GridError(f"{where}: give the seeds either in 'seeds' or as a grid field 'seed', not both")

    runs, seen = [], set()
    for point in points:
        for seed in seeds if "seed" not in point else [point["seed"]]:
            full = {**point, "seed": seed}
            config = _config(base, full, where)
            run = Run(id=run_id(full, config), point=full, config=config)
            if run.id not in seen:  # duplicates (e.g. overlapping grid blocks) run once
                seen.add(run.id)
                runs.append(run)
    swept = _swept(base, [r.point for r in runs])
    return Sweep(
        description=str(raw.get("description", "")),
        base=base,
        runs=runs,
        swept=swept,
        source=raw,
    )


def run_id(point: Dict[str, Any], config: TrainConfig) -> str:
    """``<field=value,...>-<hash>``: readable, and unique to the whole configuration."""
    identity = {k: v for k, v in config.to_dict().items() if k not in NOT_IN_ID}
    digest = hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:8]
    slug = ",".join(f"{k}={_short(v)}" for k, v in sorted(point.items()))
    slug = "".join(c if c.isalnum() or c in "=,._-" else "_" for c in slug)[:SLUG_CHARS]
    return f"{slug}-{digest}"


# --------------------------------------------------------------------------- helpers


def _no_unknown(d: dict, allowed, where: str) -> None:
    unknown = sorted(set(d) - set(allowed))
    if unknown:
        raise GridError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; expected {', '.join(allowed)}")


def _apply_quick(raw: dict, where: str) -> dict:
    quick = raw.get("quick")
    if quick is None:
        raise GridError(f"{where}: --quick needs a 'quick' section in the grid")
    if not isinstance(quick, dict):
        raise GridError(f"{where}: quick must be an object, got {quick!r}")
    _no_unknown(quick, tuple(k for k in GRID_KEYS if k != "quick"), f"{where}: quick")
    out = {**raw, **{k: v for k, v in quick.items() if k != "base"}}
    out["base"] = {**(raw.get("base") or {}), **(quick.get("base") or {})}
    return out


def _grid_points(grid, where: str) -> List[dict]:
    if grid is None:
        return []
    blocks = grid if isinstance(grid, list) else [grid]
    points = []
    for i, block in enumerate(blocks):
        at = f"{where}: grid" + (f"[{i}]" if isinstance(grid, list) else "")
        if not isinstance(block, dict):
            raise GridError(f"{at}: expected an object {{field: [values, ...]}}, got {block!r}")
        for name, values in block.items():
            if not isinstance(values, list) or not values:
                raise GridError(f"{at}: {name!r} must be a non-empty list of values, got {values!r}")
            for v in values:
                _check_field(name, v, at)
        names = list(block)
        points += [dict(zip(names, combo)) for combo in itertools.product(*(block[n] for n in names))]
    return points


def _random_points(spec, where: str) -> List[dict]:
    if spec is None:
        return []
    at = f"{where}: random"
    if not isinstance(spec, dict):
        raise GridError(f"{at}: expected an object with keys {', '.join(RANDOM_KEYS)}")
    _no_unknown(spec, RANDOM_KEYS, at)
    count, fields = spec.get("count"), spec.get("fields")
    if not _is_int(count) or count < 1:
        raise GridError(f"{at}: count must be a positive integer, got {count!r}")
    if not isinstance(fields, dict) or not fields:
        raise GridError(f"{at}: fields must be an object {{field: {{distribution: args}}}}")
    rng = random.Random(spec.get("seed", 0))
    samplers = {name: _sampler(name, dist, f"{at}: fields.{name}") for name, dist in fields.items()}
    points = []
    for _ in range(count):
        point = {name: draw(rng) for name, draw in samplers.items()}
        for name, v in point.items():
            _check_field(name, v, at)
        points.append(point)
    return points


def _sampler(name: str, dist, at: str):
    if not isinstance(dist, dict) or len(dist) != 1 or next(iter(dist)) not in DISTRIBUTIONS:
        raise GridError(f"{at}: expected one of {{{', '.join(repr(d) + ': ...' for d in DISTRIBUTIONS)}}}, got {dist!r}")
    kind, args = next(iter(dist.items()))
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise GridError(f"{at}: choice needs a non-empty list, got {args!r}")
        return lambda rng: rng.choice(args)
    if not (isinstance(args, list) and len(args) == 2 and all(is_number(a) for a in args) and args[0] <= args[1]):
        raise GridError(f"{at}: {kind} needs [low, high] with low <= high, got {args!r}")
    lo, hi = args
    if kind == "uniform":
        return lambda rng: round(rng.uniform(lo, hi), 6)
    if kind == "int_uniform":
        if not all(_is_int(a) for a in args):
            raise GridError(f"{at}: int_uniform needs integer bounds, got {args!r}")
        return lambda rng: rng.randint(lo, hi)
    if lo <= 0:
        raise GridError(f"{at}: log_uniform needs positive bounds, got {args!r}")
    return lambda rng: round(math.exp(rng.uniform(math.log(lo), math.log(hi))), 6)


_HINTS = typing.get_type_hints(TrainConfig)


def _check_fields(d: dict, at: str) -> None:
    if not isinstance(d, dict):
        raise GridError(f"{at}: expected an object of TrainConfig fields, got {d!r}")
    for name, value in d.items():
        _check_field(name, value, at)


def _check_field(name: str, value, at: str) -> None:
    if name in RESERVED_FIELDS:
        raise GridError(f"{at}: {name!r} is set by the sweep for each run; remove it from the grid")
    if name not in _HINTS:
        names = ", ".join(sorted(n for n in _HINTS if n not in RESERVED_FIELDS))
        raise GridError(f"{at}: unknown TrainConfig field {name!r}; the fields are: {names}")
    if not _matches(value, _HINTS[name]):
        raise GridError(f"{at}: {name} = {value!r} is not a valid {_type_name(_HINTS[name])}")


def _matches(value, hint) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is float:
        return is_number(value)
    if hint is int:
        return _is_int(value)
    if hint in (str, bool, dict):
        return isinstance(value, hint)
    if origin is tuple:
        return isinstance(value, (list, tuple)) and all(is_number(v) for v in value)
    return True


def _type_name(hint) -> str:
    args = typing.get_args(hint)
    if typing.get_origin(hint) is Union:
        return " or ".join(_type_name(a) for a in args)
    if hint is type(None):
        return "null"
    if typing.get_origin(hint) is tuple:
        return "list of numbers"
    return getattr(hint, "__name__", str(hint))


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v) -> bool:
    """A finite int or float (bools excluded)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _config(base: dict, point: dict, where: str) -> TrainConfig:
    fields = {**RUN_DEFAULTS, **base, **point}
    if "lr_milestones" in fields:
        fields["lr_milestones"] = tuple(fields["lr_milestones"])
    config = TrainConfig(**fields)
    try:
        config.resolved()
    except ValueError as e:
        shown = ", ".join(f"{k}={v!r}" for k, v in point.items())
        raise GridError(f"{where}: run ({shown}) is invalid: {e}") from None
    return config


def _swept(base: dict, points: List[dict]) -> List[str]:
    names: List[str] = []
    for p in points:
        names += [n for n in p if n not in names]
    return [n for n in names if len({json.dumps(p.get(n, base.get(n)), default=str) for p in points}) > 1]


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "_".join(_short(x) for x in v)
    return str(v)


def check_runnable(sweep: Sweep) -> None:
    """The checks that need the machine, for every run before any runs: the device exists
    here, the dataset's package or folder is there, sizes fit the data (GridError naming
    the run).  Each distinct check runs once, so a missing package is reported once."""
    from pyhypersphere.train.data import DataError, check_source
    from pyhypersphere.train.resources import pick_device

    seen = set()
    for r in sweep.runs:
        config = r.config.resolved()
        for check, arg in ((pick_device, config.device), (check_source, config)):
            key = (check.__name__, json.dumps(arg.to_dict() if check is check_source else arg, sort_keys=True, default=str))
            if key in seen:
                continue
            seen.add(key)
            try:
                check(arg)
            except (DataError, ValueError) as e:
                shown = ", ".join(f"{k}={v!r}" for k, v in r.point.items())
                raise GridError(f"run ({shown}) cannot run here: {e}") from None


def describe(sweep: Sweep) -> str:
    fields = ", ".join(sweep.swept) or "nothing"
    return f"{len(sweep.runs)} runs over {fields}" + (f": {sweep.description}" if sweep.description else "")


def replace_threads(config: TrainConfig, threads: Optional[int]) -> TrainConfig:
    """The config with the runner's thread count, unless the grid set one."""
    return config if config.threads is not None else dataclasses.replace(config, threads=threads)
