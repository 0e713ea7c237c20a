"""The query API: read results back from the Optuna study (no TensorFlow, no training)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sweep import record as obj
from sweep.errors import SweepError
from sweep.models.activations import resolve_params
from sweep.record import load_study, stored_config
from sweep.storage import mask, resolve

if TYPE_CHECKING:
    import pandas as pd


def best_config(study: str, storage: str | None = None, tracking_uri: str | None = None) -> dict[str, Any]:
    """The best trial of `study` as a plain dict, enough to rebuild and retrain its model.

    Keys: study, trial, value, metric, direction, params (activation and its parameters),
    seed, mlflow_run_id, mlflow_model_uri, tracking_uri, model, input_shape, num_classes,
    training.
    """
    from optuna.trial import TrialState

    s = load_study(study, storage)
    cfg = stored_config(s)
    if not s.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise SweepError(f"study {study!r} has no completed trial yet; run `sweep run` first")
    best = s.best_trial
    attrs = best.user_attrs
    return {
        "study": study,
        "trial": best.number,
        "value": best.value,
        "metric": cfg.search.metric,
        "direction": cfg.search.direction,
        "params": resolve_params(best.params),
        "seed": attrs.get(obj.SEED),
        "mlflow_run_id": attrs.get(obj.RUN_ID),
        "mlflow_model_uri": attrs.get(obj.MODEL_URI),
        "tracking_uri": mask(resolve(storage, tracking_uri).tracking),
        "model": cfg.model.spec(),
        "input_shape": attrs.get("input_shape"),
        "num_classes": attrs.get("num_classes"),
        "test_accuracy": attrs.get("test_accuracy"),
        "training": cfg.training.model_dump(),
    }


def trials(study: str, storage: str | None = None) -> pd.DataFrame:
    """One row per trial: number, state, value, params (by name), seed, MLflow run id, times."""
    s = load_study(study, storage)
    df = s.trials_dataframe()
    df = df.rename(columns=lambda c: c.removeprefix("params_").removeprefix("user_attrs_"))
    if "state" in df:
        df["state"] = df["state"].astype(str)
    return df
