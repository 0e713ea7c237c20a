"""Datasets in, arrays out: loaded once per worker (`load`), turned into `tf.data` pipelines per
trial (`pipelines`; Keras PyDatasets without TensorFlow). Nothing here knows about models, Optuna
or MLflow."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sweep.data import images
from sweep.data.images import NPZ_KEYS, Dataset, numpy_pipelines, pipelines, prepare, read_npz

if TYPE_CHECKING:
    from sweep.config import DatasetConfig


def load(cfg: DatasetConfig, source: str = "study") -> Dataset:
    """Load a dataset: images (sweep/data/images.py) or a CSV table (sweep/data/csv.py).

    Raises ConfigError/SweepError before anything is recorded; `source` names the study file.
    """
    from sweep.config import CsvDatasetConfig

    if isinstance(cfg, CsvDatasetConfig):
        from sweep.data import csv

        return csv.load(cfg, source)
    return images.load(cfg, source)


__all__ = ["NPZ_KEYS", "Dataset", "load", "numpy_pipelines", "pipelines", "prepare", "read_npz"]
