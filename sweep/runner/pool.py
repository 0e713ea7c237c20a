"""`sweep run --workers N`: N local `sweep worker` processes on one study, each restarted when it
hands over to a fresh process at its memory bound (sweep/runner/handover.py); `supervise` does
the same for the one process of a plain `sweep run` or `sweep worker`.

The study is set up once here (validated, created, its parent run opened, the plan enqueued)
while the workers import their libraries; they then only join it by name, exactly as `sweep
worker` does on other machines. Store URLs travel in the environment, never on a command line
where `ps` would show a password.
A worker process rather than a thread: TensorFlow holds the GIL in Python callbacks, and a
killed process is the fault the heartbeat already covers.

On the embedded default the workers share the two SQLite files: Optuna's RDB storage keeps its
heartbeat there as on PostgreSQL, the study lock is a file lock beside the file, and each write
waits its turn (sweep.storage.SQLITE_BUSY_SECONDS, write_ahead). Optuna's JournalFileBackend,
its own answer for one host, was not taken: it has no heartbeat, so a killed worker's trial
would never be retried, and `sweep best`/`status` read the study's tables directly (sweep/peek.py).
One machine only: SQLite's locks do not hold across network filesystems (use PostgreSQL).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
from typing import IO, Callable

from sweep.lifecycle import (ENV_WORKER_NAME, child_environment, gated, stop_children, threads_chosen,
                             trial_process_command)
from sweep.runner.handover import HANDOVER_EXIT
from sweep.runner.progress import ENV_MODE, View, read_event
from sweep.storage import ENV_OPTUNA, ENV_TRACKING, Stores

log = logging.getLogger(__name__)

POLL_SECONDS = 0.2  # how often the supervisor looks at its workers (a hand-over waits this long)


def default_threads(workers: int) -> int:
    """The cores shared out between workers. One small CNN does not keep two cores busy: two
    1-thread processes trained 1.21x the samples/s of one 2-thread process (benchmarks/README.md)."""
    return max(1, (os.cpu_count() or 1) // workers)


class Workers:
    """`workers` trial processes of `sweep ARGV` (`sweep worker STUDY ...`, as sweep.cli words it),
    each with `threads` TensorFlow threads (default: the cores shared out), started before the
    study is set up. Each imports its libraries (TensorFlow: 3-4 s) while this process sets the
    study up, then waits at its start gate (sweep.lifecycle.await_go) until `release`; `abandon`
    kills them while they wait, having opened nothing. A fresh process after a hand-over joins at
    once. Their stderr comes through this process, a line at a time, so lines from N workers never
    interleave mid-line; under a live view, they send their progress as events to its footer."""

    def __init__(self, argv: list[str], stores: Stores, workers: int, threads: int | None, events: bool) -> None:
        if threads is None and not threads_chosen():  # else the user's, or the flag's
            threads = default_threads(workers)
        self.slots = []
        self.view: View | None = None  # given at `release`
        for i in range(workers):
            env = child_environment({ENV_OPTUNA: stores.optuna, ENV_TRACKING: stores.tracking,
                                     ENV_WORKER_NAME: f"w{i}"}, threads)
            if events:
                env[ENV_MODE] = "events"
            self.slots.append(_Slot(argv, env, view=None, pipe=True, gate=True))

    def release(self, study: str, view: View | None) -> None:
        """The study is set up: the workers go on, their progress to `view`."""
        self.view = view
        for slot in self.slots:
            slot.view = view
            slot.go()
        log.info("study %s: %d workers started (pids %s)", study, len(self.slots),
                 " ".join(str(s.proc.pid) for s in self.slots))

    def abandon(self) -> None:
        """The set-up failed, or found nothing to run: the waiting workers go, unheard."""
        for slot in self.slots:
            slot.muted = True  # a worker's own stop line, on the Ctrl-C its process group had too
            with contextlib.suppress(OSError):
                slot.proc.kill()
            slot.proc.wait()
            slot.close()

    def supervise(self, complete: Callable[[], bool] | None = None) -> int:
        """Wait for all. Returns an exit code: 0 when all finished, or when `complete()` says the
        study has all it needs although a worker failed or was killed on the way (the others took
        its trial over); else the first failing worker's code; 130/143 after Ctrl-C/SIGTERM."""
        try:
            return _supervise(self.slots, complete)
        finally:
            if self.view is not None:
                self.view.close()


