"""MLflow tracking: one parent run per study, one nested child run per trial
(sweep/tracking/trial.py); this module is the study's side: its experiment, its parent run and the
background sender every trial logs through.

We own this logging rather than use optuna-integration's MLflowCallback (deprecated, and it
logs only final values, flat): here every epoch is logged in one `log_batch` call, runs nest
under their study, and pruned/failed trials end with the matching MLflow status.

Only the parent run is created on the calling thread (at sweep start, where failing fast is
right). Everything a trial logs goes through the tracker's background `Sender`, so an MLflow
outage never stalls or fails training; what it could not send, `sweep sync STUDY` replays from
Optuna (sweep/tracking/sync.py).
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
import tempfile
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Collection

from sweep.errors import ServiceError, first_line
from sweep.storage import seed_tracking, tracking_artifact_location
from sweep.urls import mask
from sweep.tracking.describe import PARENT_TAG, RUN_STATUS, chunks, dataset_inputs, end_tags, filter_value, param_value
from sweep.tracking.sender import Sender

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import DatasetInput, Run

    from sweep.data import Dataset

log = logging.getLogger(__name__)

# MLflow 3 marks an experiment of training runs with this kind; its UI (3.17) still takes the page
# an experiment opens on from its own GenAI / Model training switch (in the browser's storage,
# GenAI by default) unless the address says `workflowType`: see `experiment_url`
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"


def now_ms() -> int:
    return int(time.time() * 1000)


def experiment_url(tracking_uri: str, experiment_id: str) -> str | None:
    """The address of an experiment's runs in the MLflow UI of a tracking server (None for a
    database: `mlflow ui` serves it on an address of its own), credentials left out. The
    `workflowType` makes a first visit land on the runs rather than MLflow 3's GenAI overview."""
    from urllib.parse import urlsplit

    u = urlsplit(tracking_uri)
    if u.scheme not in ("http", "https") or not u.hostname:
        return None
    host = f"[{u.hostname}]" if ":" in u.hostname else u.hostname
    base = f"{u.scheme}://{host}{f':{u.port}' if u.port else ''}{u.path.rstrip('/')}"
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


