from __future__ import annotations

import keras
import numpy as np
import pytest

from sweep.models import activation_layers, build_model


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
