"""MLflow tracking: one parent run per study, one nested child run per trial.

We own this logging rather than use optuna-integration's MLflowCallback (deprecated, and it
logs only final values, flat): here every epoch is logged in one `log_batch` call, runs nest
under their study, and pruned/failed trials end with the matching MLflow status.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweep.errors import ServiceError
from sweep.storage import mask, tracking_artifact_location

if TYPE_CHECKING:
    import keras
    from mlflow import MlflowClient

    from sweep.training import Result

log = logging.getLogger(__name__)

PARENT_TAG = "sweep.role"
# Optuna trial state -> MLflow run status
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED", "INTERRUPTED": "KILLED"}


def _now_ms() -> int:
    return int(time.time() * 1000)


def _param_value(v: Any) -> str:
    return json.dumps(v) if isinstance(v, (list, tuple, dict)) else str(v)


class Tracker:
    """The MLflow side of one study: its experiment and parent run."""

    def __init__(self, tracking_uri: str, study_name: str) -> None:
        import mlflow
        from mlflow import MlflowClient

        self.uri = tracking_uri
        self.study_name = study_name
        # mlflow's model logging goes through the fluent API, which reads the global URI
        mlflow.set_tracking_uri(tracking_uri)
        self.client: MlflowClient = MlflowClient(tracking_uri)
        self.experiment_id = self._experiment()

    def _fail(self, what: str, e: Exception) -> ServiceError:
        return ServiceError(
            f"MLflow tracking at {mask(self.uri)}: {what} failed: {mask(str(e).splitlines()[0])}. "
            "Check that the tracking server or database is reachable and the URI is right."
        )

    def _experiment(self) -> str:
        try:
            exp = self.client.get_experiment_by_name(self.study_name)
            if exp is None:
                return self.client.create_experiment(
                    self.study_name,
                    artifact_location=tracking_artifact_location(self.uri, self.study_name),
                    tags={"optuna.study_name": self.study_name},
                )
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
                if run.info.experiment_id == self.experiment_id:
                    return known_id
            except Exception:  # noqa: BLE001 - a run id from another tracking store: look further
                log.warning("stored parent run %s is not in %s; looking it up by tag",
                            known_id, mask(self.uri))
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

        self.client.log_batch(run.info.run_id, params=[Param(k, _param_value(v)) for k, v in flat.items()])
        self.client.log_text(run.info.run_id, json.dumps(config, indent=2), "study_config.json")
        return run.info.run_id

    def start_trial(self, parent_id: str, trial_number: int, params: dict[str, Any], label: str) -> TrialRun:
        """A child run named `trial-N-<label>` with every param logged in one batch."""
        from mlflow.entities import Param

        run = self.client.create_run(
            self.experiment_id,
            run_name=f"trial-{trial_number}-{label}"[:250],
            tags={
                "mlflow.parentRunId": parent_id,
                PARENT_TAG: "trial",
                "optuna.study_name": self.study_name,
                "optuna.trial_number": str(trial_number),
            },
        )
        run_id = run.info.run_id
        self.client.log_batch(run_id, params=[Param(k, _param_value(v)) for k, v in params.items()])
        return TrialRun(self, run_id, trial_number)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def _signature(model: keras.Model) -> Any:
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    def spec(shape: Any) -> Schema:
        return Schema([TensorSpec(np.dtype(np.float32), (-1, *[int(d) for d in shape[1:]]))])

    return ModelSignature(inputs=spec(model.input_shape), outputs=spec(model.output_shape))


class TrialRun:
    """The child run of one trial."""

    def __init__(self, tracker: Tracker, run_id: str, trial_number: int) -> None:
        self.tracker = tracker
        self.client = tracker.client
        self.run_id = run_id
        self.trial_number = trial_number

    def epoch_logger(self) -> keras.callbacks.Callback:
        """A Keras callback logging every numeric value of an epoch's logs in one `log_batch`."""
        import keras
        from mlflow.entities import Metric

        client, run_id = self.client, self.run_id

        class MlflowEpochLogger(keras.callbacks.Callback):
            def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
                ts = _now_ms()
                metrics = [
                    Metric(k, float(v), ts, epoch)
                    for k, v in (logs or {}).items()
                    if isinstance(v, (int, float)) or hasattr(v, "__float__")
                ]
                client.log_batch(run_id, metrics=metrics)

        return MlflowEpochLogger()

    def log_result(self, result: Result, model: keras.Model, label: str) -> str:
        """Final test metrics, the tutorials' curve PNGs and the model (Keras flavor). Returns the model URI."""
        import keras
        import mlflow
        import tensorflow as tf
        from mlflow.models import Model

        from sweep.plots import training_curves

        epochs = max((len(v) for v in result.history.values()), default=0)
        metrics = dict(result.test)
        if result.mean_epoch_seconds is not None:
            metrics["mean_epoch_seconds"] = result.mean_epoch_seconds
        with tempfile.TemporaryDirectory() as tmp:
            self.log_extra(metrics, training_curves(result.history, label, Path(tmp)), "plots", step=epochs)
        # Created through the client so it lands in this study's experiment, not the fluent
        # API's current one; explicit requirements: inferring them costs ~5 s per model.
        logged = self.client.create_logged_model(
            self.tracker.experiment_id, name="model", source_run_id=self.run_id, model_type="keras"
        )
        info = Model.log(
            artifact_path=None,
            name="model",
            flavor=mlflow.keras,
            run_id=self.run_id,
            model_id=logged.model_id,
            model=model,
            signature=_signature(model),
            pip_requirements=[f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}"],
        )
        self.client.set_tag(self.run_id, "sweep.model_uri", info.model_uri)
        return info.model_uri

    def log_extra(self, metrics: dict[str, float], files: list[Path], artifact_dir: str, step: int = 0) -> None:
        """Metrics computed after training (one `log_batch`) and files under `artifact_dir`."""
        from mlflow.entities import Metric

        ts = _now_ms()
        if metrics:
            self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), ts, step) for k, v in metrics.items()])
        for f in files:
            self.client.log_artifact(self.run_id, str(f), artifact_dir)

    def end(self, state: str, reason: str | None = None, value: float | None = None) -> None:
        """Tag the Optuna state (and reason) and terminate with the matching MLflow status."""
        tags = {"optuna.state": state}
        if reason:
            tags["sweep.fail_reason"] = reason[:5000]
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        if value is not None:
            self.client.log_metric(self.run_id, "objective_value", value)
        self.client.set_terminated(self.run_id, RUN_STATUS[state])
