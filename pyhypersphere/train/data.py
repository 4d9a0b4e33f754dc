"""Datasets that work on a fresh offline machine, loaded whole into memory as tensors.

* ``mnist1d``: MNIST-1D generated locally by the ``mnist1d`` package's ``make_dataset``
  (its generator, never its download), 80% train / 20% test.
* ``digits``: scikit-learn's bundled 8x8 digits (1,797 images).
* ``folder``: a user's folder ``ROOT/<class>/<file>`` of images (png, jpg, ...) or ``.npy``
  arrays (1-D arrays are signals, 2-D/3-D ones images), split into ``ROOT/train`` and
  ``ROOT/test`` when those exist, else held out at random.
* ``stl10``: STL-10 through torchvision, from a local copy only (``download=False``).
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, NamedTuple, Optional

import numpy as np
import torch
import torch.nn.functional as F

from .config import MNIST1D_MIN_SAMPLES, MNIST1D_TRAIN_FRACTION, TrainConfig

SPLIT_SEED = 0  # held-out splits do not depend on the training seed
MNIST1D_SEED = 42  # the generator's own default: the standard MNIST-1D


class DataError(RuntimeError):
    """A dataset could not be loaded; the message says why and what to do."""


@dataclass
class Data:
    name: str
    kind: str  # "signal" [N, L] or "image" [N, C, H, W]
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    class_names: List[str]
    mean: torch.Tensor  # per channel (images) or scalar (signals), applied after augmentation
    std: torch.Tensor
    x_extra: Optional[torch.Tensor] = None  # unlabeled samples used for training only (STL-10)
    eval_size: Optional[int] = None  # images: the side the encoder sees at evaluation
    eval_crop: bool = False  # True: Resize(side*70/64)+CenterCrop(side) (STL-10); False: plain resize
    info: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return 1 if self.kind == "signal" else int(self.x_train.shape[1])

    def train_pool(self) -> torch.Tensor:
        """Everything the encoder trains on (labels unused)."""
        if self.x_extra is None:
            return self.x_train
        return torch.cat([self.x_train, self.x_extra])

    def train_labels(self) -> torch.Tensor:
        """The class labels of train_pool()'s rows (the supervised loss, --loss supcon)."""
        if self.x_extra is not None:
            raise ValueError(f"--loss supcon needs the class label of every training sample; {self.name} trains on "
                             "unlabeled samples too")
        return self.y_train

    def to_float(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean = self.mean.to(x.device)
        std = self.std.to(x.device)
        if self.kind == "image":
            mean = mean.view(1, -1, 1, 1)
            std = std.view(1, -1, 1, 1)
        return (x - mean) / std

    def eval_view(self, x: torch.Tensor) -> torch.Tensor:
        """Un-augmented input as the encoder sees it at evaluation."""
        x = self.to_float(x)
        if (
            self.kind == "image"
            and self.eval_size is not None
            and tuple(x.shape[-2:]) != (self.eval_size, self.eval_size)
        ):
            if self.eval_crop:
                x = resize_center_crop(x, self.eval_size)
            else:
                x = F.interpolate(x, size=(self.eval_size, self.eval_size), mode="bilinear", align_corners=False)
        return self.normalize(x)


def resize_center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """torchvision's Resize(size * 70/64) + CenterCrop(size), the paper's STL-10 evaluation."""
    h, w = x.shape[-2:]
    short = max(size, round(size * 70 / 64))
    scale = short / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[..., top : top + size, left : left + size]


def check_source(config: TrainConfig) -> None:
    """The checks of a dataset that load nothing (its package, its folder, sizes that are
    known in advance); raise DataError.  ``config`` is resolved.  A sweep runs them for every
    run before starting any."""
    if config.dataset == "mnist1d":
        if config.num_samples < MNIST1D_MIN_SAMPLES:
            raise DataError(f"mnist1d needs num_samples >= {MNIST1D_MIN_SAMPLES}, got {config.num_samples}")
        train_samples = int(config.num_samples * MNIST1D_TRAIN_FRACTION)
        if config.batch_size > train_samples:
            raise DataError(
                f"batch_size {config.batch_size} is larger than the training set ({train_samples} of "
                f"num_samples {config.num_samples})"
            )
        _need("mnist1d", MNIST1D_MISSING)
    elif config.dataset == "digits":
        _need("sklearn", "the digits dataset needs scikit-learn: pip install scikit-learn")
    elif config.dataset == "folder":
        if not config.data_dir:
            raise DataError("--dataset folder needs --data-dir ROOT (ROOT/<class>/<files>)")
        if not Path(config.data_dir).expanduser().is_dir():
            raise DataError(f"data_dir {config.data_dir} is not a folder")
    elif config.dataset == "stl10":
        root = Path(config.data_dir or "data").expanduser()
        if not (root / "stl10_binary").is_dir():
            raise DataError(f"STL-10 was not found under {str(root)!r} (expected {root}/stl10_binary/)")


def _need(module: str, message: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise DataError(message)


def load(config: TrainConfig) -> Data:
    loaders = {"mnist1d": load_mnist1d, "digits": load_digits, "folder": load_folder, "stl10": load_stl10}
    return loaders[config.dataset](config)


# --------------------------------------------------------------------------- MNIST-1D


def _cache_dir() -> Path:
    root = os.environ.get("PYHYPERSPHERE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "pyhypersphere"
    )
    return Path(root)


MNIST1D_KEYS = ("x", "y", "x_test", "y_test")


class MNIST1D(NamedTuple):
    """MNIST-1D as tensors: signals [N, 40] float32, labels [N] int64 (0-9)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def mnist1d(num_samples: int = 10000, seed: int = MNIST1D_SEED) -> MNIST1D:
    """MNIST-1D (Greydanus, 2020) made locally by the ``mnist1d`` package's generator (never
    downloaded), split 80% train / 20% test, cached under ``$PYHYPERSPHERE_CACHE`` (default
    ``~/.cache/pyhypersphere``).  ``seed`` 42 is the standard dataset.  Public as
    ``pyhypersphere.train.load_mnist1d``."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < MNIST1D_MIN_SAMPLES:
        raise ValueError(f"num_samples must be an integer of at least {MNIST1D_MIN_SAMPLES}, got {num_samples!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    a = mnist1d_arrays(num_samples, seed)
    return MNIST1D(*(torch.from_numpy(a[k]) for k in MNIST1D_KEYS))


def mnist1d_arrays(num_samples: int, seed: int = MNIST1D_SEED) -> dict:
    """MNIST-1D from the package's own generator as numpy arrays, cached on disk (a few
    seconds to make).  A cache file that cannot be read, whatever the reason (truncated,
    corrupted, wrong contents), is made again and replaced atomically."""
    path = _cache_dir() / f"mnist1d-n{num_samples}-s{seed}.npz"
    remove_stale_cache_temps(path.parent)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in MNIST1D_KEYS}
        if len(arrays["x"]) + len(arrays["x_test"]) == num_samples and len(arrays["x"]) == len(arrays["y"]):
            return arrays
    except FileNotFoundError:
        pass
    except Exception:  # noqa: BLE001  (BadZipFile, EOFError, zlib.error, ...: any of them means "make it again")
        pass
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as e:
        raise DataError(MNIST1D_MISSING) from e
    args = get_dataset_args()
    args.num_samples = int(num_samples)
    args.seed = int(seed)
    # make_dataset seeds numpy's and random's global generators: leave the caller's intact.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        d = make_dataset(args)  # the generator only; get_dataset() would try to download
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    arrays = {
        "x": d["x"].astype(np.float32),
        "y": d["y"].astype(np.int64),
        "x_test": d["x_test"].astype(np.float32),
        "y_test": d["y_test"].astype(np.int64),
    }
    _write_cache(path, arrays)
    return arrays


MNIST1D_MISSING = (
    "the mnist1d dataset needs the 'mnist1d' package: pip install mnist1d "
    "(it generates the data locally; nothing is downloaded)"
)
_HOST = socket.gethostname()


def _write_cache(path: Path, arrays: dict) -> None:
    """Write ``path`` through a temporary file named with this process (removed on failure;
    ``remove_stale_cache_temps`` removes it if the process is killed first)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}@{_HOST}.tmp.npz")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except OSError:
        try:
            tmp.unlink()
        except OSError:
            pass  # a read-only home only costs the regeneration next time


def remove_stale_cache_temps(folder: Path) -> None:
    """Remove the cache's temporary files whose writer (a process on this host) is gone."""
    try:
        names = [p for p in Path(folder).glob(".mnist1d-*.tmp.npz")]
    except OSError:
        return
    for tmp in names:
        m = re.match(r"^\..+\.(\d+)(?:@(.*))?\.tmp\.npz$", tmp.name)
        if m and (m.group(2) in (None, _HOST)) and not _alive(int(m.group(1))):
            try:
                tmp.unlink()
            except OSError:
                pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def load_mnist1d(config: TrainConfig) -> Data:
    """The trainer's loader (a Data); the public one is ``mnist1d`` (tensors)."""
    check_source(config)
    a = mnist1d_arrays(config.num_samples)
    return Data(
        name="mnist1d",
        kind="signal",
        x_train=torch.from_numpy(a["x"]),
        y_train=torch.from_numpy(a["y"]),
        x_test=torch.from_numpy(a["x_test"]),
        y_test=torch.from_numpy(a["y_test"]),
        class_names=[str(i) for i in range(10)],
        mean=torch.tensor(0.0),  # the generator already centers and scales the data
        std=torch.tensor(1.0),
        info={"source": "mnist1d.data.make_dataset", "generator_seed": MNIST1D_SEED},
    )


# --------------------------------------------------------------------------- digits


def _split(n: int, test_fraction: float, seed: int = SPLIT_SEED):
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    n_test = max(1, int(round(n * test_fraction)))
    return perm[n_test:], perm[:n_test]


def load_digits(config: TrainConfig) -> Data:
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as e:
        raise DataError("the digits dataset needs scikit-learn: pip install scikit-learn") from e
    d = sk_load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]  # [N, 1, 8, 8] in [0, 1]
    y = torch.from_numpy(d.target.astype(np.int64))
    tr, te = _split(len(y), config.test_fraction)
    mean, std = x[tr].mean(), x[tr].std()
    return Data(
        name="digits",
        kind="image",
        x_train=x[tr],
        y_train=y[tr],
        x_test=x[te],
        y_test=y[te],
        class_names=[str(i) for i in range(10)],
        mean=mean.view(1),
        std=std.view(1),
        info={"source": "sklearn.datasets.load_digits"},
    )


