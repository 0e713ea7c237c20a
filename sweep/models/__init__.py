"""Model families, built from plain parameters (no Optuna, no study): a best config rebuilds
without one. `activations` is the registry of activation functions and the layers they become;
each family module (`cnn`, ...) builds one architecture; `build_model` picks the family."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from sweep.models import cnn, mlp
from sweep.models.activations import resolve_params

if TYPE_CHECKING:
    import keras

# family name -> (builder(input_shape, num_classes, params, **shape) -> model, its activation layers)
FAMILIES: dict[str, tuple[Callable[..., keras.Model], Callable[[dict[str, Any]], tuple[str, ...]]]] = {
    "seed_cnn": (cnn.seed_cnn, cnn.activation_layers),
    "mlp": (mlp.mlp, mlp.activation_layers),
}


def _spec(model: str | dict[str, Any]) -> dict[str, Any]:
    spec = {"name": model} if isinstance(model, str) else dict(model)
    if spec.get("name") not in FAMILIES:
        raise ValueError(f"unknown model {spec.get('name')!r}; expected one of {', '.join(FAMILIES)}")
    return spec


def activation_layers(model: str | dict[str, Any]) -> tuple[str, ...]:
    """The names of a model's activation layers (what diagnostics watch), from its name or spec."""
    spec = _spec(model)
    return FAMILIES[spec["name"]][1](spec)


def build_model(
    model: str | dict[str, Any], input_shape: tuple[int, ...] | list[int], num_classes: int, **params: Any
) -> keras.Model:
    """Build `model` (a family name, or a spec such as `{"name": "seed_cnn", "placement": "layer"}`)
    with the activation given by flat params (`activation=`, `leaky_alpha=`, ...).

    `sweep.build_model(**{k: cfg[k] for k in ("model", "input_shape", "num_classes")}, **cfg["params"])`
    rebuilds the architecture of a `sweep.best_config(...)` result.
    """
    spec = _spec(model)
    build = FAMILIES[spec.pop("name")][0]
    return build(tuple(input_shape), int(num_classes), resolve_params(params), **spec)


__all__ = ["FAMILIES", "activation_layers", "build_model"]
