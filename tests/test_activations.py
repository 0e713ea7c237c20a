from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from scipy import special
from helpers import study_dict, write_study

from sweep import config
from sweep.errors import ConfigError
from sweep.models import build_model
from sweep.models.activations import (ACTIVATIONS, ALIASES, make_inline, make_layer, prelu_axes, resolve_params,
                                      suggest_name)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("shared", "rank", "expected"),
    [("none", 4, None), ("spatial", 4, [1, 2]), ("all", 4, [1, 2, 3]),
     ("none", 2, None), ("spatial", 2, None), ("all", 2, [1])],
)
def test_prelu_axes_per_rank(shared: str, rank: int, expected: list[int] | None) -> None:
    assert prelu_axes(shared, rank) == expected


@pytest.mark.parametrize(
    ("shared", "conv_alpha", "dense_alpha"),
    [("none", (26, 26, 32), (256,)), ("spatial", (1, 1, 32), (256,)), ("all", (1, 1, 1), (1,))],
)
def test_prelu_alpha_shapes_after_conv_and_dense(shared: str, conv_alpha: tuple, dense_alpha: tuple) -> None:
    params = {"activation": "prelu", "prelu_alpha_init": 0.25, "prelu_shared_axes": shared}
    conv = make_layer(params, rank=4, name="a")
    conv.build((None, 26, 26, 32))
    dense = make_layer(params, rank=2, name="b")
    dense.build((None, 256))
    assert tuple(conv.alpha.shape) == conv_alpha
    assert tuple(dense.alpha.shape) == dense_alpha
    np.testing.assert_allclose(conv.alpha.numpy(), 0.25)


def test_prelu_zeros_init_behaves_like_relu_at_start() -> None:
    layer = make_layer({"activation": "prelu", "prelu_alpha_init": "zeros"}, rank=2, name="p")
    out = layer(np.array([[-2.0, 3.0]], dtype=np.float32))
    np.testing.assert_allclose(np.asarray(out), [[0.0, 3.0]])


# --- every activation against its formula (numpy, written out here, not Keras' own) ---

X = np.concatenate([np.linspace(-6, 6, 49), [-1e-3, 1e-3, -20.0, 20.0]]).astype(np.float32).reshape(1, -1)
SELU_ALPHA, SELU_SCALE = 1.6732632423543772, 1.0507009873554805  # Klambauer et al. 2017


def _leaky(alpha: float) -> Any:
    return lambda x: np.where(x > 0, x, alpha * x)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


FORMULAS: dict[str, tuple[dict[str, Any], Any]] = {
    "relu": ({}, lambda x: np.maximum(x, 0)),
    "leaky_relu": ({"leaky_alpha": 0.1}, _leaky(0.1)),
    "prelu": ({"prelu_alpha_init": 0.25}, _leaky(0.25)),
    "elu": ({}, lambda x: np.where(x > 0, x, np.expm1(x))),
    "gelu": ({}, lambda x: 0.5 * x * (1 + special.erf(x / np.sqrt(2)))),  # exact, Keras' default
    "selu": ({}, lambda x: SELU_SCALE * np.where(x > 0, x, SELU_ALPHA * np.expm1(x))),
    "silu": ({}, lambda x: x * _sigmoid(x)),
    "swish": ({}, lambda x: x * _sigmoid(x)),
    "mish": ({}, lambda x: x * np.tanh(np.log1p(np.exp(x)))),
    "tanh": ({}, np.tanh),
}


def test_every_activation_offered_has_a_formula_here() -> None:
    assert sorted(FORMULAS) == sorted(ACTIVATIONS)


def _inline(params: dict[str, Any]) -> Any:
    """The activation as a linear layer takes it (`activation=`): a Keras name, or a layer."""
    a = make_inline(resolve_params(params), rank=2, name="i")
    return keras.activations.get(a) if isinstance(a, str) else a


