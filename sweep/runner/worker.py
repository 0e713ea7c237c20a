"""One worker's trial loop: take the next trial, train it with a heartbeat, tell Optuna.

Our own ask-and-tell loop rather than `study.optimize`, for three things `optimize` cannot do:
- take a trial and check the study's budget atomically (under the study lock), so workers that
  ask together never get a surplus trial and a sampled study trains exactly `n_trials`;
- keep the heartbeat alive through a database outage (`liveness.Heartbeat`);
- stop cleanly on SIGTERM as on Ctrl-C (the trial ends FAIL, marked interrupted, and is run
  again on resume: the policy is sweep/lifecycle.py's), and survive a `tell` that meets a dead
  connection.
Stale trials of dead workers are failed and re-queued by Optuna's own `fail_stale_trials`.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import socket
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence, TypeVar, Union

from sweep.errors import TrialFailed
from sweep.lifecycle import given_worker_name, hold_stop, release_stop, trial_process
from sweep.record import state_name  # noqa: F401 (sweep.runner.status reads it from here)

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from sweep.config import SearchConfig, StudyConfig

log = logging.getLogger(__name__)
CHANGE_POLL_SECONDS = 0.25  # how often a worker with nothing to take looks whether the running trials changed

T = TypeVar("T")
# what an objective returns: one value, or one per metric of a study of several
Values = Union[float, Sequence[float]]


def worker_name() -> str:
    """How this process is named on its trials and in `sweep status`: one name for a chain of
    processes that hand over to each other (sweep/runner/handover.py), that of the command's."""
    route = trial_process()
    pid = route.supervisor if route is not None else os.getpid()
    return given_worker_name() or f"{socket.gethostname()}-{pid}"


def done(trials: list[T]) -> list[T]:
    """Finished trials that took their place in the study for good: COMPLETE, PRUNED and FAIL,
    less interrupted ones (Ctrl-C, SIGTERM: run again on resume) and stale ones a retry replaced.
    Optuna's trials, or `sweep.peek.Brief`s (whose state is its name)."""
    from sweep.record import INTERRUPTED, counts_as_done
    from sweep.runner.liveness import superseded

    gone = superseded(trials)
    return [t for t in trials if t.number not in gone and counts_as_done(state_name(t), t.user_attrs.get(INTERRUPTED))]


def target(search: SearchConfig, plan: list[Any] | None) -> int:
    """Trials a study wants done: its explicit plan (configs, grid) times repeats, or `n_trials`."""
    return len(plan) * search.repeats if plan is not None else search.n_trials or 0


def has_all(study: optuna.Study, cfg: StudyConfig) -> bool:
    """Whether `study` has everything it needs: none of its trials waiting or running, and as many
    done for good as its target."""
    from sweep import search

    trials = study.get_trials(deepcopy=False)
    if any(state_name(t) in ("WAITING", "RUNNING") for t in trials):
        return False
    return len(done(trials)) >= target(cfg.search, search.plan(cfg.search))


def budget_used(trials: list[FrozenTrial]) -> int:
    """Places taken in a sampled study's budget: trials done for good, and running ones."""
    from optuna.trial import TrialState

    return len(done(trials)) + sum(t.state == TrialState.RUNNING for t in trials)


