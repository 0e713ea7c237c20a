"""Datasets: arrays in keras `load_data()` layout, scaled to [0, 1] float32 with a channel axis.

Loaded once per worker (`load`), then turned into `tf.data` pipelines per trial (`pipelines`;
Keras `PyDataset`s where TensorFlow is not installed).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sweep.errors import ConfigError, SweepError

if TYPE_CHECKING:
    from sweep.config import ImageDatasetConfig

log = logging.getLogger(__name__)

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
# where keras.datasets downloads each dataset from (keras/src/datasets/*.py)
ORIGINS = {"mnist": "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz",
           "fashion_mnist": "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
           "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"}
# the parts a trial uses, by the names MLflow gives dataset contexts
PARTS = ("training", "validation", "test")


def digest(*arrays: np.ndarray) -> str:
    """SHA-256 of the arrays' dtypes, shapes and every byte, as 8 hex digits (MLflow's length).

    All of it, not a sample (MLflow's own numpy digest hashes the first 10,000 values: MNIST's
    first 13 images): 0.12 s for all of MNIST as float32 (220 MB), once per process.
    """
    h = hashlib.sha256()
    for a in arrays:
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).data)
    return h.hexdigest()[:8]


@dataclass(frozen=True)
class Dataset:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    validation_split: float
    # tabular data (sweep/data/csv.py): the class column, its value for each class index (what a
    # prediction's argmax means), the feature columns in input order and the standardisation
    # fitted on the training rows; None for image datasets, whose labels are the class indices
    target: str | None = None
    classes: tuple[Any, ...] | None = None
    features: tuple[str, ...] | None = None
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    # where the arrays came from: a file's absolute path or a download URL; None when unknown
    origin: str | None = None

    @property
    def title(self) -> str:
        """What people call it: `mnist`, or for a generic `npz`/`csv` dataset its file's name."""
        if self.name in ("npz", "csv") and self.origin:
            return Path(self.origin).stem
        return self.name

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x_train.shape[1:])

    @property
    def labels(self) -> str:
        """What the classes are, for messages: `target column 'Type' (3 classes: high, low, medium)`."""
        if self.classes is None:
            return f"the labels of dataset {self.name!r} ({self.num_classes} classes)"
        shown = ", ".join(map(str, self.classes[:10])) + (", ..." if len(self.classes) > 10 else "")
        return f"target column {self.target!r} ({self.num_classes} classes: {shown})"

    def params(self) -> dict[str, Any]:
        """What a run records to read its model back: predict on `(x - feature_mean) / feature_std`
        (float32, columns in `features` order); output index i is class `classes[i]`, a single
        sigmoid output the probability of `classes[1]`. Empty for image datasets."""
        if self.classes is None:
            return {}
        # the shortest decimal that reads back as the same float32: exact, and short enough
        # for MLflow's param length limit
        as_logged = lambda a: [float(str(v)) for v in np.asarray(a, np.float32)]  # noqa: E731
        return {"target": self.target, "classes": list(self.classes), "features": list(self.features or ()),
                "feature_mean": as_logged(self.mean), "feature_std": as_logged(self.std)}

    def split(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Train/validation arrays; like Keras' `validation_split`, validation is the last part."""
        n_val = int(len(self.x_train) * self.validation_split)
        cut = len(self.x_train) - n_val
        return self.x_train[:cut], self.y_train[:cut], self.x_train[cut:], self.y_train[cut:]

    def parts(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The (x, y) a trial trains, validates and tests on, by `PARTS` name; no validation
        part when `validation_split` is 0."""
        xtr, ytr, xval, yval = self.split()
        out = {"training": (xtr, ytr), "validation": (xval, yval), "test": (self.x_test, self.y_test)}
        return {k: v for k, v in out.items() if len(v[0])}


def prepare(x: np.ndarray, y: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float32) / np.float32(scale)
    if x.ndim == 3:
        x = x[..., np.newaxis]
    return x, np.asarray(y).reshape(-1).astype(np.int64)


def read_npz(path: Path, source: str, field: str = "dataset.path") -> tuple[np.ndarray, ...]:
    """The four arrays of a `load_data()`-layout .npz, or a ConfigError naming what is wrong."""
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in NPZ_KEYS if k not in f.files]
            if missing:
                raise ConfigError(
                    source,
                    [f"{field}: {path}: expected arrays {', '.join(NPZ_KEYS)}; missing {', '.join(missing)} "
                     f"(found: {', '.join(f.files) or 'none'})"],
                )
            arrays = tuple(f[k] for k in NPZ_KEYS)
    except (OSError, ValueError) as e:
        raise ConfigError(source, [f"{field}: {path}: not a readable .npz file ({e})"]) from None
    xtr, ytr, xte, yte = arrays
    problems = []
    if xtr.ndim not in (3, 4) or xte.shape[1:] != xtr.shape[1:]:
        problems.append(f"{field}: x_train/x_test must be images (N, H, W[, C]) of one shape, got "
                        f"{xtr.shape} and {xte.shape}")
    if len(ytr.reshape(-1)) != len(xtr) or len(yte.reshape(-1)) != len(xte):
        problems.append(f"{field}: labels must match images in count, got x_train {len(xtr)} vs "
                        f"y_train {len(ytr)}, x_test {len(xte)} vs y_test {len(yte)}")
    if problems:
        raise ConfigError(source, problems)
    return arrays


def _keras_download(name: str) -> tuple[np.ndarray, ...]:
    import keras

    loader = getattr(keras.datasets, name)
    try:
        (xtr, ytr), (xte, yte) = loader.load_data()
    except Exception as e:  # urllib/HTTP/SSL errors differ by platform; all mean "no download"
        raise SweepError(
            f"could not download the {name!r} dataset through keras.datasets ({type(e).__name__}: {e}). "
            "Offline? Either set dataset.path to a local .npz in keras load_data() layout "
            "(x_train, y_train, x_test, y_test), or use dataset name 'digits', which ships with "
            "scikit-learn and needs no download."
        ) from None
    return xtr, ytr, xte, yte


def _digits() -> tuple[np.ndarray, ...]:
    """scikit-learn's 1,797 real 8x8 digits, upsampled to 28x28 like MNIST, split 80/20."""
    from scipy.ndimage import zoom
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    images = zoom(d.images, (1, 3.5, 3.5), order=1)  # 8x8 -> 28x28, values still 0..16
    xtr, xte, ytr, yte = train_test_split(
        images, d.target, test_size=0.2, random_state=0, stratify=d.target
    )
    return xtr, ytr, xte, yte


def _digits_file() -> str | None:
    from importlib.resources import files

    path = files("sklearn.datasets.data") / "digits.csv.gz"  # what load_digits() reads
    return str(path) if path.is_file() else None


def load(cfg: ImageDatasetConfig, source: str = "study") -> Dataset:
    """Load, cap and scale a dataset. Raises ConfigError/SweepError before anything is recorded.

    `source` names the study file in messages.
    """
    scale = 255.0
    if cfg.path is not None:
        xtr, ytr, xte, yte = read_npz(cfg.path, source)
        origin = str(cfg.path)
    elif cfg.name == "digits":
        xtr, ytr, xte, yte = _digits()
        scale = 16.0
        origin = _digits_file()
    else:
        xtr, ytr, xte, yte = _keras_download(cfg.name)
        origin = ORIGINS.get(cfg.name)
    if cfg.train_samples is not None:
        xtr, ytr = xtr[: cfg.train_samples], ytr[: cfg.train_samples]
    if cfg.test_samples is not None:
        xte, yte = xte[: cfg.test_samples], yte[: cfg.test_samples]
    if xtr.dtype != np.uint8 and cfg.name != "digits" and float(np.max(xtr)) <= 1.0:
        scale = 1.0  # already scaled floats
    xtr, ytr = prepare(xtr, ytr, scale)
    xte, yte = prepare(xte, yte, scale)
    num_classes = int(max(ytr.max(), yte.max())) + 1
    log.info("dataset %s: %d train, %d test, input %s, %d classes",
             cfg.name, len(xtr), len(xte), xtr.shape[1:], num_classes)
    return Dataset(cfg.name, xtr, ytr, xte, yte, num_classes, cfg.validation_split, origin=origin)


def pipelines(
    data: Dataset, batch_size: int, seed: int
) -> tuple[Any, Any | None, Any]:
    """Shuffled training, validation and test pipelines for one trial: `tf.data` where TensorFlow
    is installed (it always is with `pip install sweep`: the CPU default), else Keras' own
    `PyDataset` over the same arrays, so a Keras 3 backend without TensorFlow (JAX on a GPU
    machine, benchmarks/gpu_trials.py) trains the same trial."""
    try:
        import tensorflow as tf
    except ImportError:
        return numpy_pipelines(data, batch_size, seed)

    xtr, ytr, xval, yval = data.split()
    train = (
        tf.data.Dataset.from_tensor_slices((xtr, ytr))
        .shuffle(len(xtr), seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    val = None
    if len(xval):
        val = tf.data.Dataset.from_tensor_slices((xval, yval)).batch(batch_size).prefetch(tf.data.AUTOTUNE)
    test = tf.data.Dataset.from_tensor_slices((data.x_test, data.y_test)).batch(batch_size)
    return train, val, test


def numpy_pipelines(data: Dataset, batch_size: int, seed: int) -> tuple[Any, Any | None, Any]:
    """`pipelines` without TensorFlow: `keras.utils.PyDataset`s of NumPy batches, the training one
    reshuffled before each epoch by a generator seeded with the trial's seed."""
    import keras

    class Batches(keras.utils.PyDataset):
        def __init__(self, x: np.ndarray, y: np.ndarray, shuffle_seed: int | None) -> None:
            super().__init__()
            self.x, self.y = x, y
            self.rng = None if shuffle_seed is None else np.random.default_rng(shuffle_seed)
            self.order = np.arange(len(x))

        def __len__(self) -> int:
            return -(-len(self.x) // batch_size)

        def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
            idx = self.order[i * batch_size:(i + 1) * batch_size]
            return self.x[idx], self.y[idx]

        def on_epoch_begin(self) -> None:
            if self.rng is not None:
                self.order = self.rng.permutation(len(self.x))

    xtr, ytr, xval, yval = data.split()
    val = Batches(xval, yval, None) if len(xval) else None
    return Batches(xtr, ytr, seed), val, Batches(data.x_test, data.y_test, None)
