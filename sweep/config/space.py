"""The `search` section: the space or explicit configurations, sampler, metrics, repeats."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, Field, ValidationInfo, field_validator, model_validator

from sweep.config.base import METRICS, MetricName, Strict, direction_of
from sweep.config.pruner import PrunerConfig
from sweep.models import custom
from sweep.models.activations import (ACTIVATIONS, ALIASES, PARAM_OWNER, canonical, renamed,
                                      resolve_params, suggest_name)


class FloatRange(Strict):
    low: float
    high: float
    log: bool = False
    step: float | None = Field(None, gt=0.0)

    @model_validator(mode="after")
    def _order(self) -> FloatRange:
        if self.low > self.high:
            raise ValueError(f"low must be <= high, got low={self.low}, high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got low={self.low}")
        if self.log and self.step is not None:
            raise ValueError("`log` and `step` cannot be combined (Optuna does not support it)")
        return self


AlphaInit = Union[Literal["zeros"], float]
SharedAxes = Literal["none", "spatial", "all"]


def _check_activation(name: str, info: ValidationInfo) -> str:
    # a Keras class name is stored as sweep's name, so Optuna, MLflow and compare see one name
    name = canonical(name)
    if name in ACTIVATIONS:
        return name
    if custom.is_custom(name):
        # imported and tried when a study file is read; a stored config is taken as it is: its code
        # may not be importable where it is read (`sweep best`), which needs no TensorFlow
        if info.context is not None and not info.context.get("stored"):
            custom.check(name)
        return name
    hint = suggest_name(name)
    tip = f"; did you mean {hint!r}?" if hint else ""
    raise ValueError(
        f"unknown activation {name!r}{tip} Expected one of: {', '.join(ACTIVATIONS)}; a Keras class "
        f"name ({', '.join(ALIASES)}); or custom code as package.module:Name or path/to/file.py:Name"
    )


def _refuse_renamed(v: Any, info: ValidationInfo) -> Any:
    # `alpha` (Keras 2) and `negative_slope` (Keras 3) are fields only so that their refusal names
    # them at their own path, and the rest of the entry is still checked; never stored
    raise ValueError(renamed(str(info.field_name), v))


ActivationName = Annotated[str, AfterValidator(_check_activation)]


def _nonneg(v: float, what: str) -> float:
    if v < 0:
        raise ValueError(f"{what} must be >= 0, got {v}")
    return v


class SpaceConfig(Strict):
    """Search space. Activation parameters are sampled only for the activation that uses them."""

    activation: list[ActivationName] = Field(min_length=1)
    leaky_alpha: FloatRange | list[float] | None = None
    prelu_alpha_init: list[AlphaInit] | None = Field(None, min_length=1)
    prelu_shared_axes: list[SharedAxes] | None = Field(None, min_length=1)
    alpha: Any = Field(None, exclude=True)  # refused: see _refuse_renamed
    negative_slope: Any = Field(None, exclude=True)

    _renamed = field_validator("alpha", "negative_slope", mode="before")(_refuse_renamed)

    @field_validator("activation")
    @classmethod
    def _once(cls, v: list[str]) -> list[str]:
        twice = sorted({a for a in v if v.count(a) > 1})
        if twice:
            raise ValueError(f"each activation may be listed once (a Keras class name is the same "
                             f"activation), got {', '.join(twice)} more than once")
        return v

    @field_validator("leaky_alpha")
    @classmethod
    def _slope(cls, v: FloatRange | list[float] | None) -> FloatRange | list[float] | None:
        if isinstance(v, FloatRange):
            _nonneg(v.low, "low (a negative slope)")
        elif v is not None:
            if not v:
                raise ValueError("expected at least one value")
            for x in v:
                _nonneg(x, "every value (a negative slope)")
        return v

    @field_validator("prelu_alpha_init")
    @classmethod
    def _alpha(cls, v: list[AlphaInit] | None) -> list[AlphaInit] | None:
        for x in v or []:
            if x != "zeros":
                _nonneg(float(x), "an alpha initializer")
        return v


class TrialConfig(Strict):
    """One explicit configuration under `search.configs`."""

    activation: ActivationName
    leaky_alpha: float | None = Field(None, ge=0.0)
    prelu_alpha_init: AlphaInit | None = None
    prelu_shared_axes: SharedAxes | None = None
    alpha: Any = Field(None, exclude=True)  # refused: see _refuse_renamed
    negative_slope: Any = Field(None, exclude=True)

    _renamed = field_validator("alpha", "negative_slope", mode="before")(_refuse_renamed)

    @model_validator(mode="after")
    def _applies(self) -> TrialConfig:
        for p, owner in PARAM_OWNER.items():
            if getattr(self, p) is not None and owner != self.activation:
                raise ValueError(f"{p} applies only to activation {owner!r}, not {self.activation!r}")
        if isinstance(self.prelu_alpha_init, float) and self.prelu_alpha_init < 0:
            raise ValueError(f"prelu_alpha_init must be >= 0 or 'zeros', got {self.prelu_alpha_init}")
        return self

    def params(self) -> dict[str, Any]:
        return resolve_params(self.model_dump())


class SearchConfig(Strict):
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    n_trials: int | None = Field(None, gt=0)
    # one metric, or several optimised together (a Pareto front); a single one stays a string,
    # so configs stored before several were possible compare equal and their studies resume
    metric: MetricName | list[MetricName] = "val_accuracy"
    pruner: PrunerConfig = PrunerConfig()
    seed: int = 0
    space: SpaceConfig | None = None
    configs: list[TrialConfig] | None = Field(None, min_length=1)
    repeats: int = Field(1, gt=0)  # after space: its validator reads the sampler and the space

    @model_validator(mode="before")
    @classmethod
    def _default_pruner(cls, data: Any) -> Any:
        """`median` prunes a sampled search; `none` is the default where pruning does harm:
        - several metrics: Optuna cannot prune them (Trial.report and should_prune raise); one
          given explicitly is refused in _one_pruned_metric;
        - an explicit plan (`configs`, or the grid): it is a comparison, where a pruned run has no
          final value and `sweep compare` would see only the survivors; repeated over seeds, an
          explicit pruner is refused in _repeatable.
        Stored configs always name their pruner, so a resumed study keeps the one it ran with."""
        if not isinstance(data, dict) or "pruner" in data:
            return data
        several = isinstance(data.get("metric"), list) and len(set(map(str, data["metric"]))) > 1
        if several or data.get("configs") is not None or data.get("sampler") == "grid":
            return {**data, "pruner": "none"}
        return data

    @field_validator("metric", mode="before")
    @classmethod
    def _metrics(cls, v: Any) -> Any:
        if not isinstance(v, list):
            return v  # a single metric: pydantic checks the name
        # checked here, so a bad list gives one line rather than one per member of the union
        unknown = [m for m in v if m not in METRICS]
        if not v or unknown:
            raise ValueError(f"expected a metric or a list of distinct metrics from {', '.join(METRICS)}; "
                             f"got {v!r}" + (f" ({', '.join(map(repr, unknown))} unknown)" if unknown else ""))
        repeated = sorted({m for m in v if v.count(m) > 1})
        if repeated:
            raise ValueError(f"each metric may be listed once, got {', '.join(repeated)} more than once")
        return v[0] if len(v) == 1 else v  # a list of one is that metric: a single-objective study

    @field_validator("pruner", mode="before")
    @classmethod
    def _pruner_shorthand(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @field_validator("pruner")
    @classmethod
    def _one_pruned_metric(cls, v: PrunerConfig, info: ValidationInfo) -> PrunerConfig:
        metric = info.data.get("metric")
        if isinstance(metric, list) and v.name != "none":
            raise ValueError(
                f"a study of several metrics ({', '.join(metric)}) cannot be pruned: Optuna prunes "
                f"single-objective studies only; set `pruner: none`, got {v.name!r}")
        return v

    @field_validator("repeats")
    @classmethod
    def _repeatable(cls, v: int, info: ValidationInfo) -> int:
        sampler = info.data.get("sampler")
        pruner = info.data.get("pruner")
        if v > 1 and pruner is not None and pruner.name != "none" and not (info.context or {}).get("stored"):
            raise ValueError(
                f"a configuration repeated over seeds ({v} repeats) is a comparison, and the {pruner.name} "
                "pruner would bias it: a pruned run has no final value, so `sweep compare` would see only "
                "the seeds that survived; set `pruner: none` (the default for `configs` and the grid)")
        if v == 1 or info.data.get("space") is None or sampler in (None, "grid"):
            return v
        if (info.context or {}).get("stored"):
            return 1  # sweep before 2026-11 accepted it here and ran every trial once: what ran
        # a sampled trial is drawn once, with seed + trial number: nothing would repeat it
        raise ValueError(
            f"the {sampler} sampler draws every trial anew, so `repeats` ({v}) would be ignored; "
            "remove it, or list the configurations under `configs` (or use the grid sampler) to run "
            "each with seeds seed, seed+1, ..."
        )

    @model_validator(mode="after")
    def _one_source(self) -> SearchConfig:
        if (self.space is None) == (self.configs is None):
            raise ValueError("give exactly one of `space` (sampled) or `configs` (explicit list)")
        if self.space is not None and self.sampler != "grid" and self.n_trials is None:
            raise ValueError(f"the {self.sampler!r} sampler needs `n_trials`")
        if self.sampler == "grid" and self.space is not None:
            r = self.space.leaky_alpha
            if isinstance(r, FloatRange) and r.step is None:
                raise ValueError(
                    "the grid sampler needs a list of values or a `step` for leaky_alpha"
                )
        return self

    @property
    def metrics(self) -> tuple[str, ...]:
        """The metric(s) Optuna optimises, in the order of the trial's values."""
        return (self.metric,) if isinstance(self.metric, str) else tuple(self.metric)

    @property
    def directions(self) -> list[str]:
        return [direction_of(m) for m in self.metrics]

    @property
    def direction(self) -> str:
        """The direction of a single metric (a study of several has `directions`)."""
        if not isinstance(self.metric, str):
            raise ValueError(f"search.metric lists {len(self.metric)} metrics; use `directions`")
        return direction_of(self.metric)
