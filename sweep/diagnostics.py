"""Dying-ReLU diagnostics: Keras callbacks and PReLU alpha extraction. Plain parameters, no Optuna.

A unit is "never positive" when its pre-activation (the activation layer's input) is <= 0 for
every sample of a fixed probe batch and, for a convolution, at every spatial position: the unit is
a channel there, as a dead filter is dead everywhere. For ReLU that is a dead unit (zero output,
zero gradient). Measuring the input rather than the output gives Leaky ReLU, PReLU (even with a
learned negative alpha) and smooth activations the same, comparable definition.
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from sweep.plots import save_with_legend_below

if TYPE_CHECKING:
    import keras

    from sweep.config import DiagnosticsConfig
    from sweep.data import Dataset

log = logging.getLogger(__name__)

DEAD_PREFIX = "dead_fraction/"
ALPHA_PREFIX = "prelu_alpha/"
COST_KEY = "diagnostics_seconds"
ALPHA_FILES = ("prelu_alphas.npz", "prelu_alphas.png")
_CHUNK = 256  # probe samples per forward pass: bounds memory for large probes


def probe_batch(data: Dataset, n: int) -> np.ndarray:
    """The first `n` validation images (held out, the same in every trial), then training ones."""
    xtr, _, xval, _ = data.split()
    return np.concatenate([xval[:n], xtr[: max(0, n - len(xval))]])


def probe_model(model: keras.Model, layers: Sequence[str]) -> keras.Model:
    """A model from `model`'s inputs to the inputs of the named activation layers."""
    import keras

    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs  # called with one array
    return keras.Model(inputs, [model.get_layer(name).input for name in layers])


def never_positive(pre_activations: Sequence[np.ndarray]) -> float:
    """Fraction of units (last axis) whose value is <= 0 in every sample and position of every chunk."""
    peak = None
    for chunk in pre_activations:
        m = np.asarray(chunk).reshape(-1, chunk.shape[-1]).max(axis=0)
        peak = m if peak is None else np.maximum(peak, m)
    if peak is None:
        raise ValueError("never_positive needs at least one batch of pre-activations")
    return float(np.mean(peak <= 0))


def dead_fractions(probe_net: keras.Model, probe: np.ndarray, layers: Sequence[str]) -> dict[str, float]:
    """`never_positive` for each layer of a `probe_model`, on `probe`, in inference mode."""
    import keras

    chunks: list[list[np.ndarray]] = [[] for _ in layers]
    for start in range(0, len(probe), _CHUNK):
        out = probe_net(probe[start : start + _CHUNK], training=False)
        outs = out if isinstance(out, (list, tuple)) else [out]
        for i, o in enumerate(outs):
            chunks[i].append(keras.ops.convert_to_numpy(o))
    return {name: never_positive(c) for name, c in zip(layers, chunks)}


