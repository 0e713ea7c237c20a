"""Dying-unit diagnostics on layers built to have a known number of dead units; PReLU alphas."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
from helpers import study_dict, write_study
from mlflow import MlflowClient

import sweep
from sweep import config, diagnostics
from sweep.config import DiagnosticsConfig
from sweep.data import Dataset
from sweep.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
UNITS, DEAD = 10, 3


def _probe(n: int = 300) -> np.ndarray:
    x = np.random.default_rng(0).uniform(0.0, 0.9, (n, 4)).astype("float32")
    x[280, 0] = 1.0  # the only sample that makes unit DEAD positive, in the second 256-chunk
    return x


def _dense_model(activation: keras.layers.Layer) -> keras.Model:
    """Inputs in [0, 1): units < DEAD are never positive, unit DEAD only on sample 280, the rest always."""
    kernel = np.zeros((4, UNITS), "float32")
    bias = np.full(UNITS, 0.5, "float32")
    bias[:DEAD] = -1.0  # zero weights, negative bias: dead on any input
    kernel[0, DEAD], bias[DEAD] = 1.0, -0.95  # positive only where x0 > 0.95
    kernel[:, DEAD + 1:] = 1.0
    inputs = keras.Input((4,))
    lin = keras.layers.Dense(UNITS, name="lin")
    x = activation(lin(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(x))
    lin.set_weights([kernel, bias])
    lin.trainable = False
    return model


@pytest.mark.parametrize("act", [
    lambda: keras.layers.ReLU(name="act"),
    lambda: keras.layers.LeakyReLU(negative_slope=0.1, name="act"),
    lambda: keras.layers.PReLU(alpha_initializer=keras.initializers.Constant(-0.5), name="act"),
], ids=["relu", "leaky_relu", "prelu_negative_alpha"])
def test_dead_fraction_counts_units_never_positive(act) -> None:  # noqa: ANN001
    model = _dense_model(act())
    net = diagnostics.probe_model(model, ["act"])
    assert diagnostics.dead_fractions(net, _probe(), ["act"]) == {"act": DEAD / UNITS}
    # without sample 280, unit DEAD is never positive too
    assert diagnostics.dead_fractions(net, _probe()[:256], ["act"]) == {"act": (DEAD + 1) / UNITS}


def test_conv_units_are_channels() -> None:
    inputs = keras.Input((6, 6, 1))
    conv = keras.layers.Conv2D(4, 3, name="conv")
    model = keras.Model(inputs, keras.layers.ReLU(name="act")(conv(inputs)))
    kernel = np.zeros((3, 3, 1, 4), "float32")
    bias = np.array([-1.0, -1.5, 0.0, 0.0], "float32")  # channel 0: zero kernel, dead everywhere
    kernel[0, 0, 0, 1] = 1.0  # channel 1: positive only where a pixel exceeds 1.5
    kernel[1, 1, 0, 2:] = 1.0  # channels 2, 3: positive wherever the centre pixel is
    conv.set_weights([kernel, bias])
    x = np.zeros((5, 6, 6, 1), "float32")
    x[:, 2:4, 2:4] = 1.0
    net = diagnostics.probe_model(model, ["act"])
    assert diagnostics.dead_fractions(net, x, ["act"]) == {"act": 0.5}
    x[4, 0, 0] = 2.0  # one pixel of one image: channel 1 is positive at one position of one sample
    assert diagnostics.dead_fractions(net, x, ["act"]) == {"act": 0.25}


def test_never_positive_merges_chunks() -> None:
    a = np.array([[-1.0, 0.0, 2.0], [-3.0, -1.0, -1.0]])
    b = np.array([[-1.0, 0.5, -2.0]])
    assert diagnostics.never_positive([a]) == pytest.approx(2 / 3)
    assert diagnostics.never_positive([a, b]) == pytest.approx(1 / 3)


def test_callback_writes_logs_before_later_callbacks_and_history() -> None:
    model = _dense_model(keras.layers.ReLU(name="act"))
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    seen: list[dict] = []

    class Recorder(keras.callbacks.Callback):  # stands in for the MLflow epoch logger
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            seen.append(dict(logs or {}))

    cb = diagnostics.dead_units_callback(_probe(), ["act"])
    x, y = _probe(), np.zeros(300, "int64")
    hist = model.fit(x, y, epochs=2, batch_size=100, verbose=0, callbacks=[cb, Recorder()])
    assert [s["dead_fraction/act"] for s in seen] == [DEAD / UNITS] * 2
    assert all(s[diagnostics.COST_KEY] >= 0 for s in seen)
    assert hist.history["dead_fraction/act"] == [DEAD / UNITS] * 2
    assert cb.history == {"act": [DEAD / UNITS] * 2} and len(cb.seconds) == 2


def test_probe_batch_and_config_switch() -> None:
    x = np.arange(10, dtype="float32").reshape(10, 1, 1, 1)
    data = Dataset("t", x, np.zeros(10), x, np.zeros(10), 2, 0.3)
    assert diagnostics.probe_batch(data, 2).ravel().tolist() == [7, 8]  # validation part first
    assert diagnostics.probe_batch(data, 5).ravel().tolist() == [7, 8, 9, 0, 1]
    assert len(diagnostics.callbacks(DiagnosticsConfig(probe_samples=4), data, ["a"])) == 1
    assert diagnostics.callbacks(DiagnosticsConfig(dead_units=False), data, ["a"]) == []


def test_prelu_alphas_are_extracted_per_layer(tmp_path: Path) -> None:
    inputs = keras.Input((3, 3, 2))
    x = keras.layers.PReLU(name="p_conv", shared_axes=[1, 2])(inputs)  # one alpha per channel
    x = keras.layers.ReLU(name="r")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.PReLU(alpha_initializer=keras.initializers.Constant(0.25), name="p_dense")(x)
    model = keras.Model(inputs, x)
    model.get_layer("p_conv").set_weights([np.array([[[0.1, -0.2]]], "float32")])
    alphas = diagnostics.prelu_alphas(model)
    assert list(alphas) == ["p_conv", "p_dense"]
    np.testing.assert_allclose(alphas["p_conv"], [0.1, -0.2], rtol=1e-6)
    np.testing.assert_allclose(alphas["p_dense"], np.full(18, 0.25))
    assert list(diagnostics.prelu_alphas(model, ["p_dense", "r"])) == ["p_dense"]
    summary = diagnostics.alpha_summary(alphas)
    assert summary["prelu_alpha/p_conv/mean"] == pytest.approx(-0.05)
    assert summary["prelu_alpha/p_conv/min"] == pytest.approx(-0.2)
    assert summary["prelu_alpha/p_conv/max"] == pytest.approx(0.1)
    assert summary["prelu_alpha/p_dense/mean"] == pytest.approx(0.25)
    metrics, files = diagnostics.prelu_artifacts(model, "prelu test", tmp_path)
    assert metrics == summary
    assert [f.name for f in files] == list(diagnostics.ALPHA_FILES)
    with np.load(files[0]) as f:
        np.testing.assert_allclose(f["p_conv"], alphas["p_conv"])
    assert files[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    relu_only = keras.Model(inputs, keras.layers.ReLU()(inputs))
    assert diagnostics.prelu_artifacts(relu_only, "relu", tmp_path / "none") == ({}, [])


def test_diagnostics_section_defaults_and_validation(tmp_path: Path, tiny_npz: Path) -> None:
    d = study_dict(tiny_npz)
    assert config.parse(d, "s").diagnostics == DiagnosticsConfig(dead_units=True, probe_samples=256)
    d["diagnostics"] = {"dead_unit": True, "probe_samples": 0}
    with pytest.raises(ConfigError) as e:
        config.load(write_study(tmp_path, d))
    text = "\n".join(e.value.problems)
    assert "diagnostics.dead_unit: unknown key 'dead_unit'" in text
    assert "diagnostics.probe_samples: Input should be greater than 0, got 0" in text


def test_dying_relu_study_validates() -> None:
    cfg = config.load(ROOT / "studies" / "dying-relu.yaml")
    assert cfg.diagnostics.dead_units and cfg.diagnostics.prelu_alphas
    assert cfg.training.learning_rate >= 10 * config.TrainingConfig().learning_rate
    assert cfg.search.repeats >= 2 and cfg.search.pruner.name == "none"
    assert [c.activation for c in cfg.search.configs][0] == "relu"


def test_diagnostics_off_logs_nothing_extra(tmp_path: Path, tiny_npz: Path) -> None:
    d = study_dict(tiny_npz, configs=[{"activation": "prelu"}])
    d["training"]["epochs"] = 1
    d["diagnostics"] = {"dead_units": False, "prelu_alphas": False}
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    study = sweep.run(write_study(tmp_path, d), storage=f"sqlite:///{tmp_path / 'o.db'}", tracking_uri=tracking)
    run = MlflowClient(tracking).get_run(study.trials[0].user_attrs["mlflow_run_id"])
    assert "loss" in run.data.metrics
    assert not [k for k in run.data.metrics if k.startswith(("dead_fraction/", "prelu_alpha/"))]
    assert not MlflowClient(tracking).list_artifacts(run.info.run_id, "diagnostics")
