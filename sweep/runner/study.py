"""Running a study: validate, load data, open both stores, enqueue the plan, optimize.

The validated config and the MLflow parent run id live with the Optuna study (user attributes),
so a study can be resumed, or joined by another worker, from its name and storage URL alone.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, TypeVar

from sweep import config as config_mod
from sweep import data as data_mod
from sweep import backend, ranking, search
from sweep.errors import ConfigError, first_line
from sweep.lifecycle import stop_on_signals
from sweep.record import (CONFIG_ATTR, CONFIRMED_BY, CONFIRMS, PARENT_ATTR, TARGET_ATTR, load_study,  # noqa: F401 (re-exported)
                          name_metrics, stored_config)
from sweep.runner import handover
from sweep.runner import objective as obj
from sweep.runner import progress
from sweep.runner import worker
from sweep.storage import (Stores, check_separate, check_tracking, mask, optuna_storage, resolve,
                           settings, study_lock, write_ahead)
from sweep.tracking import sync
from sweep.tracking.models import Keeper
from sweep.tracking.runs import Tracker, experiment_url

if TYPE_CHECKING:
    import optuna

    from sweep.config import StudyConfig, WorkerSettings
    from sweep.runner.liveness import ResilientRDBStorage, StaleTrialCallback

log = logging.getLogger(__name__)
T = TypeVar("T")

# config fields a resumed study may change: they extend the budget, not what a trial means.
# More repeats add the missing (configuration, repeat) pairs with seeds seed + repeat, the same
# for every configuration, so comparisons stay seed-paired; fewer would disown recorded trials.
RESUMABLE_CHANGES = {"search.n_trials", "search.repeats"}
ONLY_RAISED = {"search.repeats"}
# the pruner decides which trials still to come are cut short, not what a recorded one means; a
# study file that names none (since 2026-11 `none` for configs and the grid, `median` before)
# resumes with the new one rather than being refused
# which trials keep their model (tracking.keep_models) is the file's to say on every run: the
# models of trials that fall out are deleted from then on, the recorded trials do not change
# `confirm` says what happens once the search is done, not what a trial of it means
RESUMABLE_PREFIXES = ("search.pruner", "tracking.", "confirm")


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def _open(cfg: StudyConfig, stores: Stores, rdb: optuna.storages.BaseStorage
          ) -> tuple[optuna.Study, dict[str, tuple[Any, Any]], StudyConfig]:
    """The study, created or loaded, the resumable fields the file changes ({field: (stored,
    new)}) and the config to run with. The caller stores that config (a new study's is stored
    here at once)."""
    import optuna

    new = cfg.model_dump(mode="json")
    try:
        study = optuna.load_study(study_name=cfg.study, storage=rdb)
    except KeyError:
        study = _create(cfg, rdb)
    old = study.user_attrs.get(CONFIG_ATTR)
    if old is None:
        study.set_user_attr(CONFIG_ATTR, new)
        return study, {}, cfg
    if "tracking" not in old and "tracking" not in cfg.model_fields_set:
        # stored before keep_models existed, resumed from a file that does not set it: every
        # model stays, as before (config.StudyConfig._models_kept_as_they_were)
        cfg = cfg.model_copy(update={"tracking": config_mod.TrackingConfig(keep_models="all")})
        new = cfg.model_dump(mode="json")
    # validated again so sections added to sweep since (with defaults) are not "changes"
    old = config_mod.parse(old, f"study {cfg.study!r} (stored config)", stored=True).model_dump(mode="json")
    fields = _diff(old, new)
    problems = []
    for f in fields:
        stored, given = _lookup(old, f), _lookup(new, f)
        if f not in RESUMABLE_CHANGES and not f.startswith(RESUMABLE_PREFIXES):
            problems.append(f"study already exists in {mask(stores.optuna)} with a different {f}: "
                            f"stored {stored!r}, file has {given!r}")
        elif f in ONLY_RAISED and given < stored:
            problems.append(f"{f}: stored {stored}, file has {given}; {f.rsplit('.', 1)[-1]} can only be "
                            f"raised (every recorded trial stays in the study): set it to {stored} or more")
    if problems:
        raise ConfigError(
            cfg.study,
            problems + ["resume with the stored config (sweep run STUDY_NAME), or give this file a new `study` name"],
        )
    return study, {f: (_lookup(old, f), _lookup(new, f)) for f in fields}, cfg


def _create(cfg: StudyConfig, rdb: optuna.storages.BaseStorage) -> optuna.Study:
    import optuna

    study = optuna.create_study(study_name=cfg.study, storage=rdb, directions=cfg.search.directions,
                                load_if_exists=True)
    return study


def _lookup(d: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


def _enqueue_plan(study: optuna.Study, configs: list[dict[str, Any]], cfg: StudyConfig) -> int:
    """Enqueue each (config, repeat) not yet done, waiting or running. Returns how many wait."""
    from optuna.trial import TrialState

    _enqueue(study, _missing(study.get_trials(deepcopy=False), configs, cfg), configs, cfg)
    return sum(t.state == TrialState.WAITING for t in study.get_trials(deepcopy=False))


def _requeue_interrupted(study: optuna.Study, configs: list[dict[str, Any]], cfg: StudyConfig) -> None:
    """Between trials, under the study lock: a trial of the plan whose worker was stopped
    (SIGTERM: a replica stopped, a Job's parallelism patched down) is queued again by a worker
    still running, so the plan is finished without waiting for a worker to start. Optuna's retry
    callback covers only trials that go stale; an interrupted one was told FAIL by its worker."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    if not any(t.state == TrialState.FAIL and t.user_attrs.get(obj.INTERRUPTED) for t in trials):
        return  # the usual case: nothing to read further
    missing = _missing(trials, configs, cfg)
    for t in trials:
        if t.state == TrialState.FAIL and t.user_attrs.get(obj.INTERRUPTED) and _plan_key(t) in missing:
            log.info("trial %d was interrupted (its worker stopped); its config is queued again", t.number)
            missing.remove(_plan_key(t))
            _enqueue(study, [_plan_key(t)], configs, cfg)


def _missing(trials: list[optuna.trial.FrozenTrial], configs: list[dict[str, Any]], cfg: StudyConfig
             ) -> list[tuple[int, int]]:
    """(config, repeat) pairs of the plan with no trial done, waiting or running."""
    from optuna.trial import TrialState

    have = {_plan_key(t) for t in worker.done(trials)}
    have |= {_plan_key(t) for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)}
    return [(i, r) for i in range(len(configs)) for r in range(cfg.search.repeats) if (i, r) not in have]


