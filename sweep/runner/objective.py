"""The Optuna objective: sample params, build and train the model, track the trial in MLflow.

The only module that joins Optuna to Keras; models and training take plain parameters.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from sweep import backend, diagnostics, search
from sweep.errors import ServiceError, TrialFailed
from sweep.lifecycle import hold_stop, release_stop
from sweep.models import activation_layers, build_model
# the names are re-exported: `objective.RUN_ID` reads as what a trial carries
from sweep.record import (CONFIG_INDEX, EPOCH_METRICS, FAIL_REASON, FINAL_METRICS,  # noqa: F401
                          INTERRUPTED, MLFLOW_PARAMS, MODEL_URI, REPEAT, RUN_ID, SEED, WORKER)
from sweep.urls import mask
from sweep.tracking.describe import objective_metrics, run_label, short
from sweep.tracking.trial import TrialRun
from sweep.training import numeric, train

if TYPE_CHECKING:
    import optuna

    from sweep.config import SpaceConfig, StudyConfig
    from sweep.data import Dataset
    from sweep.tracking.runs import Tracker
    from sweep.training import Result

log = logging.getLogger(__name__)

# written per run of a trial; a retried trial inherits its dead predecessor's attributes
_PER_RUN = (RUN_ID, MODEL_URI, FAIL_REASON, INTERRUPTED, EPOCH_METRICS, *FINAL_METRICS)


def run_params(cfg: StudyConfig, data: Dataset, params: dict[str, Any], seed: int) -> dict[str, Any]:
    """Everything needed to rebuild and retrain a trial's model, as logged to MLflow."""
    from sweep.models import custom

    # a custom activation is named by its import path, whose code may change under that name:
    # its file and the SHA-256 of its source say which code trained this model. Code that cannot
    # be imported here fails the trial in build_model, with the reason.
    about: dict[str, str] = {}
    if custom.is_custom(params.get("activation")):
        try:
            about = custom.params(params["activation"])
        except ValueError:
            pass
    return {
        **params,
        **about,
        "seed": seed,
        "model": cfg.model.name,
        **{f"model.{k}": v for k, v in cfg.model.spec().items() if k != "name"},
        "input_shape": list(data.input_shape),
        "num_classes": data.num_classes,
        "dataset": cfg.dataset.name,
        "train_samples": len(data.x_train),
        "validation_split": cfg.dataset.validation_split,
        **data.params(),  # a table's class mapping and scaling, to read predictions back
        **cfg.training.model_dump(),
        **backend.params(),  # where it trained: "tensorflow 2.21.0", "CPU"
    }


