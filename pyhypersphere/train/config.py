"""TrainConfig: every knob of a run, with the paper's defaults and per-dataset presets."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Optional, Tuple

LOSSES = ("align_uniform", "infonce", "siglip")
MNIST1D_MIN_SAMPLES = 20  # the trainer's floor: 4 held-out samples
MNIST1D_TRAIN_FRACTION = 0.8  # the mnist1d generator's own split
DATASETS = ("mnist1d", "digits", "folder", "stl10")

# Real-valued settings: each must be finite (NaN would pass every range check).
_FLOAT_FIELDS = (
    "test_fraction", "align_w", "unif_w", "alpha", "t", "tau", "lr", "momentum", "weight_decay", "lr_gamma"
)

# Per-dataset defaults for the fields left as None.  MNIST-1D is sized so that the default
# run finishes in about a minute on two CPU cores; STL-10 is the paper's setting
# (SmallAlexNet, 64x64 crops, batch 768, 200 epochs, lr decay at 155/170/185).
PRESETS = {
    "mnist1d": dict(encoder="conv1d", epochs=20, batch_size=256, feature_dim=32),
    "digits": dict(encoder="conv2d", epochs=40, batch_size=128, feature_dim=32),
    "folder": dict(encoder="auto", epochs=100, batch_size=256, feature_dim=128),
    "stl10": dict(encoder="small_alexnet", epochs=200, batch_size=768, feature_dim=128),
}


@dataclass
class TrainConfig:
    # data
    dataset: str = "mnist1d"
    data_dir: Optional[str] = None  # folder: the images/.npy root; stl10: torchvision's root
    num_samples: int = 10000  # mnist1d: samples generated (80% train, 20% test)
    test_fraction: float = 0.2  # folder without train/ and test/ subfolders, and digits
    image_size: Optional[int] = None  # folder images are resized to this (default 32); stl10 crops 64
    # objective (Wang & Isola defaults)
    loss: str = "align_uniform"
    align_w: float = 1.0
    unif_w: float = 1.0
    alpha: float = 2.0
    t: float = 2.0
    tau: float = 0.2  # InfoNCE temperature
    # model
    encoder: Optional[str] = None  # conv1d | conv2d | small_alexnet | mlp (None: the dataset's preset)
    feature_dim: Optional[int] = None  # output dimension (a point on S^{d-1}); 2 draws the circle plot
    # optimization (SGD, momentum 0.9, wd 1e-4, lr 0.12 * batch / 256, step decay x0.1)
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    chunk_size: Optional[int] = None  # samples per encoder call (None: the whole batch); see large_batch
    lr: Optional[float] = None
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_milestones: Tuple[float, ...] = (0.775, 0.85, 0.925)  # fractions of the epochs (155/170/185 of 200)
    lr_gamma: float = 0.1
    # evaluation
    eval_every: int = 1
    knn_k: int = 5
    # run
    out: Optional[str] = None
    seed: int = 0
    device: str = "auto"
    threads: Optional[int] = None
    resume: bool = False
    overwrite: bool = False
    progress: bool = True  # progress bars
    verbose: bool = True  # a line per epoch on stderr
    plots: bool = True
    extra: dict = field(default_factory=dict)  # free-form notes saved with the run

    def resolved(self) -> "TrainConfig":
        """A copy with every None that has a preset filled in, validated."""
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; choose one of {', '.join(DATASETS)}")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
        c = dataclasses.replace(self)
        for key, value in PRESETS[c.dataset].items():
            if getattr(c, key) is None:
                setattr(c, key, value)
        if c.lr is None:
            c.lr = 0.12 * c.batch_size / 256
        if c.image_size is None:
            c.image_size = 64 if c.dataset == "stl10" else 32
        c.lr_milestones = tuple(float(m) for m in c.lr_milestones)
        c._validate()
        return c

    def _validate(self) -> None:
        """Every check that needs no data: a bad setting fails before the run writes anything."""
        for name in ("epochs", "batch_size", "feature_dim", "eval_every", "knn_k", "num_samples", "image_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.chunk_size is not None and int(self.chunk_size) < 1:
            raise ValueError(f"chunk_size must be at least 1, got {self.chunk_size} (leave it unset for the whole batch)")
        if self.threads is not None and int(self.threads) < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads} (leave it unset for the automatic count)")
        if self.batch_size < 2:
            raise ValueError("batch_size must be at least 2 (uniformity needs pairs)")
        values = {name: getattr(self, name) for name in _FLOAT_FIELDS}
        values.update({f"lr_milestones[{i}]": m for i, m in enumerate(self.lr_milestones)})
        for name, value in values.items():
            if not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        for name in ("t", "tau", "alpha", "lr", "lr_gamma"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("align_w", "unif_w", "weight_decay"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["lr_milestones"] = list(d["lr_milestones"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names}
        if "lr_milestones" in kwargs:
            kwargs["lr_milestones"] = tuple(kwargs["lr_milestones"])
        return cls(**kwargs)


# Fields that change the result: a resumed run must agree with the checkpoint on these.
RESULT_FIELDS = (
    "dataset",
    "data_dir",
    "num_samples",
    "test_fraction",
    "image_size",
    "loss",
    "align_w",
    "unif_w",
    "alpha",
    "t",
    "tau",
    "encoder",
    "feature_dim",
    "epochs",
    "batch_size",
    "chunk_size",
    "lr",
    "momentum",
    "weight_decay",
    "lr_milestones",
    "lr_gamma",
    "seed",
)
