"""Replay a study from Optuna into MLflow: `sweep sync STUDY`.

Optuna is the source of truth; MLflow is a replica this rebuilds. For every finished trial
(COMPLETE, PRUNED, FAIL) the child run is found (its `mlflow_run_id`, else its tags) or created,
then given what it lacks: params, every epoch's metrics at their step, the final metrics, the
state tags, the dataset inputs and the terminal status. Only what is missing is written, so a
second sync writes nothing. RUNNING trials are left to their worker. Optuna holds no weights: a
model is replayed only where its dead worker left it waiting on this machine
(sweep/tracking/outbox.py), and only for a trial whose model `tracking.keep_models` keeps.

Optuna does not hold the arrays: a run without dataset inputs gets them made again from the
stored config's dataset (loaded once, only when some run lacks them), so their digest is that of
the data as it is now; a run that has some keeps them.
"""

from __future__ import annotations

import logging
import math
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Collection, Sequence

from sweep.errors import ServiceError, SweepError, first_line
from sweep.record import (EPOCH_METRICS, FAIL_REASON, FINAL_METRICS, INTERRUPTED, MLFLOW_PARAMS, PARENT_ATTR,
                          RUN_ID, SURPLUS, load_study, stored_config)
from sweep.storage import Stores, check_tracking, resolve, study_lock
from sweep.urls import mask
from sweep.tracking import outbox
from sweep.tracking.describe import (MODEL_URI_TAG, PARENT_TAG, RUN_STATUS, child_tags, chunks, dataset_inputs, end_tags,
                                     filter_value, objective_metrics, param_value, run_label, run_name)
from sweep.tracking.runs import Tracker
from sweep.tracking.sender import BACKOFF_MAX
from sweep.tracking.trial import log_saved_model

if TYPE_CHECKING:
    import optuna
    from mlflow.entities import DatasetInput, Run

    from sweep.config import DatasetConfig

log = logging.getLogger(__name__)

INTERRUPTED_REASON = "interrupted by the user"
# a live worker's queued logging is sent within the sender's capped backoff once MLflow answers
LIVE_BACKLOG_SECONDS = 2 * BACKOFF_MAX


def sync(study: str, storage: str | Stores | None = None, tracking_uri: str | None = None, config: str | Path | None = None,
         trials: Collection[int] | None = None, datasets: Sequence[DatasetInput] | None = None) -> dict[str, Any]:
    """Make MLflow complete and correct for every finished trial of `study` (or only `trials`).
    `datasets`: the runs' dataset inputs (`Tracker.datasets`); by default made from the stored
    config's dataset.

    Returns counts: trials synced, runs_created, params_logged, metrics_logged, tags_set,
    datasets_logged, models_logged, runs_ended, running (left alone), and `synced`, the trial
    numbers made complete."""
    stores = resolve(storage=storage, tracking_uri=tracking_uri, config=config)
    opt = load_study(study, stores)
    stored = stored_config(opt)
    cfg = stored.model_dump(mode="json")
    check_tracking(stores.tracking)
    tracker = Tracker(stores.tracking, study)
    known = opt.user_attrs.get(PARENT_ATTR)
    parent = tracker.parent_run(known, cfg)
    if parent != known:
        opt.set_user_attr(PARENT_ATTR, parent)
    replica = _Replica(tracker, parent, stored.dataset, datasets, stores.optuna)
    try:
        # one replay of a study at a time: two workers completing it together each replayed a
        # dead worker's trial, and each created its run (tests/chaos.py: two runs for one trial).
        # A lock of its own, not the study's set-up lock that workers take before each trial
        with study_lock(stores.optuna, f"{study}\0replay"):
            replica.sync(opt, trials)
    except SweepError:
        raise
    except Exception as e:  # noqa: BLE001 - MlflowException, requests, SQLAlchemy errors
        raise ServiceError(
            f"sweep sync {study}: writing to MLflow at {mask(stores.tracking)} failed after "
            f"{replica.counts['trials']} trial(s): {mask(first_line(e))}. "
            "Check that the tracking server is reachable and run the same command again (it resumes)."
        ) from None
    log.debug("sync %s: %s", study, {k: v for k, v in replica.counts.items() if k != "synced"})
    return replica.counts


