"""`sweep status STUDY`: trials by state and by worker, what is running and for how long, ETA.

Reads the Optuna study only (no TensorFlow, no MLflow), so it works from any machine that can
reach the database, while workers run.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sweep import record as obj
from sweep.peek import Tally
from sweep.record import load_study, state_name, stored_config
from sweep.runner.progress import duration
from sweep.runner.worker import done, target

if TYPE_CHECKING:
    from sweep.config import StudyConfig
    from sweep.storage import Stores


@dataclass
class Status:
    study: str
    target: int  # trials the study wants done: plan size x repeats, or n_trials
    done: int  # of those, done for good (see `sweep.runner.worker.done`)
    states: dict[str, int]  # every trial in the study by Optuna state
    by_worker: dict[str, dict[str, int]]
    running: list[dict[str, Any]] = field(default_factory=list)  # trial, worker, seconds, epoch
    retried: int = 0  # trials of dead workers queued again
    mean_trial_seconds: float | None = None
    eta_seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def status(study: str, storage: str | Stores | None = None) -> Status:
    """The state of `study` now, as `sweep status` prints it."""
    tally = _tally(study, storage)
    now = dt.datetime.now()
    running = [
        {"trial": t.number, "worker": t.user_attrs.get(obj.WORKER) or "-",
         "seconds": (now - t.datetime_start).total_seconds() if t.datetime_start else None,
         "epoch": t.last_step}
        for t in tally.running
    ]
    wanted = tally.target
    mean = tally.done_seconds / tally.done_timed if tally.done_timed else None
    left = max(0, wanted - tally.done)
    eta = None
    if mean is not None and left:
        eta = mean * left / max(1, len(running))
    return Status(
        study=study, target=wanted, done=tally.done, states=tally.states,
        by_worker={w: tally.by_worker[w] for w in sorted(tally.by_worker)},
        running=running, retried=tally.retried, mean_trial_seconds=mean, eta_seconds=eta,
    )


def _tally(study: str, storage: str | Stores | None) -> Tally:
    """The study counted in its tables (sweep/peek.py: a few rows, not every trial), else from
    every trial whole through Optuna; `target` always set."""
    from sweep import peek
    from sweep.record import parse_stored
    from sweep.storage import resolve

    stores = resolve(storage)  # once: the tables, else the study
    tally = peek.tally(stores.optuna, study)
    if tally is not None and tally.target is None and tally.config is not None:
        tally.target = _target(parse_stored(tally.config, study))  # a study stored before sweep.target
    if tally is not None and tally.target is not None:
        return tally
    s = load_study(study, stores)
    stored = s.user_attrs.get(obj.TARGET_ATTR)
    return counted(s.get_trials(deepcopy=False), stored if stored is not None else _target(stored_config(s)))


def counted(trials: list[Any], target: int) -> Tally:
    """What `sweep.peek.tally` counts in the database, counted here from Optuna's trials."""
    from sweep.runner.liveness import superseded

    finished = done(trials)
    by_worker: dict[str, Counter] = defaultdict(Counter)
    for t in trials:
        by_worker[t.user_attrs.get(obj.WORKER) or "-"][state_name(t)] += 1
    seconds = [(t.datetime_complete - t.datetime_start).total_seconds() for t in finished
               if t.datetime_start and t.datetime_complete]
    return Tally(states=dict(Counter(state_name(t) for t in trials)),
                 by_worker={w: dict(c) for w, c in by_worker.items()}, done=len(finished),
                 done_seconds=sum(seconds), done_timed=len(seconds),
                 running=[t for t in trials if state_name(t) == "RUNNING"], retried=len(superseded(trials)),
                 target=target)


def _target(cfg: StudyConfig) -> int:
    """Trials a study stored before `sweep.target` existed wants, from its stored config."""
    from sweep import search

    return target(cfg.search, search.plan(cfg.search))


def format_status(st: Status) -> str:
    states = ", ".join(f"{n} {k}" for k, n in sorted(st.states.items())) or "no trials yet"
    lines = [
        f"study {st.study}: {st.done}/{st.target} trials done; {states}"
        + (f"; {st.retried} retried after their worker died" if st.retried else ""),
        f"mean trial {duration(st.mean_trial_seconds)}; ETA {duration(st.eta_seconds)}"
        + (f" at {len(st.running)} running" if st.running else ""),
    ]
    if st.running:
        lines.append("running:")
        lines += [f"  trial {r['trial']:<5} {r['worker']:<24} {duration(r['seconds']):>8}  "
                  f"epoch {'-' if r['epoch'] is None else r['epoch'] + 1}" for r in st.running]
    lines.append("by worker:")
    for w, counts in st.by_worker.items():
        lines.append(f"  {w:<24} " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    return "\n".join(lines)