@pytest.mark.parametrize("name", sorted(FORMULAS))
@pytest.mark.parametrize("way", ["layer", "inline"])
def test_every_activation_computes_its_formula(name: str, way: str) -> None:
    extra, formula = FORMULAS[name]
    params = {"activation": name, **extra}
    f = make_layer(params, rank=2, name="x") if way == "layer" else _inline(params)
    np.testing.assert_allclose(np.asarray(f(X)), formula(X.astype(np.float64)), rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("alpha", [0.01, 0.1, 0.3, 0.5])
def test_leaky_relu_is_its_slope_below_zero(alpha: float) -> None:
    layer = make_layer({"activation": "leaky_relu", "leaky_alpha": alpha}, rank=4, name="l")
    assert isinstance(layer, keras.layers.LeakyReLU) and layer.negative_slope == pytest.approx(alpha)
    np.testing.assert_allclose(np.asarray(layer(X)), _leaky(alpha)(X), rtol=1e-6)


@pytest.mark.parametrize("init", ["zeros", 0.25])
def test_prelu_is_its_alpha_at_start_and_after_a_step_that_changes_it(init: str | float) -> None:
    """PReLU's α is a weight: one gradient step on negative inputs moves it, and the layer then
    computes the formula with the new α, one per element (shared_axes none)."""
    keras.utils.set_random_seed(0)
    start = 0.0 if init == "zeros" else float(init)
    x = np.concatenate([X, -np.abs(X)]).astype(np.float32)  # negatives in every column
    model = keras.Sequential([keras.Input((x.shape[1],)),
                              make_layer({"activation": "prelu", "prelu_alpha_init": init}, rank=2, name="p")])
    layer = model.layers[0]
    np.testing.assert_allclose(np.asarray(model(x)), _leaky(start)(x), rtol=1e-6)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.train_on_batch(x, np.zeros_like(x) - 1.0)
    alpha = np.asarray(layer.alpha)
    assert alpha.shape == (x.shape[1],) and not np.allclose(alpha, start)
    expected = np.where(x > 0, x, alpha[None, :] * x)
    np.testing.assert_allclose(np.asarray(model(x)), expected, rtol=1e-5, atol=1e-6)


def test_resolve_params_fills_keras_defaults_and_drops_foreign_params() -> None:
    assert resolve_params({"activation": "prelu"}) == {
        "activation": "prelu", "prelu_alpha_init": "zeros", "prelu_shared_axes": "none"}
    assert resolve_params({"activation": "relu", "leaky_alpha": 0.2}) == {"activation": "relu"}
    assert resolve_params({"activation": "leaky_relu"})["leaky_alpha"] == 0.3


@pytest.mark.parametrize(("typo", "hint"), [("LeakyReLU", "leaky_relu"), ("PReLU", "prelu"),
                                            ("banana", None), ("gelu_", "gelu")])
def test_suggest_name(typo: str, hint: str | None) -> None:
    assert suggest_name(typo) == hint


# --- the names tutorials write: Keras class names (aliases) and Keras 2's `alpha` (refused) ---

@pytest.mark.parametrize(("alias", "name"), sorted(ALIASES.items()))
def test_keras_class_names_are_aliases_of_the_builtins(alias: str, name: str, tiny_npz: Path) -> None:
    assert resolve_params({"activation": alias}) == resolve_params({"activation": name})
    assert type(make_layer({"activation": alias}, 2, "a")) is type(make_layer({"activation": name}, 2, "b"))
    d = study_dict(tiny_npz, configs=None, sampler="random", n_trials=1, space={"activation": [alias]})
    assert config.parse(d, "x.yaml").model_dump()["search"]["space"]["activation"] == [name]  # stored so


def test_an_alias_and_its_name_are_one_activation(tiny_npz: Path) -> None:
    d = study_dict(tiny_npz, configs=None, sampler="random", n_trials=1, space={"activation": ["LeakyReLU", "leaky_relu"]})
    with pytest.raises(ConfigError) as e:
        config.parse(d, "x.yaml")
    assert e.value.problems == ["search.space.activation: each activation may be listed once (a Keras class "
                                "name is the same activation), got leaky_relu more than once"]


KERAS2 = ("search.configs.1.alpha: `alpha` is Keras 2's name for the LeakyReLU slope (Keras 3 calls it "
          "`negative_slope`); sweep calls it `leaky_alpha`: rename alpha to leaky_alpha, got alpha=0.1")


def test_keras2_alpha_is_refused_naming_negative_slope_and_leaky_alpha(tiny_npz: Path) -> None:
    d = study_dict(tiny_npz)
    d["search"]["configs"][1] = {"activation": "LeakyReLU", "alpha": 0.1}
    d["search"]["configs"].append({"activation": "leaky_relu", "negative_slope": 0.2, "leaky_alpha": -1})
    with pytest.raises(ConfigError) as e:
        config.parse(d, "x.yaml")
    assert e.value.problems == [  # each at its own path, and the rest of each entry still checked
        KERAS2,
        "search.configs.3.leaky_alpha: Input should be greater than or equal to 0, got -1",
        "search.configs.3.negative_slope: `negative_slope` is Keras 3's name for the LeakyReLU slope; sweep "
        "calls it `leaky_alpha`: rename negative_slope to leaky_alpha, got negative_slope=0.2"]
    space = study_dict(tiny_npz, configs=None, sampler="random", n_trials=1,
                       space={"activation": ["leaky_relu"], "alpha": {"low": 0.01, "high": 0.3}})
    with pytest.raises(ConfigError) as e:
        config.parse(space, "x.yaml")
    assert [p.split(":")[0] for p in e.value.problems] == ["search.space.alpha"]
    with pytest.raises(ValueError, match="rename alpha to leaky_alpha, got alpha=0.1"):
        build_model("seed_cnn", (28, 28, 1), 10, activation="leaky_relu", alpha=0.1)


def test_cli_refuses_keras2_alpha_in_one_line(tmp_path: Path, tiny_npz: Path) -> None:
    d = study_dict(tiny_npz)
    d["search"]["configs"][1] = {"activation": "leaky_relu", "alpha": 0.1}
    write_study(tmp_path, d, "bad.yaml")
    r = subprocess.run([sys.executable, "-m", "sweep", "run", "bad.yaml"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [f"error: bad.yaml: {KERAS2}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml", "tiny.npz"]  # no store written
