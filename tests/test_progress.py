"""sweep/runner/progress.py: what `sweep run` shows while trials train, on a terminal and in a pipe."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import POSTGRES_URL
from helpers import RENDEZVOUS, postgres_database, rendezvous, fail_without_postgres, study_dict, write_study

from sweep.console import Console
from sweep.runner import progress
from sweep.runner.progress import View

ROOT = Path(__file__).resolve().parents[1]
TIME = r"\d\d:\d\d:\d\d "


def _view(mode: str = "live", **kw: Any) -> tuple[View, io.StringIO]:
    out = io.StringIO()
    args = {"study": "s", "target": 4, "done": 0, "metric": "val_accuracy", **kw}
    return View(Console(out, live=mode == "live"), mode, **args), out


def _epoch(epoch: int, seconds: float, acc: float) -> dict[str, Any]:
    return {"event": "epoch", "epoch": epoch, "seconds": seconds,
            "metrics": {"loss": 0.5, "val_accuracy": acc, "val_loss": 0.4, "epoch_seconds": seconds}}


def test_footer_shows_trial_epoch_batch_metric_and_eta() -> None:
    view, _ = _view()
    view.handle("w0", {"event": "trial", "trial": 3, "label": "leaky_relu-0.1", "epochs": 5})
    assert view.footer()[-1] == "study s: 0/4 done · ETA -"  # nothing measured yet
    view.handle("w0", {"event": "batch", "step": 120, "steps": 192, "loss": 0.23456})
    row = view.footer()[0]
    assert row.startswith("trial 3 leaky_relu-0.1 · epoch 1/5 · batch 120/192 · loss 0.2346 · ")
    view.handle("w0", _epoch(0, 10.0, 0.9712))
    view.handle("w0", _epoch(1, 10.0, 0.9801))
    row, summary = view.footer()
    assert row.startswith("trial 3 leaky_relu-0.1 · epoch 3/5 · val_accuracy 0.9801 · ")
    # 3 epochs left of 10 s, then 3 more trials of about (20 s so far + 30 s): 30 + 3 x 50
    assert summary == "study s: 0/4 done · ETA 3m00s"
    view.handle("w0", {"event": "end", "trial": 3, "seconds": 52.0, "done": 1, "best": "best: trial 3 0.9801"})
    assert view.footer() == ["study s: 1/4 done · best: trial 3 0.9801 · ETA 2m36s"]  # 3 x 52 s


def test_eta_spreads_over_workers() -> None:
    view, _ = _view(workers=2)
    view.trial_seconds = [60.0]
    for w, t in (("w0", 0), ("w1", 1)):
        view.handle(w, {"event": "trial", "trial": t, "label": "relu", "epochs": 2})
        view.handle(w, _epoch(0, 30.0, 0.9))
    # each running trial has one 30 s epoch left, then 2 queued trials of 60 s, on 2 workers
    assert view.eta() == pytest.approx((30 + 30 + 2 * 60) / 2)
    rows = view.footer()
    assert rows[0].startswith("w0  trial 0 relu · epoch 2/2") and rows[1].startswith("w1  trial 1 relu")


def test_plain_mode_logs_one_line_per_epoch(caplog: pytest.LogCaptureFixture) -> None:
    view, out = _view("plain")
    with caplog.at_level("INFO", logger="sweep.progress"):
        view.handle("w0", {"event": "trial", "trial": 0, "label": "relu", "epochs": 2})
        view.handle("w0", {"event": "batch", "step": 1, "steps": 10, "loss": 2.0})
        view.handle("w0", _epoch(0, 2.0, 0.8))
    # 1 epoch of 2 s left, then 3 trials of 4 s
    assert [r.getMessage() for r in caplog.records] == [
        "trial 0 epoch 1/2: loss 0.5000 val_accuracy 0.8000 (2.0s) | 0/4 done · ETA 0m14s"]
    assert out.getvalue() == ""  # no footer, no escape codes
    view.verbose = True  # -v: every metric
    caplog.clear()
    with caplog.at_level("INFO", logger="sweep.progress"):
        view.handle("w0", _epoch(1, 1.5, 0.9))
    assert caplog.records[0].getMessage().startswith("trial 0 epoch 2/2: loss 0.5000 val_accuracy 0.9000 "
                                                     "val_loss 0.4000 (1.5s)")


def test_events_mode_writes_marked_lines_a_parent_reads() -> None:
    view, out = _view("events")
    event = {"event": "batch", "step": 7, "steps": 9, "loss": 1.25}
    view.handle("w1", event)
    line = out.getvalue()
    assert line.startswith(progress.MARK) and line.endswith("\n")
    assert progress.read_event(line.rstrip("\n")) == {"worker": "w1", **event}
    assert progress.read_event("17:00:00 [w1] trial 0 COMPLETE") is None


# --- the real command, in a pipe and in a pseudo-terminal ---------------------------------------

def _env() -> dict[str, str]:
    # the default TensorFlow log level, as a user has it: sweep must make it quiet itself
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "MLFLOW_LOGGING_LEVEL")}
    return {**env, "PYTHONPATH": str(ROOT), "TERM": "xterm"}


def _tiny_study(tmp_path: Path, tiny_npz: Path, name: str = "live") -> Path:
    d = study_dict(tiny_npz, configs=[{"activation": "relu"}, {"activation": "leaky_relu", "leaky_alpha": 0.1}])
    d["study"] = name
    d["training"]["batch_size"] = 16  # 15 batches an epoch: the footer sees a few
    return write_study(tmp_path, d)


def _in_pty(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 300) -> tuple[int, str]:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 150, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "sweep", *args], stdin=slave, stdout=slave, stderr=slave,
                            env=env, cwd=cwd)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the other side closed: the process ended
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    try:
        code = proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return code, b"".join(chunks).decode("utf-8", "replace")


def _screen_lines(out: str) -> list[str]:
    """What stays on the screen: each footer erase removes the lines drawn since the last newline."""
    lines: list[str] = [""]
    for token in re.split(r"(\r\n|\n|\r\x1b\[K|\x1b\[1A\x1b\[K)", out):
        if token in ("\r\n", "\n"):
            lines.append("")
        elif token == "\r\x1b[K":
            lines[-1] = ""
        elif token == "\x1b[1A\x1b[K":
            lines.pop()
            lines[-1] = ""
        else:
            lines[-1] += token
    return [line for line in lines if line]


def test_terminal_shows_a_live_footer_and_leaves_clean_lines(tmp_path: Path, tiny_npz: Path) -> None:
    code, out = _in_pty(["run", str(_tiny_study(tmp_path, tiny_npz))], _env(), tmp_path)
    assert code == 0, out
    # the live view: the running trial, its epoch, batch and loss, the study's count and ETA
    assert re.search(r"trial 0 relu · epoch 1/2 · batch \d+/15 · loss \d\.\d{4} · 0m\d\ds\r\n"
                     r"study live: 0/2 done · ETA ", out), out
    assert re.search(r"trial 1 leaky_relu-0\.1 · epoch 2/2 .*· val_accuracy \d\.\d{4} ", out), out
    assert re.search(r"study live: 1/2 done · best: trial \d \d\.\d{4} · ETA \dm\d\ds", out), out
    # once done, the footer is gone: only whole log lines stay, in order, and no TensorFlow notice
    screen = _screen_lines(out)
    assert all(re.match(TIME, line) for line in screen), screen
    assert [re.sub(TIME, "", line).split(" ")[0:3] for line in screen if " COMPLETE " in line] == [
        ["trial", "0", "COMPLETE"], ["trial", "1", "COMPLETE"]]
    assert "1/2 done" in screen[-4] and "2/2 done" in screen[-3] and screen[-1].endswith("shows the best")
    assert "best model: models:/live@best (registered model live, version 1: trial " in screen[-2]
    assert "oneDNN" not in out and "absl" not in out and "epoch 1/2:" not in out  # epoch lines are -v's


def test_pipe_gets_one_whole_line_per_epoch_and_verbose_adds_more(tmp_path: Path, tiny_npz: Path) -> None:
    study = _tiny_study(tmp_path, tiny_npz, "piped")
    r = subprocess.run([sys.executable, "-m", "sweep", "run", str(study)], env=_env(), cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stderr and "\r" not in r.stderr
    lines = r.stderr.splitlines()
    assert all(re.match(TIME, line) for line in lines), r.stderr  # no TensorFlow or MLflow notices
    epochs = [re.sub(TIME, "", line) for line in lines if " epoch " in line and "/2:" in line]
    assert [e.split(":")[0] for e in epochs] == ["trial 0 epoch 1/2", "trial 0 epoch 2/2",
                                                 "trial 1 epoch 1/2", "trial 1 epoch 2/2"]
    assert all(re.fullmatch(r"trial \d epoch \d/2: loss \d+\.\d{4} val_accuracy \d\.\d{4} \(\d+\.\ds\) \| "
                            r"\d/2 done( · best: trial \d \d\.\d{4})? · ETA (\dm\d\ds|-)", e) for e in epochs), epochs
    # -v on a stored study: every metric of each epoch, and the debug lines
    more = tmp_path / "more"
    more.mkdir()
    r = subprocess.run([sys.executable, "-m", "sweep", "run", str(study), "-v", "--n-trials", "1"], env=_env(),
                       cwd=more, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert re.search(r"trial 0 epoch 1/2: loss \S+ val_accuracy \S+ accuracy \S+ val_loss \S+ "
                     r"dead_fraction/act_conv1 \S+ ", r.stderr), r.stderr
    assert re.search(r"\n\d\d:\d\d:\d\d done: 1 trial\(s\) finished in study piped \(1 waiting\);", r.stderr), r.stderr


@pytest.mark.postgres
def test_workers_share_one_live_footer(tmp_path: Path, tiny_npz: Path) -> None:
    if not POSTGRES_URL:
        fail_without_postgres()
    url, drop = postgres_database(POSTGRES_URL)
    try:
        # both workers' trials train at the same moment: each waits for the other at its first step
        env = {**_env(), "SWEEP_OPTUNA_STORAGE": url, **rendezvous(tmp_path)}
        d = study_dict(tiny_npz, configs=[{"activation": RENDEZVOUS}], repeats=2)
        d["study"] = "live-pool"
        d["training"]["batch_size"] = 16
        code, out = _in_pty(["run", str(write_study(tmp_path, d)), "--workers", "2"], env, tmp_path)
    finally:
        drop()
    assert code == 0, out
    # one footer row per worker, then the study's line; the workers' own lines above it, whole
    assert re.search(r"w0  trial \d .*\r\nw1  trial \d .*\r\nstudy live-pool: 0/2 done", out), out
    assert progress.MARK not in out  # events are read by the parent, never shown
    screen = _screen_lines(out)
    assert all(re.match(TIME, line) for line in screen), screen
    assert sorted(re.sub(TIME, "", line)[:4] for line in screen if " COMPLETE " in line) == ["[w0]", "[w1]"]
