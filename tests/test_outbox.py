"""A model waiting on disk for MLflow (sweep/tracking/outbox.py) is the replay's only once the
process that wrote it is gone, however it ended: a live worker's is left to it."""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import sys

from sweep.tracking import outbox

STORAGE, STUDY = "postgresql://u:secret@127.0.0.1:5432/optuna", "waiting"
STARTED = dt.datetime(2026, 12, 4, 13, 0, 0, 123456)

WRITER = f"""
import datetime as dt, sys, time
from sweep.tracking import outbox
e = outbox.create({STORAGE!r}, {STUDY!r}, 3, step=2, started=dt.datetime.fromisoformat({STARTED.isoformat()!r}))
e.model.mkdir()
(e.model / "MLmodel").write_text("flavors: {{}}")
print("written", flush=True)
if sys.argv[1] == "exit":
    sys.exit(0)  # a clean exit with the upload still queued
time.sleep(600)
"""


def _writer(how: str) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", WRITER, how], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "written"
    return p


def test_a_live_writers_model_is_left_alone_and_a_killed_ones_is_claimed_once() -> None:
    p = _writer("sleep")
    try:
        assert outbox.waiting(STORAGE, STUDY) == []
        assert outbox.claim(STORAGE, STUDY, 3) is None
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert outbox.waiting(STORAGE, STUDY) == [3]
    entry = outbox.claim(STORAGE, STUDY, 3)
    assert entry is not None and (entry.model / "MLmodel").exists()
    assert entry.meta["step"] == 2 and outbox.matches(entry, STARTED)
    assert not outbox.matches(entry, STARTED + dt.timedelta(microseconds=1))  # another study's trial 3
    assert outbox.claim(STORAGE, STUDY, 3) is None  # held while one replay uploads it
    entry.sent()
    assert outbox.waiting(STORAGE, STUDY) == [] and not entry.path.exists()


def test_a_clean_exit_with_the_upload_queued_leaves_the_model_for_the_replay() -> None:
    p = _writer("exit")
    assert p.wait(60) == 0  # the kernel let go of its lock as it exited
    assert outbox.waiting(STORAGE, STUDY) == [3]
    entry = outbox.claim(STORAGE, STUDY, 3)
    assert entry is not None
    entry.sent()


def test_studies_of_one_name_in_two_storages_wait_apart_and_no_password_is_written() -> None:
    p = _writer("exit")
    assert p.wait(60) == 0
    assert outbox.waiting(STORAGE.replace("/optuna", "/other"), STUDY) == []
    assert not any("secret" in str(path) or "secret" in path.read_text(errors="replace")
                   for path in outbox.root().rglob("*") if path.is_file())
    entry = outbox.claim(STORAGE, STUDY, 3)
    assert entry is not None
    entry.sent()
