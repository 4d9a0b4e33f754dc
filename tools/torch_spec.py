"""Make the virtual environment's torch satisfy TORCH_SPEC (the Makefile runs this first).

    python tools/torch_spec.py SPEC STAMP

If the installed torch does not satisfy SPEC (e.g. ``make TORCH_SPEC='torch==2.5.1' test``
on a venv made with the default pin), SPEC is installed with pip; if that fails, the exit
status is non-zero and the message says so (the old torch is never kept silently).  STAMP
then records SPEC, dated when the installed torch was installed, so the extension (whose
build depends on STAMP) is rebuilt exactly when torch changed after the last build.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from typing import Optional

try:
    from packaging.requirements import InvalidRequirement, Requirement
except ImportError:  # pip's own copy is always there
    from pip._vendor.packaging.requirements import InvalidRequirement, Requirement


def installed_torch() -> Optional[importlib.metadata.Distribution]:
    try:
        return importlib.metadata.distribution("torch")
    except importlib.metadata.PackageNotFoundError:
        return None


def satisfies(spec: Requirement, dist: Optional[importlib.metadata.Distribution]) -> bool:
    return dist is not None and spec.specifier.contains(dist.version, prereleases=True)


def install_time(dist: importlib.metadata.Distribution) -> float:
    """When pip installed ``dist``: the mtime of its RECORD (written at install time)."""
    for f in dist.files or ():
        if f.name == "RECORD":
            return os.stat(f.locate()).st_mtime
    raise RuntimeError(f"torch {dist.version} has no RECORD file: cannot tell when it was installed")


def pip_install(spec: str) -> int:
    return subprocess.call([sys.executable, "-m", "pip", "install", "-q", spec])


def main(argv=None, install=pip_install) -> int:
    text, stamp = (sys.argv[1:] if argv is None else argv)
    try:
        spec = Requirement(text)
    except InvalidRequirement as e:
        print(f"TORCH_SPEC={text!r} is not a pip requirement: {e}", file=sys.stderr)
        return 2
    if any(not s.version for s in spec.specifier):  # some packaging versions accept "torch==="
        print(f"TORCH_SPEC={text!r} is not a pip requirement: a version operator without a version",
              file=sys.stderr)
        return 2
    if spec.name.lower() != "torch":
        print(f"TORCH_SPEC={text!r} must name torch, e.g. 'torch==2.13.0'", file=sys.stderr)
        return 2
    dist = installed_torch()
    if not satisfies(spec, dist):
        have = f"torch {dist.version}" if dist else "no torch"
        print(f"the venv has {have}, which does not satisfy TORCH_SPEC={text!r}: installing it", file=sys.stderr)
        if install(text) != 0:
            print(f"installing {text!r} failed; the venv still has {have}", file=sys.stderr)
            return 1
        dist = installed_torch()
        if not satisfies(spec, dist):
            print(f"after installing {text!r} the venv has torch {dist and dist.version}: it does not satisfy "
                  f"the spec", file=sys.stderr)
            return 1
    when = install_time(dist)
    with open(stamp, "w") as f:
        f.write(text + "\n")
    os.utime(stamp, (when, when))
    return 0


if __name__ == "__main__":
    sys.exit(main())
