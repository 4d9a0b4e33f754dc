"""SIGTERM and SIGHUP handled as Ctrl-C, for the command-line programs.

Slurm, docker and systemd stop a job with SIGTERM, a closed terminal sends SIGHUP; by
default either kills Python on the spot with no message.  Inside ``signals_as_interrupts()``
they raise ``Terminated`` (a KeyboardInterrupt), so the trainer keeps its last checkpoint and
says so, and a sweep stops its workers, exactly as after Ctrl-C.  ``exit_code`` gives the
shell's convention, 128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM).
"""

from __future__ import annotations

import contextlib
import signal
import threading

SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived; ``signum`` says which."""

    def __init__(self, signum: int):
        super().__init__()
        self.signum = signum


def _raise(signum, frame):
    raise Terminated(signum)


@contextlib.contextmanager
def signals_as_interrupts():
    """Within the block, SIGTERM and SIGHUP raise Terminated (main thread only; a handler
    the program set itself is left alone)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for signum in SIGNALS:
        if signal.getsignal(signum) in (signal.SIG_DFL, None):
            previous[signum] = signal.signal(signum, _raise)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def signal_of(exc: BaseException) -> int:
    """The signal behind an interrupt: Terminated's own, else SIGINT (Ctrl-C)."""
    return int(getattr(exc, "signum", None) or signal.SIGINT)


def exit_code(exc: BaseException) -> int:
    return 128 + signal_of(exc)


def name(exc: BaseException) -> str:
    signum = signal_of(exc)
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