def _epoch_recorder(trial: optuna.trial.Trial) -> Any:
    """Each epoch's numeric logs into the trial (one storage write per epoch)."""
    import keras

    class EpochRecorder(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.epochs: list[dict[str, float]] = []

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            self.epochs.append(numeric(logs))
            trial.set_user_attr(EPOCH_METRICS, self.epochs)

    return EpochRecorder()


def _safe_end(run: TrialRun, state: str, reason: str | None = None) -> None:
    # the trial's own outcome matters more than a tracking hiccup while recording it
    try:
        run.end(state, reason)
    except Exception as e:  # noqa: BLE001
        log.warning("could not close MLflow run %s as %s: %s", run.run_id, state, e)


def make_objective(
    cfg: StudyConfig,
    data: Dataset,
    tracker: Tracker,
    parent_run_id: str,
    space: SpaceConfig,
    extra_callbacks: Callable[[Dataset, dict[str, Any]], list[Any]] | None = None,
    progress: Callable[[int, str], Any] | None = None,
) -> Callable[[optuna.trial.Trial], float | tuple[float, ...]]:
    """Build the objective a worker calls for each trial: it returns the value of
    `search.metric`, or a tuple of values when it lists several. `extra_callbacks` adds Keras
    callbacks per trial; `progress(trial_number, label)` gives the one that shows it running."""
    from sweep.runner.worker import worker_name

    has_val = cfg.dataset.validation_split > 0
    monitor = search.monitor(cfg.search, has_val)
    spec = cfg.model.spec()
    layers = activation_layers(spec)
    datasets = tracker.datasets(data)  # MLflow dataset inputs: every array hashed once, not per trial

    # a stop, wherever it lands (sampling, MLflow's run being created, training), is marked
    # interrupted by the trial loop that called this (sweep/runner/worker.py `_run_one`)
    def objective(trial: optuna.trial.Trial) -> float | tuple[float, ...]:
        import keras
        import optuna
        from optuna_integration import KerasPruningCallback

        for key in _PER_RUN:
            if key in trial.user_attrs:
                trial.set_user_attr(key, None)
        trial.set_user_attr(WORKER, worker_name())
        params = search.sample(trial, space)
        seed = int(trial.user_attrs.get(SEED, cfg.search.seed + trial.number))
        trial.set_user_attr(SEED, seed)
        trial.set_user_attr("input_shape", list(data.input_shape))
        trial.set_user_attr("num_classes", data.num_classes)
        logged = run_params(cfg, data, params, seed)
        trial.set_user_attr(MLFLOW_PARAMS, logged)
        name = run_label(params)
        # a stop while the run is being created waits for it (START_WAIT at most) and lands below,
        # where the run is closed as KILLED: raised inside TrialRun.start, it left the run that the
        # sender went on to create RUNNING (`docker compose stop` of a worker before its first epoch)
        hold_stop()
        try:
            run = TrialRun.start(tracker, parent_run_id, trial.number, logged, label=name, datasets=datasets,
                                 started=trial.datetime_start)
            if run.run_id is not None:
                trial.set_user_attr(RUN_ID, run.run_id)
        except BaseException:
            release_stop()
            raise
        try:
            release_stop()
            keras.backend.clear_session()
            keras.utils.set_random_seed(seed)
            model = build_model(spec, data.input_shape, data.num_classes, **params)
            callbacks = [*(extra_callbacks(data, params) if extra_callbacks else []),
                         *diagnostics.callbacks(cfg.diagnostics, data, layers),
                         _epoch_recorder(trial), run.epoch_logger(),
                         *([progress(trial.number, name)] if progress else [])]
            if monitor is not None:  # None: several metrics, which Optuna cannot prune
                callbacks.append(KerasPruningCallback(trial, monitor))
            result = train(model, data, cfg.training, seed, callbacks)
            values = tuple(_metric_value(m, result) for m in cfg.search.metrics)
            label = ", ".join(f"{k}={short(v)}" for k, v in params.items())
            model_uri = run.log_result(result, model, label)
            if model_uri is not None:
                trial.set_user_attr(MODEL_URI, model_uri)
            if cfg.diagnostics.prelu_alphas:
                with tempfile.TemporaryDirectory() as tmp:
                    alphas, files = diagnostics.prelu_artifacts(model, label, Path(tmp), layers)
                    run.log_extra(alphas, files, "diagnostics", step=len(result.epoch_seconds))
            for k, v in result.test.items():
                trial.set_user_attr(k, v)
            if result.mean_epoch_seconds is not None:
                trial.set_user_attr("mean_epoch_seconds", result.mean_epoch_seconds)
        except optuna.TrialPruned:
            _safe_end(run, "PRUNED")
            raise
        except KeyboardInterrupt as e:
            _safe_end(run, "INTERRUPTED", f"interrupted ({e or 'SIGINT'}); run again on resume")
            raise
        except ServiceError:
            # the Optuna storage stayed unreachable: the worker stops, the trial is retried
            _safe_end(run, "FAIL", "the Optuna storage became unreachable")
            raise
        except optuna.exceptions.UpdateFinishedTrialError:
            raise  # another worker took this trial over: nothing of it is ours to record (worker.py)
        except Exception as e:  # noqa: BLE001 - any training error fails this trial, not the sweep
            reason = mask((str(e) if isinstance(e, TrialFailed) else f"{type(e).__name__}: {e}").strip()[:2000])
            trial.set_user_attr(FAIL_REASON, reason)
            _safe_end(run, "FAIL", reason)
            raise TrialFailed(reason) from e
        if run.run_id is not None and trial.user_attrs.get(RUN_ID) != run.run_id:
            trial.set_user_attr(RUN_ID, run.run_id)  # created late, after a tracking outage
        run.end("COMPLETE", value=objective_metrics(values, cfg.search.metrics))
        return values[0] if len(values) == 1 else values

    return objective


def _metric_value(metric: str, result: Result) -> float:
    if metric == "epoch_seconds":
        assert result.mean_epoch_seconds is not None  # training.epochs >= 1
        return result.mean_epoch_seconds  # the trial's mean, as recorded in `mean_epoch_seconds`
    return result.test[metric] if metric.startswith("test_") else result.history[metric][-1]
