"""The best trial's model in the MLflow Model Registry: one registered model per study, alias `best`.

MLflow's own advice for "the model a sweep found" is one registered model whose alias names the
current choice (mlflow/mlflow #10530, #1735): each promotion registers the trial's logged model as
a new version of the registered model named like the study, tagged with the trial number, its
params, metric and value, and moves the alias `best` to it. `models:/STUDY@best` then always loads
the study's best model, and the versions keep the history of what was promoted when.
Promoting the trial the alias already points at does nothing, so every worker of a pool may
promote as it finishes.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from sweep.errors import SweepError, first_line
from sweep.lifecycle import mlflow_tracking_uri

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion
    from optuna.trial import FrozenTrial

    from sweep.config import SearchConfig

log = logging.getLogger(__name__)

ALIAS = "best"
TRIAL_TAG = "sweep.trial"


def current(client: MlflowClient, name: str) -> ModelVersion | None:
    """The version the alias points at, or None (no registered model or no alias yet)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, ALIAS)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def registered_model_ids(client: MlflowClient, name: str) -> set[str]:
    """The logged models that some version of `name` was registered from (their files must stay)."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return set()
        raise
    # MLflow 3.17 returns model_id None on versions read back (get, search, by alias) though
    # create_model_version was given it; the source, `models:/m-...`, names the model either way.
    # Reading model_id alone left every registered model unprotected (keep_models deleted them)
    return {v.model_id or _logged_model_id(v.source) for v in versions} - {None}


def _logged_model_id(source: str | None) -> str | None:
    """`m-...` of a version's source `models:/m-...`; None for any other source."""
    return source.removeprefix("models:/").split("/")[0] if source and source.startswith("models:/m-") else None


def promote(client: MlflowClient, study: str, trial: FrozenTrial, model_uri: str, metrics: list[str],
            run_id: str | None, extra_tags: dict[str, str] | None = None) -> tuple[ModelVersion, bool]:
    """Register `trial`'s model (`model_uri`, `models:/m-...`) as a version of the registered model
    `study` and point the alias `best` at it. Returns (the version, whether anything changed)."""
    from mlflow.exceptions import MlflowException

    now = current(client, study)
    if now is not None and now.tags.get(TRIAL_TAG) == str(trial.number) and now.source == model_uri:
        return now, False
    try:
        client.create_registered_model(
            study, tags={"sweep.study": study},
            description=f"The best model of sweep study {study!r}: alias @{ALIAS} moves to each better trial.")
    except MlflowException as e:
        if e.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    tags: dict[str, Any] = {TRIAL_TAG: str(trial.number), "sweep.metric": ",".join(metrics)}
    values = trial.values or []  # `trial.value` raises for a trial of several metrics
    tags.update({f"sweep.value.{m}": repr(float(v)) for m, v in zip(metrics, values)})
    if len(values) == 1:
        tags["sweep.value"] = repr(float(values[0]))
    tags.update({f"sweep.param.{k}": str(v) for k, v in trial.params.items()})
    tags.update(extra_tags or {})
    for k in ("test_accuracy", "test_loss"):
        if trial.user_attrs.get(k) is not None:
            tags[f"sweep.{k}"] = repr(float(trial.user_attrs[k]))
    model_id = _logged_model_id(model_uri)
    try:
        # MLflow's own database registry finds a `models:/m-...` source through the global tracking
        # URI, not this client's (mlflow/store/model_registry/sqlalchemy_store.py, a TODO there)
        with mlflow_tracking_uri(client.tracking_uri):
            version = client.create_model_version(study, source=model_uri, run_id=run_id, tags=tags,
                                                  model_id=model_id)
    except MlflowException as e:
        raise SweepError(f"registering the model of trial {trial.number} ({model_uri}) as {study!r} failed: "
                         f"{first_line(e)}") from None
    client.set_registered_model_alias(study, ALIAS, version.version)
    log.debug("registered model %s version %s (trial %d, %s) is now @%s", study, version.version,
             trial.number, ", ".join(f"{m}={v}" for m, v in zip(metrics, values)), ALIAS)
    return version, True


def promote_best(study: Any, search: SearchConfig, client: MlflowClient, trial: int | None = None
                 ) -> tuple[ModelVersion, bool, FrozenTrial]:
    """Promote the study's best (or trial number `trial`): its logged model becomes
    `models:/STUDY@best`. Where configurations are repeated over seeds, the best is the
    configuration with the best mean, and its representative repeat's model is registered
    (sweep/ranking.py), tagged with the configuration, its mean and n. A study of several metrics
    has no single best: name a trial."""
    from optuna.trial import TrialState

    from sweep import ranking
    from sweep.record import CONFIRMED_BY, MODEL_URI, RUN_ID
    from sweep.tracking.describe import MODEL_URI_TAG

    name = study.study_name
    extra: dict[str, str] = {}
    if trial is None and study.user_attrs.get(CONFIRMED_BY):
        # a search whose finalists were trained again on fresh seeds: @best is the confirmed winner
        study, search, extra = _confirmation(study, search)
    metrics = list(search.metrics)
    if trial is None and ranking.repeated(search):
        best = ranking.best_configuration(study.get_trials(deepcopy=False), search.direction)
        if best is None:
            raise SweepError(f"study {name!r} has no complete trial yet: nothing to promote")
        trial = best.representative
        extra = {**extra, "sweep.configuration": best.label, "sweep.mean": repr(best.mean), "sweep.n": str(best.n),
                 "sweep.representative": ranking.REPRESENTATIVE}
    if trial is None:
        if len(metrics) > 1:
            raise SweepError(f"study {name!r} has several metrics and no single best trial; pass --trial "
                             "with one of its Pareto front (sweep best shows it)")
        try:
            t = study.best_trial  # one query in Optuna's RDB storage, not every trial
        except ValueError:
            raise SweepError(f"study {name!r} has no complete trial yet: nothing to promote") from None
    else:
        t = next((x for x in study.get_trials(deepcopy=False) if x.number == trial), None)
        if t is None or t.state != TrialState.COMPLETE:
            state = "no such trial" if t is None else t.state.name
            raise SweepError(f"study {name!r} trial {trial}: only a complete trial can be promoted ({state})")
    run_id = t.user_attrs.get(RUN_ID)
    uri = t.user_attrs.get(MODEL_URI)
    if not uri and run_id:
        # the upload outlasted the trial's wait: the run's tag has the URI
        uri = client.get_run(run_id).data.tags.get(MODEL_URI_TAG)
    if not uri:
        raise SweepError(f"trial {t.number} of study {name!r} has no logged model to register")
    version, changed = promote(client, name, t, uri, metrics, run_id, extra)
    return version, changed, t


def _confirmation(search_study: Any, search: SearchConfig) -> tuple[Any, SearchConfig, dict[str, str]]:
    """The study that confirms `search_study` (same storage) and its search config, once it has a
    complete run; else the search itself."""
    import optuna
    from optuna.trial import TrialState

    from sweep.record import CONFIRMED_BY, stored_config

    name = search_study.user_attrs[CONFIRMED_BY]
    try:
        confirmation = optuna.load_study(study_name=name, storage=search_study._storage)
    except KeyError:
        return search_study, search, {}
    if not confirmation.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return search_study, search, {}
    return confirmation, stored_config(confirmation).search, {"sweep.confirmed_in": name}
