"""A multilayer perceptron (mlp): the tutorials' 784-64-10 on flattened MNIST, or tabular features."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from sweep.models.activations import build_inline, make_inline, make_layer

if TYPE_CHECKING:
    import keras

HIDDEN = (64,)  # the tutorials' 784-64-10 on MNIST
PLACEMENTS = ("layer", "inline")


def layers_of(hidden: Sequence[int]) -> tuple[str, ...]:
    """The activation layers of an mlp, one after each hidden Dense (`act_dense1`, ...)."""
    return tuple(f"act_dense{i}" for i in range(1, len(hidden) + 1))


def activation_layers(spec: dict[str, Any]) -> tuple[str, ...]:
    """The model's activation layers; none when the activation is inline (see cnn.activation_layers)."""
    return layers_of(spec.get("hidden") or HIDDEN) if spec.get("placement", "layer") == "layer" else ()


def output_layer(num_classes: int, output: str = "auto", units: int | None = None,
                 labels: str = "the target") -> tuple[int, str]:
    """(units, activation) of the output layer for a target of `num_classes` classes.

    `auto`: 2 classes -> one sigmoid unit (binary cross-entropy), more -> softmax with one unit per
    class (categorical cross-entropy). A ValueError names the field when the asked output cannot fit.
    """
    if num_classes < 2:
        raise ValueError(f"model.output: {labels} needs at least 2 classes to classify, got {num_classes}")
    if output == "auto":
        output = "sigmoid" if num_classes == 2 else "softmax"
    if output not in ("softmax", "sigmoid"):
        raise ValueError(f"model.output: expected auto, softmax or sigmoid, got {output!r}")
    if output == "sigmoid" and num_classes != 2:
        raise ValueError(
            f"model.output: 'sigmoid' gives one probability, which fits a target of 2 classes; "
            f"{labels}. Use output: softmax (or auto)")
    need = 1 if output == "sigmoid" else num_classes
    if units is not None and units != need:
        why = ("a sigmoid output is one unit (the probability of the second class)" if output == "sigmoid"
               else f"a softmax output needs one unit per class, {need}")
        raise ValueError(
            f"model.output_units: {units} does not fit {labels}: {why}; "
            "remove output_units to build the output from the target")
    return need, output


def mlp(input_shape: tuple[int, ...], num_classes: int, params: dict[str, Any],
        hidden: Sequence[int] = HIDDEN, output: str = "auto", output_units: int | None = None,
        placement: str = "layer") -> keras.Model:
    """Input (flattened when it is an image) -> [Dense h -> act] per hidden width -> Dense output.

    The output is softmax with one unit per class, or one sigmoid unit for 2 classes
    (`output_layer`). `placement="layer"`: each act is a layer of its own (`act_dense1`, ...);
    `"inline"`: it is the Dense layer's `activation=`, as in `Dense(64, activation="relu")`.
    """
    import keras
    from keras import layers

    if placement not in PLACEMENTS:
        raise ValueError(f"mlp: unknown placement {placement!r}; expected one of {', '.join(PLACEMENTS)}")
    out_units, out_activation = output_layer(num_classes, output, output_units)
    inputs = keras.Input(shape=input_shape, name="features" if len(input_shape) == 1 else "image")
    x = inputs
    if len(input_shape) > 1:
        x = layers.Flatten(name="flatten")(x)  # 28x28x1 -> 784
    for i, (width, act) in enumerate(zip(hidden, layers_of(hidden)), start=1):
        if placement == "layer":
            x = make_layer(params, rank=2, name=act)(layers.Dense(int(width), name=f"dense{i}")(x))
        else:
            activation = make_inline(params, 2, act)
            x = layers.Dense(int(width), activation=activation, name=f"dense{i}")(x)
            build_inline(activation, x.shape)
    outputs = layers.Dense(out_units, activation=out_activation, name="output")(x)
    return keras.Model(inputs, outputs, name="mlp")
