"""Helpers shared by several test modules (fixtures are imported by name)."""

import importlib.util
from pathlib import Path

import pytest
from torch.utils._python_dispatch import TorchDispatchMode

REPO = Path(__file__).resolve().parent.parent


def load_script(relative_path: str):
    """Import a file of the repository that is not in a package (tools/, examples/)."""
    path = REPO / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def signal_and_wait(process, signum, timeout=120) -> str:
    """Sends `signum` to a running process, waits for it to end and returns its stderr; the
    process is killed if it outlives `timeout` (or the wait raises)."""
    try:
        process.send_signal(signum)
        _, err = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
    return err


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """The trainer's dataset cache in the test's own folder."""
    monkeypatch.setenv("PYHYPERSPHERE_CACHE", str(tmp_path / "cache"))


def tiny_config(out, **kw):
    """A trainer run of a few seconds: 400 MNIST-1D samples, batch 64, one thread."""
    from pyhypersphere.train import TrainConfig

    base = dict(num_samples=400, epochs=3, batch_size=64, out=str(out), progress=False, plots=False, threads=1)
    base.update(kw)
    return TrainConfig(**base)


class RecordedOps(TorchDispatchMode):
    """The pyhypersphere operators that run (forward and backward), in order:
    ``with RecordedOps() as seen: ...`` then ``seen.names``."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "pyhypersphere":
            self.names.append(func._opname)
        return func(*args, **(kwargs or {}))
