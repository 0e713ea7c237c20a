"""The search space as Optuna sees it: samplers, pruners, conditional suggestions, explicit plans.

Explicit configurations (`search.configs`, or the `grid` sampler expanded over the space) are
enqueued as fixed trials, `repeats` times each; `sample` then suggests over categorical
distributions holding exactly those values, so every trial carries its params in Optuna.
"""

from __future__ import annotations

import itertools
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from sweep.config import FloatRange, SearchConfig, SpaceConfig
from sweep.models.activations import ACTIVATIONS, resolve_params

if TYPE_CHECKING:
    import optuna


def _values(spec: FloatRange | list[Any]) -> list[Any]:
    """All values of a parameter for the grid: the list, or low..high by step."""
    if isinstance(spec, list):
        return list(spec)
    assert spec.step is not None  # guaranteed by SearchConfig validation
    n = int(np.floor((spec.high - spec.low) / spec.step + 1e-9)) + 1
    return [round(spec.low + i * spec.step, 12) for i in range(n)]


def plan(search: SearchConfig) -> list[dict[str, Any]] | None:
    """The explicit configurations to enqueue (resolved params), or None for sampled search."""
    if search.configs is not None:
        return [c.params() for c in search.configs]
    if search.sampler != "grid":
        return None
    space = search.space
    assert space is not None
    out = []
    for act in space.activation:
        names = ACTIVATIONS[act].params
        grids = [_values(getattr(space, p)) if getattr(space, p) is not None else [None] for p in names]
        for combo in itertools.product(*grids):
            out.append(resolve_params({"activation": act, **dict(zip(names, combo))}))
    return out


def space_of(configs: list[dict[str, Any]]) -> SpaceConfig:
    """A categorical space holding exactly the values of `configs`, so enqueued values fit it."""
    values: dict[str, list[Any]] = {}
    for c in configs:
        for k, v in c.items():
            if v not in values.setdefault(k, []):
                values[k].append(v)
    return SpaceConfig(**values)


def sample(trial: optuna.trial.Trial, space: SpaceConfig) -> dict[str, Any]:
    """Suggest an activation, then only the parameters that activation uses (conditional space)."""
    act = trial.suggest_categorical("activation", space.activation)
    params: dict[str, Any] = {"activation": act}
    for name in ACTIVATIONS[act].params:
        spec = getattr(space, name)
        if spec is None:
            continue  # fixed at Keras' default by resolve_params
        if isinstance(spec, FloatRange):
            params[name] = trial.suggest_float(name, spec.low, spec.high, log=spec.log, step=spec.step)
        else:
            params[name] = trial.suggest_categorical(name, spec)
    return resolve_params(params)


def make_sampler(search: SearchConfig, offset: int = 0, worker: str | None = None
                 ) -> optuna.samplers.BaseSampler:
    """`offset` (trials already in the study) keeps a resumed sampler from replaying its seeds;
    `worker` (a name unique to one of several processes) gives each its own stream, so workers
    that start together do not draw the same parameters."""
    import optuna

    seed = search.seed + offset
    if worker is not None:
        entropy = [search.seed, offset, *worker.encode(), *os.urandom(8)]
        seed = int(np.random.SeedSequence(entropy).generate_state(1)[0] >> 1)
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # grid: explicit trials are enqueued; the sampler only matters if more trials are asked for.
    # constant_liar: running trials count as (bad) results, so parallel workers spread out.
    # With several metrics this is Optuna's multi-objective TPE (MOTPE), constant liar included:
    # its split puts running trials on the "above" side for one objective or many
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def make_pruner(search: SearchConfig) -> optuna.pruners.BasePruner:
    """The configured Optuna pruner, given every field of `search.pruner` (and only those)."""
    import optuna

    p = search.pruner
    cls = {"none": optuna.pruners.NopPruner, "median": optuna.pruners.MedianPruner,
           "hyperband": optuna.pruners.HyperbandPruner, "threshold": optuna.pruners.ThresholdPruner}[p.name]
    return cls(**p.kwargs())


def monitor(search: SearchConfig, has_validation: bool) -> str | None:
    """The per-epoch value reported to Optuna (test metrics exist only after training), or None
    for a study of several metrics: Optuna cannot prune those (`Trial.report` raises)."""
    if len(search.metrics) > 1:
        return None
    if search.metric == "epoch_seconds":
        return "epoch_seconds"  # the epoch timer puts it in Keras' logs
    base = search.metric.removeprefix("test_").removeprefix("val_")
    return f"val_{base}" if has_validation else base
