"""How a command that trains runs its trials: in this process, in a trial process it supervises
(which hands over to a fresh one at its memory bound), or in a pool of them; then its study's
confirmation, where the study file asks for one. sweep/cli.py words the commands; the route and
the signals are sweep/lifecycle.py's."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any, Callable

from sweep.lifecycle import export, stop_on_signals, stops_held, tf_threads, trial_process

if TYPE_CHECKING:
    import optuna

    from sweep.storage import Stores

log = logging.getLogger(__name__)


def supervised(argv: list[str], storage: str | None, tracking_uri: str | None, config: str | None) -> int | None:
    """The trials of `sweep run`/`sweep worker`/`sweep confirm` run in a trial process that hands
    over to a fresh one at its memory bound (sweep/runner/handover.py); this process only restarts
    it. `argv`: the trial process's command line after `sweep`. Returns its exit code, or None when
    this process is that trial process (or the bound is off) and runs the trials itself. Store
    URLs go to it in its environment, not on its command line."""
    if trial_process() is not None:
        return None
    from sweep.storage import ENV_OPTUNA, ENV_TRACKING, settings

    ws = settings(config).workers
    if ws.trials_per_process is None and ws.max_memory_growth_mb is None:
        return None
    from sweep.runner.pool import supervise

    env = dict(os.environ)
    if storage:
        env[ENV_OPTUNA] = storage
    if tracking_uri:
        env[ENV_TRACKING] = tracking_uri
    with stop_on_signals():
        return supervise(argv, env)


def use_threads(threads: int | None) -> None:
    """`--threads-per-worker` for the trials of this process, before TensorFlow starts (it reads
    them once)."""
    if threads is not None:
        for name, value in tf_threads(threads, {}).items():
            export(name, value)


def pool(study: Any, stores: Stores, workers: int, n_trials: int | None, threads: int | None,
         worker_argv: Callable[[str], list[str]]) -> int:
    """`--workers N`: N trial processes of `sweep worker_argv(NAME)`, started first, import their
    libraries while the study is set up here once; then they join it. Afterwards what a dead
    worker left is replayed. Returns the exit code."""
    from sweep import backend
    from sweep.errors import ConfigError
    from sweep.runner.pool import Workers
    from sweep.runner.setup import config_for, prepare
    from sweep.runner.study import view, view_mode
    from sweep.runner.summary import summarize
    from sweep.tracking.sync import replay_unfinished

    if n_trials is not None:
        raise ConfigError("--n-trials", [f"cannot be combined with --workers {workers}: workers run "
                                         "until the study has search.n_trials (or its plan) done"])
    # a KERAS_BACKEND that cannot be used: one line here, not one per worker
    chosen = backend.choose()
    log.info("keras on %s for %d workers (%s); each names its device as it starts", chosen.name, workers, chosen.why)
    cfg = config_for(study, stores)  # a bad study file: one line, before any worker starts
    # the workers' imports (TensorFlow's 3-4 s each) overlap this process's set-up of the study,
    # which a 2-core CPU otherwise spent with a core idle (benchmarks/README.md, the fixed study)
    pending = None
    try:
        with stops_held():  # a Ctrl-C meanwhile is raised here once they have started, and ends them
            pending = Workers(worker_argv(cfg.study), stores, workers, threads, events=view_mode() == "live")
        p = prepare(cfg, stores, stores.service.workers)  # under the command's stop_on_signals()
    except BaseException:
        if pending is not None:
            pending.abandon()
        raise
    try:
        if p.todo <= 0:
            pending.abandon()
            log.info("study %s is complete; nothing to run", p.cfg.study)
            code = 0
        else:
            # the parent's view of its workers: their trials in one live footer on a terminal
            pending.release(p.cfg.study, view(p, workers=workers))
            code = pending.supervise(complete=lambda: has_all(p.study, stores))
        if code == 0:  # complete, and every worker of this command gone: nothing of theirs is still queued
            if replay_unfinished(p.tracker, p.study.get_trials(deepcopy=False)):
                summarize(p)  # a model a dead worker left may be the best: promoted now
    finally:
        p.tracker.flush(timeout=30)  # runs of dead workers' trials closed during set-up
    if code == 0 and p.todo > 0:
        log.info("done: study %s; `sweep status %s` and `sweep best %s`", p.cfg.study, p.cfg.study, p.cfg.study)
    return code


def has_all(study: optuna.Study, stores: Stores) -> bool:
    """Whether a study and, where its file has a `confirm` section, its confirmation have every
    trial they need (`sweep run --workers N` exits 0 then, whatever happened to a worker)."""
    from sweep.record import CONFIRMED_BY, load_study, stored_config
    from sweep.runner.worker import has_all as study_has_all

    cfg = stored_config(study)
    if not study_has_all(study, cfg):
        return False
    if cfg.confirm is None:
        return True
    confirmation = study.user_attrs.get(CONFIRMED_BY)
    if confirmation is None:
        return False
    c = load_study(confirmation, stores)
    return study_has_all(c, stored_config(c))


def done(s: optuna.Study) -> None:
    """The command's last line for a study it ran."""
    from sweep.runner.worker import done as done_trials

    trials = s.get_trials(deepcopy=False)
    waiting = sum(t.state.name == "WAITING" for t in trials)
    log.info("done: %d trial(s) finished in study %s%s; `sweep best %s` shows the best", len(done_trials(trials)),
             s.study_name, f" ({waiting} waiting)" if waiting else "", s.study_name)


def then_confirm(search: optuna.Study, stores: Stores, join: bool = False) -> optuna.Study | None:
    """A study file's `confirm` section: once the search is complete, its finalists are trained on
    fresh seeds in the same command (sweep/runner/confirm.py). Returns the confirmation's study, or
    None when there is none (no section, or the search still has trials to run)."""
    from sweep.record import stored_config
    from sweep.runner import confirm
    from sweep.runner import study

    cfg = stored_config(search)
    if cfg.confirm is None:
        return None
    if not confirm.complete(search.get_trials(deepcopy=False), cfg):
        log.info("study %s is not complete yet: its finalists are confirmed once it is", search.study_name)
        return None
    confirmation, finals = confirm.prepare(search.study_name, stores, None)
    say_finalists(search.study_name, confirmation, finals)
    return study.join(confirmation, stores) if join else study.run(confirmation, storage=stores)


def say_finalists(search: str, confirmation: Any, finals: list[Any]) -> None:
    seeds = confirmation.search.seed
    log.info("confirming study %s in study %s: %s; %d seeds each (%d..%d), none of them used by the search",
             search, confirmation.study, ", ".join(f"{f.label} (trial {f.trial}, {f.value:.4f})" for f in finals),
             confirmation.search.repeats, seeds, seeds + confirmation.search.repeats - 1)
