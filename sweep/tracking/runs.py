"""MLflow tracking: one parent run per study, one nested child run per trial.

We own this logging rather than use optuna-integration's MLflowCallback (deprecated, and it
logs only final values, flat): here every epoch is logged in one `log_batch` call, runs nest
under their study, and pruned/failed trials end with the matching MLflow status.

Only the parent run is created on the calling thread (at sweep start, where failing fast is
right). Everything a trial logs goes through the tracker's background `Sender`, so an MLflow
outage never stalls or fails training; what it could not send, `sweep sync STUDY` replays from
Optuna (sweep/tracking/sync.py).
"""

from __future__ import annotations

import datetime
import functools
import json
import logging
import shutil
import tempfile
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Collection, Mapping, Sequence

from sweep.errors import ServiceError, first_line
from sweep.lifecycle import mlflow_tracking_uri
from sweep.storage import seed_tracking, tracking_artifact_location
from sweep.urls import mask
from sweep.tracking import model_code, outbox
from sweep.tracking.describe import (MODEL_URI_TAG, PARENT_TAG, RUN_STATUS, child_tags, chunks, dataset_inputs, end_tags,
                                     filter_value, param_value, run_name)
from sweep.tracking.sender import NoRun, Sender
from sweep.training import numeric

if TYPE_CHECKING:
    import keras
    from mlflow import MlflowClient
    from mlflow.entities import DatasetInput, Run

    from sweep.data import Dataset
    from sweep.training import Result

log = logging.getLogger(__name__)

# MLflow 3 marks an experiment of training runs with this kind; its UI (3.17) still takes the page
# an experiment opens on from its own GenAI / Model training switch (in the browser's storage,
# GenAI by default) unless the address says `workflowType`: see `experiment_url`
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"
# How long the training thread waits for MLflow while it answers; never while it is unreachable
START_WAIT = 5.0  # for the child run's id
MODEL_WAIT = 60.0  # for the model's URI


def _now_ms() -> int:
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

        now = _now_ms()
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
        """`dataset_inputs(data)`, for `start_trial`: computed once per objective, not per trial.
        Empty (with a warning) if they cannot be made: a trial does not need them."""
        try:
            self.logged_datasets = dataset_inputs(data)
        except Exception as e:  # noqa: BLE001 - tracking trouble never fails a sweep
            log.warning("MLflow: cannot describe dataset %r for the runs' Dataset column: %s", data.title, e)
            self.logged_datasets = []
        return self.logged_datasets

    def start_trial(self, parent_id: str, trial_number: int, params: dict[str, Any], label: str,
                    datasets: Sequence[DatasetInput] = (), started: datetime.datetime | None = None) -> TrialRun:
        """A child run named `trial-N-<label>` with every param and `datasets` (from
        `Tracker.datasets`) as its inputs, created in the background. `started`: the Optuna
        trial's start, which names its model waiting on disk (sweep/tracking/outbox.py).

        Returns at once while MLflow is unreachable; `TrialRun.run_id` is None until it exists.
        """
        run = TrialRun(self, trial_number, started)
        try:
            from mlflow.entities import Param

            param_list = [Param(k, param_value(v)) for k, v in params.items()]
            name, tags = run_name(trial_number, label), child_tags(parent_id, self.study_name, trial_number)
        except Exception as e:  # noqa: BLE001 - tracking trouble never fails a trial
            log.warning("MLflow: cannot prepare the run of trial %d: %s", trial_number, e)
            return run

        def create() -> None:
            if run.run_id is None:
                # found first: a retry after a lost answer, or a replay, may have created it
                found = self.find_child(trial_number)
                run.run_id = (found or self.client.create_run(self.experiment_id, run_name=name,
                                                               tags=tags)).info.run_id
            for chunk in chunks(param_list, 100):
                self.client.log_batch(run.run_id, params=chunk)
            if datasets:  # MLflow keeps one input per dataset and run: a retry adds nothing
                self.client.log_inputs(run.run_id, datasets=list(datasets))

        op = self.sender.submit(create, f"starting the run of trial {trial_number}", trial_number)
        self.sender.wait(op, START_WAIT)
        run.watch_system()
        return run

    def end_run(self, run_id: str, state: str, reason: str | None = None) -> None:
        """Close a run another (dead) process left RUNNING, in the background."""
        try:
            tags, end_ms = _run_tags(end_tags(state, reason)), _now_ms()

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


def _run_tags(tags: dict[str, str]) -> list[Any]:
    from mlflow.entities import RunTag

    return [RunTag(k, v) for k, v in tags.items()]


def _signature(model: keras.Model) -> Any:
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    def spec(shape: Any) -> Schema:
        return Schema([TensorSpec(np.dtype(np.float32), (-1, *[int(d) for d in shape[1:]]))])

    return ModelSignature(inputs=spec(model.input_shape), outputs=spec(model.output_shape))


