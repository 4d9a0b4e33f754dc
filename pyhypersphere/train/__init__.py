"""A thin trainer for hyperspherical representations (Wang & Isola, ICML 2020).

    from pyhypersphere.train import TrainConfig, train
    summary = train(TrainConfig(dataset="mnist1d", epochs=20, out="runs/demo"))

    x_train, y_train, x_test, y_test = load_mnist1d(num_samples=4000)  # MNIST-1D as tensors

Also ``pyhypersphere train ...`` / ``python -m pyhypersphere train ...`` on the command line.
"""

from .config import TrainConfig
from .data import MNIST1D, DataError
from .data import mnist1d as load_mnist1d
from .loop import NonFiniteLossError, RunExistsError, TrainingInterrupted, train

__all__ = ["MNIST1D", "load_mnist1d", "DataError", "NonFiniteLossError", "RunExistsError", "TrainConfig", "TrainingInterrupted", "train"]
