"""sweep: which activation should this network use, and is the difference real?

Optuna studies over activations (ReLU, Leaky ReLU, PReLU, ...) training Keras models, tracked
in MLflow. TensorFlow is imported only when a model is built or trained.

The public names are imported on first use (PEP 562): `sweep --help` and the read-only commands
import `sweep.cli`, and through this package, without paying for pydantic, NumPy or Optuna.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

# public name -> (module, attribute)
_PUBLIC = {
    "ConfigError": ("sweep.errors", "ConfigError"),
    "ServiceError": ("sweep.errors", "ServiceError"),
    "SweepError": ("sweep.errors", "SweepError"),
    "StudyConfig": ("sweep.config", "StudyConfig"),
    "load_config": ("sweep.config", "load"),
    "best_config": ("sweep.results", "best_config"),
    "load_model": ("sweep.results", "load_model"),
    "pareto_front": ("sweep.results", "pareto_front"),
    "promote": ("sweep.results", "promote"),
    "trials": ("sweep.results", "trials"),
    "build_model": ("sweep.models", "build_model"),
    "compare": ("sweep.analysis.compare", "compare"),
    "report": ("sweep.analysis.report", "report"),
    "run": ("sweep.runner.study", "run"),
}

__all__ = sorted(_PUBLIC)

if TYPE_CHECKING:
    from sweep.analysis.compare import compare
    from sweep.analysis.report import report
    from sweep.config import StudyConfig, load as load_config
    from sweep.errors import ConfigError, ServiceError, SweepError
    from sweep.models import build_model
    from sweep.results import best_config, load_model, pareto_front, promote, trials
    from sweep.runner.study import run


def __getattr__(name: str) -> Any:
    try:
        module, attr = _PUBLIC[name]
    except KeyError:
        raise AttributeError(f"module 'sweep' has no attribute {name!r}") from None
    value = getattr(import_module(module), attr)
    globals()[name] = value  # once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
