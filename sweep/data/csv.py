"""Tabular data from a CSV file: numeric feature columns and a class column.

The class values (strings or integers) become class indices in sorted order; the rows are split
into training and test parts, stratified and seeded with `dataset.seed` (one per study, so every
trial is tested on the same rows); features are standardised with the mean and standard
deviation of the rows that train (the training part minus its validation tail), so neither the
validation nor the test rows leak into the scaling.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sweep.data.images import Dataset
from sweep.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

    from sweep.config import CsvDatasetConfig

log = logging.getLogger(__name__)


def _line(index: Any) -> int:
    return int(index) + 2  # line 1 is the header


def _shown(value: Any) -> str:
    return repr(value.item() if isinstance(value, np.generic) else value)  # 4.8598, not np.float64(4.8598)


def read_csv(path: Path, source: str) -> pd.DataFrame:
    """The table, or a ConfigError when the file is empty or not a CSV."""
    import pandas as pd

    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        frame = None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as e:
        raise ConfigError(source, [f"dataset.path: {path}: not a readable CSV file ({e})".replace("\n", " ")]) from None
    if frame is None:
        raise ConfigError(source, [f"dataset.path: {path}: the file is empty; expected a header line naming the "
                                   "columns, then one line per row"])
    if len(frame) == 0:
        raise ConfigError(source, [f"dataset.path: {path}: no rows, only a header line "
                                   f"({', '.join(map(str, frame.columns))}); expected one line per row after it"])
    return frame


def _features(frame: pd.DataFrame, columns: list[str], path: Path) -> tuple[np.ndarray, list[str]]:
    """The feature columns as float64 (rows, features), and the problems found in them."""
    import pandas as pd

    problems = []
    numeric = {}
    for c in columns:
        col = numeric[c] = pd.to_numeric(frame[c], errors="coerce")
        bad = col.isna() & frame[c].notna()
        if bad.any():
            first = bad.idxmax()
            problems.append(f"dataset.path: {path.name}: feature column {c!r} must be numeric, got "
                            f"{_shown(frame[c][first])} on line {_line(first)}; encode it as numbers, or list it "
                            "under dataset.drop")
        elif col.isna().any():
            problems.append(f"dataset.path: {path.name}: feature column {c!r} has {int(col.isna().sum())} empty "
                            f"cell(s), the first on line {_line(col.isna().idxmax())}; fill them, or list the "
                            "column under dataset.drop")
    if problems or not columns:
        return np.empty((len(frame), 0)), problems
    return pd.DataFrame(numeric).to_numpy(dtype=np.float64), problems


def _classes(col: pd.Series, target: str) -> tuple[np.ndarray | None, list[str]]:
    """The target's values as an array of class labels (strings or integers), or the problems."""
    import pandas as pd

    if col.isna().any():
        return None, [f"dataset.target: column {target!r} has {int(col.isna().sum())} empty cell(s), the first on "
                      f"line {_line(col.isna().idxmax())}; every row needs a class"]
    if pd.api.types.is_float_dtype(col):
        fractional = col != np.round(col)
        if fractional.any():
            first = fractional.idxmax()
            return None, [f"dataset.target: column {target!r} must hold class labels (strings or integers), got "
                          f"{_shown(col[first])} on line {_line(first)}; a continuous target is regression, which "
                          "sweep does not do: bin it into classes first"]
        return col.to_numpy().astype(np.int64), []
    if pd.api.types.is_bool_dtype(col) or pd.api.types.is_integer_dtype(col):
        return col.to_numpy(), []
    return col.astype(str).to_numpy(), []


def load(cfg: CsvDatasetConfig, source: str = "study") -> Dataset:
    """Read, check, split and standardise a CSV. Every problem is reported at once (ConfigError),
    before anything is recorded. `source` names the study file in messages."""
    from sklearn.model_selection import train_test_split

    if cfg.path is None or not cfg.target:
        raise ConfigError(source, ["dataset: a csv dataset needs `path` and `target`"])
    path, target, drop = cfg.path, cfg.target, list(cfg.drop or [])
    frame = read_csv(path, source)
    columns = [str(c) for c in frame.columns]
    problems = []
    listed = f"its columns are: {', '.join(columns)}"
    if target not in columns:
        problems.append(f"dataset.target: column {target!r} not found in {path.name}; {listed}")
    for c in drop:
        if c not in columns:
            problems.append(f"dataset.drop: column {c!r} not found in {path.name}; {listed}")
    features = [c for c in columns if c != target and c not in drop]
    if not features:
        problems.append(f"dataset.drop: no feature column is left in {path.name} ({listed}; target {target!r}, "
                        f"dropped: {', '.join(drop) or 'none'})")
    x, feature_problems = _features(frame, features, path)
    problems += feature_problems
    labels = None
    if target in columns:
        labels, target_problems = _classes(frame[target], target)
        problems += target_problems
    if labels is not None:
        values, counts = np.unique(labels, return_counts=True)
        if len(values) < 2:
            problems.append(f"dataset.target: column {target!r} has one class only ({_shown(values[0])}, in all "
                            f"{len(labels)} rows); a classifier needs at least 2 classes: is it the right column?")
        for v in values[counts < 2]:
            problems.append(f"dataset.target: class {_shown(v)} of column {target!r} has 1 row; every class needs "
                            "at least 2 (the split is stratified: some rows to train on, some to test on)")
    if problems or labels is None:
        raise ConfigError(source, problems)
    classes, y = np.unique(labels, return_inverse=True)
    try:
        xtr, xte, ytr, yte = train_test_split(x, y.astype(np.int64), test_size=cfg.test_split,
                                              random_state=cfg.seed, stratify=y)
    except ValueError as e:
        raise ConfigError(source, [f"dataset.test_split: {cfg.test_split} of {len(y)} rows cannot give both parts "
                                   f"each of the {len(classes)} classes ({e}); use more rows or another "
                                   "test_split"]) from None
    if cfg.train_samples is not None:
        xtr, ytr = xtr[: cfg.train_samples], ytr[: cfg.train_samples]
    if cfg.test_samples is not None:
        xte, yte = xte[: cfg.test_samples], yte[: cfg.test_samples]
    # fitted on the rows that train: Dataset.split() holds the last validation_split out
    fit = xtr[: len(xtr) - int(len(xtr) * cfg.validation_split)]
    mean = fit.mean(axis=0).astype(np.float32)
    std = fit.std(axis=0).astype(np.float32)
    std[std == 0] = 1.0  # a constant column stays 0, as in scikit-learn's StandardScaler

    def scale(a: np.ndarray) -> np.ndarray:
        return (a.astype(np.float32) - mean) / std

    log.info("dataset csv %s: %d train, %d test, %d features, %d classes of %r",
             path.name, len(xtr), len(xte), len(features), len(classes), target)
    return Dataset("csv", scale(xtr), ytr, scale(xte), yte, len(classes), cfg.validation_split,
                   target=target, classes=tuple(classes.tolist()), features=tuple(features),
                   mean=mean, std=std, origin=str(path))
