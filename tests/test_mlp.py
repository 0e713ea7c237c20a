"""The mlp family (sweep/models/mlp.py): its shape, an output built from the target and refused
when it cannot fit, binary targets, and a sweep on real (capped) MNIST through MLflow."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
import pytest
import yaml
from helpers import write_study
from mlflow import MlflowClient
from optuna.trial import TrialState

import sweep
from sweep import config
from sweep.config import CsvDatasetConfig, MlpConfig, TrainingConfig
from sweep.data import load
from sweep.errors import ConfigError
from sweep.models import activation_layers, build_model
from sweep.models.mlp import output_layer
from sweep.runner import objective as obj
from sweep.training import train

ROOT = Path(__file__).resolve().parents[1]
DIABETES = ROOT / "examples" / "data" / "diabetes_types.csv"


def test_mlp_is_the_tutorials_784_64_10_on_mnist() -> None:
    spec = config.parse({"study": "x", "dataset": {"name": "mnist"}, "model": {"name": "mlp", "hidden": [64]},
                         "search": {"configs": [{"activation": "relu"}]}}, "s").model.spec()
    model = build_model(spec, (28, 28, 1), 10, activation="relu")
    assert [type(layer).__name__ for layer in model.layers[1:]] == ["Flatten", "Dense", "ReLU", "Dense"]
    assert model.get_layer("flatten").output.shape == (None, 784)
    assert model.get_layer("dense1").units == 64 and model.get_layer("dense1").activation.__name__ == "linear"
    out = model.get_layer("output")
    assert (out.units, out.activation.__name__) == (10, "softmax")
    assert model.count_params() == 784 * 64 + 64 + 64 * 10 + 10
    assert activation_layers(spec) == ("act_dense1",)


def test_tabular_input_and_several_hidden_layers_each_with_a_named_activation() -> None:
    spec = {"name": "mlp", "hidden": [16, 8], "placement": "layer"}
    model = build_model(spec, (6,), 3, activation="prelu", prelu_shared_axes="none")
    assert [type(layer).__name__ for layer in model.layers[1:]] == ["Dense", "PReLU", "Dense", "PReLU", "Dense"]
    assert activation_layers(spec) == ("act_dense1", "act_dense2")
    assert [tuple(model.get_layer(n).alpha.shape) for n in activation_layers(spec)] == [(16,), (8,)]
    assert model.predict(np.zeros((2, 6), np.float32), verbose=0).shape == (2, 3)
    inline = build_model({**spec, "placement": "inline"}, (6,), 3, activation="leaky_relu", leaky_alpha=0.05)
    assert [type(layer).__name__ for layer in inline.layers[1:]] == ["Dense", "Dense", "Dense"]
    assert inline.count_params() == model.count_params() - 16 - 8  # the same, less the PReLU alphas


@pytest.mark.parametrize("classes, output, units, expected", [
    (2, "auto", None, (1, "sigmoid")), (3, "auto", None, (3, "softmax")), (10, "auto", 10, (10, "softmax")),
    (2, "softmax", None, (2, "softmax")), (2, "sigmoid", 1, (1, "sigmoid")),
])
def test_output_is_built_from_the_target(classes: int, output: str, units: int | None, expected: tuple) -> None:
    assert output_layer(classes, output, units) == expected


@pytest.mark.parametrize("classes, output, units, message", [
    (3, "softmax", 1, "model.output_units: 1 does not fit T: a softmax output needs one unit per class, 3"),
    (3, "sigmoid", None, "model.output: 'sigmoid' gives one probability, which fits a target of 2 classes; T"),
    (2, "auto", 2, "model.output_units: 2 does not fit T: a sigmoid output is one unit"),
])
def test_output_that_cannot_fit_is_refused(classes: int, output: str, units: int | None, message: str) -> None:
    with pytest.raises(ValueError) as e:
        output_layer(classes, output, units, labels="T")
    assert str(e.value).startswith(message), str(e.value)


def test_mlp_fields_belong_to_mlp_and_seed_cnn_spec_is_unchanged() -> None:
    base = {"study": "x", "dataset": {"name": "mnist"}, "search": {"configs": [{"activation": "relu"}]}}
    assert config.parse(base, "s").model.spec() == {"name": "seed_cnn", "placement": "layer"}
    assert config.parse({**base, "model": "mlp"}, "s").model.spec() == {
        "name": "mlp", "hidden": [64], "output": "auto", "output_units": None, "placement": "layer"}
    with pytest.raises(ConfigError) as e:
        config.parse({**base, "model": {"name": "seed_cnn", "hidden": [32], "output": "sigmoid"}}, "s")
    assert e.value.problems == ["model.hidden: applies to model 'mlp' only, not 'seed_cnn'; remove it",
                                "model.output: applies to model 'mlp' only, not 'seed_cnn'; remove it"]
    with pytest.raises(ConfigError, match="model.hidden: List should have at least 1 item"):
        config.parse({**base, "model": {"name": "mlp", "hidden": []}}, "s")


def test_shipped_mlp_studies_validate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # tabular-csv reads its CSV from the repository root
    mnist = config.load(ROOT / "studies" / "mlp-mnist.yaml")
    assert mnist.model.spec()["hidden"] == [64] and mnist.dataset.name == "mnist"
    tab = config.load(ROOT / "studies" / "tabular-csv.yaml")
    assert (tab.dataset.target, tab.dataset.drop, tab.model.output) == ("Type", ["Progression"], "auto")
    data = load(tab.dataset)
    assert data.num_classes == 3 and len(data.features) == 6  # three classes from six features
    tab.model.check_output(data.num_classes, data.labels, "tabular-csv.yaml")  # fits: no error


# --- the tutorial's Dense(1) + categorical cross-entropy, refused before anything is written ------

@pytest.mark.parametrize("model, expected", [
    ({"name": "mlp", "hidden": [3], "output": "softmax", "output_units": 1},
     "error: tutorial.yaml: model.output_units: 1 does not fit target column 'Type' (3 classes: high, low, "
     "medium): a softmax output needs one unit per class, 3; remove output_units to build the output from the target"),
    ({"name": "mlp", "hidden": [3], "output": "sigmoid"},
     "error: tutorial.yaml: model.output: 'sigmoid' gives one probability, which fits a target of 2 classes; "
     "target column 'Type' (3 classes: high, low, medium). Use output: softmax (or auto)"),
])
def test_output_that_does_not_fit_the_target_exits_2_and_writes_nothing(
        model: dict, expected: str, tmp_path: Path) -> None:
    study = {"study": "tutorial", "dataset": {"name": "csv", "path": str(DIABETES), "target": "Type",
                                              "drop": ["Progression"]},
             "model": model, "training": {"epochs": 1, "batch_size": 32},
             "search": {"configs": [{"activation": "leaky_relu", "leaky_alpha": 0.05}]}}
    write_study(tmp_path, study, "tutorial.yaml")
    r = subprocess.run([sys.executable, "-m", "sweep", "run", "tutorial.yaml"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1] == expected  # after the data's one-line summary
    assert [p.name for p in tmp_path.iterdir()] == ["tutorial.yaml"], "a store was written"


# --- a binary target: one sigmoid unit and binary cross-entropy -----------------------------------

def test_binary_target_trains_with_sigmoid_and_binary_cross_entropy(tmp_path: Path) -> None:
    from sklearn.datasets import load_breast_cancer

    bc = load_breast_cancer(as_frame=True)  # 569 real tumours, 30 features
    frame = bc.frame.drop(columns="target").assign(diagnosis=np.array(bc.target_names)[bc.target])
    frame.to_csv(tmp_path / "bc.csv", index=False)
    data = load(CsvDatasetConfig(name="csv", path=tmp_path / "bc.csv", target="diagnosis"))
    assert data.classes == ("benign", "malignant")
    keras.utils.set_random_seed(0)
    model = build_model(MlpConfig(name="mlp", hidden=[8]).spec(), data.input_shape, data.num_classes,
                        activation="relu")
    assert (model.get_layer("output").units, model.get_layer("output").activation.__name__) == (1, "sigmoid")
    result = train(model, data, TrainingConfig(epochs=5, batch_size=32, learning_rate=0.01), seed=0)
    assert isinstance(model.loss, keras.losses.BinaryCrossentropy)
    assert set(result.history) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert result.test["test_accuracy"] > 0.85  # far above the 63% majority class
    p = model.predict(data.x_test, verbose=0)
    assert p.shape == (len(data.x_test), 1)  # the probability of classes[1], malignant
    assert float(((p[:, 0] > 0.5) == data.y_test).mean()) == pytest.approx(result.test["test_accuracy"])
    bce = -np.mean(data.y_test * np.log(p[:, 0]) + (1 - data.y_test) * np.log(1 - p[:, 0]))
    assert bce == pytest.approx(result.test["test_loss"], rel=1e-3)


# --- the tutorials' MLP swept on real (capped) MNIST, end to end through MLflow -------------------

def test_mlp_sweep_on_capped_mnist_through_mlflow(tmp_path: Path, mnist_path: Path, optuna_url: str,
                                                  tracking_uri: str) -> None:
    d: dict[str, Any] = yaml.safe_load((ROOT / "studies" / "mlp-mnist.yaml").read_text())
    d["dataset"].update(path=str(mnist_path), train_samples=3000, test_samples=1000)
    d["training"]["epochs"] = 2
    d["search"].update(repeats=1, configs=d["search"]["configs"][:2])
    study = sweep.run(write_study(tmp_path, d), storage=optuna_url, tracking_uri=tracking_uri)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert [t.params["activation"] for t in trials] == ["relu", "leaky_relu"]
    client = MlflowClient(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    with np.load(mnist_path) as f:
        x = (f["x_test"][:1000].astype("float32") / 255.0)[..., None]
        y = f["y_test"][:1000]
    for t in trials:
        assert t.value > 0.7  # 3,000 real digits, 2 epochs: far above chance (0.1)
        run = client.get_run(t.user_attrs[obj.RUN_ID])
        assert (run.data.params["model"], run.data.params["model.hidden"]) == ("mlp", "[64]")
        assert "classes" not in run.data.params  # image labels are their class indices
        assert len(client.get_metric_history(run.info.run_id, "dead_fraction/act_dense1")) == 2
        model = mlflow.keras.load_model(t.user_attrs[obj.MODEL_URI])
        probs = model.predict(x, verbose=0)
        assert probs.shape == (1000, 10)
        assert float((probs.argmax(1) == y).mean()) == pytest.approx(run.data.metrics["test_accuracy"], abs=1e-6)
    best = sweep.best_config(d["study"], storage=optuna_url, tracking_uri=tracking_uri)
    rebuilt = sweep.build_model(best["model"], best["input_shape"], best["num_classes"], **best["params"])
    assert rebuilt.count_params() == 784 * 64 + 64 + 64 * 10 + 10