# --------------------------------------------------------------------------- folder

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def _class_files(root: Path):
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = []
    for label, name in enumerate(classes):
        for f in sorted((root / name).rglob("*")):
            if f.is_file() and (f.suffix.lower() in IMAGE_EXTS or f.suffix.lower() == ".npy"):
                files.append((f, label))
    return classes, files


def _read_image(path: Path, size: int) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError as e:
        raise DataError("reading image files needs Pillow: pip install pillow") from e
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        s = size / min(w, h)  # resize the short side, then center-crop to a square
        im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BILINEAR)
        w, h = im.size
        left, top = (w - size) // 2, (h - size) // 2
        im = im.crop((left, top, left + size, top + size))
        return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)  # [3, H, W]


def _read_npy(path: Path) -> np.ndarray:
    a = np.load(path, allow_pickle=False)
    if a.ndim == 3 and a.shape[-1] in (1, 3, 4) and a.shape[0] not in (1, 3, 4):
        a = a.transpose(2, 0, 1)  # HWC -> CHW
    elif a.ndim == 2:
        a = a[None]  # grayscale image
    elif a.ndim not in (1, 3):
        raise DataError(f"{path}: expected a 1-D signal or a 2-D/3-D image array, got shape {a.shape}")
    return a


def _load_files(files, size: int):
    arrays = []
    for f, _ in files:
        arrays.append(_read_npy(f) if f.suffix.lower() == ".npy" else _read_image(f, size))
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        ndims = {len(s) for s in shapes}
        if ndims == {3}:  # images of different sizes: bring them to size x size
            arrays = [_resize_array(a, size) for a in arrays]
        else:
            raise DataError(f"the files have different shapes: {sorted(shapes)[:4]} ...")
    x = np.stack(arrays)
    y = np.asarray([label for _, label in files], dtype=np.int64)
    return x, y


