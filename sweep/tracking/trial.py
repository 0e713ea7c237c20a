"""One trial's MLflow child run, written live as the trial trains: started with its params and
datasets, every epoch's metrics, the final results and plots, its model (MLflow's Keras flavor),
then closed with the status that matches its Optuna state. What the run holds is said in
sweep/tracking/describe.py; the study's side (experiment, parent run, background sender) is the
Tracker's (sweep/tracking/runs.py). `log_saved_model` serves the replay too (sweep/tracking/sync.py).
"""

from __future__ import annotations

import datetime
import logging
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from sweep.lifecycle import mlflow_tracking_uri
from sweep.tracking import model_code, outbox
from sweep.tracking.describe import MODEL_URI_TAG, RUN_STATUS, child_tags, chunks, end_tags, param_value, run_name
from sweep.tracking.runs import Tracker, now_ms, run_tags
from sweep.tracking.sender import NoRun
from sweep.training import numeric

if TYPE_CHECKING:
    import keras
    from mlflow.entities import DatasetInput

    from sweep.training import Result

log = logging.getLogger(__name__)

# How long the training thread waits for MLflow while it answers; never while it is unreachable
START_WAIT = 5.0  # for the child run's id
MODEL_WAIT = 60.0  # for the model's URI


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

    @classmethod
    def start(cls, tracker: Tracker, parent_id: str, trial_number: int, params: dict[str, Any], label: str,
              datasets: Sequence[DatasetInput] = (), started: datetime.datetime | None = None) -> TrialRun:
        """A child run named `trial-N-<label>` with every param and `datasets` (from
        `Tracker.datasets`) as its inputs, created in the background. `started`: the Optuna
        trial's start, which names its model waiting on disk (sweep/tracking/outbox.py).

        Returns at once while MLflow is unreachable; `TrialRun.run_id` is None until it exists.
        """
        run = cls(tracker, trial_number, started)
        try:
            from mlflow.entities import Param

            param_list = [Param(k, param_value(v)) for k, v in params.items()]
            name, tags = run_name(trial_number, label), child_tags(parent_id, tracker.study_name, trial_number)
        except Exception as e:  # noqa: BLE001 - tracking trouble never fails a trial
            log.warning("MLflow: cannot prepare the run of trial %d: %s", trial_number, e)
            return run

        def create() -> None:
            if run.run_id is None:
                # found first: a retry after a lost answer, or a replay, may have created it
                found = tracker.find_child(trial_number)
                run.run_id = (found or tracker.client.create_run(tracker.experiment_id, run_name=name,
                                                                  tags=tags)).info.run_id
            for chunk in chunks(param_list, 100):
                tracker.client.log_batch(run.run_id, params=chunk)
            if datasets:  # MLflow keeps one input per dataset and run: a retry adds nothing
                tracker.client.log_inputs(run.run_id, datasets=list(datasets))

        op = tracker.sender.submit(create, f"starting the run of trial {trial_number}", trial_number)
        tracker.sender.wait(op, START_WAIT)
        run.watch_system()
        return run

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

            ts = now_ms()
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

            tags, end_ms = run_tags(end_tags(state, reason)), now_ms()
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


