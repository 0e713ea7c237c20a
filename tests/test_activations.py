from __future__ import annotations

import keras
import numpy as np
import pytest

from sweep.models.activations import ACTIVATIONS, make_layer, prelu_axes, resolve_params, suggest_name


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


def test_leaky_relu_uses_keras3_negative_slope() -> None:
    layer = make_layer({"activation": "leaky_relu", "leaky_alpha": 0.1}, rank=4, name="l")
    assert isinstance(layer, keras.layers.LeakyReLU)
    assert layer.negative_slope == pytest.approx(0.1)
    np.testing.assert_allclose(np.asarray(layer(np.array([[-1.0, 2.0]], np.float32))), [[-0.1, 2.0]], rtol=1e-6)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_every_activation_builds_and_computes(name: str) -> None:
    layer = make_layer({"activation": name}, rank=2, name="x")
    x = np.linspace(-2, 2, 8, dtype=np.float32).reshape(1, 8)
    out = np.asarray(layer(x))
    assert out.shape == x.shape and np.all(np.isfinite(out))
    assert out[0, -1] > 0  # every activation here is positive for x=2


def test_swish_and_silu_agree() -> None:
    x = np.linspace(-3, 3, 7, dtype=np.float32).reshape(1, 7)
    a = np.asarray(make_layer({"activation": "swish"}, 2, "s")(x))
    b = np.asarray(make_layer({"activation": "silu"}, 2, "t")(x))
    np.testing.assert_allclose(a, b)
    np.testing.assert_allclose(a, x / (1 + np.exp(-x)), rtol=1e-5)


def test_resolve_params_fills_keras_defaults_and_drops_foreign_params() -> None:
    assert resolve_params({"activation": "prelu"}) == {
        "activation": "prelu", "prelu_alpha_init": "zeros", "prelu_shared_axes": "none"}
    assert resolve_params({"activation": "relu", "leaky_alpha": 0.2}) == {"activation": "relu"}
    assert resolve_params({"activation": "leaky_relu"})["leaky_alpha"] == 0.3


@pytest.mark.parametrize(("typo", "hint"), [("LeakyReLU", "leaky_relu"), ("PReLU", "prelu"),
                                            ("banana", None), ("gelu_", "gelu")])
def test_suggest_name(typo: str, hint: str | None) -> None:
    assert suggest_name(typo) == hint