class Tracker:
    """The MLflow side of one study: its experiment, parent run and background sender.

    With `storage` (the study's Optuna storage URL), a trial's model waits in the outbox until it is
    uploaded; with `replay` (sweep.tracking.sync.replay: this module sits below the replay, which
    writes through a Tracker), what the sender had to give up is replayed from Optuna in the
    background as soon as MLflow answers again.
    """

    def __init__(self, tracking_uri: str, study_name: str, storage: str | None = None,
                 replay: Callable[[Tracker, set[int] | None], Collection[int]] | None = None) -> None:
        from mlflow import MlflowClient

        self.uri = tracking_uri
        self.study_name = study_name
        self.storage = storage
        seed_tracking(tracking_uri)  # a new SQLite store without MLflow's 3-4 s of migrations
        self.client: MlflowClient = MlflowClient(tracking_uri)
        self.experiment_id = self._experiment()
        self.sender = Sender(study_name, on_drained=None if replay is None else functools.partial(replay, self))
        self._staging: Path | None = None
        self.logged_datasets: list[DatasetInput] | None = None  # for the replay, as the trials logged them

    def _fail(self, what: str, e: Exception) -> ServiceError:
        return ServiceError(
            f"MLflow tracking at {mask(self.uri)}: {what} failed: {mask(first_line(e))}. "
            "Check that the tracking server or database is reachable and the URI is right."
        )

    def _experiment(self) -> str:
        try:
            exp = self.client.get_experiment_by_name(self.study_name)
            if exp is None:
                return self.client.create_experiment(
                    self.study_name,
                    artifact_location=tracking_artifact_location(self.uri, self.study_name),
                    tags={"optuna.study_name": self.study_name, KIND_TAG: KIND},
                )
            if exp.lifecycle_stage != "deleted" and exp.tags.get(KIND_TAG) != KIND:
                # an experiment made before sweep set its kind
                self.client.set_experiment_tag(exp.experiment_id, KIND_TAG, KIND)
        except Exception as e:  # mlflow raises MlflowException, requests and SQLAlchemy errors
            raise self._fail("opening the experiment", e) from None
        if exp.lifecycle_stage == "deleted":
            raise ServiceError(
                f"MLflow experiment {self.study_name!r} at {mask(self.uri)} is deleted; restore it "
                "(mlflow experiments restore) or delete it permanently (mlflow gc) first."
            )
        return exp.experiment_id

    def parent_run(self, known_id: str | None, config: dict[str, Any]) -> str:
        """The study's parent run: the stored one if it exists here, else found by tag, else new."""
        if known_id:
            try:
                run = self.client.get_run(known_id)
                if run.info.experiment_id == self.experiment_id and run.info.lifecycle_stage == "active":
                    return known_id
            except Exception:  # noqa: BLE001 - a run id from another tracking store: look further
                log.warning("stored parent run %s is not in %s; looking it up by tag",
                            known_id, mask(self.uri))
        try:
            found = self.client.search_runs(
                [self.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = 'parent'", max_results=1
            )
            if found:
                return found[0].info.run_id
            run = self.client.create_run(
                self.experiment_id,
                run_name=self.study_name,
                tags={PARENT_TAG: "parent", "optuna.study_name": self.study_name},
            )
            flat = _flatten(config)
            from mlflow.entities import Param

            params = [Param(k, param_value(v)) for k, v in flat.items()]
            for chunk in chunks(params, 100):
                self.client.log_batch(run.info.run_id, params=chunk)
            self.client.log_text(run.info.run_id, json.dumps(config, indent=2), "study_config.json")
        except Exception as e:  # noqa: BLE001
            raise self._fail("creating the study's parent run", e) from None
        return run.info.run_id

    def config_changed(self, run_id: str, config: dict[str, Any], changed: dict[str, tuple[Any, Any]]) -> None:
        """A resumed study changed fields it may change (`{field: (old, new)}`, e.g. a raised
        `search.repeats`). MLflow params cannot change, so the parent's params keep the values it
        was created with; its `study_config.json` is replaced and each changed field is tagged
        `sweep.config.FIELD` with the current value, so the run does not silently claim the old one."""
        try:
            from mlflow.entities import RunTag

            tags = [RunTag(f"sweep.config.{f}", param_value(new)) for f, (_, new) in changed.items()]
            self.client.log_batch(run_id, tags=tags)
            self.client.log_text(run_id, json.dumps(config, indent=2), "study_config.json")
        except Exception as e:  # noqa: BLE001
            raise self._fail("updating the study's parent run", e) from None

    def summarize_parent(self, run_id: str, metrics: dict[str, float], tags: dict[str, str], finished: bool) -> None:
        """The study's summary on its parent run (so the collapsed experiment's charts and the run
        page show the study, not an empty RUNNING run): FINISHED once the study is complete,
        RUNNING again while a resumed study has trials to go. Trouble is a warning: every trial
        is already recorded, and the next run of the study writes the summary again."""
        from mlflow.entities import Metric, RunTag

        now = now_ms()
        try:
            if metrics or tags:
                self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                                      tags=[RunTag(k, v) for k, v in tags.items()])
            if finished:
                self.client.set_terminated(run_id, "FINISHED", end_time=now)
            else:
                self.client.update_run(run_id, status="RUNNING")
        except Exception as e:  # noqa: BLE001 - MlflowException, requests and SQLAlchemy errors
            log.warning("%s", self._fail("writing the study's summary on its parent run", e))

    def find_child(self, trial_number: int) -> Run | None:
        """The active child run of a trial, by its tags (earliest first), if any."""
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=(f"tags.`{PARENT_TAG}` = 'trial' and tags.`optuna.study_name` = "
                           f"{filter_value(self.study_name)} and tags.`optuna.trial_number` = '{trial_number}'"),
            order_by=["attributes.start_time ASC"],
            max_results=1,
        )
        return found[0] if found else None

    def datasets(self, data: Dataset) -> list[DatasetInput]:
        """`dataset_inputs(data)`, for `TrialRun.start` (sweep/tracking/trial.py): computed once per
        objective, not per trial. Empty (with a warning) if they cannot be made: a trial does not
        need them."""
        try:
            self.logged_datasets = dataset_inputs(data)
        except Exception as e:  # noqa: BLE001 - tracking trouble never fails a sweep
            log.warning("MLflow: cannot describe dataset %r for the runs' Dataset column: %s", data.title, e)
            self.logged_datasets = []
        return self.logged_datasets

    def end_run(self, run_id: str, state: str, reason: str | None = None) -> None:
        """Close a run another (dead) process left RUNNING, in the background."""
        try:
            tags, end_ms = run_tags(end_tags(state, reason)), now_ms()

            def close() -> None:
                self.client.log_batch(run_id, tags=tags)
                self.client.set_terminated(run_id, RUN_STATUS[state], end_time=end_ms)

            self.sender.submit(close, f"closing run {run_id} as {state}")
        except Exception as e:  # noqa: BLE001
            log.warning("MLflow: cannot close run %s as %s: %s", run_id, state, e)

    def flush(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for queued logging. True if everything was sent."""
        if self.sender.flush(timeout):
            return True
        count, trials = self.sender.pending()
        log.warning("MLflow at %s: %d logging call(s)%s not sent yet; `sweep sync %s` will replay them "
                    "(Optuna has everything)", mask(self.uri), count,
                    f" for trial(s) {', '.join(map(str, trials))}" if trials else "", self.study_name)
        return False

    def stage(self) -> Path:
        """A private folder for files the sender uploads later (the caller's may be gone by then)."""
        if self._staging is None:
            self._staging = Path(tempfile.mkdtemp(prefix="sweep-mlflow-"))
            weakref.finalize(self, shutil.rmtree, str(self._staging), True)
        return Path(tempfile.mkdtemp(dir=self._staging))


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def run_tags(tags: dict[str, str]) -> list[Any]:
    from mlflow.entities import RunTag

    return [RunTag(k, v) for k, v in tags.items()]
