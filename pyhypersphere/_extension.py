"""Load the compiled extension pyhypersphere._C, or say plainly why it cannot be loaded.

Without this, a missing build surfaces as Python's "cannot import name '_C' from
partially initialized module 'pyhypersphere' (most likely due to a circular import)",
which sends the reader looking for an import cycle.
"""

import importlib
import importlib.util
import sys
import types
from pathlib import Path

import torch  # noqa: F401  (loads libtorch, which _C links against)

BUILD_HINT = (
    "build it from the checkout with `make build` (a .venv with torch) or "
    "`pip install --no-build-isolation -e .` (against the torch already installed)"
)


_HERE = Path(__file__).resolve().parent


def _installed_build_elsewhere():
    """The folder of another pyhypersphere on sys.path that has the compiled extension
    (e.g. `pip install .` into site-packages, shadowed by the checkout Python started in)."""
    for entry in sys.path:
        candidate = Path(entry or ".").resolve() / "pyhypersphere"
        if candidate != _HERE and candidate.is_dir() and any(candidate.glob("_C.*")):
            return candidate
    return None


def load_extension() -> types.ModuleType:
    try:
        return importlib.import_module("pyhypersphere._C")
    except ImportError as e:
        if importlib.util.find_spec("pyhypersphere._C") is None:
            installed = _installed_build_elsewhere()
            if installed:
                message = (
                    f"pyhypersphere: this Python imports pyhypersphere from the source tree {_HERE.parent}, "
                    f"which has no compiled extension, and not the installed build at {installed}; "
                    "start Python outside the checkout, or build in place with `make build`"
                )
            else:
                message = f"pyhypersphere: the compiled extension pyhypersphere._C is not built; {BUILD_HINT}"
        else:  # built, but against another torch or Python, or a library is missing
            message = (
                f"pyhypersphere: the compiled extension pyhypersphere._C does not load ({e}); "
                f"rebuild it against the installed torch: {BUILD_HINT}"
            )
        raise ImportError(message, name="pyhypersphere._C") from None
