"""Tabular CSV datasets (sweep/data/csv.py) on real data: scikit-learn's bundled iris and the
shipped diabetes table; bad CSVs through the real CLI; a CSV sweep end to end through MLflow."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import write_study
from mlflow import MlflowClient
from optuna.trial import TrialState

import sweep
from sweep import config
from sweep.config import CsvDatasetConfig
from sweep.data import load
from sweep.errors import ConfigError
from sweep.runner import objective as obj

ROOT = Path(__file__).resolve().parents[1]
DIABETES = ROOT / "examples" / "data" / "diabetes_types.csv"
FEATURES = ["Age", "BMI", "BP", "HDL", "LTG", "GLU"]


def _iris(folder: Path, target: str = "species") -> Path:
    """Iris (150 real flowers) with a `row` feature holding the row number, to find rows after the split."""
    from sklearn.datasets import load_iris

    iris = load_iris(as_frame=True)
    frame = iris.frame.drop(columns="target")
    frame.insert(0, "row", np.arange(len(frame)))
    if target == "species":
        frame["species"] = np.array(iris.target_names)[iris.target]
    else:  # integers that are not class indices: 0, 1, 2 -> 3, 5, 7
        frame["label"] = iris.target * 2 + 3
    path = folder / "iris.csv"
    frame.to_csv(path, index=False)
    return path


def _rows(d: Any, x: np.ndarray) -> np.ndarray:
    """The file's row numbers of standardised rows (the `row` feature, scaled back)."""
    return np.rint(x[:, 0] * d.std[0] + d.mean[0]).astype(int)


def test_string_target_is_mapped_to_sorted_class_indices(tmp_path: Path) -> None:
    path = _iris(tmp_path)
    d = load(CsvDatasetConfig(name="csv", path=path, target="species", validation_split=0.2))
    assert d.classes == ("setosa", "versicolor", "virginica") and d.num_classes == 3
    assert d.features == ("row", "sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)")
    assert d.input_shape == (5,) and d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64
    assert (len(d.x_train), len(d.x_test)) == (120, 30)
    truth = pd.read_csv(path)["species"].to_numpy()
    for x, y in ((d.x_train, d.y_train), (d.x_test, d.y_test)):
        np.testing.assert_array_equal(np.array(d.classes)[y], truth[_rows(d, x)])
    assert sorted(_rows(d, np.concatenate([d.x_train, d.x_test]))) == list(range(150))
    assert "target column 'species' (3 classes: setosa, versicolor, virginica)" == d.labels


def test_integer_target_and_drop(tmp_path: Path) -> None:
    path = _iris(tmp_path, target="label")
    d = load(CsvDatasetConfig(name="csv", path=path, target="label", drop=["petal width (cm)"]))
    assert d.classes == (3, 5, 7)  # the values, by class index
    assert d.features == ("row", "sepal length (cm)", "sepal width (cm)", "petal length (cm)")
    assert d.input_shape == (4,)
    truth = pd.read_csv(path)["label"].to_numpy()
    np.testing.assert_array_equal(np.array(d.classes)[d.y_test], truth[_rows(d, d.x_test)])
    assert d.params()["classes"] == [3, 5, 7]
    json.dumps(d.params())  # what MLflow logs: plain ints and floats


