"""What a running study shows: the running trial(s), epoch, batch, current metric, ETA.

A Keras callback per trial turns training into events (trial start, batch, epoch, trial end);
a `View` shows them in one of three ways:
- `live` (stderr is a terminal): a footer redrawn in place, one row per worker, above it one
  line per finished trial (Keras' and Optuna's progress bars both assume they own the terminal,
  and a study is many trials over many processes, so neither fits);
- `plain` (a pipe, CI, a log file): one whole line per epoch, as Keras' `verbose=2`;
- `events` (a worker of `sweep run --workers N` whose parent is live): events as marked lines
  on stderr, which the parent reads and shows in its own footer.
`-v` adds the epoch lines, with every metric, in every mode.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from sweep.console import Console
from sweep.training import numeric

if TYPE_CHECKING:
    from sweep.config import SearchConfig

log = logging.getLogger("sweep.progress")

MARK = "\x1esweep-progress "  # starts an event line from a worker process
ENV_MODE = "SWEEP_PROGRESS"  # live | plain | events; set for the workers by their parent
BATCH_EVERY_SECONDS = 0.25  # live footers redraw at most this often: the loss read syncs the device

Event = dict[str, Any]


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _metrics_text(metrics: dict[str, float], first: list[str], every: bool) -> str:
    """`first` (the loss and the study's metric), then with `every` the rest in Keras' order."""
    chosen = [k for k in first if k in metrics]
    if every:
        chosen += [k for k in metrics if k not in chosen and k != "epoch_seconds"]
    return " ".join(f"{k} {metrics[k]:.4f}" for k in chosen)


@dataclass
class _Running:
    trial: int
    label: str
    epochs: int
    started: float = field(default_factory=time.monotonic)
    epoch: int = 0  # epochs finished
    step: int = 0
    steps: int | None = None
    loss: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    epoch_seconds: list[float] = field(default_factory=list)


class View:
    """The study's progress as this process shows it; fed events by `callback` or a parent."""

    def __init__(self, console: Console | None, mode: str, *, study: str, target: int, done: int,
                 metric: str, workers: int = 1) -> None:
        self.console = console
        self.mode = mode
        self.study = study
        self.target = target
        self.done = done
        self.metric = metric
        self.workers = workers
        # `-v`, as the command set sweep's logging up: every metric of an epoch, not the chosen few
        self.verbose = log.isEnabledFor(logging.DEBUG)
        self.best = ""
        self.running: dict[str, _Running] = {}
        self.trial_seconds: list[float] = []
        self.started = time.monotonic()
        self._lock = threading.RLock()  # a parent's view is fed by one reader thread per worker

    @property
    def batches(self) -> bool:
        """Whether batch events are wanted: only a live footer shows them."""
        return self.mode in ("live", "events")

    def handle(self, worker: str, event: Event) -> None:
        with self._lock:
            self._handle(worker, event)

    def _handle(self, worker: str, event: Event) -> None:
        kind = event["event"]
        if self.mode == "events" and self.console is not None:
            self.console.raw(MARK + json.dumps({"worker": worker, **event}) + "\n")
        if kind == "trial":
            self.running[worker] = _Running(event["trial"], event["label"], event["epochs"])
        elif worker in self.running:
            r = self.running[worker]
            if kind == "batch":
                r.step, r.steps, r.loss = event["step"], event.get("steps"), event.get("loss")
            elif kind == "epoch":
                r.epoch, r.step = event["epoch"] + 1, 0
                r.metrics = event["metrics"]
                r.epoch_seconds.append(event["seconds"])
                if self.mode == "plain" or self.verbose:
                    self._epoch_line(worker, r)
            elif kind == "end":
                self.running.pop(worker)
                self.trial_seconds.append(event["seconds"])
        if kind == "end":
            self.done = event.get("done", self.done + 1)
            self.best = event.get("best", self.best)
        self.redraw()

    def _epoch_line(self, worker: str, r: _Running) -> None:
        who = f"[{worker}] " if self.mode == "live" and self.workers > 1 else ""
        log.info("%strial %d epoch %d/%d: %s (%.1fs) | %s", who, r.trial, r.epoch, r.epochs,
                 _metrics_text(r.metrics, ["loss", self.metric], self.verbose), r.epoch_seconds[-1],
                 self._summary())

    def eta(self) -> float | None:
        """Seconds until the study has `target` trials: what the running trials have left, then the
        rest at the mean trial time (or, before any trial finished, the running one's epoch rate),
        spread over the workers."""
        per_trial = sum(self.trial_seconds) / len(self.trial_seconds) if self.trial_seconds else None
        left = 0.0
        for r in self.running.values():
            if r.epoch_seconds:
                # a trial's own epoch rate says more about its end than other trials' mean
                mean_epoch = sum(r.epoch_seconds) / len(r.epoch_seconds)
                left += mean_epoch * (r.epochs - r.epoch)
                if per_trial is None:
                    so_far = max(time.monotonic() - r.started, sum(r.epoch_seconds))
                    per_trial = so_far + mean_epoch * (r.epochs - r.epoch)
            elif per_trial is not None:
                left += max(0.0, per_trial - (time.monotonic() - r.started))
            else:
                return None
        queued = max(0, self.target - self.done - len(self.running))
        if queued and per_trial is None:
            return None
        return (left + queued * (per_trial or 0.0)) / max(1, self.workers)

    def _summary(self) -> str:
        eta = self.eta()
        parts = [f"{self.done}/{self.target} done"]
        if self.best:
            parts.append(self.best)
        parts.append(f"ETA {duration(eta)}" if eta is not None else "ETA -")
        return " · ".join(parts)

    def footer(self) -> list[str]:
        rows = []
        for worker, r in sorted(self.running.items()):
            who = f"{worker}  " if self.workers > 1 else ""
            last = f" · {self.metric} {r.metrics[self.metric]:.4f}" if self.metric in r.metrics else ""
            if r.epoch >= r.epochs:
                doing = f"{r.epochs}/{r.epochs} epochs{last} · testing, logging"
            else:
                batch = (f" · batch {r.step}/{r.steps}" if r.steps else f" · batch {r.step}") if r.step else ""
                loss = f" · loss {r.loss:.4f}" if r.loss is not None and r.step else ""
                doing = f"epoch {r.epoch + 1}/{r.epochs}{batch}{loss}{last}"
            rows.append(f"{who}trial {r.trial} {r.label} · {doing} · {duration(time.monotonic() - r.started)}")
        rows.append(f"study {self.study}: {self._summary()}")
        return rows

    def redraw(self) -> None:
        if self.mode == "live" and self.console is not None:
            self.console.footer(self.footer())

    def close(self) -> None:
        if self.console is not None:
            self.console.footer([])


def read_event(line: str) -> Event | None:
    """An event line a worker wrote, or None for an ordinary line."""
    if not line.startswith(MARK):
        return None
    try:
        return json.loads(line[len(MARK):])
    except ValueError:
        return None


def callback(emit: Callable[[Event], None], trial: int, label: str, epochs: int, batches: bool) -> Any:
    """A Keras callback that reports one trial's training as events. With `batches`, the loss is
    read at most every BATCH_EVERY_SECONDS (reading it waits for the step to finish)."""
    import keras

    class Progress(keras.callbacks.Callback):
        def on_train_begin(self, logs: dict | None = None) -> None:
            self._steps = (self.params or {}).get("steps")
            self._last = 0.0
            emit({"event": "trial", "trial": trial, "label": label, "epochs": epochs})

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            metrics = numeric(logs)
            emit({"event": "epoch", "epoch": epoch, "metrics": metrics,
                  "seconds": metrics.get("epoch_seconds", 0.0)})

    if batches:
        def on_train_batch_end(self: Any, batch: int, logs: dict | None = None) -> None:
            now = time.monotonic()
            if now - self._last < BATCH_EVERY_SECONDS:
                return
            self._last = now
            emit({"event": "batch", "step": batch + 1, "steps": self._steps,
                  "loss": numeric(logs).get("loss")})

        Progress.on_train_batch_end = on_train_batch_end  # only then does Keras call batch hooks

    return Progress()


def trial_done(view: View, search: SearchConfig, worker: str) -> Callable[[Any, Any], None]:
    """After each trial: its line (state, values or reason, params, time, the best so far: with
    repeats, the best configuration by mean) and the study's count of finished trials for the footer."""
    from sweep import ranking
    from sweep.record import FAIL_REASON
    from sweep.runner.worker import done
    from sweep.tracking.describe import short

    metrics = search.metrics

    def callback(study: Any, trial: Any) -> None:
        params = ", ".join(f"{k}={short(v)}" for k, v in trial.params.items())
        if trial.values is not None:
            outcome = " ".join(f"{m}={v:.4f}" for m, v in zip(metrics, trial.values))
        elif trial.user_attrs.get(FAIL_REASON):
            outcome = f"reason: {trial.user_attrs[FAIL_REASON]}"
        else:
            last = trial.last_step
            outcome = f"at epoch {last + 1}" if last is not None else ""
        secs = trial.duration.total_seconds() if trial.duration else 0.0
        if ranking.repeated(search):
            top = ranking.best_configuration(study.get_trials(deepcopy=False), search.direction)
            best = f"best: {top.label} mean {top.mean:.4f} (n={top.n})" if top else "best: none yet"
        elif len(metrics) > 1:  # no single best trial: Optuna's Pareto front (best_trial raises)
            front = sorted(t.number for t in study.best_trials)
            best = f"Pareto front: trial(s) {', '.join(map(str, front))}" if front else "Pareto front: none yet"
        else:
            try:
                best = f"best: trial {study.best_trial.number} {study.best_value:.4f}"
            except ValueError:
                best = "best: none yet"
        n_done = len(done(study.get_trials(deepcopy=False)))
        # the footer first: the line then prints above a footer without this trial
        view.handle(worker, {"event": "end", "trial": trial.number, "seconds": secs, "done": n_done,
                             "best": best})
        log.info("trial %d %s %s [%s] %.1fs | %s | %d/%d done", trial.number, trial.state.name, outcome, params,
                 secs, best, n_done, max(view.target, n_done))

    return callback
