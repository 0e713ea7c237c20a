"""Models waiting for MLflow, kept on disk until their upload goes through.

A trial's model is saved on the training thread and uploaded by the background sender
(sweep/tracking/sender.py), which retries while the tracking server is away. A worker that dies
first (SIGKILL while the server was down: found by tests/chaos.py, where it was the best
configuration's model, so `@best` could not be registered) or that exits while the upload is
still queued took the model with it: the sender's queue is in memory, and Optuna does not hold
weights, so `sweep sync` could replay the run but never the model. MLflow has nothing for this
(its async logging queue covers metrics, params and tags, and is in memory too).

So the model is saved into a folder of its own here, `ROOT/<study>/trial-<N>/`, beside
`meta.json` (the study, the trial, its start and the step its metrics link at) and a `lock` file
that the writing process holds (`fcntl.flock`) until the upload is sent, then removes the folder.
The OS lets go of the lock when that process ends, however it ends: a folder whose lock can be
taken belongs to a dead process, and its model is for the replay to upload
(sweep/tracking/sync.py), while a live worker's is left to it. ROOT is
`$XDG_CACHE_HOME/sweep/outbox` (`~/.cache/sweep/outbox`): every process of one machine finds
it. A worker in a container keeps it only on a volume; where nothing kept it, the model is lost
and the trial's run says so (README, "When a worker dies").
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from sweep.storage import cache_dir
from sweep.urls import mask

log = logging.getLogger(__name__)


def root() -> Path:
    return cache_dir() / "outbox"


def _folder(storage: str, study: str) -> Path:
    # one folder per study and Optuna storage: studies of one name in two storages stay apart
    key = hashlib.sha256(f"{mask(storage)}\n{study}".encode()).hexdigest()[:16]
    return root() / f"{_safe(study)}-{key}"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:60]


def _stamp(started: dt.datetime | None) -> str | None:
    return started.isoformat() if started is not None else None


class Entry:
    """One waiting model: `model` is its folder as `mlflow.keras.save_model` writes it. Held (its
    lock taken) by the process that made or claimed it, until `sent` or `release`."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.model = path / "model"
        self._fd: int | None = fd

    @property
    def meta(self) -> dict[str, Any]:
        try:
            return json.loads((self.path / "meta.json").read_text())
        except (OSError, ValueError):
            return {}

    def sent(self) -> None:
        """The model reached MLflow (or is not wanted): the folder goes."""
        shutil.rmtree(self.path, ignore_errors=True)
        self.release()

    def release(self) -> None:
        """Let go of the lock and keep the folder: the replay takes it from here."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def create(storage: str, study: str, trial: int, step: int, started: dt.datetime | None) -> Entry:
    """A new entry for `trial`'s model, held by this process (an older one for the trial, left by
    an earlier run of it, is replaced)."""
    path = _folder(storage, study) / f"trial-{trial}"
    old = claim(storage, study, trial)
    if old is not None:
        old.sent()
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / "lock", os.O_CREAT | os.O_RDWR, 0o600)  # not inherited by children
    fcntl.flock(fd, fcntl.LOCK_EX)
    (path / "meta.json").write_text(json.dumps({"study": study, "trial": trial, "step": step,
                                                "started": _stamp(started), "pid": os.getpid()}))
    return Entry(path, fd)


def claim(storage: str, study: str, trial: int) -> Entry | None:
    """The entry of `trial` if one is waiting and its writer is gone; None otherwise."""
    path = _folder(storage, study) / f"trial-{trial}"
    try:
        fd = os.open(path / "lock", os.O_RDWR)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # its writer is alive (or another replay has it)
        os.close(fd)
        return None
    if not path.exists():  # sent and removed between our open and our lock
        os.close(fd)
        return None
    return Entry(path, fd)


def waiting(storage: str, study: str) -> list[int]:
    """The trials of `study` with a model left by a process that is gone."""
    out = []
    folder = _folder(storage, study)
    for path in sorted(folder.glob("trial-*")) if folder.is_dir() else []:
        try:
            n = int(path.name.removeprefix("trial-"))
        except ValueError:
            continue
        entry = claim(storage, study, n)
        if entry is not None:
            entry.release()
            out.append(n)
    return out


def matches(entry: Entry, started: dt.datetime | None) -> bool:
    """Whether `entry` was left by the trial that started at `started` (a study deleted and made
    again under its name numbers its trials from 0 again)."""
    return entry.meta.get("started") == _stamp(started)
