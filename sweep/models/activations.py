"""Activation functions a study can search over, and the Keras layer each one becomes.

The registry is plain data (no Keras import) so configs can be validated without TensorFlow;
`make_layer` imports Keras lazily when a model is actually built. Besides the built-ins, an
activation may be custom code named by import path (`sweep.models.custom`), and the Keras class
names tutorials write (`LeakyReLU`, ...) are aliases of the built-ins.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sweep.models import custom

if TYPE_CHECKING:
    import keras


@dataclass(frozen=True)
class Activation:
    name: str
    params: tuple[str, ...] = ()
    keras_name: str | None = None  # for parameter-free activations: the keras.layers.Activation name


class _Registry(dict):
    """The built-ins by name. A custom activation (`pkg.mod:Name`, `file.py:Name`) is no key, but
    looking one up gives it as an activation without parameters, so code that reads
    `ACTIVATIONS[name].params` (search, compare, sync) needs no case of its own."""

    def __missing__(self, key: str) -> Activation:
        if custom.is_custom(key):
            return Activation(key)
        raise KeyError(key)


ACTIVATIONS: dict[str, Activation] = _Registry({
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
})

# Defaults are Keras' own: LeakyReLU(negative_slope=0.3), PReLU(alpha_initializer="zeros",
# shared_axes=None).
PARAM_DEFAULTS: dict[str, Any] = {
    "leaky_alpha": 0.3,
    "prelu_alpha_init": "zeros",
    "prelu_shared_axes": "none",
}
PARAM_OWNER: dict[str, str] = {p: a.name for a in ACTIVATIONS.values() for p in a.params}
SHARED_AXES = ("none", "spatial", "all")

# The Keras layer class names tutorials pass as `activation='LeakyReLU'` (which Keras 3 answers
# with "Unknown activation function"): accepted, and stored as sweep's name
ALIASES = {"ReLU": "relu", "LeakyReLU": "leaky_relu", "PReLU": "prelu", "ELU": "elu"}
# Other spellings of the LeakyReLU slope, refused with the name sweep uses
RENAMED = {
    "alpha": "`alpha` is Keras 2's name for the LeakyReLU slope (Keras 3 calls it `negative_slope`)",
    "negative_slope": "`negative_slope` is Keras 3's name for the LeakyReLU slope",
}


def canonical(name: str) -> str:
    """Sweep's name for `name`: an alias (`LeakyReLU`) becomes `leaky_relu`; others are unchanged."""
    return ALIASES.get(name, name)


def renamed(key: str, value: Any) -> str:
    """The message refusing `key` (`alpha`, `negative_slope`), given as `value`."""
    return f"{RENAMED[key]}; sweep calls it `leaky_alpha`: rename {key} to leaky_alpha, got {key}={value!r}"


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
    for key in RENAMED:
        if key in params:
            raise ValueError(renamed(key, params[key]))
    act = ACTIVATIONS[canonical(params["activation"])]
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
    if custom.is_custom(act):
        return custom.layer(act, name)
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


def make_inline(params: dict[str, Any], rank: int, name: str) -> str | Any:
    """What a linear layer of output rank `rank` takes as `activation=` for resolved `params`, as
    tutorials write it: a Keras activation name for the parameter-free built-ins, an activation
    layer (`LeakyReLU(negative_slope=0.1)`, a PReLU, a custom layer class's instance) named `name`,
    or a custom function itself. The same function as `make_layer`'s layer.

    Keras does not build a layer passed as `activation=` with its linear layer: the caller builds
    it (`build_inline`) so its weights (PReLU alphas) exist before training, as a layer's would.
    """
    p = resolve_params(params)
    act = p["activation"]
    if custom.is_custom(act):
        return custom.inline(act, name)
    if act in ("leaky_relu", "prelu"):
        return make_layer(p, rank, name)
    return "relu" if act == "relu" else ACTIVATIONS[act].keras_name


def build_inline(activation: Any, output_shape: tuple[Any, ...]) -> None:
    """Build an activation layer passed as `activation=` for the linear layer's `output_shape`."""
    import keras

    if isinstance(activation, keras.layers.Layer) and not activation.built:
        activation.build(tuple(output_shape))
