"""The query API: read results back from the Optuna study (no TensorFlow, no training)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sweep import record as obj
from sweep.errors import SweepError
from sweep.models.activations import resolve_params
from sweep.record import load_study, stored_config
from sweep.storage import mask, resolve

if TYPE_CHECKING:
    import keras
    import optuna
    import pandas as pd

    from sweep.config import StudyConfig


def best_config(study: str, storage: str | None = None, tracking_uri: str | None = None) -> dict[str, Any]:
    """The best trial of `study` as a plain dict, enough to rebuild and retrain its model.

    Keys: study, trial, value, metric, direction, params (activation and its parameters),
    seed, mlflow_run_id, mlflow_model_uri, tracking_uri, model, input_shape, num_classes,
    training.

    A study of several metrics has no single best trial: for it this returns `pareto_front`,
    a dict whose `pareto` lists the Pareto-optimal trials.
    """
    stores = resolve(storage, tracking_uri)
    quick = _peek_best(study, stores.optuna)
    if quick is not None:
        best, metric, direction, model, training = quick
    else:
        s = load_study(study, storage)
        cfg = stored_config(s)
        if len(cfg.search.metrics) > 1:
            _has_complete(s)
            return _pareto(s, cfg, storage, tracking_uri)
        t = best_trial(s)
        best = {"number": t.number, "value": t.value, "params": t.params, "user_attrs": t.user_attrs}
        metric, direction, model, training = (cfg.search.metric, cfg.search.direction, cfg.model.spec(),
                                              cfg.training.model_dump())
    attrs = best["user_attrs"]
    return {
        "study": study,
        "trial": best["number"],
        "value": best["value"],
        "metric": metric,
        "direction": direction,
        "params": resolve_params(best["params"]),
        "seed": attrs.get(obj.SEED),
        "mlflow_run_id": attrs.get(obj.RUN_ID),
        "mlflow_model_uri": attrs.get(obj.MODEL_URI),
        "tracking_uri": mask(stores.tracking),
        "model": model,
        "input_shape": attrs.get("input_shape"),
        "num_classes": attrs.get("num_classes"),
        "test_accuracy": attrs.get("test_accuracy"),
        "training": training,
    }


def _peek_best(study: str, url: str) -> tuple[dict[str, Any], str, str, dict, dict] | None:
    """`sweep best` without opening Optuna's storage (sweep/peek.py): the best trial, the metric,
    its direction, the model and training sections, when the stored config is the one this
    version of sweep writes; None sends the caller through Optuna (messages, older configs)."""
    from sweep import peek

    best = peek.best(url, study)
    config = (best or {}).get("config") or {}
    metric = config.get("search", {}).get("metric")
    if not best or not isinstance(metric, str) or not isinstance(config.get("model"), dict) \
            or not isinstance(config.get("training"), dict) or "tracking" not in config:
        return None
    return best, metric, best["direction"], config["model"], config["training"]


def pareto_front(study: str, storage: str | None = None, tracking_uri: str | None = None) -> dict[str, Any]:
    """The Pareto front of `study`: Optuna's `best_trials`, each enough to rebuild its model.

    Keys: study, metrics, directions, pareto (per trial: trial, values {metric: value}, params,
    seed, test_accuracy, mean_epoch_seconds, mlflow_run_id, mlflow_model_uri; best first in the
    first metric), tracking_uri, model, input_shape, num_classes, training. For a study of one
    metric the front is its trial(s) with the best value.
    """
    s = load_study(study, storage)
    cfg = stored_config(s)
    _has_complete(s)
    return _pareto(s, cfg, storage, tracking_uri)


def best_trial(s: optuna.Study) -> optuna.trial.FrozenTrial:
    """The best trial of a study of one metric. Optuna's RDB storage finds it with one query
    (ordered by value); loading every trial first cost 7.8 s of `sweep best` on 10,000 trials."""
    try:
        return s.best_trial
    except ValueError:  # Optuna: "No trials are completed yet."
        raise SweepError(f"study {s.study_name!r} has no completed trial yet; run `sweep run` first") from None


def _has_complete(s: optuna.Study) -> None:
    from optuna.trial import TrialState

    if not s.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise SweepError(f"study {s.study_name!r} has no completed trial yet; run `sweep run` first")


def _pareto(s: optuna.Study, cfg: StudyConfig, storage: str | None, tracking_uri: str | None) -> dict[str, Any]:
    from sweep.analysis.pareto import members

    front = members(s, cfg.search.metrics, cfg.search.directions)
    first = front[0]["trial"]
    attrs = next(t.user_attrs for t in s.get_trials(deepcopy=False) if t.number == first)
    return {
        "study": s.study_name,
        "metrics": list(cfg.search.metrics),
        "directions": cfg.search.directions,
        "pareto": front,
        "tracking_uri": mask(resolve(storage, tracking_uri).tracking),
        "model": cfg.model.spec(),
        "input_shape": attrs.get("input_shape"),
        "num_classes": attrs.get("num_classes"),
        "training": cfg.training.model_dump(),
    }


def load_model(study: str, trial: int | None = None, storage: str | None = None,
               tracking_uri: str | None = None) -> keras.Model:
    """The Keras model a trial logged to MLflow, ready to predict: the best trial's by default.

    A logged model's URI (`models:/m-...`) names a model in one tracking store, so MLflow must be
    pointed at the study's store to load it; this does that for the call only, and first
    registers a custom activation the trial used (Keras loads only classes registered in the
    loading process). A study of several metrics has no single best: pass `trial`.
    """
    import mlflow

    from sweep.models import custom

    s = load_study(study, storage)
    cfg = stored_config(s)
    if trial is None:
        if len(cfg.search.metrics) > 1:
            raise SweepError(f"study {study!r} has several metrics and no single best trial; pass trial= "
                             "with one of its Pareto front (sweep.pareto_front)")
        t = best_trial(s)
    else:
        t = next((x for x in s.get_trials(deepcopy=False) if x.number == trial), None)
        if t is None:
            raise SweepError(f"study {study!r} has no trial {trial}; it has trials 0..{len(s.trials) - 1}")
    uri = t.user_attrs.get(obj.MODEL_URI)
    if not uri:
        raise SweepError(f"trial {t.number} of study {study!r} logged no model ({t.state.name}); "
                         "only complete trials have one")
    activation = t.params.get("activation")
    if custom.is_custom(activation):
        custom.register(activation)
    tracking = resolve(storage, tracking_uri).tracking
    before = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(tracking)
    try:
        return mlflow.keras.load_model(uri)
    except Exception as e:  # noqa: BLE001 - MlflowException, OSError, requests errors
        if "not found" in str(e) and cfg.tracking.keep_models != "all":
            raise SweepError(f"trial {t.number} of study {study!r} no longer has its model: only the "
                             f"{cfg.tracking.keep_models} best trials keep theirs (tracking.keep_models: "
                             f"{cfg.tracking.keep_models}; set it to `all` to keep every one)") from None
        raise SweepError(f"loading {uri} (trial {t.number} of {study!r}) from "
                         f"{mask(tracking)} failed: {mask(str(e).splitlines()[0]).rstrip('.')}. "
                         "Pass the tracking_uri the study was run with.") from None
    finally:
        mlflow.set_tracking_uri(before)


def promote(study: str, trial: int | None = None, storage: str | None = None,
            tracking_uri: str | None = None) -> dict[str, Any]:
    """Register the best trial's model (or trial `trial`'s) in MLflow's Model Registry as a version
    of the registered model named like the study, with the alias `best`: afterwards
    `mlflow.pyfunc.load_model("models:/STUDY@best")` loads it. A study does this itself when it
    completes; this is for any time (a trial of a Pareto front, or after a failed attempt).
    Returns what was registered: name, version, alias, trial, value (a dict by metric for a study
    of several), model_uri, source, changed, tracking_uri."""
    from mlflow import MlflowClient

    from sweep.tracking import registry

    s = load_study(study, storage)
    cfg = stored_config(s)
    tracking = resolve(storage, tracking_uri).tracking
    client = MlflowClient(tracking, registry_uri=tracking)
    try:
        version, changed, t = registry.promote_best(s, cfg.search.metrics, client, trial)
    except SweepError:
        raise
    except Exception as e:  # noqa: BLE001 - MlflowException, requests errors
        raise SweepError(f"registering the model of study {study!r} in {mask(tracking)} failed: "
                         f"{mask(str(e).splitlines()[0] if str(e) else type(e).__name__)}") from None
    values = dict(zip(cfg.search.metrics, t.values))
    return {"name": study, "version": int(version.version), "alias": registry.ALIAS, "trial": t.number,
            "value": t.values[0] if len(values) == 1 else values, "model_uri": f"models:/{study}@{registry.ALIAS}",
            "source": version.source, "changed": changed, "tracking_uri": mask(tracking)}


TABLE_COLUMNS = ("number", "state", "value", "activation", "leaky_alpha", "prelu_alpha_init", "prelu_shared_axes",
                 "seed", "worker", "mlflow_run_id", "fail_reason")


def trials_table(study: str, storage: str | None = None) -> pd.DataFrame:
    """`sweep trials`: the columns of `TABLE_COLUMNS` a study has, one row per trial. Read as
    columns from Optuna's tables (sweep/peek.py) where it can be, else from `trials()`."""
    import pandas as pd

    from sweep import peek

    read = peek.trials(resolve(storage).optuna, study, ("seed", "worker", "mlflow_run_id", "fail_reason"))
    rows = read[0] if read is not None else None
    if rows and all(t.values is None or len(t.values) == 1 for t in rows):
        df = pd.DataFrame([{"number": t.number, "state": t.state, "value": t.value, **t.params, **t.user_attrs}
                           for t in rows])
    else:  # no trial yet, or several metrics (Optuna's frame names a column per metric)
        df = trials(study, storage)
    return df[[c for c in TABLE_COLUMNS if c in df]]


def trials(study: str, storage: str | None = None) -> pd.DataFrame:
    """One row per trial: number, state, value, params (by name), seed, MLflow run id, times.
    A study of several metrics has a column per metric (Optuna's `values_<metric>`) for `value`."""
    s = load_study(study, storage)
    df = s.trials_dataframe()
    df = df.rename(columns=lambda c: c.removeprefix("params_").removeprefix("user_attrs_").removeprefix("values_"))
    if "state" in df:
        df["state"] = df["state"].astype(str)
    return df
