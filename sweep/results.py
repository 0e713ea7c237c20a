"""The query API: read results back from the Optuna study (no TensorFlow, no training)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from sweep import ranking
from sweep import record as obj
from sweep.runner import confirm
from sweep.errors import SweepError, first_line
from sweep.lifecycle import mlflow_tracking_uri
from sweep.models.activations import resolve_params
from sweep.record import load_study, stored_config
from sweep.storage import Stores, resolve
from sweep.urls import mask

if TYPE_CHECKING:
    import keras
    import optuna
    import pandas as pd

    from sweep.config import StudyConfig


ONE_SEED = ("one seed decided: every configuration ran once, so the best trial is as much the luckiest seed "
            "as the best configuration; `sweep confirm STUDY` trains the finalists again on fresh seeds to test it")
# the trial attributes best_config reads of every trial of a repeated study (sweep/peek.py reads only these)
BEST_ATTRS = (obj.SEED, obj.CONFIG_INDEX, obj.RUN_ID, obj.MODEL_URI, "input_shape", "num_classes", "test_accuracy")


def best_config(study: str, storage: str | Stores | None = None, tracking_uri: str | None = None) -> dict[str, Any]:
    """The best configuration of `study` as a plain dict, enough to rebuild and retrain its model.

    Keys: study, judged_by, trial, value, metric, direction, params (activation and its
    parameters), seed, mlflow_run_id, mlflow_model_uri, tracking_uri, model, input_shape,
    num_classes, training.

    Where every configuration ran over several seeds (`search.repeats` > 1), the best is the
    configuration with the best mean (`judged_by` "configuration", sweep/ranking.py): `value` is that
    mean, and the dict adds configuration, n, std, ci, seeds, values, the verdict against the
    others (verdict, distinguishable, tied_with, better_than, runner_up, judgement) and
    best_trial, the single best run. `trial`, `seed` and the MLflow ids are the representative
    repeat's, the one closest to the mean. Otherwise (`judged_by` "trial") it is the best trial,
    and `note` says that one seed decided.

    A search whose finalists were trained again on fresh seeds (`sweep confirm`) answers from that
    confirmation once it has complete runs (`judged_by` "confirmation"): the confirmed winner as
    above, plus confirmation (the study's name), search_trial and search_value (the winner's best
    run in the search), optimism (search value − confirmed mean, positive when the search
    flattered it) and finalists (each with its search and confirmed values).

    A study of several metrics has no single best trial: for it this returns `pareto_front`,
    a dict whose `pareto` lists the Pareto-optimal trials.
    """
    stores = resolve(storage, tracking_uri)
    confirmed = confirm.confirmation_of(study, stores)
    if confirmed is not None:
        out = _confirmed(study, confirmed, stores)
        if out is not None:
            return out
    quick = _peek_best(study, stores.optuna)
    if quick is not None and quick[5]:  # repeated: every trial's value, read as columns where it can be
        from sweep import peek

        read = peek.trials(stores.optuna, study, BEST_ATTRS)
        if read is not None and read[1] is not None:
            return _by_configuration(study, read[0], *quick[1:5], stores)
    if quick is not None and not quick[5]:
        best, metric, direction, model, training, _ = quick
    else:
        s = load_study(study, stores)
        cfg = stored_config(s)
        if len(cfg.search.metrics) > 1:
            _has_complete(s)
            return _pareto(s, cfg, stores)
        if ranking.repeated(cfg.search):
            return _by_configuration(study, s.get_trials(deepcopy=False), cfg.search.metric, cfg.search.direction,
                                     cfg.model.spec(), cfg.training.model_dump(), stores)
        t = best_trial(s)
        best = {"number": t.number, "value": t.value, "params": t.params, "user_attrs": t.user_attrs}
        metric, direction, model, training = (cfg.search.metric, cfg.search.direction, cfg.model.spec(),
                                              cfg.training.model_dump())
    attrs = best["user_attrs"]
    return {
        "study": study,
        "judged_by": "trial",
        "note": ONE_SEED,
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


def _confirmed(study: str, confirmation: str, stores: Stores) -> dict[str, Any] | None:
    """`best_config` of a search from its confirmation; None while the confirmation has no complete run."""
    from sweep import peek

    try:
        out = best_config(confirmation, stores)
    except SweepError:
        return None
    def every(name: str) -> list[Any]:
        read = peek.trials(stores.optuna, name, (obj.SEED, obj.CONFIG_INDEX))
        return read[0] if read is not None else load_study(name, stores).get_trials(deepcopy=False)

    finalists = confirm.finalist_rows(every(study), every(confirmation), out["direction"])
    winner = finalists[0]
    out.update({"study": study, "judged_by": "confirmation", "confirmation": confirmation,
                "search_trial": winner["search_trial"], "search_value": winner["search_value"],
                "optimism": winner["optimism"], "finalists": finalists})
    return out


def _by_configuration(study: str, trials: list[Any], metric: str, direction: str, model: dict, training: dict,
                      stores: Any) -> dict[str, Any]:
    """`best_config` of a repeated study: the configuration with the best mean, judged against the
    others (sweep/ranking.py), its model the representative repeat's."""
    from sweep import stats

    configs = ranking.configurations(trials)
    if not configs:
        raise SweepError(f"study {study!r} has no completed trial yet; run `sweep run` first")
    j = ranking.judge(configs, metric, direction)
    best = j.best
    by_number = {t.number: t for t in trials}
    rep = by_number[best.representative]
    attrs = rep.user_attrs
    sign = 1.0 if direction == "maximize" else -1.0
    single = max((t for t in trials if t.number in {n for c in configs for n in c.trials}),
                 key=lambda t: (sign * t.values[0], -t.number))
    single_label = next(c.label for c in configs if single.number in c.trials)
    lo, hi = stats.mean_ci(best.values, j.confidence)
    out = j.to_dict()
    runner_up = out["versus"][0] if out["versus"] else None
    return {
        "study": study,
        "judged_by": "configuration",
        "configuration": best.label,
        "trial": rep.number,
        "value": best.mean,
        "metric": metric,
        "direction": direction,
        "params": best.params,
        "n": best.n,
        "std": None if math.isnan(best.std) else best.std,
        "ci": None if math.isnan(lo) else [lo, hi],
        "confidence": j.confidence,
        "seeds": list(best.seeds),
        "values": list(best.values),
        "verdict": j.verdict,
        "distinguishable": out["distinguishable"],
        "tied_with": j.tied_with,
        "better_than": j.better_than,
        "runner_up": runner_up,
        "representative": {"trial": rep.number, "seed": attrs.get(obj.SEED), "value": float(rep.values[0]),
                           "rule": ranking.REPRESENTATIVE},
        "best_trial": {"trial": single.number, "configuration": single_label, "seed": single.user_attrs.get(obj.SEED),
                       "value": float(single.values[0])},
        "judgement": out,
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


def _peek_best(study: str, url: str) -> tuple[dict[str, Any], str, str, dict, dict, bool] | None:
    """`sweep best` without opening Optuna's storage (sweep/peek.py): the best trial, the metric,
    its direction, the model and training sections, and whether configurations are repeated over
    seeds (then every trial is read), when the stored config is the one this version of sweep
    writes; None sends the caller through Optuna (messages, older configs)."""
    from sweep import peek

    best = peek.best(url, study)
    config = (best or {}).get("config") or {}
    metric = config.get("search", {}).get("metric")
    if not best or not isinstance(metric, str) or not isinstance(config.get("model"), dict) \
            or not isinstance(config.get("training"), dict) or "tracking" not in config:
        return None
    repeats = config["search"].get("repeats", 1)
    return best, metric, best["direction"], config["model"], config["training"], \
        isinstance(repeats, int) and repeats > 1


def pareto_front(study: str, storage: str | Stores | None = None, tracking_uri: str | None = None) -> dict[str, Any]:
    """The Pareto front of `study`: Optuna's `best_trials`, each enough to rebuild its model.

    Keys: study, metrics, directions, pareto (per trial: trial, values {metric: value}, params,
    seed, test_accuracy, mean_epoch_seconds, mlflow_run_id, mlflow_model_uri; best first in the
    first metric), tracking_uri, model, input_shape, num_classes, training. For a study of one
    metric the front is its trial(s) with the best value.
    """
    stores = resolve(storage, tracking_uri)
    s = load_study(study, stores)
    cfg = stored_config(s)
    _has_complete(s)
    return _pareto(s, cfg, stores)


def best_trial(s: optuna.Study) -> optuna.trial.FrozenTrial:
    """The best trial of a study of one metric. Optuna's RDB storage finds it with one query
    (ordered by value); loading every trial first cost 7.8 s of `sweep best` on 10,000 trials."""
    try:
        return s.best_trial
    except ValueError:  # Optuna: "No trials are completed yet."
        raise SweepError(f"study {s.study_name!r} has no completed trial yet; run `sweep run` first") from None


def _representative(s: optuna.Study, cfg: StudyConfig) -> optuna.trial.FrozenTrial:
    """The representative repeat of a repeated study's best configuration (sweep/ranking.py)."""
    trials = s.get_trials(deepcopy=False)
    best = ranking.best_configuration(trials, cfg.search.direction)
    if best is None:
        raise SweepError(f"study {s.study_name!r} has no completed trial yet; run `sweep run` first")
    return next(t for t in trials if t.number == best.representative)


def _has_complete(s: optuna.Study) -> None:
    from optuna.trial import TrialState

    if not s.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise SweepError(f"study {s.study_name!r} has no completed trial yet; run `sweep run` first")


def _pareto(s: optuna.Study, cfg: StudyConfig, stores: Stores) -> dict[str, Any]:
    from sweep.analysis.pareto import members

    front = members(s, cfg.search.metrics, cfg.search.directions)
    first = front[0]["trial"]
    attrs = next(t.user_attrs for t in s.get_trials(deepcopy=False) if t.number == first)
    return {
        "study": s.study_name,
        "metrics": list(cfg.search.metrics),
        "directions": cfg.search.directions,
        "pareto": front,
        "tracking_uri": mask(stores.tracking),
        "model": cfg.model.spec(),
        "input_shape": attrs.get("input_shape"),
        "num_classes": attrs.get("num_classes"),
        "training": cfg.training.model_dump(),
    }


def load_model(study: str, trial: int | None = None, storage: str | Stores | None = None,
               tracking_uri: str | None = None) -> keras.Model:
    """The Keras model a trial logged to MLflow, ready to predict: by default the best's (where
    configurations are repeated over seeds, the best configuration's representative repeat).

    A logged model's URI (`models:/m-...`) names a model in one tracking store, so MLflow must be
    pointed at the study's store to load it; this does that for the call only. A model with a
    custom activation loads through the loader it carries (sweep/tracking/model_code.py), from any
    working directory. A study of several metrics has no single best: pass `trial`.
    """
    import mlflow

    from sweep.models import custom

    stores = resolve(storage, tracking_uri)  # once: the confirmation, the study and the model's store
    if trial is None and (confirmed := confirm.confirmation_of(study, stores)) is not None \
            and best_config(study, stores).get("judged_by") == "confirmation":
        return load_model(confirmed, None, stores)  # the confirmed winner's model
    s = load_study(study, stores)
    cfg = stored_config(s)
    if trial is None:
        if len(cfg.search.metrics) > 1:
            raise SweepError(f"study {study!r} has several metrics and no single best trial; pass trial= "
                             "with one of its Pareto front (sweep.pareto_front)")
        t = _representative(s, cfg) if ranking.repeated(cfg.search) else best_trial(s)
    else:
        t = next((x for x in s.get_trials(deepcopy=False) if x.number == trial), None)
        if t is None:
            raise SweepError(f"study {study!r} has no trial {trial}; it has trials 0..{len(s.trials) - 1}")
    uri = t.user_attrs.get(obj.MODEL_URI)
    if not uri:
        raise SweepError(f"trial {t.number} of study {study!r} logged no model ({t.state.name}); "
                         "only complete trials have one")
    activation = t.params.get("activation")
    tracking = stores.tracking
    try:
        with mlflow_tracking_uri(tracking):  # MLflow's loaders take no URI: they read its global one
            if custom.is_custom(activation):
                from mlflow import pyfunc
                from mlflow.models import get_model_info

                if pyfunc.CODE in get_model_info(uri).flavors[pyfunc.FLAVOR_NAME]:
                    # the model carries its activation's code and loader (sweep/tracking/model_code.py)
                    return pyfunc.load_model(uri).get_raw_model()
                custom.register(activation)  # logged before models carried it: from the working directory
            return mlflow.keras.load_model(uri)
    except custom.CustomActivationError:
        raise  # its own line, naming the file (not a model deleted by keep_models)
    except Exception as e:  # noqa: BLE001 - MlflowException, OSError, requests errors
        if "not found" in str(e) and cfg.tracking.keep_models != "all":
            raise SweepError(f"trial {t.number} of study {study!r} no longer has its model: only the "
                             f"{cfg.tracking.keep_models} best trials keep theirs (tracking.keep_models: "
                             f"{cfg.tracking.keep_models}; set it to `all` to keep every one)") from None
        raise SweepError(f"loading {uri} (trial {t.number} of {study!r}) from "
                         f"{mask(tracking)} failed: {mask(first_line(e)).rstrip('.')}. "
                         "Pass the tracking_uri the study was run with.") from None


def promote(study: str, trial: int | None = None, storage: str | Stores | None = None,
            tracking_uri: str | None = None) -> dict[str, Any]:
    """Register the best trial's model (or trial `trial`'s) in MLflow's Model Registry as a version
    of the registered model named like the study, with the alias `best`: afterwards
    `mlflow.pyfunc.load_model("models:/STUDY@best")` loads it. A study does this itself when it
    completes; this is for any time (a trial of a Pareto front, or after a failed attempt).
    Where configurations are repeated over seeds, the best is the configuration with the best
    mean, and its representative repeat's model is registered (sweep/ranking.py).
    Returns what was registered: name, version, alias, trial, value (a dict by metric for a study
    of several), model_uri, source, changed, tracking_uri, configuration (repeated studies)."""
    from mlflow import MlflowClient

    from sweep.tracking import registry

    stores = resolve(storage, tracking_uri)
    s = load_study(study, stores)
    cfg = stored_config(s)
    tracking = stores.tracking
    client = MlflowClient(tracking, registry_uri=tracking)
    try:
        version, changed, t = registry.promote_best(s, cfg.search, client, trial)
    except SweepError:
        raise
    except Exception as e:  # noqa: BLE001 - MlflowException, requests errors
        raise SweepError(f"registering the model of study {study!r} in {mask(tracking)} failed: "
                         f"{mask(first_line(e))}") from None
    values = dict(zip(cfg.search.metrics, t.values))
    return {"name": study, "version": int(version.version), "alias": registry.ALIAS, "trial": t.number,
            "value": t.values[0] if len(values) == 1 else values, "model_uri": f"models:/{study}@{registry.ALIAS}",
            "source": version.source, "changed": changed, "tracking_uri": mask(tracking),
            "configuration": (version.tags or {}).get("sweep.configuration")}


TABLE_COLUMNS = ("number", "state", "value", "activation", "leaky_alpha", "prelu_alpha_init", "prelu_shared_axes",
                 "seed", "worker", "mlflow_run_id", "fail_reason")


def trials_table(study: str, storage: str | Stores | None = None) -> pd.DataFrame:
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


def trials(study: str, storage: str | Stores | None = None) -> pd.DataFrame:
    """One row per trial: number, state, value, params (by name), seed, MLflow run id, times.
    A study of several metrics has a column per metric (Optuna's `values_<metric>`) for `value`."""
    s = load_study(study, storage)
    df = s.trials_dataframe()
    if s.metric_names and len(s.metric_names) == 1:  # Optuna names one named metric's column value_<metric>
        df = df.rename(columns={f"value_{s.metric_names[0]}": "value"})
    df = df.rename(columns=lambda c: c.removeprefix("params_").removeprefix("user_attrs_").removeprefix("values_"))
    if "state" in df:
        df["state"] = df["state"].astype(str)
    return df