def _enqueue(study: optuna.Study, keys: list[tuple[int, int]], configs: list[dict[str, Any]],
             cfg: StudyConfig) -> None:
    for i, r in keys:
        study.enqueue_trial(configs[i], user_attrs={obj.CONFIG_INDEX: i, obj.REPEAT: r, obj.SEED: cfg.search.seed + r})


def _plan_key(t: optuna.trial.FrozenTrial) -> tuple[Any, Any]:
    return t.user_attrs.get(obj.CONFIG_INDEX), t.user_attrs.get(obj.REPEAT)


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


def open_storage(url: str, ws: WorkerSettings, on_stale: StaleTrialCallback | None = None
                 ) -> ResilientRDBStorage:
    """The Optuna storage a worker uses: heartbeats on, stale trials re-queued, outages ridden."""
    import warnings

    import optuna

    from sweep.runner.liveness import ResilientRDBStorage

    with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna since 2.9
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        rdb = optuna_storage(url, ResilientRDBStorage, heartbeat_interval=ws.heartbeat_interval,
                             grace_period=ws.grace_period, heartbeat_stale_trial_callback=on_stale)
    rdb.outage_seconds = ws.storage_outage
    return rdb


def prepare(study: str | Path | StudyConfig, stores: Stores, ws: WorkerSettings) -> Prepared:
    """Validate, open both stores and set the study up once: create it, its MLflow parent run,
    fail the trials of dead workers, enqueue the plan. Nothing is trained here."""
    from optuna.trial import TrialState

    from sweep.runner.liveness import StaleTrialCallback

    cfg = _config_for(study, stores)
    check_separate(stores)
    on_stale = StaleTrialCallback(ws.max_retry)
    rdb = open_storage(stores.optuna, ws, on_stale)
    _await_tracking(lambda: check_tracking(stores.tracking), lambda: _tracked(rdb, cfg.study), ws.storage_outage)
    # workers joining at once must not each create a parent run or enqueue the plan again
    with study_lock(stores.optuna, cfg.study, wait=ws.storage_outage):
        opt_study, changed, cfg = _open(cfg, stores, rdb)
        new = cfg.model_dump(mode="json")
        known = opt_study.user_attrs.get(PARENT_ATTR)

        def track() -> tuple[Tracker, str]:  # the server may go again between the check and here
            t = Tracker(stores.tracking, cfg.study, storage=stores.optuna, replay=sync.replay)
            return t, t.parent_run(known, new)

        tracker, parent = _await_tracking(track, lambda: bool(known), ws.storage_outage)
        write_ahead(stores)  # both stores exist now; local workers on SQLite
        on_stale.tracker = tracker
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
            todo = _enqueue_plan(opt_study, configs, cfg)
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


