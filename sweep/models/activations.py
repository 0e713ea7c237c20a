"""Activation functions a study can search over, and the Keras layer each one becomes.

The registry is plain data (no Keras import) so configs can be validated without TensorFlow;
`make_layer` imports Keras lazily when a model is actually built.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import keras


@dataclass(frozen=True)
class Activation:
    name: str
    params: tuple[str, ...] = ()
    keras_name: str | None = None  # for parameter-free activations: the keras.layers.Activation name


ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in (
        Activation("relu"),
        Activation("leaky_relu", ("leaky_alpha",)),
        Activation("prelu", ("prelu_alpha_init", "prelu_shared_axes")),
        Activation("elu", keras_name="elu"),
        Activation("gelu", keras_name="gelu"),
        Activation("selu", keras_name="selu"),
        Activation("silu", keras_name="silu"),
        Activation("swish", keras_name="silu"),  # Keras' swish is silu: x * sigmoid(x)
        Activation("mish", keras_name="mish"),
        Activation("tanh", keras_name="tanh"),
    )
}

# Defaults are Keras' own: LeakyReLU(negative_slope=0.3), PReLU(alpha_initializer="zeros",
# shared_axes=None).
PARAM_DEFAULTS: dict[str, Any] = {
    "leaky_alpha": 0.3,
    "prelu_alpha_init": "zeros",
    "prelu_shared_axes": "none",
}
PARAM_OWNER: dict[str, str] = {p: a.name for a in ACTIVATIONS.values() for p in a.params}
SHARED_AXES = ("none", "spatial", "all")


def suggest_name(name: str) -> str | None:
    """The registered activation closest to `name` (`LeakyReLU` -> `leaky_relu`), if any."""
    squash = re.sub(r"[^a-z0-9]", "", str(name).lower())
    for known in ACTIVATIONS:
        if known.replace("_", "") == squash:
            return known
    close = difflib.get_close_matches(str(name).lower(), list(ACTIVATIONS), n=1, cutoff=0.6)
    return close[0] if close else None


def resolve_params(params: dict[str, Any]) -> dict[str, Any]:
    """Complete a flat parameter map: keep what the activation uses, fill Keras' defaults.

    The result is exactly what a model is rebuilt from, so it is what gets logged.
    """
    act = ACTIVATIONS[params["activation"]]
    out: dict[str, Any] = {"activation": act.name}
    for p in act.params:
        out[p] = params[p] if params.get(p) is not None else PARAM_DEFAULTS[p]
    return out


def prelu_axes(shared_axes: str, rank: int) -> list[int] | None:
    """Keras `shared_axes` for a PReLU after a layer whose output has `rank` dims (batch included).

    none: one alpha per element; spatial: one per channel (He et al. 2015), which after a Dense
    layer is one per unit, i.e. none; all: one alpha for the whole layer.
    """
    if shared_axes not in SHARED_AXES:
        raise ValueError(f"prelu_shared_axes must be one of {SHARED_AXES}, got {shared_axes!r}")
    if shared_axes == "none" or (shared_axes == "spatial" and rank == 2):
        return None
    if shared_axes == "spatial":
        return list(range(1, rank - 1))
    return list(range(1, rank))


def alpha_initializer(value: str | float) -> str | Any:
    import keras

    if value == "zeros" or value == 0:
        return "zeros"
    return keras.initializers.Constant(float(value))


def make_layer(params: dict[str, Any], rank: int, name: str) -> keras.layers.Layer:
    """The activation layer for resolved `params`, placed after a layer of output rank `rank`."""
    from keras import layers

    p = resolve_params(params)
    act = p["activation"]
    if act == "relu":
        return layers.ReLU(name=name)
    if act == "leaky_relu":
        return layers.LeakyReLU(negative_slope=float(p["leaky_alpha"]), name=name)
    if act == "prelu":
        return layers.PReLU(
            alpha_initializer=alpha_initializer(p["prelu_alpha_init"]),
            shared_axes=prelu_axes(p["prelu_shared_axes"], rank),
            name=name,
        )
    return layers.Activation(ACTIVATIONS[act].keras_name, name=name)
