"""Study files: the one package that reads YAML, validating it into pydantic models.

Every problem is reported at once with its field path (`search.space.leaky_alpha.low: ...`);
no raw dict travels past this package. By job: `study` (the whole file, read from YAML or stored
JSON), `space` (the `search` section), `pruner` (`search.pruner`), `families` (the `dataset` and
`model` unions), `problems` (a ValidationError as lines), `base` (what they share).
"""

from __future__ import annotations

from sweep.config.base import METRICS, MetricName, Strict, direction_of
from sweep.config.families import (DATASETS, MODELS, CsvDatasetConfig, DatasetConfig, ImageDatasetConfig,
                                   MlpConfig, ModelConfig, Placement, SeedCnnConfig)
from sweep.config.problems import validation_problems
from sweep.config.pruner import PRUNER_FIELDS, PrunerConfig
from sweep.config.space import (ActivationName, AlphaInit, FloatRange, SearchConfig, SharedAxes, SpaceConfig,
                                TrialConfig)
from sweep.config.study import (CONFIRM_REPEATS, CONFIRM_TOP, KEEP_MODELS_DEFAULT, ConfirmConfig,
                                DiagnosticsConfig, StudyConfig, TrackingConfig, TrainingConfig, confirm_options,
                                from_json, load, parse, read_yaml)
from sweep.errors import ConfigError  # what parse and load raise, as sweep.config.ConfigError

__all__ = [
    "CONFIRM_REPEATS", "CONFIRM_TOP", "DATASETS", "KEEP_MODELS_DEFAULT", "METRICS", "MODELS", "PRUNER_FIELDS",
    "ActivationName", "AlphaInit", "ConfigError", "ConfirmConfig", "CsvDatasetConfig", "DatasetConfig",
    "DiagnosticsConfig", "FloatRange", "ImageDatasetConfig", "MetricName", "MlpConfig", "ModelConfig", "Placement",
    "PrunerConfig", "SearchConfig", "SeedCnnConfig", "SharedAxes", "SpaceConfig", "Strict", "StudyConfig",
    "TrackingConfig", "TrainingConfig", "TrialConfig", "confirm_options", "direction_of", "from_json", "load",
    "parse", "read_yaml", "validation_problems",
]