def _more(study: optuna.Study, cfg: StudyConfig, explicit_plan: bool) -> bool:
    """Whether the study has a trial left to take (read under the study lock)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.WAITING for t in trials):
        return True  # a waiting trial (a retry of a dead worker's) replaces a superseded one: it always runs
    return not explicit_plan and budget_used(trials) < (cfg.search.n_trials or 0)


def _next_trial(study: optuna.Study, cfg: StudyConfig, explicit_plan: bool) -> optuna.Trial | None:
    """Under the study lock: the next trial, or None when the study has all it needs."""
    if not _more(study, cfg, explicit_plan):
        return None
    hold_stop()  # released by _run_one, or by work() when the ask fails
    with warnings.catch_warnings():
        # "Heartbeat of storage is supposed to be used with Study.optimize": this loop is the
        # one `optimize` would run, with our own heartbeat (see module docstring)
        warnings.simplefilter("ignore", UserWarning)
        return study.ask()


def fail_stale(study: optuna.Study) -> None:
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _tell(study: optuna.Study, trial: optuna.Trial, state: Any, value: Values | None) -> None:
    """Tell Optuna how the trial ended; a stop that lands meanwhile is raised once it is told."""
    import optuna

    hold_stop()
    try:
        # a study of several metrics is told a sequence of values (Optuna's `values`), in order
        study.tell(trial, value, state=state, skip_if_finished=True)
    except optuna.exceptions.UpdateFinishedTrialError:
        # another worker declared it stale during a database outage and queued it again
        log.warning("trial %d was marked FAIL by another worker while this one trained it; "
                    "its retry stands", trial.number)
    finally:
        release_stop()


def _run_one(study: optuna.Study, trial: optuna.Trial, objective: Callable[[optuna.Trial], Values],
             heartbeat: Any) -> None:
    """Train a trial just taken (a stop held since the ask) and tell Optuna how it ended."""
    import optuna
    from optuna.trial import TrialState

    from sweep.errors import ServiceError
    from sweep.record import INTERRUPTED

    with heartbeat(trial._trial_id):  # a stop is still held while it starts
        try:
            release_stop()  # a stop that came while the trial was taken lands here, where it is told
            value = objective(trial)
        except optuna.TrialPruned:
            _tell(study, trial, TrialState.PRUNED, None)
            return
        except TrialFailed:
            _tell(study, trial, TrialState.FAIL, None)
            return
        except ServiceError:
            # the database is gone: leave the trial RUNNING; without heartbeats it goes stale
            # and is retried by whichever worker runs next
            raise
        except optuna.exceptions.UpdateFinishedTrialError:
            # its heartbeats could not be written through a database outage longer than
            # grace_period, so another worker marked it FAIL and queued it again: the retry stands,
            # and this worker takes its next trial (tests/chaos.py: it died with a traceback)
            log.warning("trial %d was marked FAIL by another worker while this one trained it (no heartbeat "
                        "for grace_period); its retry stands", trial.number)
            return
        except BaseException as e:
            # Ctrl-C/SIGTERM or a bug: never leave it RUNNING. A stop, wherever it landed (before the
            # objective began, sampling, the MLflow run being created, training), is marked
            # interrupted: run again on resume, not a plain FAIL
            with contextlib.suppress(Exception):
                if isinstance(e, KeyboardInterrupt):
                    trial.set_user_attr(INTERRUPTED, True)
                _tell(study, trial, TrialState.FAIL, None)
            raise
    _tell(study, trial, TrialState.COMPLETE, value)


@dataclass(frozen=True)
class Hooks:
    """What the trial loop calls around its trials, as keras-tuner's tuner calls `on_trial_begin`
    and `on_trial_end`: the one place where the loop meets the rest of a worker."""

    # a trial begins: a context kept while it runs (its heartbeat, sweep/runner/liveness.py)
    heartbeat: Callable[[int], contextlib.AbstractContextManager] = lambda trial_id: contextlib.nullcontext()
    # a trial ended and Optuna was told: the terminal's line, the models kept (sweep/tracking/models.py)
    trial_end: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = ()
    # stop: between two trials (`ran` of them here), why this process should give way to a fresh
    # one (sweep/runner/handover.py), or None
    hand_over: Callable[[int], str | None] | None = None
    # under the study lock before each take: queue again what other workers left interrupted
    requeue: Callable[[optuna.Study], None] | None = None


def work(study: optuna.Study, objective: Callable[[optuna.Trial], Values], cfg: StudyConfig, hooks: Hooks,
         lock: Callable[[], contextlib.AbstractContextManager], *, poll_seconds: float,
         n_trials: int | None = None) -> int:
    """Run trials until the study has what it needs (or `n_trials` ran here). Returns how many ran.

    Each trial is taken under `lock()`, the study lock that workers share (sweep.storage.study_lock).
    With nothing left to take while other workers' trials run, wait for them, looking again every
    `poll_seconds`: if one of those workers dies, its trial goes stale and this worker runs the
    retry. When `hooks.hand_over` gives a reason, `HandOver` is raised, but only while the study
    has a trial left to take.
    """
    from sweep import search
    from sweep.runner.handover import HandOver

    explicit_plan = search.plan(cfg.search) is not None
    ran = 0
    waiting_for_others = False
    why, asked = None, 0
    while n_trials is None or ran < n_trials:
        fail_stale(study)
        if hooks.hand_over is not None and ran > asked:  # once per trial run, not per wait
            asked, why = ran, hooks.hand_over(ran)
        try:
            with lock():
                if hooks.requeue is not None:
                    hooks.requeue(study)
                if why is not None and _more(study, cfg, explicit_plan):
                    raise HandOver(ran, why)
                trial = _next_trial(study, cfg, explicit_plan)
        except BaseException:
            release_stop()  # a stop kept meanwhile goes before the error in hand (HandOver, an outage)
            raise
        if trial is None:
            running = _running(study)
            if n_trials is not None or not running:
                break
            if not waiting_for_others:
                log.info("nothing left to take; waiting for running trial(s) %s of other workers "
                         "(retried here if their worker dies)", ", ".join(map(str, running)))
                waiting_for_others = True
            _await_change(study, running, poll_seconds)
            continue
        waiting_for_others = False
        ran += 1
        try:
            _run_one(study, trial, objective, hooks.heartbeat)
        finally:
            gc.collect()
        frozen = study._storage.get_trial(trial._trial_id)
        for trial_end in hooks.trial_end:
            trial_end(study, frozen)
    return ran


def _await_change(study: optuna.Study, running: list[int], seconds: float) -> None:
    """Wait up to `seconds` (the look for stale trials and trials to take), less once the running
    trials are no longer `running`: the last one ending is when this worker can leave, and the
    pool's command with it (it looked every 2 s, up to 2 s of a study's wall clock)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(CHANGE_POLL_SECONDS, left))
        if _running(study) != running:
            return


def _running(study: optuna.Study) -> list[int]:
    """The numbers of the study's trials running now, in any worker."""
    from optuna.trial import TrialState

    return [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