def run(
    study: str | Path | StudyConfig,
    storage: str | None = None,
    tracking_uri: str | None = None,
    n_trials: int | None = None,
    dataset: data_mod.Dataset | None = None,
    extra_callbacks: Any = None,
    config: str | Path | None = None,
    join: bool = False,
) -> optuna.Study:
    """Run (or resume, or join) a study in this process.

    `study` is a study file path, a validated `StudyConfig`, or the name of a study already in
    `storage` (its stored config is used). `n_trials` caps the trials this call runs. `config`
    is an mlflow.yaml settings file (see `sweep.storage.resolve` for the precedence). `join`:
    this process is one of several workers (its sampler draws from its own seed).
    Everything is validated and the data loaded before either store is written.
    """
    chosen = backend.use()  # before anything imports Keras (the data pipelines may)
    stores = resolve(storage=storage, tracking_uri=tracking_uri, config=config)
    workers = settings(config).workers
    before = handover.arrived()  # this process goes on from an earlier one of its chain
    if n_trials is not None and before is not None:
        n_trials -= before.trials
    cfg = _config_for(study, stores)
    engine, device = backend.describe()  # imports it: 3-4 s for TensorFlow, once, before the first trial
    with _quiet("sweep.data") if before is not None else _held("sweep.data"):  # said once, by the first
        data = dataset if dataset is not None else data_mod.load(cfg.dataset, cfg.source)
        cfg.model.check_output(data.num_classes, data.labels, cfg.source)  # an output that cannot fit the target
        # the first line, once the data is good: bad input stays one line (the error's)
        (log.info if before is None else log.debug)("keras %s on %s, %s (%s)", _keras_version(), engine, device,
                                                     chosen.why)
    if handover.supervised():
        _settle()
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


def _settle() -> None:
    """In a trial process that sweep started (never in a caller's own Python), the libraries'
    objects, all imported by now, are frozen out of the garbage collector's walks (gc.freeze).
    The interpreter's last collections at exit walked every object TensorFlow, MLflow and Optuna
    made, 1-2 s of each process on a 2-core CPU (benchmarks/README.md, start-up); each full
    collection between trials walked them too. What comes after (stores, models, trials) is
    collected as before."""
    import gc

    import optuna  # noqa: F401 - frozen too; its storage's connections are closed explicitly (`run`)

    # not MLflow: its stores keep their engines in class attributes, which only the collection at
    # exit closes (a frozen one would leave SQLite's -wal file beside the store)
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


