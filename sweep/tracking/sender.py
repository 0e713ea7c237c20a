"""The background sender: MLflow calls leave the training thread, in order, retried with backoff.

We write our own rather than use MLflow's `log_batch(..., synchronous=False)`
(mlflow/utils/async_logging/async_logging_queue.py, MLflow 3.17): that queue covers only
metrics, params and tags (not creating or terminating runs, nor artifacts), hands batches to a
pool of 10 threads (so a run's batches may land out of order), is unbounded, and when a batch
still fails after the HTTP client's own retries it logs an error and drops it: nothing replays it.

Here one daemon thread sends operations first in, first out (so per run, in order), retries an
operation until it goes through (exponential backoff, capped), drops only what the server
rejects for good or what does not fit in the bounded queue, and counts what it dropped per
trial: Optuna has all of it, and `sweep sync STUDY` replays it.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from typing import Callable, Collection

from sweep.errors import first_line

log = logging.getLogger(__name__)

MAX_QUEUED = 10_000  # operations; an epoch's metrics are one operation
BACKOFF_FIRST = 0.5  # seconds
BACKOFF_MAX = 30.0
SERVER_ERROR_ATTEMPTS = 5
REPLAY = "replay"  # a request the server keeps failing (500) must not block the rest forever


class NoRun(Exception):
    """The run an operation belongs to was never created (its creation was dropped)."""


class Op:
    """One unit of work for one run: a callable making one or more MLflow calls, safe to retry."""

    __slots__ = ("fn", "what", "trial", "final", "done", "sent")

    def __init__(self, fn: Callable[[], None], what: str, trial: int | None, final: bool) -> None:
        self.fn = fn
        self.what = what
        self.trial = trial
        self.final = final  # the trial's run is closed by this one: the trial can be replayed after it
        self.done = False  # sent, or given up
        self.sent = False


def _permanent(e: Exception, attempts: int) -> bool:
    """Whether retrying cannot help: the server rejected the request itself."""
    from mlflow.exceptions import MlflowException, RestException

    if isinstance(e, NoRun):
        return True
    if isinstance(e, MlflowException):
        status = e.get_http_status_code()
        if 400 <= status < 500 and status != 429:
            return True
        if isinstance(e, RestException) and status >= 500:
            return attempts >= SERVER_ERROR_ATTEMPTS
    # unreachable, timed out, locked database, ...: the outage kind, retried until it ends
    return False


class Sender:
    """A queue and one daemon thread sending its operations to MLflow."""

    def __init__(self, name: str, max_queued: int = MAX_QUEUED,
                 on_drained: Callable[[set[int] | None], Collection[int]] | None = None) -> None:
        self.name = name
        self.max_queued = max_queued
        # called on the sender thread once the queue has drained after drops: replays those
        # trials (None: every finished trial) and returns the ones it made complete
        self.on_drained = on_drained
        self.healthy = True  # the last attempt went through
        self.unsent: dict[int | None, int] = {}  # trial number (None: no trial) -> operations given up
        self._dirty = False  # something was given up, or such a trial ended, since the last replay
        self._queue: deque[Op] = deque()
        self._busy = False
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None

    def submit(self, fn: Callable[[], None], what: str, trial: int | None = None, final: bool = False) -> Op:
        """Queue an operation; never blocks. A full queue drops it (counted for replay)."""
        op = Op(fn, what, trial, final)
        with self._cv:
            if len(self._queue) >= self.max_queued:
                self._give_up(op, "the queue is full")
                return op
            self._queue.append(op)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=f"sweep-mlflow-{self.name}", daemon=True)
                self._thread.start()
            self._cv.notify_all()
        return op

    def wait(self, op: Op, timeout: float) -> bool:
        """Wait until `op` is sent, but not past `timeout` and not while MLflow is unreachable."""
        with self._cv:
            self._cv.wait_for(lambda: op.done or not self.healthy, timeout)
            return op.sent

    def flush(self, timeout: float) -> bool:
        """Wait up to `timeout` for the queue to drain. True if nothing is queued or was dropped."""
        if self.unsent and self.on_drained is not None:
            # the trials have ended by now: one more replay of what was given up
            with self._cv:
                self._dirty = True
            self.submit(lambda: None, REPLAY)
        with self._cv:
            self._cv.wait_for(lambda: not (self._queue or self._busy), timeout)
            return not (self._queue or self._busy or self.unsent)

    def pending(self) -> tuple[int, list[int]]:
        """Operations queued or given up, and the trials they belong to."""
        with self._cv:
            trials = {op.trial for op in self._queue} | set(self.unsent)
            count = len(self._queue) + sum(self.unsent.values())  # the op being sent is still queued
        return count, sorted(t for t in trials if t is not None)

    def _give_up(self, op: Op, why: str) -> None:
        # caller holds self._cv
        op.done = True
        self.unsent[op.trial] = self.unsent.get(op.trial, 0) + 1
        self._dirty = True
        if self.unsent[op.trial] == 1:  # once per trial: a long outage can drop thousands
            log.warning("MLflow: gave up on %s (%s); `sweep sync %s` will replay it", op.what, why, self.name)
        self._cv.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._queue)
                op = self._queue[0]
                self._busy = True
            self._send(op)
            with self._cv:
                self._queue.popleft()
                if op.final and self.unsent:
                    self._dirty = True  # a trial ended: those given up may be replayable now
                drained = not self._queue and self.healthy and self._dirty
                self._busy = drained
                self._cv.notify_all()
            if drained:
                self._replay()
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()

    def _send(self, op: Op) -> None:
        attempts = 0
        while True:
            attempts += 1
            try:
                op.fn()
            except Exception as e:  # noqa: BLE001 - whatever the client raises, training goes on
                reason = first_line(e)
                if _permanent(e, attempts):
                    with self._cv:
                        self._give_up(op, reason)
                    return
                with self._cv:
                    if self.healthy:
                        log.warning("MLflow unreachable (%s): %s; logging is queued and retried in the "
                                    "background, training goes on", op.what, reason)
                    self.healthy = False
                    self._cv.notify_all()  # release waiters: nobody waits on an outage
                delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (attempts - 1))
                time.sleep(delay * random.uniform(0.8, 1.2))
                continue
            with self._cv:
                if op.what != REPLAY:  # a replay marker makes no call: it says nothing of the server
                    if not self.healthy:
                        log.warning("MLflow reachable again; sending %d queued operation(s)", len(self._queue) - 1)
                    self.healthy = True
                op.done = op.sent = True
                self._cv.notify_all()
            return

    def _replay(self) -> None:
        if self.on_drained is None:
            return
        with self._cv:
            self._dirty = False
            keys = set(self.unsent)
        trials = None if None in keys else keys
        try:
            done = set(self.on_drained(trials))
        except Exception as e:  # noqa: BLE001 - a failed replay is tried again after the next drain
            with self._cv:
                self._dirty = True
            reason = first_line(e)
            log.warning("MLflow: replaying trial(s) %s failed: %s; `sweep sync %s` will do it",
                        "all" if trials is None else sorted(trials), reason, self.name)
            return
        with self._cv:
            for t in done:
                self.unsent.pop(t, None)
            if trials is None:
                self.unsent.pop(None, None)
            self._cv.notify_all()
