"""A thin trainer for hyperspherical representations (Wang & Isola, ICML 2020).

    from pyhypersphere.train import TrainConfig, train
    summary = train(TrainConfig(dataset="mnist1d", epochs=20, out="runs/demo"))

Also ``pyhypersphere train ...`` / ``python -m pyhypersphere train ...`` on the command line.
"""

from .config import TrainConfig
from .data import DataError
from .loop import NonFiniteLossError, RunExistsError, TrainingInterrupted, train

__all__ = ["DataError", "NonFiniteLossError", "RunExistsError", "TrainConfig", "TrainingInterrupted", "train"]