def summarize(p: Prepared) -> None:
    """The study so far on its MLflow parent run: trials by state, the best value and params (or
    the Pareto front's size), FINISHED when nothing is left to run. Every worker writes it as it
    stops; the last one sees the study complete."""
    from collections import Counter

    from optuna.trial import TrialState

    trials = p.study.get_trials(deepcopy=False)
    search_cfg = p.cfg.search
    pending = any(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in trials)
    complete = not pending and (p.configs is not None or worker.budget_used(trials) >= (search_cfg.n_trials or 0))
    metrics: dict[str, float] = {f"trials_{s.name.lower()}": 0 for s in
                                 (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)}
    metrics.update({f"trials_{s.lower()}": n for s, n in Counter(t.state.name for t in trials).items()})
    tags: dict[str, str] = {}
    if any(t.state == TrialState.COMPLETE for t in trials):
        if ranking.repeated(search_cfg):
            more_metrics, tags = _best_configuration(trials, search_cfg.metric, search_cfg.direction)
            metrics.update(more_metrics)
        elif len(search_cfg.metrics) == 1:
            best = p.study.best_trial
            metrics[f"best_{search_cfg.metric}"] = float(best.value)
            tags = {"sweep.best.trial": str(best.number),
                    **{f"sweep.best.{k}": str(v) for k, v in best.params.items()}}
        else:
            front = sorted(t.number for t in p.study.best_trials)
            metrics["pareto_size"] = len(front)
            tags = {"sweep.pareto.trials": ",".join(map(str, front))}
    if complete:  # a peer that died with the last logging of a finished trial still queued
        sync.replay_unfinished(p.tracker, trials, older_than=sync.LIVE_BACKLOG_SECONDS)
    if complete and "sweep.best.trial" in tags:
        tags.update(_promote(p))
    if p.study.user_attrs.get(CONFIRMS):
        tags[CONFIRMS] = p.study.user_attrs[CONFIRMS]
        _tag_search(p)
    p.tracker.summarize_parent(p.parent, metrics, tags, finished=complete)


def _tag_search(p: Prepared) -> None:
    """A confirmation names itself on its search's MLflow parent run (the Optuna studies name each
    other already, sweep/runner/confirm.py), so the UI leads from one to the other."""
    search = p.study.user_attrs[CONFIRMS]
    try:
        parent = load_study(search, p.stores.optuna).user_attrs.get(PARENT_ATTR)
        if parent:
            p.tracker.client.set_tag(parent, CONFIRMED_BY, p.cfg.study)
    except Exception as e:  # noqa: BLE001 - MlflowException, SweepError: a tag, the next run writes it again
        log.warning("could not tag study %s's parent run with its confirmation %s: %s", search, p.cfg.study,
                    mask(first_line(e)))


def _best_configuration(trials: list[optuna.trial.FrozenTrial], metric: str, direction: str
                        ) -> tuple[dict[str, float], dict[str, str]]:
    """A repeated study's summary: the configuration with the best mean over its seeds, its verdict
    against the others and its representative repeat (sweep/ranking.py); the single best trial
    beside it, under its own name."""
    import math

    from sweep import stats

    j = ranking.judge(ranking.configurations(trials), metric, direction)
    best = j.best
    lo, hi = stats.mean_ci(best.values, j.confidence)
    sign = 1.0 if direction == "maximize" else -1.0
    single = max((t for t in trials if t.state.name == "COMPLETE" and t.values), key=lambda t: sign * t.values[0])
    rep = next(t for t in trials if t.number == best.representative)
    metrics = {f"best_{metric}": best.mean, "best_n": float(best.n), f"best_trial_{metric}": float(single.values[0])}
    metrics.update({k: v for k, v in ((f"best_{metric}_std", best.std), (f"best_{metric}_ci_low", lo),
                                      (f"best_{metric}_ci_high", hi)) if not math.isnan(v)})
    tags = {"sweep.best.trial": str(rep.number), "sweep.best.configuration": best.label,
            "sweep.best.judged_by": f"mean {metric} over {best.n} seed(s); model: {ranking.REPRESENTATIVE}",
            "sweep.best.verdict": j.verdict[:5000], "sweep.best_trial.trial": str(single.number),
            **{f"sweep.best.{k}": str(v) for k, v in rep.params.items()}}
    return metrics, tags


