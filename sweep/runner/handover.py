"""A trial process hands over to a fresh one before its memory grows past a bound.

Why this exists: TensorFlow keeps about 14 MB of every model a process builds, whatever
`keras.backend.clear_session()`, `gc.collect()` or another allocator do (optuna/optuna #1178,
#3050; benchmarks/README.md), so a process that runs thousands of trials grows until the machine
kills it. Only a new process gives the memory back. The trial loop stops between two trials once
its process ran `workers.trials_per_process` trials or grew `workers.max_memory_growth_mb` past
its size after its first trial; it writes what its successor needs into a small state file and
exits with `HANDOVER_EXIT`; its supervisor (`sweep.runner.pool`, the process the user started)
starts the same command again (the route: sweep/lifecycle.py), which loads the data once, joins
the study and goes on. No trial is interrupted: the study sees one worker that took a pause, its
trial count and MLflow runs are those of an unbroken run, and the terminal shows the same lines.

Optuna's `study.optimize` and the standard library's `max_tasks_per_child` pools cannot do it:
a pool's worker returns a result to its caller, while ours must keep its terminal, its signals
(Ctrl-C marks the running trial interrupted) and the study lock; the supervisor is the worker
process of the many-workers design, restarted on one exit code.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from sweep.lifecycle import trial_process

log = logging.getLogger(__name__)

HANDOVER_EXIT = 75  # EX_TEMPFAIL: "try again": the supervisor starts the command again
KEEP_SECONDS = 200  # trial durations carried to the successor (its ETA starts from them)


class HandOver(Exception):
    """Raised by the trial loop between two trials: this process is done, a fresh one goes on."""

    def __init__(self, ran: int, reason: str) -> None:
        super().__init__(reason)
        self.ran = ran
        self.reason = reason


@dataclass
class State:
    """What one process of a supervised chain tells the next."""

    trials: int = 0  # trials run by the earlier processes of this chain (for `--n-trials`)
    processes: int = 1  # this process's place in the chain
    trial_seconds: list[float] = field(default_factory=list)
    best: str = ""  # the terminal's "best so far", as the last trial line said it


def supervised() -> bool:
    """Whether this process runs trials for a supervisor (and so may hand over)."""
    return trial_process() is not None


def arrived() -> State | None:
    """The state the previous process of this chain left, or None for the first one."""
    route = trial_process()
    if route is None:
        return None
    try:
        raw = json.loads(route.state.read_text() or "null")
    except (OSError, ValueError):
        return None
    return State(**raw) if raw else None


def leave(before: State | None, ran: int, trial_seconds: list[float], best: str) -> None:
    """Write the successor's state, whole or not at all (a rename). `trial_seconds`: every trial
    duration the terminal's ETA knows of, the earlier processes' included."""
    route = trial_process()
    assert route is not None, "only a trial process hands over"
    path = route.state
    state = State(trials=(before.trials if before else 0) + ran,
                  processes=(before.processes if before else 1) + 1,
                  trial_seconds=trial_seconds[-KEEP_SECONDS:], best=best)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state.__dict__))
    os.replace(tmp, path)


def rss_mb() -> float | None:
    """This process's resident memory now, in MB (Linux), else None."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class Bound:
    """When a process has run enough trials: `trials` of them, or grown `growth_mb` past its
    size after its first trial (the data set, TensorFlow and the first model are in by then)."""

    def __init__(self, trials: int | None, growth_mb: float | None,
                 memory: Callable[[], float | None] = rss_mb) -> None:
        self.trials = trials
        self.growth_mb = growth_mb
        self.memory = memory
        self.base: float | None = None

    def due(self, ran: int) -> str | None:
        """Why this process should hand over after `ran` trials, or None."""
        now = self.memory()
        if ran == 1 or self.base is None:
            self.base = now
        log.debug("after %d trial(s) here: %s MB resident", ran, f"{now:.0f}" if now is not None else "?")
        if self.trials is not None and ran >= self.trials:
            return f"{ran} trials run (workers.trials_per_process)"
        if self.growth_mb is not None and now is not None and self.base is not None \
                and now - self.base >= self.growth_mb:
            return (f"resident memory grew {now - self.base:.0f} MB since its first trial "
                    f"(workers.max_memory_growth_mb {self.growth_mb:g})")
        return None