def replay(tracker: Tracker, trials: set[int] | None) -> Collection[int]:
    """What a Tracker's sender gave up, replayed from Optuna (all finished trials with None).
    Returns the trial numbers made complete."""
    assert tracker.storage is not None  # a Tracker is given the replay only with its study's storage
    counts = sync(tracker.study_name, storage=tracker.storage, tracking_uri=tracker.uri, trials=trials,
                  datasets=tracker.logged_datasets)
    log.info("MLflow: replayed from Optuna what could not be sent: %s", counts)
    return counts["synced"]


def replay_unfinished(tracker: Tracker, trials: Sequence[Any], older_than: float = 0.0) -> list[int]:
    """Replay from Optuna the finished trials (of `trials`) whose MLflow run still says
    RUNNING, or was never created, or whose model its worker left waiting: their worker died
    after the trial ended in Optuna but before its queued logging reached MLflow (SIGKILL while
    the server was away; found by tests/chaos.py). Only trials that finished `older_than` seconds
    ago: a live worker's backlog drains within the sender's capped backoff once the server
    answers (LIVE_BACKLOG_SECONDS), and must not be sent twice. Returns their numbers; a failure is
    one warning line (`sweep sync STUDY` does the same by hand)."""
    import datetime as dt

    from mlflow.entities import ViewType

    if tracker.storage is None:
        return []
    now = dt.datetime.now()
    finished = {t.number for t in trials if t.state.name in ("COMPLETE", "PRUNED", "FAIL")}
    # a model waiting on disk whose writer is gone (sweep/tracking/outbox.py): that trial's
    # worker is dead, whatever its age, and nothing of it is being sent
    orphaned = finished & set(outbox.waiting(tracker.storage, tracker.study_name))
    ended = orphaned | {t.number for t in trials if t.number in finished and t.datetime_complete
                        and (now - t.datetime_complete).total_seconds() >= older_than}
    if not ended:
        return []
    try:
        flt = (f"tags.`{PARENT_TAG}` = 'trial' and tags.`optuna.study_name` = {filter_value(tracker.study_name)} "
               "and attributes.status = 'RUNNING'")
        running = tracker.client.search_runs([tracker.experiment_id], filter_string=flt,
                                             run_view_type=ViewType.ACTIVE_ONLY, max_results=1000)
        # no run id in Optuna: the run's creation was still queued when its worker died
        unknown = {t.number for t in trials if t.number in ended and not t.user_attrs.get(RUN_ID)}
        stuck = sorted(unknown | orphaned | (ended & {int(r.data.tags.get("optuna.trial_number", -1))
                                                      for r in running}))
        if stuck:
            replay(tracker, set(stuck))
        return stuck
    except Exception as e:  # noqa: BLE001 - the server is away again: sync replays it later
        log.warning("MLflow at %s: the runs of finished trials could not be replayed (%s); `sweep sync %s` "
                    "does it", mask(tracker.uri), first_line(e), tracker.study_name)
        return []


def _ms(dt: datetime | None) -> int | None:
    return int(dt.timestamp() * 1000) if dt is not None else None


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _label(params: dict[str, Any]) -> str:
    from sweep.models.activations import resolve_params

    try:
        params = resolve_params(dict(params))  # as the objective names runs
    except (KeyError, ValueError):
        pass
    return run_label(params)


