"""Running a study in this process: the data loaded, the study set up (sweep/runner/setup.py),
the trial loop wired to its hooks (sweep/runner/worker.py) and shown (sweep/runner/progress.py),
then the MLflow summary written (sweep/runner/summary.py).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from sweep import data as data_mod
from sweep import backend, search
from sweep.lifecycle import at_start_gate, await_go, mlflow_http_retries, stop_on_signals
from sweep.runner import handover
from sweep.runner import objective as obj
from sweep.runner import progress
from sweep.runner import worker
from sweep.runner.resume import requeue_interrupted
from sweep.runner.setup import Prepared, config_for, prepare, warm
from sweep.runner.summary import summarize
from sweep.storage import Stores, resolve, study_lock
from sweep.tracking.models import Keeper
from sweep.tracking.runs import experiment_url

if TYPE_CHECKING:
    import optuna

    from sweep.config import StudyConfig

log = logging.getLogger(__name__)


def run(
    study: str | Path | StudyConfig,
    storage: str | Stores | None = None,
    tracking_uri: str | None = None,
    n_trials: int | None = None,
    dataset: data_mod.Dataset | None = None,
    extra_callbacks: Any = None,
    config: str | Path | None = None,
) -> optuna.Study:
    """Run (or resume) a study in this process.

    `study` is a study file path, a validated `StudyConfig`, or the name of a study already in
    `storage` (its stored config is used). `n_trials` caps the trials this call runs. `config`
    is an mlflow.yaml settings file (see `sweep.storage.resolve` for the precedence); `storage`
    may be `Stores` a caller resolved already (then neither `tracking_uri` nor `config`).
    Everything is validated and the data loaded before either store is written. Like a command,
    it sets what Keras and MLflow read from this process's environment only (KERAS_BACKEND, unless
    Keras is imported already; MLflow's HTTP retries, unless set): sweep/lifecycle.py.
    """
    return _run(study, resolve(storage=storage, tracking_uri=tracking_uri, config=config), n_trials, dataset,
                extra_callbacks, join=False)


def join(study: str | Path | StudyConfig, stores: Stores, n_trials: int | None = None) -> optuna.Study:
    """`run` as one of several workers on the study (`sweep worker`, a pool's process): its sampler
    draws from a seed of its own, so workers that start together do not draw alike."""
    return _run(study, stores, n_trials, None, None, join=True)


def _run(study: str | Path | StudyConfig, stores: Stores, n_trials: int | None, dataset: data_mod.Dataset | None,
         extra_callbacks: Any, join: bool) -> optuna.Study:
    chosen = backend.use()  # before anything imports Keras (the data pipelines may)
    mlflow_http_retries()  # a tracking server's outage is ridden out by the sender, not inside one request
    workers = stores.service.workers  # the same mlflow.yaml, read once
    before = handover.arrived()  # this process goes on from an earlier one of its chain
    if n_trials is not None and before is not None:
        n_trials -= before.trials
    if at_start_gate():  # a pool's worker, started while its supervisor sets the study up
        backend.describe()  # TensorFlow's import meanwhile
        warm(stores)  # and what its own set-up will import
        await_go()
    cfg = config_for(study, stores)
    engine, device = backend.describe()  # imports it: 3-4 s for TensorFlow, once, before the first trial
    with _quiet("sweep.data") if before is not None else _held("sweep.data"):  # said once, by the first
        data = dataset if dataset is not None else data_mod.load(cfg.dataset, cfg.source)
        cfg.model.check_output(data.num_classes, data.labels, cfg.source)  # an output that cannot fit the target
        # the first line, once the data is good: bad input stays one line (the error's)
        (log.info if before is None else log.debug)("keras %s on %s, %s (%s)", _keras_version(), engine, device,
                                                     chosen.why)
    if handover.supervised():
        settle()
    p = prepare(cfg, stores, workers)
    worked = False
    try:
        _work(p, data, n_trials, extra_callbacks, join, before)
        worked = True
    finally:
        p.tracker.flush(timeout=30)
        if worked:  # not on Ctrl-C or an outage: the study is not done, and the run stays RUNNING
            summarize(p)
        # give the pooled connections back (the study still works: it reconnects on demand);
        # a database serves all workers with a bounded number of connections
        p.rdb.engine.dispose()
    return p.study


def settle() -> None:
    """In a trial process sweep started (never in a caller's own Python), the libraries' objects,
    imported by now, are frozen out of the garbage collector's walks (gc.freeze): each full
    collection between trials walked every object TensorFlow and Optuna made. So did the
    interpreter's last collections at exit, 1-2 s of each process on a 2-core CPU
    (benchmarks/README.md, start-up), which `lifecycle.leave` now skips except where a non-daemon
    thread still runs. What comes after (stores, models, trials) is collected as before."""
    import gc

    import optuna  # noqa: F401 - frozen too; its storage's connections are closed explicitly (`run`)

    # not MLflow: its stores keep their engines in class attributes, which in the usual exit only
    # the collection at exit closes (a frozen one would leave SQLite's -wal file beside the store)
    gc.freeze()


def _keras_version() -> str:
    import keras

    return keras.__version__


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """`logger`'s INFO lines at DEBUG for a while (shown with -v only)."""
    target = logging.getLogger(logger)
    old = target.level
    target.setLevel(logging.DEBUG if log.isEnabledFor(logging.DEBUG) else logging.WARNING)
    try:
        yield
    finally:
        target.setLevel(old)


@contextlib.contextmanager
def _held(logger: str) -> Iterator[None]:
    """`logger`'s lines held back until the block ends, then said; dropped should the block
    raise: its error is then the only line."""
    target, held = logging.getLogger(logger), []

    class Hold(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            held.append(record)

    hold, propagate = Hold(), target.propagate
    target.addHandler(hold)
    target.propagate = False
    try:
        yield
    except BaseException:
        held.clear()
        raise
    finally:
        target.removeHandler(hold)
        target.propagate = propagate
    for record in held:
        target.handle(record)


def _work(p: Prepared, data: data_mod.Dataset, n_trials: int | None, extra_callbacks: Any, join: bool,
          before: handover.State | None = None) -> None:
    from sweep.runner.liveness import Heartbeat

    cfg = p.cfg
    # a process that takes over from an earlier one says nothing the user saw already
    say = log.debug if before is not None else log.info
    if p.todo <= 0 or n_trials == 0:
        say("study %s is complete (%d trials); nothing to run", cfg.study, len(p.study.trials))
        return
    p.tracker.summarize_parent(p.parent, {}, {}, finished=False)  # a resumed study runs again
    p.study.sampler = search.make_sampler(cfg.search, offset=len(p.study.trials),
                                          worker=worker.worker_name() if join else None)
    p.study.pruner = search.make_pruner(cfg.search)
    url = experiment_url(p.stores.tracking, p.tracker.experiment_id)
    say("study %s: %d trial(s) to run; %s; MLflow parent run %s%s", cfg.study,
        min(p.todo, n_trials or p.todo), p.stores, p.parent, f"; browse {url}" if url else "")
    space = search.space_of(p.configs) if p.configs is not None else cfg.search.space
    shown = view(p, n_trials)
    if before is not None:
        # the footer and the ETA go on from the earlier processes' trials
        shown.trial_seconds, shown.best = list(before.trial_seconds), before.best
    name = worker.worker_name()

    def show(trial_number: int, label: str) -> Any:
        return progress.callback(lambda e: shown.handle(name, e), trial_number, label, cfg.training.epochs,
                                 batches=shown.batches)

    objective = obj.make_objective(cfg, data, p.tracker, p.parent, space, extra_callbacks, progress=show)
    interval = p.workers.heartbeat_interval

    def heartbeat(trial_id: int) -> Heartbeat:
        return Heartbeat(p.rdb, trial_id, interval)

    keeper = None if cfg.tracking.keep_models == "all" else Keeper(cfg, p.tracker, obj.RUN_ID)
    hooks = worker.Hooks(
        heartbeat=heartbeat,
        trial_end=[progress.trial_done(shown, cfg.search, name), *([keeper] if keeper is not None else [])],
        hand_over=_bound(p) if handover.supervised() else None,
        requeue=None if p.configs is None else functools.partial(requeue_interrupted, configs=p.configs, cfg=cfg))
    # the study lock, waiting for an unreachable database as long as the storage calls do
    lock = functools.partial(study_lock, p.stores.optuna, p.study.study_name, wait=p.workers.storage_outage)
    try:
        with stop_on_signals():
            worker.work(p.study, objective, cfg, hooks, lock, poll_seconds=min(interval, 2), n_trials=n_trials)
        if keeper is not None:
            keeper(p.study)  # once more: other workers' last trials finished after this one's pass
    except handover.HandOver as h:
        handover.leave(before, h.ran, shown.trial_seconds, shown.best)
        log.debug("handing over to a fresh process after %d trial(s): %s", h.ran, h.reason)
        raise
    finally:
        shown.close()


def _bound(p: Prepared) -> Any:
    """When this process hands over: its bound is reached and its MLflow logging is all sent (a
    queue left behind would wait for `sweep sync`; during an outage the process goes on)."""
    bound = handover.Bound(p.workers.trials_per_process, p.workers.max_memory_growth_mb)

    def due(ran: int) -> str | None:
        why = bound.due(ran)
        if why is not None and not p.tracker.sender.flush(60):
            log.debug("hand-over put off: MLflow logging is still queued")
            return None
        return why

    return due


def shown_metric(cfg: StudyConfig) -> str:
    """The per-epoch metric the terminal shows: the study's own, if Keras reports it each epoch."""
    metric = cfg.search.metrics[0]
    if metric.startswith("test_") or metric == "epoch_seconds":
        return "val_accuracy" if cfg.dataset.validation_split > 0 else "accuracy"
    return metric


def view_mode() -> str:
    """live (a footer on a terminal), plain (lines elsewhere) or events (a pool's worker, for its
    parent's footer: the parent sets it in the worker's environment)."""
    from sweep.console import current

    console = current()
    return os.environ.get(progress.ENV_MODE) or ("live" if console is not None and console.live else "plain")


def view(p: Prepared, n_trials: int | None = None, workers: int = 1) -> progress.View:
    """How this process shows the study's progress: a live footer on a terminal, plain lines
    elsewhere, or events for the parent of a pool (which sets the mode in the environment)."""
    from sweep.console import current

    console = current()
    mode = view_mode()
    finished = len(worker.done(p.study.get_trials(deepcopy=False)))
    want = worker.target(p.cfg.search, p.configs)
    if n_trials is not None:
        want = min(want, finished + n_trials)
    return progress.View(console, mode, study=p.cfg.study, target=want, done=finished, metric=shown_metric(p.cfg),
                         workers=workers)


