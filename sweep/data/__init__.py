"""Datasets in, arrays out: loaded once per worker (`load`), turned into `tf.data` pipelines per
trial (`pipelines`). Nothing here knows about models, Optuna or MLflow."""

from sweep.data.images import NPZ_KEYS, Dataset, load, pipelines, prepare, read_npz

__all__ = ["NPZ_KEYS", "Dataset", "load", "pipelines", "prepare", "read_npz"]
