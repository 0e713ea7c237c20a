"""Study files: the one module that reads YAML, validating it into pydantic models.

Every problem is reported at once with its field path (`search.space.leaky_alpha.low: ...`);
no raw dict travels past this module.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, NamedTuple, Union, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from sweep.errors import ConfigError
from sweep.models import custom
from sweep.models.activations import (ACTIVATIONS, ALIASES, PARAM_OWNER, canonical, renamed,
                                      resolve_params, suggest_name)
from sweep.models.mlp import HIDDEN, output_layer

METRICS = ("val_accuracy", "val_loss", "accuracy", "loss", "test_accuracy", "test_loss", "epoch_seconds")
MetricName = Literal["val_accuracy", "val_loss", "accuracy", "loss", "test_accuracy", "test_loss", "epoch_seconds"]


def direction_of(metric: str) -> str:
    """Losses and seconds are minimized, everything else (accuracies) maximized."""
    return "minimize" if metric.endswith(("loss", "seconds")) else "maximize"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Member(Strict):
    """A member of one of StudyConfig's discriminated unions (`UNION`: dataset, model)."""

    UNION: ClassVar[str]

    @model_validator(mode="before")
    @classmethod
    def _null_of_others(cls, data: Any) -> Any:
        # before the members were split into classes, a field of another member given as null was
        # taken as not given (`target: null` on mnist); files that did so still validate
        if not isinstance(data, dict):
            return data
        theirs = _UNIONS[cls.UNION].owners
        return {k: v for k, v in data.items() if not (v is None and k in theirs and k not in cls.model_fields)}


class _Dataset(_Member):
    """What every dataset takes. `name` picks the family (a discriminated union, DatasetConfig), and
    each family declares its own fields: a dump holds what its dataset takes, nothing more."""

    name: str  # each member narrows it to its names; declared here so that a dump starts with it
    path: Path | None = None
    train_samples: int | None = Field(None, gt=0)
    test_samples: int | None = Field(None, gt=0)
    validation_split: float = Field(0.2, ge=0.0, lt=1.0)

    UNION = "dataset"
    PATH_HOLDS: ClassVar[str]  # what `path` should point to, for the message when it does not exist

    @field_validator("path")
    @classmethod
    def _path_exists(cls, v: Path | None) -> Path | None:
        if v is None:
            return v
        p = v.expanduser()
        if not p.is_file():
            raise ValueError(
                f"file not found: {str(v)!r} (relative paths are read from the working "
                f"directory {Path.cwd()}); expected {cls.PATH_HOLDS}"
            )
        return p.resolve()


class ImageDatasetConfig(_Dataset):
    """`dataset`: images, downloaded by Keras, shipped with scikit-learn (digits), or from a .npz."""

    name: Literal["mnist", "fashion_mnist", "cifar10", "digits", "npz"]

    PATH_HOLDS = "a .npz in keras load_data() layout"

    @model_validator(mode="after")
    def _path_when_needed(self) -> ImageDatasetConfig:
        if self.name == "npz" and self.path is None:
            raise ValueError("dataset 'npz' needs `path` to a .npz with x_train, y_train, x_test, y_test")
        if self.name == "digits" and self.path is not None:
            raise ValueError("dataset 'digits' ships with scikit-learn and takes no `path`")
        return self


class CsvDatasetConfig(_Dataset):
    """`dataset: {name: csv}`: a table, one row per sample (sweep/data/csv.py)."""

    name: Literal["csv"]
    # the class column, columns that are not features, the held-out fraction, and the seed of that
    # split: one per study (not the trial's), so every trial tests on the same rows
    target: str | None = None
    drop: list[str] | None = []
    test_split: float | None = Field(0.2, gt=0.0, lt=1.0)
    seed: int | None = 0

    PATH_HOLDS = "a .csv file: a header line naming the columns, then one line per row"

    @model_validator(mode="after")
    def _path_and_target(self) -> CsvDatasetConfig:
        problems = []
        if self.path is None:
            problems.append("dataset 'csv' needs `path` to a .csv file")
        if not self.target:
            problems.append("dataset 'csv' needs `target`: the column that holds each row's class")
        if self.target in (self.drop or []):
            problems.append(f"`drop` lists the target column {self.target!r}; the target is never a feature")
        if problems:
            raise ValueError("; ".join(problems))
        return self


DatasetConfig = Annotated[Union[ImageDatasetConfig, CsvDatasetConfig], Field(discriminator="name")]


