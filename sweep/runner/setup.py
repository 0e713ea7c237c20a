"""A study set up once, before any worker trains: validated, both stores opened, its MLflow parent
run made, the trials of dead workers failed, its plan queued (sweep/runner/resume.py).

The validated config and the MLflow parent run id live with the Optuna study (user attributes),
so a study can be resumed, or joined by another worker, from its name and storage URL alone.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from sweep import config as config_mod
from sweep import search
from sweep.record import CONFIG_ATTR, PARENT_ATTR, TARGET_ATTR, load_study, name_metrics, stored_config
from sweep.runner import worker
from sweep.runner.resume import enqueue_plan, open_study
from sweep.storage import Stores, check_separate, check_tracking, optuna_storage, study_lock, write_ahead
from sweep.tracking import sync
from sweep.tracking.runs import Tracker
from sweep.urls import SQL_BACKENDS, scheme

if TYPE_CHECKING:
    import optuna

    from sweep.config import StudyConfig
    from sweep.settings import WorkerSettings
    from sweep.runner.liveness import ResilientRDBStorage

log = logging.getLogger(__name__)
T = TypeVar("T")

@dataclass
class Prepared:
    """A study ready for workers: its config, the Optuna study and its MLflow side."""

    cfg: StudyConfig
    stores: Stores
    study: optuna.Study
    rdb: ResilientRDBStorage
    tracker: Tracker
    parent: str
    configs: list[dict[str, Any]] | None  # the explicit plan, or None for sampled search
    todo: int  # trials still wanted by the study as a whole
    workers: WorkerSettings


def open_storage(url: str, ws: WorkerSettings) -> ResilientRDBStorage:
    """The Optuna storage a worker uses: heartbeats on, outages ridden. What happens to a stale
    trial is set once MLflow is open too (`prepare`)."""
    import warnings

    import optuna

    from sweep.runner.liveness import ResilientRDBStorage

    with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna since 2.9
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        rdb = optuna_storage(url, ResilientRDBStorage, heartbeat_interval=ws.heartbeat_interval,
                             grace_period=ws.grace_period)
    rdb.outage_seconds = ws.storage_outage
    return rdb


def warm(stores: Stores) -> None:
    """Import what setting a study up uses, before the study lock: every worker that joins takes
    that lock in turn, and an import under it held up all the others. MLflow's own import (1-2 s),
    and, for a database as its store, MLflow's SQL store module, which `import mlflow` does not
    load and which declares its ORM classes as it is imported (0.6 s of a joining worker's 0.8 s
    under the lock on a 2-core EPYC). A pool's worker does it before its start gate
    (sweep/runner/study.py), while the study is still being set up."""
    import mlflow  # noqa: F401

    if scheme(stores.tracking) in SQL_BACKENDS:  # what MLflow's store registry imports for one
        import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
        import mlflow.store.tracking.sqlalchemy_workspace_store  # noqa: F401


def prepare(study: str | Path | StudyConfig, stores: Stores, ws: WorkerSettings) -> Prepared:
    """Validate, open both stores and set the study up once: create it, its MLflow parent run,
    fail the trials of dead workers, enqueue the plan. Nothing is trained here."""
    from optuna.trial import TrialState

    from sweep.runner.liveness import StaleTrialCallback

    cfg = config_for(study, stores)
    check_separate(stores)
    rdb = open_storage(stores.optuna, ws)
    _await_tracking(lambda: check_tracking(stores.tracking), lambda: _tracked(rdb, cfg.study), ws.storage_outage)
    warm(stores)

    # workers joining at once must not each create a parent run or enqueue the plan again
    with study_lock(stores.optuna, cfg.study, wait=ws.storage_outage):
        opt_study, changed, cfg = open_study(cfg, stores, rdb)
        new = cfg.model_dump(mode="json")
        known = opt_study.user_attrs.get(PARENT_ATTR)

        def track() -> tuple[Tracker, str]:  # the server may go again between the check and here
            t = Tracker(stores.tracking, cfg.study, storage=stores.optuna, replay=sync.replay)
            return t, t.parent_run(known, new)

        tracker, parent = _await_tracking(track, lambda: bool(known), ws.storage_outage)
        write_ahead(stores)  # both stores exist now; local workers on SQLite
        # Optuna's own attribute, read each time it fails a trial for lack of heartbeats: that trial
        # is queued again and its MLflow run closed. Set here, where both stores are open; nothing
        # fails a stale trial before (worker.fail_stale, below, is the first)
        rdb.heartbeat_stale_trial_callback = StaleTrialCallback(ws.max_retry, tracker)
        if changed:
            tracker.config_changed(parent, new, changed)
        # stored after MLflow took the change: should that fail, the next run sees it again
        opt_study.set_user_attr(CONFIG_ATTR, new)
        opt_study.set_user_attr(PARENT_ATTR, parent)
        worker.fail_stale(opt_study)
        # a RUNNING trial with no heartbeat at all (left by a sweep from before heartbeats, or
        # killed between ask and its first beat) would never go stale: start its clock now; a
        # live trial's own worker beats again within heartbeat_interval anyway
        for t in opt_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            rdb.record_heartbeat(t._trial_id)
        configs = search.plan(cfg.search)
        opt_study.set_user_attr(TARGET_ATTR, worker.target(cfg.search, configs))
        name_metrics(opt_study, cfg.search.metrics)  # a study made before sweep named them gets them now
        if configs is not None:
            todo = enqueue_plan(opt_study, configs, cfg)
        else:
            assert cfg.search.n_trials is not None
            todo = cfg.search.n_trials - worker.budget_used(opt_study.get_trials(deepcopy=False))
    return Prepared(cfg, stores, opt_study, rdb, tracker, parent, configs, todo, ws)


def _await_tracking(what: Callable[[], T], tracked: Callable[[], bool], outage: float) -> T:
    """`what()`, which calls MLflow. Fail fast when MLflow is unreachable for a study it never
    tracked (a wrong address is the likely cause); for one it tracked before (a hand-over's fresh
    process, a joining worker, a resume: the server is restarting) wait for it as a worker waits
    for the database, up to `workers.storage_outage` seconds (found by tests/chaos.py: those
    exited 3 at once)."""
    from sweep.errors import ServiceError

    deadline = None
    while True:
        try:
            return what()
        except ServiceError as e:
            if deadline is None:
                if not tracked():
                    raise
                log.warning("%s; waiting up to %g s for it (workers.storage_outage)", e, outage)
                deadline = time.monotonic() + outage
            elif time.monotonic() > deadline:
                raise ServiceError(f"{e} (waited {outage:g} s: workers.storage_outage)") from None
            time.sleep(2)


def _tracked(rdb: optuna.storages.BaseStorage, study: str) -> bool:
    """Whether `study` exists and has its MLflow parent run."""
    try:
        return bool(rdb.get_study_user_attrs(rdb.get_study_id_from_name(study)).get(PARENT_ATTR))
    except KeyError:  # no such study yet
        return False


def config_for(study: str | Path | StudyConfig, stores: Stores) -> StudyConfig:
    from sweep.config import StudyConfig

    if isinstance(study, StudyConfig):
        return study
    path = Path(study)
    if path.suffix in (".yaml", ".yml") or path.exists() or "/" in str(study):
        return config_mod.load(path)
    # a bare name: join the study stored under that name
    return stored_config(load_study(str(study), stores))
