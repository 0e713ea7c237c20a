"""The tutorials' MNIST CNN (seed_cnn)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sweep.models.activations import build_inline, make_inline, make_layer

if TYPE_CHECKING:
    import keras

# The activation layers, named so diagnostics and logged metrics can refer to them.
LAYERS = ("act_conv1", "act_conv2", "act_dense1")
PLACEMENTS = ("layer", "inline")


def activation_layers(spec: dict[str, Any]) -> tuple[str, ...]:
    """The model's activation layers: none when the activation is inline, inside each linear layer
    (its input there, the pre-activation, is no tensor of the model a probe could read)."""
    return LAYERS if spec.get("placement", "layer") == "layer" else ()


def seed_cnn(input_shape: tuple[int, ...], num_classes: int, params: dict[str, Any],
             placement: str = "layer") -> keras.Model:
    """The tutorials' MNIST CNN:

    Conv2D 32 -> act -> MaxPool -> Dropout .25 -> Conv2D 64 -> act -> MaxPool -> Dropout .25 ->
    Flatten -> Dense 256 -> act -> Dense softmax.

    `placement="layer"`: each act is a layer of its own (`act_conv1`, ...) after its linear layer;
    `"inline"`: it is the linear layer's `activation=`, as in
    `Conv2D(64, (3, 3), activation=LeakyReLU(negative_slope=0.1))`. Same weights, same function.
    """
    import keras
    from keras import layers

    if placement not in PLACEMENTS:
        raise ValueError(f"seed_cnn: unknown placement {placement!r}; expected one of {', '.join(PLACEMENTS)}")
    inline = placement == "inline"

    def linear(x: Any, layer: type, *args: Any, name: str, act: str, rank: int) -> Any:
        if not inline:
            return make_layer(params, rank=rank, name=act)(layer(*args, name=name)(x))
        activation = make_inline(params, rank, act)
        y = layer(*args, activation=activation, name=name)(x)
        build_inline(activation, y.shape)
        return y

    inputs = keras.Input(shape=input_shape, name="image")
    x = linear(inputs, layers.Conv2D, 32, (3, 3), name="conv1", act="act_conv1", rank=4)
    x = layers.MaxPooling2D((2, 2), name="pool1")(x)
    x = layers.Dropout(0.25, name="drop1")(x)
    x = linear(x, layers.Conv2D, 64, (3, 3), name="conv2", act="act_conv2", rank=4)
    x = layers.MaxPooling2D((2, 2), name="pool2")(x)
    x = layers.Dropout(0.25, name="drop2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = linear(x, layers.Dense, 256, name="dense1", act="act_dense1", rank=2)
    outputs = layers.Dense(num_classes, activation="softmax", name="output")(x)
    return keras.Model(inputs, outputs, name="seed_cnn")