def test_standardised_on_the_training_rows_only() -> None:
    d = load(CsvDatasetConfig(name="csv", path=DIABETES, target="Type", drop=["Progression"], validation_split=0.25))
    cut = len(d.x_train) - int(len(d.x_train) * 0.25)
    fit, val = d.x_train[:cut], d.x_train[cut:]
    np.testing.assert_allclose(fit.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(fit.std(axis=0), 1, atol=1e-5)
    # the validation tail and the test part use the training rows' scaling, not their own
    assert np.abs(val.mean(axis=0)).max() > 0.05 and np.abs(d.x_test.mean(axis=0)).max() > 0.05
    raw = pd.read_csv(DIABETES)[FEATURES].to_numpy()
    assert np.abs(d.mean - raw.mean(axis=0)).max() > 0.01  # not the whole file's mean either
    np.testing.assert_allclose(d.x_test * d.std + d.mean, _raw_test(raw, d), rtol=1e-5)


def _raw_test(raw: np.ndarray, d: Any) -> np.ndarray:
    """The file's rows that are the test part (matched on all six features)."""
    back = d.x_test * d.std + d.mean
    idx = [int(np.argmin(np.abs(raw - row).sum(axis=1))) for row in back]
    return raw[idx]


def test_seeded_split_is_reproducible_stratified_and_the_seed_matters() -> None:
    def split(seed: int) -> Any:
        return load(CsvDatasetConfig(name="csv", path=DIABETES, target="Type", drop=["Progression"], seed=seed))

    a, b, c = split(0), split(0), split(1)
    np.testing.assert_array_equal(a.x_test, b.x_test)
    np.testing.assert_array_equal(a.y_train, b.y_train)
    assert not np.array_equal(a.x_test, c.x_test)
    assert a.classes == ("high", "low", "medium") and len(a.x_test) == 89  # ceil(0.2 * 442)
    assert sorted(np.bincount(a.y_test)) == [29, 30, 30]  # 148/147/147 rows, stratified


def test_shipped_csv_is_what_its_script_writes(tmp_path: Path) -> None:
    script = runpy.run_path(str(ROOT / "examples" / "data" / "make_diabetes_types.py"))
    assert script["main"](tmp_path / "again.csv").read_bytes() == DIABETES.read_bytes()


def test_csv_fields_belong_to_csv_and_image_dumps_are_unchanged(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        config.parse({"study": "x", "dataset": {"name": "mnist", "target": "y", "test_split": 0.3},
                      "search": {"configs": [{"activation": "relu"}]}}, "s.yaml")
    assert e.value.problems == ["dataset.target: applies to dataset 'csv' only, not 'mnist'; remove it",
                                "dataset.test_split: applies to dataset 'csv' only, not 'mnist'; remove it"]
    with pytest.raises(ConfigError) as e:
        config.parse({"study": "x", "dataset": {"name": "csv", "path": str(DIABETES)},
                      "search": {"configs": [{"activation": "relu"}]}}, "s.yaml")
    assert e.value.problems == ["dataset: dataset 'csv' needs `target`: the column that holds each row's class"]
    # a study stored before csv existed compares equal when resumed
    mnist = config.parse({"study": "x", "dataset": {"name": "mnist"},
                          "search": {"configs": [{"activation": "relu"}]}}, "s")
    assert mnist.model_dump(mode="json")["dataset"] == {"name": "mnist", "path": None, "train_samples": None,
                                                        "test_samples": None, "validation_split": 0.2}
    csv = config.load(write_study(tmp_path, _study(DIABETES)))
    assert (csv.dataset.drop, csv.dataset.test_split, csv.dataset.seed) == (["Progression"], 0.2, 0)


# --- bad CSVs: one line naming the column, exit 2, nothing written --------------------------------

def _study(csv_path: Path | str, **dataset: Any) -> dict[str, Any]:
    return {"study": "tab", "dataset": {"name": "csv", "path": str(csv_path), "target": "Type",
                                        "drop": ["Progression"], **dataset},
            "model": {"name": "mlp", "hidden": [3]},
            "training": {"epochs": 1, "batch_size": 32},
            "search": {"metric": "val_accuracy", "pruner": "none", "configs": [{"activation": "relu"}]}}


def _frame() -> pd.DataFrame:
    return pd.read_csv(DIABETES)


def _non_numeric(p: Path) -> None:
    f = _frame().astype({"BMI": object})
    f.loc[3, "BMI"] = "high"
    f.to_csv(p, index=False)


BAD_CSV = {
    "missing target": (lambda p: _frame().to_csv(p, index=False), {"target": "Typ"},
                       ["dataset.target: column 'Typ' not found in data.csv; its columns are: Age, BMI, BP, HDL, "
                        "LTG, GLU, Progression, Type"]),
    "non-numeric feature": (_non_numeric, {},
                            ["dataset.path: data.csv: feature column 'BMI' must be numeric, got 'high' on line 5; "
                             "encode it as numbers, or list it under dataset.drop"]),
    "one class only": (lambda p: _frame().query("Type == 'low'").to_csv(p, index=False), {},
                       ["dataset.target: column 'Type' has one class only ('low', in all 147 rows); a classifier "
                        "needs at least 2 classes"]),
    "empty file": (lambda p: p.write_text(""), {},
                   ["dataset.path: ", "data.csv: the file is empty; expected a header line naming the columns"]),
    "header only": (lambda p: p.write_text("Age,BMI,Type\n"), {"drop": []},
                    ["data.csv: no rows, only a header line (Age, BMI, Type)"]),
    "several problems at once": (_non_numeric, {"drop": ["Progression", "Class"]},
                                 ["dataset.drop: column 'Class' not found in data.csv",
                                  "feature column 'BMI' must be numeric, got 'high' on line 5"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CSV))
def test_bad_csv_exits_2_naming_the_column_and_writes_nothing(case: str, tmp_path: Path) -> None:
    write, dataset, expected = BAD_CSV[case]
    data = tmp_path / "data.csv"
    write(data)
    write_study(tmp_path, _study(data, **dataset), "bad.yaml")
    r = subprocess.run([sys.executable, "-m", "sweep", "run", "bad.yaml"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.startswith("error: bad.yaml: "), r.stderr
    for piece in expected:
        assert piece in r.stderr, r.stderr
    assert {p.name for p in tmp_path.iterdir()} == {"bad.yaml", "data.csv"}, "a store was written on bad input"


def test_continuous_target_and_a_single_row_class_are_refused(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    _frame().to_csv(p, index=False)
    with pytest.raises(ConfigError) as e:
        load(CsvDatasetConfig(name="csv", path=p, target="LTG", drop=["Type", "Progression"]), "s.yaml")
    assert e.value.problems[0].startswith("dataset.target: column 'LTG' must hold class labels (strings or "
                                          "integers), got 4.8598 on line 2")
    f = _frame()
    f.loc[0, "Type"] = "extreme"
    f.to_csv(p, index=False)
    with pytest.raises(ConfigError, match="class 'extreme' of column 'Type' has 1 row"):
        load(CsvDatasetConfig(name="csv", path=p, target="Type", drop=["Progression"]), "s.yaml")


# --- a CSV sweep end to end: Keras, Optuna, MLflow, and predictions read back ---------------------

def test_csv_sweep_through_mlflow_and_predictions_read_back(tmp_path: Path, optuna_url: str,
                                                            tracking_uri: str) -> None:
    d = yaml.safe_load((ROOT / "studies" / "tabular-csv.yaml").read_text())
    d["dataset"]["path"] = str(DIABETES)  # the study reads it from the repository root
    d["training"]["epochs"] = 15
    d["search"].update(repeats=1, configs=d["search"]["configs"][:2])
    study = sweep.run(write_study(tmp_path, d), storage=optuna_url, tracking_uri=tracking_uri)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert all(t.value > 0.45 for t in trials), [t.value for t in trials]  # chance is 1/3

    data = load(config.parse(d, "tabular-csv").dataset)
    frame = pd.read_csv(DIABETES)
    client = MlflowClient(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    for t in trials:
        run = client.get_run(t.user_attrs[obj.RUN_ID])
        p = {k: json.loads(run.data.params[k]) for k in ("classes", "features", "feature_mean", "feature_std")}
        assert p["classes"] == ["high", "low", "medium"] and p["features"] == FEATURES
        assert run.data.params["target"] == "Type" and run.data.params["model.hidden"] == "[3]"
        assert t.user_attrs[obj.MLFLOW_PARAMS]["classes"] == p["classes"]  # Optuna holds it too
        assert len(client.get_metric_history(run.info.run_id, "dead_fraction/act_dense1")) == 15
        model = mlflow.keras.load_model(t.user_attrs[obj.MODEL_URI])
        # the logged test accuracy is the model's on the study's test rows
        probs = model.predict(data.x_test, verbose=0)
        assert probs.shape == (89, 3)
        assert float((probs.argmax(1) == data.y_test).mean()) == pytest.approx(run.data.metrics["test_accuracy"])
        # from nothing but the raw file and the run's params: the same predictions, as class names
        x = (frame[p["features"]].to_numpy(np.float32) - np.float32(p["feature_mean"])) / np.float32(p["feature_std"])
        names = np.array(p["classes"])[model.predict(x, verbose=0).argmax(1)]
        inside = np.concatenate([data.x_train, data.x_test])
        expected = np.array(data.classes)[model.predict(inside, verbose=0).argmax(1)]
        truth = np.array(data.classes)[np.concatenate([data.y_train, data.y_test])]
        assert float((names == frame["Type"].to_numpy()).mean()) == pytest.approx(float((expected == truth).mean()))
        assert sorted(names.tolist()) == sorted(expected.tolist())  # row for row, up to order