def dead_units_callback(probe: np.ndarray, layers: Sequence[str]) -> keras.callbacks.Callback:
    """Per epoch, `logs['dead_fraction/<layer>']` for each activation layer, and the time it took.

    Place it before the MLflow epoch logger, which logs every numeric key of `logs`.
    """
    import keras

    if len(probe) == 0:
        raise ValueError("the dead-unit probe batch is empty: the dataset has no images")

    class DeadUnits(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.history: dict[str, list[float]] = {name: [] for name in layers}
            self.seconds: list[float] = []
            self._net: keras.Model | None = None

        def on_train_begin(self, logs: dict | None = None) -> None:
            self._net = probe_model(self.model, layers)

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            t0 = time.perf_counter()
            fractions = dead_fractions(self._net, probe, layers)
            for name, f in fractions.items():
                self.history[name].append(f)
                if logs is not None:
                    logs[f"{DEAD_PREFIX}{name}"] = f
            self.seconds.append(time.perf_counter() - t0)
            if logs is not None:
                logs[COST_KEY] = self.seconds[-1]

    return DeadUnits()


@functools.lru_cache(maxsize=1)
def _note_no_layers() -> None:
    log.info("dead-unit diagnostics skipped: the model has no separate activation layers to probe "
             "(with model.placement: inline each activation is inside its linear layer)")


def callbacks(cfg: DiagnosticsConfig, data: Dataset, layers: Sequence[str]) -> list[Any]:
    """The diagnostics callbacks a study's config asks for (maybe none)."""
    if not cfg.dead_units:
        return []
    if not layers:
        # an inline activation (`model.placement: inline`) has no layer whose input, the
        # pre-activation, a probe could read: it lives inside the linear layer's call
        _note_no_layers()
        return []
    return [dead_units_callback(probe_batch(data, cfg.probe_samples), layers)]


def prelu_alphas(model: keras.Model, layers: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """The learned alphas of each PReLU layer (optionally only the named ones), flattened."""
    import keras

    return {
        layer.name: keras.ops.convert_to_numpy(layer.alpha).astype(np.float64).ravel()
        for layer in model.layers
        if isinstance(layer, keras.layers.PReLU) and (layers is None or layer.name in layers)
    }


def alpha_summary(alphas: dict[str, np.ndarray]) -> dict[str, float]:
    """`prelu_alpha/<layer>/mean|min|max` for each layer."""
    out: dict[str, float] = {}
    for name, a in alphas.items():
        out[f"{ALPHA_PREFIX}{name}/mean"] = float(np.mean(a))
        out[f"{ALPHA_PREFIX}{name}/min"] = float(np.min(a))
        out[f"{ALPHA_PREFIX}{name}/max"] = float(np.max(a))
    return out


def alpha_histogram(groups: dict[str, dict[str, np.ndarray]], title: str, path: Path,
                    colors: dict[str, Any] | None = None) -> Path:
    """One panel per layer; in each, one histogram per group (e.g. per configuration), overlaid."""
    from sweep.plots import pyplot

    plt = pyplot()
    layers = list(dict.fromkeys(name for alphas in groups.values() for name in alphas))
    fig, axes = plt.subplots(1, len(layers), figsize=(4.4 * len(layers), 4.2), dpi=100, squeeze=False,
                             layout="constrained")
    for ax, name in zip(axes[0], layers):
        values = [a[name] for a in groups.values() if name in a]
        lo = min(0.0, *(float(v.min()) for v in values))
        hi = max(0.3, *(float(v.max()) for v in values))
        bins = np.linspace(lo, hi + 1e-9, 41)
        for (label, alphas) in groups.items():
            if name in alphas:
                ax.hist(alphas[name], bins=bins, histtype="step", linewidth=1.6,
                        color=(colors or {}).get(label), label=label)
        ax.axvline(0.0, color="black", linestyle=":", linewidth=1, label="α = 0 (ReLU)")
        sizes = sorted({v.size for v in values})
        each = " each" if len(values) > 1 and len(sizes) == 1 else ""
        ax.set_title(f"{name} ({' / '.join(f'{n:,}' for n in sizes)} alphas{each})")
        ax.set_xlabel("learned alpha (negative slope)")
        ax.set_ylabel("count of alphas")
        ax.grid(alpha=0.3)
    return save_with_legend_below(fig, axes[0][0], title, path)


def prelu_artifacts(model: keras.Model, label: str, folder: Path,
                    layers: Sequence[str] | None = None) -> tuple[dict[str, float], list[Path]]:
    """Summary metrics and files (`prelu_alphas.npz`, `prelu_alphas.png`) for a trained model.

    Empty when the model has no PReLU layer.
    """
    alphas = prelu_alphas(model, layers)
    if not alphas:
        return {}, []
    folder.mkdir(parents=True, exist_ok=True)
    npz = folder / ALPHA_FILES[0]
    np.savez_compressed(npz, **alphas)
    png = alpha_histogram({label: alphas}, f"Learned PReLU alphas — {label}", folder / ALPHA_FILES[1])
    return alpha_summary(alphas), [npz, png]
