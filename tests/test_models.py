from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
import pytest
from helpers import study_dict, write_study, write_tiny_npz
from mlflow import MlflowClient
from optuna.trial import TrialState

import sweep
from sweep import config, diagnostics
from sweep.models import activation_layers, build_model
from sweep.record import CONFIG_ATTR
from sweep.runner import objective as obj


def test_seed_cnn_is_the_tutorial_architecture() -> None:
    model = build_model("seed_cnn", (28, 28, 1), 10, activation="relu")
    kinds = [type(layer).__name__ for layer in model.layers[1:]]
    assert kinds == ["Conv2D", "ReLU", "MaxPooling2D", "Dropout", "Conv2D", "ReLU", "MaxPooling2D",
                     "Dropout", "Flatten", "Dense", "ReLU", "Dense"]
    conv1, conv2 = model.get_layer("conv1"), model.get_layer("conv2")
    assert (conv1.filters, conv1.kernel_size, conv1.activation.__name__) == (32, (3, 3), "linear")
    assert (conv2.filters, conv2.kernel_size) == (64, (3, 3))
    assert model.get_layer("drop1").rate == 0.25 and model.get_layer("drop2").rate == 0.25
    assert model.get_layer("dense1").units == 256
    assert model.get_layer("dense1").activation.__name__ == "linear"
    out = model.get_layer("output")
    assert out.units == 10 and out.activation.__name__ == "softmax"
    assert model.output_shape == (None, 10)
    assert [n for n in activation_layers("seed_cnn") if model.get_layer(n)] == list(activation_layers("seed_cnn"))


@pytest.mark.parametrize("shared", ["none", "spatial", "all"])
def test_prelu_model_alpha_counts(shared: str) -> None:
    model = build_model("seed_cnn", (28, 28, 1), 10, activation="prelu", prelu_shared_axes=shared)
    sizes = [int(np.prod(model.get_layer(n).alpha.shape)) for n in ("act_conv1", "act_conv2", "act_dense1")]
    expected = {"none": [26 * 26 * 32, 11 * 11 * 64, 256], "spatial": [32, 64, 256], "all": [1, 1, 1]}
    assert sizes == expected[shared]


def test_rebuild_from_params_gives_same_architecture() -> None:
    params = {"activation": "leaky_relu", "leaky_alpha": 0.07}
    a = build_model("seed_cnn", [28, 28, 1], 10, **params)
    b = build_model("seed_cnn", (28, 28, 1), 10, **params)
    assert a.get_config() == b.get_config()
    assert a.count_params() == b.count_params()


def test_cifar_shaped_input() -> None:
    model = build_model("seed_cnn", (32, 32, 3), 10, activation="elu")
    assert model.predict(np.zeros((2, 32, 32, 3), np.float32), verbose=0).shape == (2, 10)


def test_unknown_model() -> None:
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        build_model("resnet", (28, 28, 1), 10, activation="relu")


# --- placement: the activation as its own layer, or inline as the linear layer's `activation=` ---

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "my_relu.py"
INLINE = {"name": "seed_cnn", "placement": "inline"}
SAME_FUNCTION = [
    {"activation": "relu"},
    {"activation": "leaky_relu", "leaky_alpha": 0.1},
    {"activation": "prelu", "prelu_alpha_init": 0.25, "prelu_shared_axes": "spatial"},
    {"activation": "prelu", "prelu_shared_axes": "none"},
    {"activation": "elu"},
    {"activation": "gelu"},
    {"activation": f"{EXAMPLE}:MyReLU"},
    {"activation": f"{EXAMPLE}:my_relu"},
]


@pytest.mark.parametrize("params", SAME_FUNCTION, ids=lambda p: "-".join(str(v).rsplit("/", 1)[-1] for v in p.values()))
def test_inline_and_layer_placement_compute_the_same_function(params: dict) -> None:
    layer = build_model("seed_cnn", (28, 28, 1), 10, **params)
    inline = build_model(INLINE, (28, 28, 1), 10, **params)
    # the same weights under the same names: an inline PReLU's alphas live inside its linear layer
    assert [w.path for w in inline.weights] == [w.path for w in layer.weights]
    assert not [lyr.name for lyr in inline.layers if lyr.name.startswith("act_")]
    rng = np.random.default_rng(0)
    weights = [rng.normal(0.0, 0.3, w.shape).astype("float32") for w in layer.get_weights()]  # alphas too
    layer.set_weights(weights)
    inline.set_weights(weights)
    x = rng.normal(0.0, 1.0, (8, 28, 28, 1)).astype("float32")
    # the 256 activated features (a softmax of random weights saturates and would hide a difference)
    features = [keras.Model(m.inputs[0], m.get_layer(name).output) for m, name in ((layer, "act_dense1"),
                                                                                  (inline, "dense1"))]
    expected = np.asarray(features[0](x, training=False))
    assert (expected < 0).any() or (expected == 0).any()  # the activation's negative side is exercised
    np.testing.assert_allclose(np.asarray(features[1](x, training=False)), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(inline(x, training=False)), np.asarray(layer(x, training=False)),
                               rtol=1e-5, atol=1e-6)


