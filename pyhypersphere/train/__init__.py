"""A thin trainer for hyperspherical representations (Wang & Isola, ICML 2020).

    from pyhypersphere.train import TrainConfig, load_mnist1d, train
    summary = train(TrainConfig(dataset="mnist1d", epochs=20, out="runs/demo"))

    x_train, y_train, x_test, y_test = load_mnist1d(num_samples=4000)  # MNIST-1D as tensors

Also ``pyhypersphere train ...`` / ``python -m pyhypersphere train ...`` on the command line.
"""

from .checkpoint import CheckpointError
from .config import TrainConfig
from .data import MNIST1D, DataError
from .data import mnist1d as load_mnist1d
from .loop import NonFiniteLossError, RunExistsError, TrainingInterrupted, train
from .runlock import RunLockedError

__all__ = [
    "CheckpointError",
    "DataError",
    "MNIST1D",
    "NonFiniteLossError",
    "RunExistsError",
    "RunLockedError",
    "TrainConfig",
    "TrainingInterrupted",
    "load_mnist1d",
    "train",
]
