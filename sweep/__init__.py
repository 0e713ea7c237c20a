"""sweep: which activation should this network use, and is the difference real?

Optuna studies over activations (ReLU, Leaky ReLU, PReLU, ...) training Keras models, tracked
in MLflow. TensorFlow is imported only when a model is built or trained.
"""

from __future__ import annotations

from sweep.analysis.compare import compare
from sweep.analysis.report import report
from sweep.config import StudyConfig, load as load_config
from sweep.errors import ConfigError, ServiceError, SweepError
from sweep.models import build_model
from sweep.results import best_config, load_model, pareto_front, trials
from sweep.runner.study import run

__all__ = [
    "ConfigError",
    "ServiceError",
    "StudyConfig",
    "SweepError",
    "best_config",
    "build_model",
    "compare",
    "load_config",
    "load_model",
    "pareto_front",
    "report",
    "run",
    "trials",
]
