"""One writer per run folder: ``OUT/.run.lock``, held for the whole run.

The exclusion is an ``flock`` on the lock file: the kernel releases it when its process ends,
however it ends (kill -9 included), so a lock left by a dead owner is stale by construction
and the next trainer simply takes it.  The file holds the owner's pid, host, start time and
command, for the refusal message only.  Released on exit: the file is removed while still
locked, and a taker checks that the file it locked is still the one at the path (the usual
guard against locking an unlinked file).  Where ``fcntl`` is missing (Windows) nothing is locked.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Optional

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK = ".run.lock"


class RunLockedError(RuntimeError):
    """Another live process writes to this run folder; the message names it."""


class RunLock:
    def __init__(self, folder):
        self.path = Path(folder) / LOCK
        self._fd: Optional[int] = None

    def acquire(self) -> "RunLock":
        if fcntl is None:
            return self
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # held; any other OSError (no locks on this file system) is raised as is
                owner = _read(fd)
                os.close(fd)
                raise RunLockedError(
                    f"{self.path.parent} is in use by {_describe(owner)}; wait for it to end, or stop it "
                    f"(two trainers on one folder would overwrite each other's checkpoint)"
                ) from None
            except OSError as e:
                os.close(fd)
                raise OSError(e.errno, f"cannot lock the run folder: {e.strerror}", str(self.path)) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # locked a file its owner removed while releasing: take the new one
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                 "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(owner) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)  # still locked: no one else can have taken this file
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}


def _describe(owner: dict) -> str:
    if not owner.get("pid"):
        return "another process (it has not written its name yet)"
    text = f"pid {owner['pid']} on {owner.get('host', '?')} since {owner.get('since', '?')}"
    return text + (f" ({owner['command']})" if owner.get("command") else "")
