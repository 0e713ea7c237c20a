"""The objective end to end: a trial's params -> the model it trains -> the model MLflow keeps.

Each check reads the logged model back from MLflow and compares what Keras built with what the
trial says it tried: a parameter the objective dropped would leave Keras' default in the model
(LeakyReLU slope 0.3, PReLU alphas from zeros, one alpha per element), and fail here.
"""

from __future__ import annotations

import json
from typing import Any

import mlflow
import numpy as np
import pytest
from helpers import study_dict, write_study, write_tiny_npz
from mlflow import MlflowClient
from optuna.trial import TrialState

import sweep
from sweep.models import activation_layers
from sweep.models.activations import PARAM_DEFAULTS, PARAM_OWNER, prelu_axes
from sweep.runner import objective as obj

LAYERS = activation_layers("seed_cnn")
# no slope is Keras' default, and the PReLUs differ from each other in both parameters
CONFIGS = [
    {"activation": "leaky_relu", "leaky_alpha": 0.07},
    {"activation": "leaky_relu", "leaky_alpha": 0.23},
    {"activation": "prelu", "prelu_alpha_init": "zeros", "prelu_shared_axes": "none"},
    {"activation": "prelu", "prelu_alpha_init": 0.25, "prelu_shared_axes": "spatial"},
    {"activation": "prelu", "prelu_alpha_init": 0.4, "prelu_shared_axes": "all"},
]
# written out rather than derived from prelu_axes, so a broken prelu_axes cannot agree with itself
SHARED_AXES = {"none": [None, None, None], "spatial": [[1, 2], [1, 2], None], "all": [[1, 2, 3], [1, 2, 3], [1]]}
ALPHA_SHAPES = {"none": [(26, 26, 32), (11, 11, 64), (256,)], "spatial": [(1, 1, 32), (1, 1, 64), (256,)],
                "all": [(1, 1, 1), (1, 1, 1), (1,)]}


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One tiny sweep over CONFIGS, and each trial's model as loaded back from MLflow."""
    tmp = tmp_path_factory.mktemp("objective")
    d = study_dict(write_tiny_npz(tmp / "tiny.npz"), configs=CONFIGS)
    d["study"] = "objective"
    d["training"]["epochs"] = 1
    d["diagnostics"] = {"probe_samples": 40}
    d["tracking"] = {"keep_models": "all"}  # every trial's model is read back below
    storage, tracking = f"sqlite:///{tmp / 'optuna.db'}", f"sqlite:///{tmp / 'mlflow.db'}"
    study = sweep.run(write_study(tmp, d), storage=storage, tracking_uri=tracking)
    trials = sorted(study.get_trials(), key=lambda t: t.user_attrs[obj.CONFIG_INDEX])
    mlflow.set_tracking_uri(tracking)
    models = {t.number: mlflow.keras.load_model(t.user_attrs[obj.MODEL_URI]) for t in trials}
    return {"trials": trials, "models": models, "tracking": tracking}


def _of(swept: dict[str, Any], activation: str) -> list[Any]:
    return [t for t in swept["trials"] if t.params["activation"] == activation]


def test_each_config_is_one_complete_trial(swept: dict[str, Any]) -> None:
    trials = swept["trials"]
    assert [t.state for t in trials] == [TrialState.COMPLETE] * len(CONFIGS)
    assert [t.params for t in trials] == CONFIGS


def test_leaky_relu_slope_is_the_trials_alpha(swept: dict[str, Any]) -> None:
    leaky = _of(swept, "leaky_relu")
    assert len(leaky) == 2
    for t in leaky:
        alpha = t.params["leaky_alpha"]
        assert alpha != PARAM_DEFAULTS["leaky_alpha"]  # else a dropped alpha would pass unseen
        for name in LAYERS:
            layer = swept["models"][t.number].get_layer(name)
            assert type(layer).__name__ == "LeakyReLU", (t.number, name)
            assert layer.negative_slope == pytest.approx(alpha), (t.number, name)
            # and the layer computes with it
            out = np.asarray(layer(np.array([[-2.0, 3.0]], dtype="float32")))
            np.testing.assert_allclose(out, [[-2.0 * alpha, 3.0]], rtol=1e-6)


def test_prelu_alphas_start_at_the_trials_initializer(swept: dict[str, Any]) -> None:
    prelu = _of(swept, "prelu")
    assert [t.params["prelu_alpha_init"] for t in prelu] == ["zeros", 0.25, 0.4]
    for t in prelu:
        init = t.params["prelu_alpha_init"]
        for name in LAYERS:
            layer = swept["models"][t.number].get_layer(name)
            assert type(layer).__name__ == "PReLU", (t.number, name)
            saved = layer.get_config()["alpha_initializer"]
            if init == "zeros":
                assert saved["class_name"] == "Zeros", (t.number, name, saved)
            else:
                assert saved["class_name"] == "Constant", (t.number, name, saved)
                assert saved["config"]["value"] == pytest.approx(init), (t.number, name, saved)
            # one epoch is a few Adam steps at lr 0.003 (each moves an alpha by at most ~0.01):
            # the trained alphas are still where the initializer put them
            start = 0.0 if init == "zeros" else init
            np.testing.assert_allclose(np.asarray(layer.alpha), start, atol=0.06, err_msg=f"{t.number} {name}")


def test_prelu_shared_axes_and_alpha_shapes_are_the_trials(swept: dict[str, Any]) -> None:
    prelu = _of(swept, "prelu")
    assert sorted(t.params["prelu_shared_axes"] for t in prelu) == ["all", "none", "spatial"]
    for t in prelu:
        shared = t.params["prelu_shared_axes"]
        model = swept["models"][t.number]
        for i, name in enumerate(LAYERS):
            layer = model.get_layer(name)
            rank = len(layer.output.shape)
            axes = layer.get_config()["shared_axes"]
            assert axes == SHARED_AXES[shared][i] == prelu_axes(shared, rank), (t.number, name, axes)
            assert tuple(layer.alpha.shape) == ALPHA_SHAPES[shared][i], (t.number, name)


def test_mlflow_run_params_are_the_trials(swept: dict[str, Any]) -> None:
    client = MlflowClient(swept["tracking"])
    for t in swept["trials"]:
        run = client.get_run(t.user_attrs[obj.RUN_ID])
        logged = run.data.params
        assert {k: logged[k] for k in t.params} == {k: str(v) for k, v in t.params.items()}, t.number
        # no parameter of another activation (nor a default of an unused one) is logged
        assert {k for k in logged if k in PARAM_OWNER} == set(t.params) - {"activation"}, t.number
        assert logged == {k: json.dumps(v) if isinstance(v, (list, dict)) else str(v)
                          for k, v in t.user_attrs[obj.MLFLOW_PARAMS].items()}, t.number
        # the model checked above is this run's
        assert run.data.tags["sweep.model_uri"] == t.user_attrs[obj.MODEL_URI]