def _resize_array(a: np.ndarray, size: int) -> np.ndarray:
    t = torch.from_numpy(a.astype(np.float32))[None]
    t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0]
    return t.numpy() if a.dtype != np.uint8 else t.round().clamp(0, 255).to(torch.uint8).numpy()


def load_folder(config: TrainConfig) -> Data:
    check_source(config)
    root = Path(config.data_dir).expanduser()
    size = int(config.image_size)
    if (root / "train").is_dir() and (root / "test").is_dir():
        classes, train_files = _class_files(root / "train")
        test_classes, test_files = _class_files(root / "test")
        if test_classes != classes:
            raise DataError(f"{root}/train and {root}/test have different class folders")
        x_tr, y_tr = _load_files(train_files, size) if train_files else (None, None)
        x_te, y_te = _load_files(test_files, size) if test_files else (None, None)
    else:
        classes, files = _class_files(root)
        if not files:
            x_tr = None
        else:
            x, y = _load_files(files, size)
            tr, te = _split(len(y), config.test_fraction)
            x_tr, y_tr, x_te, y_te = x[tr.numpy()], y[tr.numpy()], x[te.numpy()], y[te.numpy()]
    if x_tr is None or x_te is None or len(classes) < 2:
        raise DataError(
            f"{root}: expected at least two class folders ROOT/<class>/ holding images "
            f"({', '.join(sorted(IMAGE_EXTS))}) or .npy arrays"
        )
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise DataError(f"train samples have shape {x_tr.shape[1:]} but test samples {x_te.shape[1:]}")
    x_tr_t, x_te_t = torch.from_numpy(np.ascontiguousarray(x_tr)), torch.from_numpy(np.ascontiguousarray(x_te))
    if x_tr_t.dtype != torch.uint8:
        x_tr_t, x_te_t = x_tr_t.float(), x_te_t.float()
    kind = "signal" if x_tr_t.ndim == 2 else "image"
    ft = x_tr_t.float().div(255.0) if x_tr_t.dtype == torch.uint8 else x_tr_t
    if kind == "signal":
        mean, std = ft.mean(), ft.std().clamp_min(1e-8)
    else:
        mean, std = ft.mean(dim=(0, 2, 3)), ft.std(dim=(0, 2, 3)).clamp_min(1e-8)
    return Data(
        name="folder",
        kind=kind,
        x_train=x_tr_t,
        y_train=torch.from_numpy(y_tr),
        x_test=x_te_t,
        y_test=torch.from_numpy(y_te),
        class_names=list(classes),
        mean=mean.reshape(-1),
        std=std.reshape(-1),
        eval_size=size if kind == "image" else None,
        info={"root": str(root), "fingerprint": _fingerprint(x_tr_t)},
    )