class _SavedKeras:
    """A model flavor for `Model.log` whose `save_model` copies a model already saved with
    `mlflow.keras.save_model`: the upload runs on the sender thread, which must not touch the
    Keras model (its session is cleared for the next trial)."""

    __name__ = "keras"

    def __init__(self, saved: Path) -> None:
        self.saved = saved

    def save_model(self, path: str, mlflow_model: Any, **kwargs: Any) -> None:
        from mlflow.models import Model

        shutil.copytree(self.saved, path)
        saved = Model.load(self.saved)
        # keep the identity Model.log gave this copy (run, logged model), take the rest as saved
        for field in ("flavors", "signature", "saved_input_example_info", "model_size_bytes", "metadata"):
            setattr(mlflow_model, field, getattr(saved, field, None))
        mlflow_model.save(str(Path(path) / "MLmodel"))


def log_saved_model(tracker: Tracker, rid: str, saved: Path, step: int, logged: dict[str, str]) -> str:
    """Log the model saved at `saved` as run `rid`'s model, linked to its metrics at `step`, and tag
    the run with its URI; `logged` keeps the LoggedModel made on a first try, so one model is logged
    once however often this is retried. For a live trial (`TrialRun`) and a replay (sync)."""
    from mlflow.models import Model

    # created through the client so it lands in this study's experiment, not the fluent API's
    # current one
    if "id" not in logged:
        logged["id"] = tracker.client.create_logged_model(
            tracker.experiment_id, name="model", source_run_id=rid, model_type="keras").model_id
    # `step`: MLflow links the run's metrics at this step to the model (default 0: epoch 1's)
    with mlflow_tracking_uri(tracker.uri):  # Model.log takes no URI: it reads MLflow's global one
        info = Model.log(artifact_path=None, name="model", flavor=_SavedKeras(saved), run_id=rid,
                         model_id=logged["id"], step=step)
    tracker.client.set_tag(rid, MODEL_URI_TAG, info.model_uri)
    logged["uri"] = info.model_uri
    return info.model_uri


