"""Keeping a study's trials honest when workers or the database go away.

- `ResilientRDBStorage`: Optuna's RDB storage whose calls ride out a database restart.
  Optuna retries nothing: one dropped connection mid-trial ends the worker with a traceback
  (and, from `_run_trial`'s error path, `UnboundLocalError: updated_state`). SQLAlchemy's
  `pool_pre_ping` replaces dead pooled connections; this retries the call that met one, with
  backoff, for up to `outage_seconds`, then stops with one clear line.
- `Heartbeat`: a trial's liveness thread. Optuna's own thread dies at the first failed write,
  after which a trial that is still training goes stale and is retried elsewhere; this one keeps
  beating through an outage.
- `StaleTrialCallback`: Optuna's `RetryHeartbeatStaleTrialCallback` (re-enqueues the trial with
  its params and user attributes), plus closing the dead trial's MLflow run, which Optuna cannot
  know about.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import warnings
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import optuna
from optuna.storages import RDBStorage

from sweep.errors import ServiceError, first_line
from sweep.urls import mask

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from sweep.tracking.runs import Tracker

log = logging.getLogger(__name__)

T = TypeVar("T")

# RDBStorage's methods that talk to the database; each is retried as a whole. Writes are
# retried too: a call that failed on a dropped connection was rolled back, so running it
# again is what the caller meant.
_DB_METHODS = (
    "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
    "get_study_id_from_name", "get_study_name_from_id", "get_study_directions",
    "get_study_user_attrs", "get_study_system_attrs", "get_all_studies",
    "create_new_trial", "set_trial_param", "get_trial_param", "set_trial_state_values",
    "set_trial_intermediate_value", "set_trial_user_attr", "set_trial_system_attr",
    "get_trial_id_from_study_id_trial_number", "get_trial", "get_all_trials", "get_best_trial",
    "get_trial_user_attrs", "get_trial_system_attrs", "record_heartbeat", "_get_stale_trial_ids",
    # what Optuna's _CachedStorage (which wraps every RDBStorage a study opens) calls instead of
    # the public ones: unwrapped, `study.get_trials()` died in a 2 s PostgreSQL restart (tests/chaos.py)
    "_create_new_trial", "_set_trial_param", "_get_best_trial_id", "_get_trials",
)
_inside = threading.local()  # a retrying call in progress on this thread: the calls it makes do not retry again


def is_connection_error(e: BaseException) -> bool:
    """A lost or refused database connection (worth retrying), not a bad query or bad data."""
    import sqlalchemy.exc as sa_exc

    for err in (e, e.__cause__, e.__context__):
        if isinstance(err, (sa_exc.OperationalError, sa_exc.InterfaceError)):
            return True
        if isinstance(err, sa_exc.DBAPIError) and err.connection_invalidated:
            return True
    return False


def _retrying(method: Callable[..., T], name: str) -> Callable[..., T]:
    @functools.wraps(method)
    def call(self: ResilientRDBStorage, *args: Any, **kwargs: Any) -> T:
        if getattr(_inside, "active", False):  # the outer call retries the whole, within one outage budget
            return method(self, *args, **kwargs)
        _inside.active = True
        try:
            return _retry(self, method, args, kwargs)
        finally:
            _inside.active = False

    return call


def _retry(self: ResilientRDBStorage, method: Callable[..., T], args: Any, kwargs: Any) -> T:
    """`method` called until it answers, through connection errors for up to `outage_seconds`."""
    deadline = time.monotonic() + self.outage_seconds
    delay = 0.25
    warned = False
    while True:
        try:
            result = method(self, *args, **kwargs)
        except Exception as e:  # noqa: BLE001 - filtered just below
            if not is_connection_error(e):
                raise
            if time.monotonic() + delay > deadline:
                raise ServiceError(
                    f"the Optuna storage {mask(self.url)} has been unreachable for "
                    f"{self.outage_seconds:.0f} s ({_reason(e)}); stopping. Finished trials "
                    "are saved: run the same command again once the database is back, and "
                    "unfinished trials are retried."
                ) from None
            if not warned:
                log.warning("Optuna storage unreachable (%s); retrying for up to %.0f s",
                            _reason(e), self.outage_seconds)
                warned = True
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
            continue
        if warned:
            log.warning("Optuna storage reachable again")
        return result


def _reason(e: BaseException) -> str:
    return mask(first_line(e.__cause__ or e))


class ResilientRDBStorage(RDBStorage):
    """`RDBStorage` whose database calls are retried through an outage (see module docstring)."""

    outage_seconds: float = 120.0


for _name in _DB_METHODS:
    setattr(ResilientRDBStorage, _name, _retrying(getattr(RDBStorage, _name), _name))


class Heartbeat:
    """Record a trial's heartbeat every `interval` seconds until stopped, through outages."""

    def __init__(self, storage: RDBStorage, trial_id: int, interval: float) -> None:
        self._storage = storage
        self._trial_id = trial_id
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{trial_id}", daemon=True)

    def _beat(self) -> None:
        while True:
            try:
                # the plain method, not the retrying one: a missed beat is simply tried again
                RDBStorage.record_heartbeat(self._storage, self._trial_id)
            except Exception as e:  # noqa: BLE001
                log.debug("heartbeat of trial id %d not recorded: %s", self._trial_id, e)
            if self._stop.wait(self._interval):
                return

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class StaleTrialCallback:
    """Called by Optuna for each trial it fails for lack of heartbeats (its worker died)."""

    def __init__(self, max_retry: int | None, tracker: Tracker) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
        self.tracker = tracker  # the trial's MLflow run is closed as the trial is failed

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        from sweep.record import RUN_ID, WORKER

        worker = trial.user_attrs.get(WORKER, "a worker")
        log.warning("trial %d: %s stopped sending heartbeats (killed?); marked FAIL and queued again",
                    trial.number, worker)
        run_id = trial.user_attrs.get(RUN_ID)
        if run_id:
            self.tracker.end_run(run_id, "FAIL", f"{worker} stopped sending heartbeats; the trial "
                                 "was queued again as a new trial")
        self._retry(study, trial)


def superseded(trials: list[FrozenTrial]) -> set[int]:
    """Numbers of failed trials that were queued again as a retry (they no longer count)."""
    out: set[int] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for t in trials:
            out.update(optuna.storages.RetryHeartbeatStaleTrialCallback.retry_history(t))
    return out
