"""`search.pruner`: which Optuna pruner, with the arguments that pruner takes and no others."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from sweep.config.base import Strict

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