class TrialRun:
    """The child run of one trial. Nothing here waits on MLflow while it is unreachable or raises."""

    def __init__(self, tracker: Tracker, trial_number: int, started: datetime.datetime | None = None) -> None:
        self.tracker = tracker
        self.client = tracker.client
        self.run_id: str | None = None  # set by the sender once the run exists
        self.trial_number = trial_number
        self.started = started
        self._system: Any = None

    def watch_system(self) -> None:
        """MLflow's own system metrics on this run: CPU, memory, disk and network, and the GPU where
        nvidia-ml-py is installed (the [cuda] extra), as `system/...` every
        MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL seconds (10 by default; a trial shorter than that
        logs none). They come from MLflow's monitor thread, which calls MLflow itself rather than
        through the sender: best-effort, an MLflow outage ends them for this trial (one warning)."""
        if self.run_id is None:  # MLflow unreachable as the trial starts
            return
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._system = SystemMetricsMonitor(self.run_id, tracking_uri=self.tracker.uri)
            self._system.start()
        except Exception as e:  # noqa: BLE001 - tracking trouble never fails a trial
            log.warning("MLflow: no system metrics for trial %d: %s", self.trial_number, e)

    def _send(self, call: Callable[[str], None], what: str, final: bool = False) -> Any:
        def op() -> None:
            if self.run_id is None:
                raise NoRun(f"trial {self.trial_number} has no MLflow run")
            call(self.run_id)

        return self.tracker.sender.submit(op, f"{what} of trial {self.trial_number}", self.trial_number, final)

    def epoch_logger(self) -> keras.callbacks.Callback:
        """A Keras callback logging every numeric value of an epoch's logs in one `log_batch`."""
        import keras

        trial_run = self

        class MlflowEpochLogger(keras.callbacks.Callback):
            def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
                trial_run._log_metrics(numeric(logs), epoch, f"epoch {epoch} metrics")

        return MlflowEpochLogger()

    def _log_metrics(self, metrics: dict[str, float], step: int, what: str) -> None:
        if not metrics:
            return
        try:
            from mlflow.entities import Metric

            ts = _now_ms()
            batch = [Metric(k, v, ts, step) for k, v in metrics.items()]
            self._send(lambda rid: [self.client.log_batch(rid, metrics=c) for c in chunks(batch, 1000)], what)
        except Exception as e:  # noqa: BLE001 - tracking trouble never fails a trial
            log.warning("MLflow: cannot queue %s of trial %d: %s", what, self.trial_number, e)

    def _log_files(self, files: list[Path], artifact_dir: str) -> None:
        if not files:
            return
        try:
            folder = self.tracker.stage()
            copies = [Path(shutil.copy2(f, folder / f.name)) for f in files]
        except Exception as e:  # noqa: BLE001
            log.warning("MLflow: cannot queue files for %s/ of trial %d: %s", artifact_dir, self.trial_number, e)
            return

        def upload(rid: str) -> None:
            for f in copies:
                self.client.log_artifact(rid, str(f), artifact_dir)
            shutil.rmtree(folder, ignore_errors=True)

        self._send(upload, f"files for {artifact_dir}/")

    def log_result(self, result: Result, model: keras.Model, label: str) -> str | None:
        """Final test metrics, the tutorials' curve PNGs and the model (Keras flavor, with a custom
        activation's code and loader: sweep/tracking/model_code.py).

        Returns the model URI, or None when MLflow could not take the model now."""
        # at the last epoch's step, where the model is linked (below): its MLflow page then shows
        # the final epoch's metrics and the test metrics, not the first epoch's
        last = max(max((len(v) for v in result.history.values()), default=0) - 1, 0)
        metrics = dict(result.test)
        if result.mean_epoch_seconds is not None:
            metrics["mean_epoch_seconds"] = result.mean_epoch_seconds
        try:
            from sweep.plots import training_curves

            with tempfile.TemporaryDirectory() as tmp:
                self.log_extra(metrics, training_curves(result.history, label, Path(tmp)), "plots", step=last)
        except Exception as e:  # noqa: BLE001
            log.warning("MLflow: cannot log the results of trial %d: %s", self.trial_number, e)
        try:
            saved, entry = self._save_model(model, last)
        except Exception as e:  # noqa: BLE001
            log.warning("MLflow: cannot save the model of trial %d: %s", self.trial_number, e)
            return None
        return self._upload_model(saved, last, entry)

    def _save_model(self, model: keras.Model, step: int) -> tuple[Path, outbox.Entry | None]:
        import importlib

        import keras
        import mlflow

        # saved here, on the training thread, so the sender only copies files; explicit
        # requirements: inferring them costs ~5 s per model. The backend the model ran on is
        # the one to load it with (TensorFlow on a CPU; JAX where a GPU machine has no TensorFlow).
        # With the study's storage known, into the outbox, which outlives this process
        backend = keras.backend.backend()
        engine = importlib.import_module(backend)
        entry = None
        if self.tracker.storage is not None:
            entry = outbox.create(self.tracker.storage, self.tracker.study_name, self.trial_number, step, self.started)
        path = entry.model if entry is not None else self.tracker.stage() / "model"
        try:
            mlflow.keras.save_model(model, str(path), signature=_signature(model),
                                    pip_requirements=[f"{backend}=={engine.__version__}",
                                                      f"keras=={keras.__version__}"])
            model_code.add(model, path)  # a custom activation's source travels with the model
        except BaseException:
            if entry is not None:
                entry.sent()  # nothing worth keeping
            raise
        return path, entry

    def _upload_model(self, saved: Path, step: int, entry: outbox.Entry | None) -> str | None:
        logged: dict[str, str] = {}

        def upload(rid: str) -> None:
            log_saved_model(self.tracker, rid, saved, step, logged)
            if entry is not None:
                entry.sent()
            else:
                shutil.rmtree(saved.parent, ignore_errors=True)

        op = self._send(upload, "the model")
        if not self.tracker.sender.wait(op, MODEL_WAIT):
            log.warning("MLflow: the model of trial %d is not logged yet; it is uploaded in the background "
                        "(its URI will not be in Optuna)", self.trial_number)
        return logged.get("uri")

    def log_extra(self, metrics: dict[str, float], files: list[Path], artifact_dir: str, step: int = 0) -> None:
        """Metrics computed after training (one `log_batch`) and files under `artifact_dir`."""
        self._log_metrics(numeric(metrics), step, f"{artifact_dir} metrics")
        self._log_files(list(files), artifact_dir)

    def end(self, state: str, reason: str | None = None, value: float | Mapping[str, float] | None = None) -> None:
        """Tag the Optuna state (and reason) and terminate with the matching MLflow status.
        `value`: the objective value, or `objective_metrics(...)` for several."""
        try:
            from mlflow.entities import Metric

            tags, end_ms = _run_tags(end_tags(state, reason)), _now_ms()
            values = {} if value is None else value if isinstance(value, Mapping) else {"objective_value": value}
            metrics = [Metric(k, float(v), end_ms, 0) for k, v in values.items()]
            status = RUN_STATUS[state]
        except Exception as e:  # noqa: BLE001
            log.warning("MLflow: cannot close the run of trial %d as %s: %s", self.trial_number, state, e)
            return

        system, self._system = self._system, None

        def close(rid: str) -> None:
            if system is not None:  # its last samples first, while the run is still RUNNING
                system.finish()
            self.client.log_batch(rid, metrics=metrics, tags=tags)
            self.client.set_terminated(rid, status, end_time=end_ms)

        self._send(close, f"closing the run as {state}", final=True)