class TrainingConfig(Strict):
    epochs: int = Field(25, gt=0)
    batch_size: int = Field(250, gt=0)
    optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = "adam"
    learning_rate: float = Field(0.001, gt=0.0)


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


# Each pruner's Optuna arguments and their defaults (Optuna's own, except Hyperband's
# max_resource, see StudyConfig._hyperband_budget). A pruner takes exactly these fields.
PRUNER_FIELDS: dict[str, dict[str, Any]] = {
    "none": {},
    "median": {"n_startup_trials": 5, "n_warmup_steps": 0, "interval_steps": 1, "n_min_trials": 1},
    "hyperband": {"min_resource": 1, "max_resource": "auto", "reduction_factor": 3},
    "threshold": {"lower": None, "upper": None, "n_warmup_steps": 0, "interval_steps": 1},
}


class PrunerConfig(Strict):
    """`search.pruner`: the name, then only the fields that pruner's Optuna class takes."""

    name: Literal["none", "median", "hyperband", "threshold"] = "median"
    n_startup_trials: int | None = Field(None, ge=0)
    n_warmup_steps: int | None = Field(None, ge=0)
    interval_steps: int | None = Field(None, ge=1)
    n_min_trials: int | None = Field(None, ge=1)
    min_resource: int | None = Field(None, ge=1)
    max_resource: int | str | None = None  # an int, or "auto" (see _max_resource)
    reduction_factor: int | None = Field(None, ge=2)
    lower: float | None = None
    upper: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, dict) or data.get("name", "median") not in PRUNER_FIELDS:
            return data  # pydantic reports the type or the name
        takes = PRUNER_FIELDS[data.get("name", "median")]
        if (info.context or {}).get("stored"):
            # sweep before 2026-11 stored every field for every pruner, and a pruner ignored the
            # ones it does not take: drop them, as that sweep did. Never for a user's file.
            data = {k: v for k, v in data.items() if k == "name" or k in takes}
        return {**takes, **data}

    @field_validator(*(f for f in PRUNER_FIELDS["median"] | PRUNER_FIELDS["hyperband"]
                       | PRUNER_FIELDS["threshold"]), mode="before")
    @classmethod
    def _taken(cls, v: Any, info: ValidationInfo) -> Any:
        name = info.data.get("name")
        if name is not None and info.field_name not in PRUNER_FIELDS[name]:
            takes = ", ".join(PRUNER_FIELDS[name]) or "no other fields (give `name` only)"
            raise ValueError(f"the {name} pruner does not use `{info.field_name}`; it takes {takes}")
        return v

    @field_validator("max_resource")
    @classmethod
    def _max_resource(cls, v: int | str | None) -> int | str | None:
        if (isinstance(v, str) and v != "auto") or (isinstance(v, int) and v < 1):
            raise ValueError(f"expected a number of epochs >= 1 or 'auto', got {v!r}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> PrunerConfig:
        if self.name == "threshold":
            if self.lower is None and self.upper is None:
                raise ValueError("the threshold pruner needs `lower` or `upper`")
            if self.lower is not None and self.upper is not None and self.lower > self.upper:
                raise ValueError(f"lower must be <= upper, got lower={self.lower}, upper={self.upper}")
        if (self.name == "hyperband" and isinstance(self.max_resource, int)
                and self.min_resource is not None and self.min_resource > self.max_resource):
            # Optuna would build no bracket at all and silently never prune
            raise ValueError(f"min_resource must be <= max_resource (training.epochs unless given), "
                             f"got min_resource={self.min_resource}, max_resource={self.max_resource}")
        return self

    @model_serializer(mode="wrap")
    def _only_taken(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # the dump (stored with the study, logged to MLflow) holds what the Optuna pruner got
        out = handler(self)
        return {k: v for k, v in out.items() if k == "name" or k in PRUNER_FIELDS[self.name]}

    def kwargs(self) -> dict[str, Any]:
        """The arguments of this pruner's Optuna class."""
        return {k: getattr(self, k) for k in PRUNER_FIELDS[self.name]}


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


class DiagnosticsConfig(Strict):
    """Per-trial diagnostics (sweep/diagnostics.py); they observe training and never change it."""

    dead_units: bool = True  # per epoch: fraction of units never positive on a fixed probe batch
    probe_samples: int = Field(256, gt=0)  # size of that probe batch (validation data first)
    prelu_alphas: bool = True  # after training: learned PReLU alphas, summary metrics and histogram


KEEP_MODELS_DEFAULT = 3


class TrackingConfig(Strict):
    """`tracking`: what a study keeps in MLflow beyond every trial's params, metrics and plots."""

    # the K best trials by the study's metric (with several metrics: the Pareto front) keep their
    # logged model; the others' models are deleted through MLflow as they fall out (5.2 MB each
    # for the seed CNN). `all` keeps every model.
    keep_models: Union[int, Literal["all"]] = KEEP_MODELS_DEFAULT

    @field_validator("keep_models", mode="before")
    @classmethod
    def _int_or_all(cls, v: Any) -> Any:
        if v != "all" and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"expected a whole number of models of at least 1, or `all`; got {v!r}")
        return v


CONFIRM_TOP = 3
CONFIRM_REPEATS = 5


class ConfirmConfig(Strict):
    """`confirm`: once a search completes, its finalists are trained again on fresh seeds, in a study
    of their own (sweep/runner/confirm.py). `top` distinct configurations by the study's metric, or
    with `per: activation` the best configuration of each activation searched; `repeats` seeds each."""

    top: int | None = Field(None, ge=1)
    per: Literal["activation"] | None = None
    repeats: int = Field(CONFIRM_REPEATS, ge=2)
    study: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=200)

    @model_validator(mode="before")
    @classmethod
    def _top_by_default(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("top") is None and data.get("per") is None:
            return {**data, "top": CONFIRM_TOP}
        return data

    @model_validator(mode="after")
    def _top_or_per(self) -> ConfirmConfig:
        if self.top is not None and self.per is not None:
            raise ValueError(f"give `top` or `per`, not both: got top={self.top}, per={self.per!r}")
        return self


def confirm_options(data: dict[str, Any]) -> ConfirmConfig:
    """`sweep confirm`'s options, validated as a study file's `confirm` section; a problem names its flag."""
    try:
        return ConfirmConfig(**{k: v for k, v in data.items() if v is not None})
    except ValidationError as e:
        flags = [p.replace("(top level): ", "").replace("study: ", "--name: ").replace("`top` or `per`", "--top or --per")
                 for p in validation_problems(e)]
        raise ConfigError("sweep confirm", [p if p.startswith(("give", "--")) else f"--{p}" for p in flags]) from None


# `layer`: the activation is its own layer after each linear layer; `inline`: it is passed to the
# linear layer as `activation=`, as some tutorials write it
Placement = Literal["layer", "inline"]


class _Model(_Member):
    """`model`: the family and its shape. `name` picks the family (a discriminated union,
    ModelConfig); `model: seed_cnn` is short for `{name: seed_cnn}`, and a model without a name is
    seed_cnn. Each family declares its own fields: its spec holds what its builder takes."""

    UNION = "model"

    def check_output(self, num_classes: int, labels: str, source: str) -> None:
        """Refuse, before anything is written, an output that cannot fit the loaded target."""
        # seed_cnn always ends in softmax, one unit per class

    def spec(self) -> dict[str, Any]:
        """What `sweep.build_model` takes as its `model` (with the activation's params)."""
        return self.model_dump(mode="json")


class SeedCnnConfig(_Model):
    """`model: seed_cnn`: the tutorial's CNN (sweep/models/cnn.py)."""

    name: Literal["seed_cnn"] = "seed_cnn"
    placement: Placement = "layer"


class MlpConfig(_Model):
    """`model: mlp`: Dense layers on flat features (sweep/models/mlp.py)."""

    name: Literal["mlp"]
    # the hidden Dense widths, and the output layer. `auto` builds it from the target (2 classes:
    # one sigmoid unit; more: softmax, one unit per class); `softmax`/`sigmoid` and `output_units`
    # say what the study expects, refused once the data shows it cannot fit
    hidden: list[Annotated[int, Field(gt=0)]] | None = Field(list(HIDDEN), min_length=1)
    output: Literal["auto", "softmax", "sigmoid"] | None = "auto"
    output_units: int | None = Field(None, gt=0)
    placement: Placement = "layer"

    def check_output(self, num_classes: int, labels: str, source: str) -> None:
        try:
            output_layer(num_classes, self.output or "auto", self.output_units, labels)
        except ValueError as e:
            raise ConfigError(source, [str(e)]) from None


ModelConfig = Annotated[Union[SeedCnnConfig, MlpConfig], Field(discriminator="name")]


def _names(*members: type[Strict]) -> tuple[str, ...]:
    return tuple(n for m in members for n in get_args(m.model_fields["name"].annotation))


class _Union(NamedTuple):
    """One of StudyConfig's discriminated unions, for its messages: pydantic puts the name given
    into an error's loc (dataset.mnist.target) and calls another member's field an extra input."""

    names: tuple[str, ...]
    owners: dict[str, tuple[str, ...]]  # a field only some members take -> those members' names

    @classmethod
    def of(cls, *members: type[Strict]) -> _Union:
        common = set.intersection(*(set(m.model_fields) for m in members))
        return cls(_names(*members), {f: _names(m) for m in members for f in m.model_fields if f not in common})


_UNIONS = {"dataset": _Union.of(ImageDatasetConfig, CsvDatasetConfig), "model": _Union.of(SeedCnnConfig, MlpConfig)}
DATASETS = _UNIONS["dataset"].names
MODELS = _UNIONS["model"].names


class StudyConfig(Strict):
    _source: str = PrivateAttr("study")  # file (or stored config) it came from, for messages

    study: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=200)
    dataset: DatasetConfig
    model: ModelConfig = SeedCnnConfig()
    training: TrainingConfig = TrainingConfig()
    search: SearchConfig
    diagnostics: DiagnosticsConfig = DiagnosticsConfig()
    tracking: TrackingConfig = TrackingConfig()
    confirm: ConfirmConfig | None = None

    @model_serializer(mode="wrap")
    def _confirm_when_set(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # a study without a `confirm` section is stored (and logged) as before it existed
        out = handler(self)
        if out.get("confirm") is None:
            out.pop("confirm", None)
        return out

    @model_validator(mode="before")
    @classmethod
    def _models_kept_as_they_were(cls, data: Any, info: ValidationInfo) -> Any:
        # a study stored before `tracking.keep_models` existed kept every trial's model; it goes on
        # doing so (nothing recorded is deleted by an upgrade) unless its file says otherwise
        if (info.context or {}).get("stored") and isinstance(data, dict) and "tracking" not in data:
            return {**data, "tracking": {"keep_models": "all"}}
        return data

    @model_validator(mode="before")
    @classmethod
    def _hyperband_budget(cls, data: Any) -> Any:
        # Hyperband's max_resource counts reported steps, and the objective reports one value
        # per epoch (steps 0 .. epochs-1), so a trial's full budget is training.epochs. Optuna's
        # "auto" finds the same number (last step + 1), but only once a trial has completed:
        # until then nothing is pruned, and the stored config would not say what was used.
        try:
            pruner = data["search"]["pruner"]
            pruner = {"name": pruner} if isinstance(pruner, str) else pruner
            if pruner.get("name") != "hyperband" or "max_resource" in pruner:
                return data
            training = data.get("training") or {}
            epochs = training.get("epochs", TrainingConfig.model_fields["epochs"].default)
        except (KeyError, TypeError, AttributeError):
            return data  # no pruner, or a shape pydantic reports
        if not isinstance(epochs, int) or epochs < 1:
            return data  # training.epochs is reported
        return {**data, "search": {**data["search"], "pruner": {**pruner, "max_resource": epochs}}}

    @field_validator("model", mode="before")
    @classmethod
    def _model_shorthand(cls, v: Any) -> Any:
        if isinstance(v, dict) and "name" not in v:
            return {"name": SeedCnnConfig.model_fields["name"].default, **v}
        return {"name": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _confirmable(self) -> StudyConfig:
        if self.confirm is None:
            return self
        if len(self.search.metrics) > 1:
            raise ValueError(f"confirm: a study of several metrics ({', '.join(self.search.metrics)}) has no "
                             "single ranking to take finalists from; remove `confirm` or optimise one metric")
        if self.search.repeats > 1:
            raise ValueError(f"confirm: every configuration already runs over {self.search.repeats} seeds here "
                             "(search.repeats), so `sweep best` tests them as they are; remove `confirm`")
        return self

    @model_validator(mode="after")
    def _metric_needs_validation(self) -> StudyConfig:
        for metric in self.search.metrics:
            if metric.startswith("val_") and self.dataset.validation_split == 0:
                raise ValueError(f"search.metric {metric!r} needs dataset.validation_split > 0")
        return self

    def to_json(self) -> str:
        return self.model_dump_json()

    @property
    def source(self) -> str:
        return self._source


def _field_path(loc: tuple[Any, ...]) -> str:
    # pydantic puts union member names ("FloatRange", "list[float]") and tags into loc; drop them
    parts = [str(p) for i, p in enumerate(loc)
             if not (isinstance(p, str) and ("[" in p or p[:1].isupper())) and not _is_tag(loc, i)]
    return ".".join(parts) if parts else "(top level)"


def _is_tag(loc: tuple[Any, ...], i: int) -> bool:
    """Whether loc[i] is the name of a member of a union, which pydantic put after the union's field."""
    return i > 0 and loc[i - 1] in _UNIONS and loc[i] in _UNIONS[loc[i - 1]].names


def _message(err: dict[str, Any]) -> str:
    msg = err["msg"].removeprefix("Value error, ")
    got = err.get("input")
    if err["type"] == "extra_forbidden":
        loc = err["loc"]
        owners = _UNIONS[loc[-3]].owners.get(loc[-1]) if len(loc) >= 3 and _is_tag(loc, len(loc) - 2) else None
        if owners:  # a field of another member of the union
            return f"applies to {loc[-3]} {' or '.join(map(repr, owners))} only, not {loc[-2]!r}; remove it"
        return f"unknown key {loc[-1]!r}; check the spelling against the documented study keys"
    if err["type"] in ("missing", "union_tag_not_found"):
        return "required field is missing"
    if err["type"] == "union_tag_invalid":  # an unknown name, said as a Literal field says it
        first, last = err["ctx"]["expected_tags"].rsplit(", ", 1)
        return f"Input should be {first} or {last}, got {got[_tag(err)]!r}"
    if err["type"] == "model_attributes_type":
        return f"Input should be a valid dictionary, got {got!r}"
    if err["type"] in ("value_error", "assertion_error") or isinstance(got, dict):
        return msg
    return f"{msg}, got {got!r}"


def _tag(err: dict[str, Any]) -> str:
    return str(err["ctx"]["discriminator"]).strip("'")  # pydantic quotes it: "'name'"


def _where(err: dict[str, Any]) -> str:
    """The field path of an error; a union's missing or unknown name is said at `name`."""
    if err["type"] in ("union_tag_not_found", "union_tag_invalid"):
        return _field_path((*err["loc"], _tag(err)))
    return _field_path(err["loc"])


# a dict given where a union also allows a list (or vice versa) fails the other member with a
# type error; it says nothing useful when the member of the right type has a real complaint
_TYPE_ONLY = {"list_type", "dict_type", "model_type", "model_attributes_type"}


def validation_problems(exc: ValidationError) -> list[str]:
    """One line per problem, its field path first (for sweep.settings too)."""
    errors = exc.errors()
    real = {_where(e) for e in errors if e["type"] not in _TYPE_ONLY}
    seen: dict[str, list[str]] = {}
    for err in errors:
        path = _where(err)
        if err["type"] in _TYPE_ONLY and path in real:
            continue
        seen.setdefault(path, [])
        m = _message(err)
        if m not in seen[path]:
            seen[path].append(m)
    out = []
    for path, msgs in seen.items():
        # a value failing every member of a union yields one message per member; keep them together
        out.append(f"{path}: {' | '.join(msgs)}")
    return out


def parse(data: Any, source: str, stored: bool = False) -> StudyConfig:
    """Validate an already-parsed mapping: a study file's content, or with `stored` a config
    stored with a study (which may hold fields an older sweep wrote and ignored)."""
    if not isinstance(data, dict):
        raise ConfigError(source, [f"expected a mapping of study keys, got {type(data).__name__}"])
    try:
        cfg = StudyConfig.model_validate(data, context={"stored": stored})
    except ValidationError as e:
        raise ConfigError(source, validation_problems(e)) from None
    cfg._source = source
    return cfg


def read_yaml(path: str | Path, what: str = "a study YAML file such as studies/quickstart.yaml") -> Any:
    """Parse a YAML file; the only place in `sweep` that does."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(str(path), [f"file not found; expected {what}"])
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(str(path), [f"{where}invalid YAML: {problem}"]) from None


def load(path: str | Path) -> StudyConfig:
    """Read and validate a study file, or the one study file in a folder (a Kubernetes ConfigMap
    mounted as a volume: `kubectl create configmap study --from-file=studies/x.yaml`)."""
    path = Path(path)
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and not p.name.startswith("."))
        if len(found) != 1:
            raise ConfigError(str(path), [f"expected a folder holding one study file (*.yaml), "
                                          f"found {len(found)}: {', '.join(p.name for p in found) or 'none'}"])
        path = found[0]
    return parse(read_yaml(path), str(path))


def from_json(text: str, source: str) -> StudyConfig:
    """A config stored with a study (see `sweep.runner.setup`), validated again on the way in."""
    return parse(json.loads(text), source, stored=True)