def supervise(argv: list[str], env: dict[str, str]) -> int:
    """`sweep run` or `sweep worker` of one process: the same command (`argv`, after `sweep`) runs
    in a child that hands over to a fresh one at its memory bound (sweep/runner/handover.py). The
    child has this process's terminal, so what the user sees is what it prints; this process
    adds one line only if the child is killed, and exits with the child's code."""
    return _supervise([_Slot(argv, env, view=None, pipe=False)])


class _Slot:
    """One worker's place: its process, and the fresh one that takes over when it hands over."""

    def __init__(self, argv: list[str], env: dict[str, str], view: View | None, pipe: bool, gate: bool = False) -> None:
        fd, self.state = tempfile.mkstemp(prefix="sweep-handover-", suffix=".json")
        os.close(fd)
        self.cmd, self.env, self.view, self.pipe = trial_process_command(argv, self.state), env, view, pipe
        self.readers: list[threading.Thread] = []
        self.muted = False  # its lines are no longer said
        self.start(gate)

    def start(self, gate: bool = False) -> None:
        # started from the main thread: the child's PR_SET_PDEATHSIG follows the thread that forked it
        self.proc = subprocess.Popen(self.cmd, env=gated(dict(self.env)) if gate else self.env,
                                     stdin=subprocess.PIPE if gate else None,
                                     stderr=subprocess.PIPE if self.pipe else None)
        if self.pipe:
            reader = threading.Thread(target=_forward, args=(self.proc.stderr, self), daemon=True)
            reader.start()
            self.readers.append(reader)

    def go(self) -> None:
        """Open the start gate of a worker started before its study was set up."""
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):  # it died meanwhile: its exit code tells
            self.proc.stdin.write(b"go\n")
            self.proc.stdin.close()

    def poll(self) -> int | None:
        """The slot's exit code once its worker is done for good; a hand-over starts the next."""
        code = self.proc.poll()
        if code == HANDOVER_EXIT:
            log.debug("worker %d handed over; starting a fresh one", self.proc.pid)
            self.start()
            return None
        return code

    def close(self) -> None:
        for r in self.readers:
            r.join(timeout=5)
        with contextlib.suppress(OSError):
            os.unlink(self.state)


def _supervise(slots: list[_Slot], complete: Callable[[], bool] | None = None) -> int:
    codes: dict[int, int] = {}
    try:
        while len(codes) < len(slots):
            for i, slot in enumerate(slots):
                if i not in codes and (code := slot.poll()) is not None:
                    codes[i] = code
                    if code < 0:  # killed by a signal this process did not send (OOM, kill -9)
                        _say(f"sweep: worker process {slot.proc.pid} was killed by "
                             f"{signal.Signals(-code).name}; its trial is retried once it goes stale")
            running = [s for i, s in enumerate(slots) if i not in codes]
            if running:  # returns as the first of them exits: a one-process command ends with it
                with contextlib.suppress(subprocess.TimeoutExpired):
                    running[0].proc.wait(POLL_SECONDS)
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        procs = [s.proc for s in slots]
        if len(slots) > 1:
            log.warning("stopping %d workers: running trials are marked interrupted and run again on resume",
                        sum(p.poll() is None for p in procs))
        stop_children(procs, signum)  # the policy: sweep/lifecycle.py
        return 128 + int(signum)
    finally:
        for slot in slots:
            slot.close()
    bad = [c for c in codes.values() if c != 0]
    if bad and complete is not None and complete():
        log.info("the study is complete although %d of %d worker(s) ended with an error or a signal: "
                 "the others took their trials over", len(bad), len(slots))
        return 0
    return (128 - bad[0] if bad[0] < 0 else bad[0]) if bad else 0


def _say(line: str) -> None:
    """One whole line on this process's console (above its footer), or on stderr."""
    from sweep.console import current

    console = current()
    if console is not None:
        console.line(line)
    else:
        sys.stderr.write(line + "\n")


def _forward(stream: IO[bytes], slot: _Slot) -> None:
    """A worker's stderr: progress events to its slot's view, every other line printed whole."""
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        event = read_event(line)
        if event is not None:
            if slot.view is not None:
                slot.view.handle(event.pop("worker", "?"), event)
        elif not slot.muted:
            _say(line)
    stream.close()