class _Replica:
    """MLflow as it should be for one study, written where it is not."""

    def __init__(self, tracker: Tracker, parent: str, dataset: DatasetConfig,
                 datasets: Sequence[DatasetInput] | None, storage: str) -> None:
        self.tracker = tracker
        self.storage = storage
        self.kept: set[int] = set()
        self.client = tracker.client
        self.parent = parent
        self.dataset = dataset
        self.datasets = None if datasets is None else list(datasets)
        self.counts: dict[str, Any] = {"trials": 0, "runs_created": 0, "params_logged": 0, "metrics_logged": 0,
                                       "tags_set": 0, "datasets_logged": 0, "models_logged": 0, "runs_ended": 0, "running": 0,
                                       "synced": []}

    def _datasets(self) -> list[DatasetInput]:
        """The dataset inputs, made from the stored config on first need; none if it cannot load."""
        if self.datasets is None:
            from sweep.data import load

            try:
                self.datasets = dataset_inputs(load(self.dataset, f"the stored config of {self.tracker.study_name}"))
            except Exception as e:  # noqa: BLE001 - the file is gone, a download is offline: not fatal here
                log.warning("sync: the runs' dataset inputs are not replayed, dataset %r cannot be loaded: %s",
                            self.dataset.name, first_line(e))
                self.datasets = []
        return self.datasets

    def sync(self, study: optuna.Study, only: Collection[int] | None) -> None:
        from optuna.trial import TrialState

        from sweep.tracking.models import kept

        finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        stored = stored_config(study)
        self.metrics = stored.search.metrics  # what trial.values hold, in order
        every = study.get_trials(deepcopy=False)
        self.kept = kept(study, every, stored.tracking.keep_models, stored.search)
        todo = []
        for t in every:
            if only is not None and t.number not in only:
                continue
            if t.state not in finished:
                self.counts["running"] += t.state == TrialState.RUNNING
                continue
            if not t.user_attrs.get(SURPLUS):
                todo.append(t)
        children = self._children() if todo else {}
        for t in todo:
            self._trial(t, children.get(t.number, []))
            self.counts["trials"] += 1
            self.counts["synced"].append(t.number)

    def _children(self) -> dict[int, list[Run]]:
        """Every active child run of the study, by trial number (earliest first)."""
        from mlflow.entities import ViewType

        flt = (f"tags.`{PARENT_TAG}` = 'trial' and tags.`optuna.study_name` = "
               f"{filter_value(self.tracker.study_name)}")
        out: dict[int, list[Run]] = {}
        token = None
        while True:
            page = self.client.search_runs([self.tracker.experiment_id], filter_string=flt,
                                           run_view_type=ViewType.ACTIVE_ONLY, max_results=1000,
                                           order_by=["attributes.start_time ASC"], page_token=token)
            for r in page:
                try:
                    out.setdefault(int(r.data.tags["optuna.trial_number"]), []).append(r)
                except (KeyError, ValueError):
                    continue
            token = page.token
            if not token:
                return out

    def _run_for(self, t: optuna.trial.FrozenTrial, found: list[Run]) -> Run:
        known = t.user_attrs.get(RUN_ID)
        for r in found:
            if r.info.run_id == known:
                return r
        if known and not found:
            # a run written without our tags (or before them): use it if it is still here
            try:
                r = self.client.get_run(known)
                if r.info.experiment_id == self.tracker.experiment_id and r.info.lifecycle_stage == "active":
                    return r
            except Exception:  # noqa: BLE001 - deleted for good, or from another store: create it
                pass
        if found:
            return found[0]
        run = self.client.create_run(
            self.tracker.experiment_id, start_time=_ms(t.datetime_start),
            run_name=run_name(t.number, _label(t.params)),
            tags=child_tags(self.parent, self.tracker.study_name, t.number),
        )
        self.counts["runs_created"] += 1
        log.info("sync: created the run of trial %d (%s)", t.number, run.info.run_id)
        return run

    def _trial(self, t: optuna.trial.FrozenTrial, found: list[Run]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        before = self.counts["runs_created"]
        run = self._run_for(t, found)
        created = self.counts["runs_created"] > before
        rid, data = run.info.run_id, run.data
        attrs = t.user_attrs
        interrupted = t.state.name == "FAIL" and bool(attrs.get(INTERRUPTED))
        state = "INTERRUPTED" if interrupted else t.state.name

        # params: MLflow's are immutable, so only missing ones can be written
        want = attrs.get(MLFLOW_PARAMS)
        if not isinstance(want, dict):  # a trial from before the objective stored them
            want = {**t.params, **({"seed": attrs["seed"]} if "seed" in attrs else {})}
        params = []
        for k, v in want.items():
            value = param_value(v)
            if k not in data.params:
                params.append(Param(k, value))
            elif data.params[k] != value:
                log.warning("sync: trial %d: MLflow param %s=%r differs from Optuna's %r; params cannot "
                            "be changed", t.number, k, data.params[k], value)

        # every epoch's metrics at its step, timed as the epochs ran when their durations are known
        metrics = []
        epochs = attrs.get(EPOCH_METRICS) or []
        start = _ms(t.datetime_start) or _ms(t.datetime_complete) or 0
        elapsed, stamps = 0.0, []
        for row in epochs:
            elapsed += float(row.get("epoch_seconds", 0.0) or 0.0) if isinstance(row, dict) else 0.0
            stamps.append(start + int(elapsed * 1000))
        for key in sorted({k for row in epochs if isinstance(row, dict) for k in row}):
            have = set() if created else {m.step for m in self.client.get_metric_history(rid, key)}
            for step, row in enumerate(epochs):
                if isinstance(row, dict) and key in row and step not in have and _is_number(row[key]):
                    metrics.append(Metric(key, float(row[key]), stamps[step], step))

        # final metrics: the last epoch's step, as the objective logs them; objective_value at 0
        end = _ms(t.datetime_complete) or start
        finals = [(k, attrs[k], max(len(epochs) - 1, 0)) for k in FINAL_METRICS if _is_number(attrs.get(k))]
        if t.state.name == "COMPLETE" and t.values is not None:  # t.value raises for several metrics
            finals += [(k, v, 0) for k, v in objective_metrics(t.values, self.metrics).items()]
        for k, v, step in finals:
            if k not in data.metrics or not _same(data.metrics[k], float(v)):
                metrics.append(Metric(k, float(v), end, step))

        reason = attrs.get(FAIL_REASON) or (INTERRUPTED_REASON if interrupted else None)
        want_tags = {**end_tags(state, reason), **child_tags(self.parent, self.tracker.study_name, t.number)}
        tags = [RunTag(k, v) for k, v in want_tags.items() if data.tags.get(k) != v]

        for chunk in chunks(params, 100):
            self.client.log_batch(rid, params=chunk)
        for chunk in chunks(tags, 100):
            self.client.log_batch(rid, tags=chunk)
        for chunk in chunks(metrics, 1000):
            self.client.log_batch(rid, metrics=chunk)
        # dataset inputs, only on a run that has none: one that has some records the data it ran on
        datasets = [] if run.inputs is not None and run.inputs.dataset_inputs else self._datasets()
        if datasets:
            self.client.log_inputs(rid, datasets=datasets)
        self.counts["datasets_logged"] += len(datasets)
        self.counts["params_logged"] += len(params)
        self.counts["tags_set"] += len(tags)
        self.counts["metrics_logged"] += len(metrics)

        if t.state.name == "COMPLETE":
            self._model(t, rid, data.tags)
        status = RUN_STATUS[state]
        if run.info.status != status:
            self.client.set_terminated(rid, status, end_time=end)
            self.counts["runs_ended"] += 1


    def _model(self, t: optuna.trial.FrozenTrial, rid: str, tags: dict[str, str]) -> None:
        """Upload the model a dead worker left waiting for trial `t` (sweep/tracking/outbox.py),
        unless its run has one already or `tracking.keep_models` does not keep it."""
        from sweep.tracking.models import DELETED_TAG

        entry = outbox.claim(self.storage, self.tracker.study_name, t.number)
        if entry is None:
            return
        try:
            if not outbox.matches(entry, t.datetime_start):
                log.warning("sync: the model waiting at %s is not trial %d's (a study of the same name made "
                            "before this one); removed", entry.path, t.number)
            elif tags.get(MODEL_URI_TAG) or tags.get(DELETED_TAG):
                pass  # its upload went through after all
            elif t.number not in self.kept:
                self.client.set_tag(rid, DELETED_TAG, "never uploaded (its worker died first); not kept "
                                                      "(tracking.keep_models)")
            else:
                log_saved_model(self.tracker, rid, entry.model, int(entry.meta.get("step", 0)), {})
                self.counts["models_logged"] += 1
                log.info("sync: uploaded the model of trial %d that its worker left waiting", t.number)
            entry.sent()
        finally:
            entry.release()


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