def _fingerprint(x: torch.Tensor) -> str:
    return hashlib.sha1(x.contiguous().numpy().tobytes()[: 1 << 24]).hexdigest()[:12]


# --------------------------------------------------------------------------- STL-10

STL10_MEAN = (0.44087801806139126, 0.42790631331699347, 0.3867879370752931)
STL10_STD = (0.26826768628079806, 0.2610450402318512, 0.26866836876860795)


def load_stl10(config: TrainConfig) -> Data:
    try:
        from torchvision.datasets import STL10
    except ImportError as e:
        raise DataError(
            "--dataset stl10 needs torchvision (a build matching your torch) and a local copy of "
            "STL-10; pip install torchvision"
        ) from e
    root = config.data_dir or "data"
    try:
        train = STL10(root, split="train", download=False)
        test = STL10(root, split="test", download=False)
        unlabeled = STL10(root, split="unlabeled", download=False)
    except RuntimeError as e:
        raise DataError(
            f"STL-10 was not found under {root!r} (expected {root}/stl10_binary/). Download it once "
            f"where you have internet (torchvision.datasets.STL10(root, download=True)) and pass "
            f"--data-dir ROOT; this trainer never downloads."
        ) from e
    return Data(
        name="stl10",
        kind="image",
        x_train=torch.from_numpy(train.data),  # uint8 [N, 3, 96, 96]
        y_train=torch.from_numpy(train.labels.astype(np.int64)),
        x_test=torch.from_numpy(test.data),
        y_test=torch.from_numpy(test.labels.astype(np.int64)),
        x_extra=torch.from_numpy(unlabeled.data),
        class_names=list(train.classes),
        mean=torch.tensor(STL10_MEAN),
        std=torch.tensor(STL10_STD),
        eval_size=int(config.image_size),
        eval_crop=True,
        info={"root": str(root), "train_split": "train+unlabeled"},
    )


Loader = Callable[[TrainConfig], Data]
