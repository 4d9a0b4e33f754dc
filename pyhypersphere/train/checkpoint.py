"""Atomic files: a reader sees the old complete file or the new complete file, never a torn one.

Each write goes to a temporary file in the same folder, is flushed and fsynced, then
``os.replace``d over the target (atomic on POSIX and Windows), and the folder is fsynced.

Checkpoints are torch's zip archives, whose records each carry a CRC-32 of their bytes: the
loader checks every record before unpickling (torch's reader does not), so a corrupted or
truncated file is refused, and it unpickles with ``weights_only=True``, so a file holding
anything but tensors and plain Python values is refused instead of running its code.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Optional

import torch

CHECKPOINT = "checkpoint.pt"
TMP_SUFFIX = ".tmp"
# The one type beyond tensors and plain values that a checkpoint may hold: torch's version,
# as checkpoints written before it was saved as a str hold it (they stay resumable).
ALLOWED_GLOBALS = [torch.torch_version.TorchVersion]


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used (corrupted, truncated, or holding other objects than
    tensors and plain values); the message names the file."""


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # e.g. Windows
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Call ``write(fileobj)`` on a temporary file and move it over ``path`` once complete.

    The temporary file is ``.<name>.<pid>.<random>.tmp`` (see ``remove_stale_temps``); an
    OSError that names no file (a full disk) is raised again naming ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError) and e.filename is None:
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise
    _fsync_dir(path.parent)


def remove_stale_temps(folder, names) -> list:
    """Remove the temporary files that ``atomic_write`` left for ``names`` in ``folder`` when
    its process was killed.  Call it only while holding the folder's run lock (no live
    writer can own them then); returns the names removed."""
    removed = []
    for name in names:
        for tmp in Path(folder).glob(f".{name}.*{TMP_SUFFIX}"):
            try:
                tmp.unlink()
                removed.append(tmp.name)
            except OSError:
                pass
    return removed


def save(path, state: dict) -> None:
    # Serialized in memory first: a full disk then fails in a plain write (OSError ENOSPC
    # naming the file), not inside torch's zip writer ("unexpected pos").
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getbuffer()
    atomic_write(path, lambda f: f.write(data))


def verify(path) -> None:
    """Raise CheckpointError unless ``path`` is a complete zip archive whose every record
    matches its CRC-32."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, EOFError, ValueError, zipfile.LargeZipFile) as e:
        raise CheckpointError(
            f"{path} is truncated or not a checkpoint ({e}); delete it, or pass --overwrite to start over"
        ) from None
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None
    if bad is not None:
        raise CheckpointError(
            f"{path} is corrupted (its record {bad} does not match its checksum); delete it, "
            f"or pass --overwrite to start over"
        )


def load(path, map_location="cpu") -> Optional[dict]:
    """The checkpoint at ``path`` (None if there is none), verified and loaded with
    ``weights_only=True``; CheckpointError names the file when it cannot be used."""
    path = Path(path)
    if not path.exists():
        return None
    verify(path)
    try:
        with torch.serialization.safe_globals(ALLOWED_GLOBALS):
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        what = f"it asks for {found.group(1)}" if found else (str(e).strip().splitlines() or ["?"])[-1]
        raise CheckpointError(
            f"{path} was refused: it holds objects other than tensors and plain Python values, which "
            f"a checkpoint of this trainer never does ({what}); it was not loaded"
        ) from None
    except (RuntimeError, EOFError, ValueError) as e:
        first = (str(e).strip().splitlines() or ["?"])[0]
        raise CheckpointError(f"{path} cannot be read: {first}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a checkpoint of this trainer (it holds a {type(state).__name__})")
    return state


def write_json(path, obj) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    atomic_write(path, lambda f: f.write(text), mode="w")