def _promote(p: Prepared) -> dict[str, str]:
    """A complete study's best model becomes `models:/STUDY@best` (sweep/tracking/registry.py);
    every worker of a pool tries as it stops, under the study's lock, and the first one does it.
    Returns tags for the parent run. Trouble is a warning: `sweep promote STUDY` tries again."""
    from sweep.tracking import registry

    try:
        with study_lock(p.stores.optuna, p.cfg.study):
            version, changed, trial = registry.promote_best(p.study, p.cfg.search, p.tracker.client)
        search = p.study.user_attrs.get(CONFIRMS)
        if search:  # a confirmation: its winner is its search's @best too
            with study_lock(p.stores.optuna, search):
                s = load_study(search, p.stores.optuna)
                registry.promote_best(s, stored_config(s).search, p.tracker.client)
            log.info("best model of study %s: models:/%s@%s, the confirmed winner", search, search, registry.ALIAS)
    except Exception as e:  # noqa: BLE001 - MlflowException, SweepError, requests errors
        log.warning("could not register the best model as %s@%s: %s; `sweep promote %s` tries again",
                    p.cfg.study, registry.ALIAS, mask(first_line(e)),
                    p.cfg.study)
        return {}
    if changed:
        log.info("best model: models:/%s@%s (registered model %s, version %s: trial %d)", p.cfg.study,
                 registry.ALIAS, p.cfg.study, version.version, trial.number)
    return {"sweep.best.registered": f"models:/{p.cfg.study}@{registry.ALIAS} (version {version.version})"}


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

    callbacks = [progress.trial_done(shown, cfg.search, name)]
    keeper = None if cfg.tracking.keep_models == "all" else Keeper(cfg, p.tracker, obj.RUN_ID)
    if keeper is not None:
        callbacks.append(keeper)
    try:
        with stop_on_signals():
            worker.work(p.study, objective, cfg, explicit_plan=p.configs is not None, lock_url=p.stores.optuna,
                        lock_wait=p.workers.storage_outage, heartbeat=heartbeat, poll_seconds=min(interval, 2), n_trials=n_trials,
                        callbacks=callbacks, handover=_bound(p) if handover.supervised() else None,
                        requeue=None if p.configs is None else
                        functools.partial(_requeue_interrupted, configs=p.configs, cfg=cfg))
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


def view(p: Prepared, n_trials: int | None = None, workers: int = 1) -> progress.View:
    """How this process shows the study's progress: a live footer on a terminal, plain lines
    elsewhere, or events for the parent of a pool (which sets the mode in the environment)."""
    from sweep.console import current

    console = current()
    mode = os.environ.get(progress.ENV_MODE) or ("live" if console is not None and console.live else "plain")
    finished = len(worker.done(p.study.get_trials(deepcopy=False)))
    want = worker.target(p.cfg.search, p.configs)
    if n_trials is not None:
        want = min(want, finished + n_trials)
    return progress.View(console, mode, study=p.cfg.study, target=want, done=finished, metric=shown_metric(p.cfg),
                         workers=workers, verbose=log.isEnabledFor(logging.DEBUG))


def _config_for(study: str | Path | StudyConfig, stores: Stores) -> StudyConfig:
    from sweep.config import StudyConfig

    if isinstance(study, StudyConfig):
        return study
    path = Path(study)
    if path.suffix in (".yaml", ".yml") or path.exists() or "/" in str(study):
        return config_mod.load(path)
    # a bare name: join the study stored under that name
    return stored_config(load_study(str(study), stores.optuna))