def test_inline_is_the_tutorials_conv2d_activation() -> None:
    model = build_model(INLINE, (28, 28, 1), 10, activation="leaky_relu", leaky_alpha=0.1)
    conv2 = model.get_layer("conv2")
    assert (conv2.filters, conv2.kernel_size) == (64, (3, 3))
    assert isinstance(conv2.activation, keras.layers.LeakyReLU)  # Conv2D(64, (3, 3), activation=LeakyReLU(...))
    assert conv2.activation.negative_slope == pytest.approx(0.1)
    assert model.get_layer("conv1").get_config()["activation"]["class_name"] == "LeakyReLU"
    relu = build_model(INLINE, (28, 28, 1), 10, activation="relu")
    assert relu.get_layer("dense1").activation.__name__ == "relu"  # a Keras name: activation="relu"
    assert activation_layers(INLINE) == () and activation_layers({"name": "seed_cnn"}) == activation_layers("seed_cnn")


def test_unknown_placement() -> None:
    with pytest.raises(ValueError, match="unknown placement 'after'; expected one of layer, inline"):
        build_model({"name": "seed_cnn", "placement": "after"}, (28, 28, 1), 10, activation="relu")


# A study file as tutorials write it: inline placement, activations named by their Keras class
ALIASED = [{"activation": "LeakyReLU", "leaky_alpha": 0.1},
           {"activation": "PReLU", "prelu_alpha_init": 0.25, "prelu_shared_axes": "spatial"},
           {"activation": "ReLU"}]


@pytest.fixture(scope="module")
def inline_sweep(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("inline")
    d = study_dict(write_tiny_npz(tmp / "tiny.npz"), configs=ALIASED)
    d.update(study="inline", model=INLINE, diagnostics={"probe_samples": 40})  # dead units and alphas on
    d["training"]["epochs"] = 1
    storage, tracking = f"sqlite:///{tmp / 'optuna.db'}", f"sqlite:///{tmp / 'mlflow.db'}"
    notes: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: notes.append(record.getMessage())  # type: ignore[method-assign]
    diag = logging.getLogger("sweep.diagnostics")
    level = diag.level
    diag.addHandler(handler)
    diag.setLevel(logging.INFO)
    diagnostics._note_no_layers.cache_clear()  # noted once per process: this sweep's own note
    try:
        study = sweep.run(write_study(tmp, d), storage=storage, tracking_uri=tracking)
    finally:
        diag.removeHandler(handler)
        diag.setLevel(level)
    return {"study": study, "tracking": tracking, "tmp": tmp, "notes": notes, "storage": storage}


def test_keras_class_names_in_a_study_file_run_as_sweep_names(inline_sweep: dict[str, Any]) -> None:
    study = inline_sweep["study"]
    trials = sorted(study.get_trials(), key=lambda t: t.number)
    assert [t.params["activation"] for t in trials] == ["leaky_relu", "prelu", "relu"]
    assert trials[0].params["leaky_alpha"] == 0.1
    stored = [c["activation"] for c in study.user_attrs[CONFIG_ATTR]["search"]["configs"]]
    assert stored == ["leaky_relu", "prelu", "relu"]
    client = MlflowClient(inline_sweep["tracking"])
    logged = [client.get_run(t.user_attrs[obj.RUN_ID]).data.params for t in trials]
    assert [p["activation"] for p in logged] == ["leaky_relu", "prelu", "relu"]
    assert {p["model.placement"] for p in logged} == {"inline"}


def test_inline_models_train_save_and_load_back(inline_sweep: dict[str, Any]) -> None:
    trials = sorted(inline_sweep["study"].get_trials(), key=lambda t: t.number)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    client = MlflowClient(inline_sweep["tracking"])
    mlflow.set_tracking_uri(inline_sweep["tracking"])
    with np.load(inline_sweep["tmp"] / "tiny.npz") as f:
        x = (f["x_test"].astype("float32") / 255.0)[..., None]
        y = f["y_test"]
    kinds = {"leaky_relu": "LeakyReLU", "prelu": "PReLU", "relu": "function"}
    for t in trials:
        model = mlflow.keras.load_model(t.user_attrs[obj.MODEL_URI])
        assert not [lyr.name for lyr in model.layers if lyr.name.startswith("act_")]
        for name in ("conv1", "conv2", "dense1"):
            act = model.get_layer(name).activation
            assert type(act).__name__ == kinds[t.params["activation"]], (t.number, name)
        if t.params["activation"] == "leaky_relu":
            assert model.get_layer("conv2").activation.negative_slope == pytest.approx(0.1)
        if t.params["activation"] == "prelu":  # trained alphas, one per channel, saved and loaded
            assert tuple(model.get_layer("conv1").activation.alpha.shape) == (1, 1, 32)
            np.testing.assert_allclose(np.asarray(model.get_layer("conv1").activation.alpha), 0.25, atol=0.06)
        run = client.get_run(t.user_attrs[obj.RUN_ID])
        acc = float((model.predict(x, verbose=0).argmax(1) == y).mean())
        assert acc == pytest.approx(run.data.metrics["test_accuracy"], abs=1e-6), t.number
        # no activation layers to probe: no dead-unit metrics, and a note saying why
        assert not [k for k in run.data.metrics if k.startswith("dead_fraction/")], t.number
    assert sum("dead-unit diagnostics skipped" in n for n in inline_sweep["notes"]) == 1  # once, not per trial


def test_shipped_inline_study() -> None:
    cfg = config.load(Path(__file__).resolve().parents[1] / "studies" / "inline-activations.yaml")
    assert cfg.model.spec() == INLINE
    assert [c.params()["activation"] for c in cfg.search.configs] == ["relu", "leaky_relu", "prelu"]
