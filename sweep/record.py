"""What a study records in Optuna, and reading it back by name.

Optuna is the record: the validated config and the MLflow parent run id live on the study, and
each trial carries what its MLflow run should hold, so MLflow can always be rebuilt from it
(`sweep sync`). These names are shared by the runner that writes them and every reader.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sweep.errors import SweepError
from sweep.storage import ENV_OPTUNA, Stores, optuna_storage, resolve
from sweep.urls import mask, sqlite_path

if TYPE_CHECKING:
    import optuna

    from sweep.config import StudyConfig

# study user attributes
CONFIG_ATTR = "sweep.config"
PARENT_ATTR = "sweep.mlflow_parent_run_id"
# trials the stored config wants done (sweep.runner.worker.target), stored beside it so `sweep
# status` needs neither pydantic nor the plan to say "7/20 done" (sweep/peek.py)
TARGET_ATTR = "sweep.target"
# a search and the study that re-trains its finalists on fresh seeds (sweep confirm), each naming
# the other; the same names tag their MLflow parent runs
CONFIRMS = "sweep.confirms"  # on the confirmation: the search's name
CONFIRMED_BY = "sweep.confirmed_by"  # on the search: the confirmation's name

# trial user attributes
SEED = "seed"
REPEAT = "repeat"
CONFIG_INDEX = "config_index"
WORKER = "worker"
RUN_ID = "mlflow_run_id"
MODEL_URI = "mlflow_model_uri"
FAIL_REASON = "fail_reason"
INTERRUPTED = "interrupted"  # Ctrl-C or SIGTERM: run again on resume
MLFLOW_PARAMS = "mlflow_params"  # exactly the params of the trial's MLflow run
EPOCH_METRICS = "epoch_metrics"  # one dict of Keras logs per finished epoch
FINAL_METRICS = ("test_accuracy", "test_loss", "mean_epoch_seconds")
# written by sweep before 2026-11: a trial pruned untrained because another worker took the
# last planned one; the worker loop no longer creates them, readers still skip them
SURPLUS = "surplus"


def counts_as_done(state: str, interrupted: Any) -> bool:
    """Whether a finished trial took its place in the study for good (unless a retry superseded
    it, `sweep.runner.worker.done`): COMPLETE, PRUNED, or FAIL not interrupted."""
    return state in ("COMPLETE", "PRUNED") or (state == "FAIL" and not interrupted)


def state_name(t: Any) -> str:
    """COMPLETE, RUNNING, ...: an Optuna `TrialState`'s name, or a `sweep.peek.Brief`'s string."""
    return getattr(t.state, "name", t.state)


def name_metrics(study: optuna.Study, metrics: list[str]) -> None:
    """Set Optuna's metric names to the study's metrics (`val_accuracy`, or one per objective), so
    optuna-dashboard, `optuna best-trial`, Optuna's plots and `trials_dataframe` say them rather
    than "Objective 0". Written only when they differ: a study made before sweep named them gets
    them when it next runs."""
    import warnings

    import optuna

    if study.metric_names != list(metrics):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(metrics))


def load_study(name: str, storage: str | Stores | None = None) -> optuna.Study:
    """An existing study by name, or a SweepError naming the studies that do exist."""
    import optuna

    stores = resolve(storage=storage)
    sqlite_file = sqlite_path(stores.optuna)
    if sqlite_file is not None and not sqlite_file.is_file():
        # opening it would create an empty database: a typo must not leave files behind
        raise SweepError(
            f"no Optuna storage at {sqlite_file} (so no study {name!r}); run `sweep run STUDY_FILE` "
            f"here first, or pass --storage (or set {ENV_OPTUNA}) to where the study lives."
        )
    rdb = optuna_storage(stores.optuna)
    try:
        return optuna.load_study(study_name=name, storage=rdb)
    except KeyError:
        names = sorted(s.study_name for s in optuna.get_all_study_summaries(rdb))
        raise SweepError(
            f"no study named {name!r} in {mask(stores.optuna)}; studies there: "
            f"{', '.join(names) or 'none'}. Pass --storage to look elsewhere."
        ) from None


def stored_config(study: optuna.Study) -> StudyConfig:
    raw = study.user_attrs.get(CONFIG_ATTR)
    if raw is None:
        raise SweepError(f"study {study.study_name!r} was not created by sweep (no stored config)")
    return parse_stored(raw, study.study_name)


def parse_stored(raw: dict, study: str) -> StudyConfig:
    """A config stored with a study (as Optuna or sweep.peek read it), validated again."""
    from sweep import config as config_mod

    return config_mod.parse(raw, f"study {study!r} (stored config)", stored=True)
