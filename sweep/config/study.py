"""The whole study file (StudyConfig, its other sections) and how one is read: YAML, stored JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import (
    Field,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from sweep.config.base import Strict
from sweep.config.families import DatasetConfig, ModelConfig, SeedCnnConfig
from sweep.config.problems import validation_problems
from sweep.config.space import SearchConfig
from sweep.errors import ConfigError


class TrainingConfig(Strict):
    epochs: int = Field(25, gt=0)
    batch_size: int = Field(250, gt=0)
    optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = "adam"
    learning_rate: float = Field(0.001, gt=0.0)


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
