"""The tutorials' MNIST CNN (seed_cnn)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sweep.models.activations import make_layer

if TYPE_CHECKING:
    import keras

# The activation layers, named so diagnostics and logged metrics can refer to them.
LAYERS = ("act_conv1", "act_conv2", "act_dense1")


def seed_cnn(input_shape: tuple[int, ...], num_classes: int, params: dict[str, Any],
             placement: str = "layer") -> keras.Model:
    """The tutorials' MNIST CNN, with the activation as its own layer after each linear layer.

    Conv2D 32 -> act -> MaxPool -> Dropout .25 -> Conv2D 64 -> act -> MaxPool -> Dropout .25 ->
    Flatten -> Dense 256 -> act -> Dense softmax.
    """
    import keras
    from keras import layers

    if placement != "layer":
        raise ValueError(f"seed_cnn: unknown placement {placement!r}")
    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Conv2D(32, (3, 3), name="conv1")(inputs)
    x = make_layer(params, rank=4, name="act_conv1")(x)
    x = layers.MaxPooling2D((2, 2), name="pool1")(x)
    x = layers.Dropout(0.25, name="drop1")(x)
    x = layers.Conv2D(64, (3, 3), name="conv2")(x)
    x = make_layer(params, rank=4, name="act_conv2")(x)
    x = layers.MaxPooling2D((2, 2), name="pool2")(x)
    x = layers.Dropout(0.25, name="drop2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(256, name="dense1")(x)
    x = make_layer(params, rank=2, name="act_dense1")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="output")(x)
    return keras.Model(inputs, outputs, name="seed_cnn")
