"""The study file's discriminated unions: `dataset` and `model`, one class per family."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, NamedTuple, Union, get_args

from pydantic import Field, field_validator, model_validator

from sweep.config.base import Strict
from sweep.errors import ConfigError
from sweep.models.mlp import HIDDEN, output_layer


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
