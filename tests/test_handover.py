"""A trial process hands over to a fresh one at its bound (sweep/runner/handover.py).

Real `sweep` commands, real Keras training, real processes: the study must reach exactly its
trials, one MLflow child run each, none run twice, with the same terminal lines as an unbroken run.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from helpers import alive, process_tree, study_dict, write_study
from mlflow import MlflowClient
from optuna.trial import TrialState

from sweep.runner import objective as obj
from sweep.runner.handover import Bound


def _children(pid: int) -> set[int]:
    """The trial processes `pid` started, known by the route on their command line
    (sweep/lifecycle.py): not a library's own short-lived helper (one was caught once, with no
    bound, while two test files ran at once)."""
    out = set()
    for child in process_tree().get(pid, []):
        try:
            if b"--trial-process" in Path(f"/proc/{child}/cmdline").read_bytes().split(b"\x00"):
                out.add(child)
        except OSError:
            continue  # it has already exited: not a trial process, which lives for trials
    return out


def _sampled(data: Path, n: int, epochs: int = 1) -> dict[str, Any]:
    d = study_dict(data, configs=None, sampler="random", n_trials=n, seed=3,
                   space={"activation": ["relu", "elu", "tanh"]})
    d["study"] = "handover"
    d["training"].update(epochs=epochs, batch_size=100)
    d["tracking"] = {"keep_models": "all"}
    return d


def _run(folder: Path, study: Path, workers: str, *args: str) -> tuple[subprocess.CompletedProcess, set[int]]:
    """`sweep run` in `folder` with the `workers:` settings given; the trial processes it started."""
    folder.mkdir(exist_ok=True)
    (folder / "mlflow.yaml").write_text(f"workers: {workers}\n")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen([sys.executable, "-m", "sweep", "run", str(study), *args], cwd=folder, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: set[int] = set()
    while proc.poll() is None:
        seen |= _children(proc.pid)
        time.sleep(0.1)
    out = proc.stdout.read()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out), seen


def _shape(out: str, folder: Path) -> list[str]:
    """The terminal's lines without what differs between two runs of one study (times, ids,
    values, the sampled params, the folder)."""
    lines = []
    for line in out.replace(str(folder), "FOLDER").splitlines():
        line = re.sub(r"^\d\d:\d\d:\d\d \[[^\]]*\] ", "", line)
        line = re.sub(r"\[[^\]]*\]", "[]", line)
        line = re.sub(r"[0-9a-f]{32}", "ID", line)
        lines.append(re.sub(r"\d+(\.\d+)?", "N", line))
    return lines


def test_a_study_that_hands_over_every_3_trials_runs_each_trial_once(tmp_path: Path, tiny_npz: Path) -> None:
    study = write_study(tmp_path, _sampled(tiny_npz, 7))
    handed, processes = _run(tmp_path / "handover", study, "{trials_per_process: 3}")
    assert handed.returncode == 0, handed.stdout
    assert len(processes) == 3, (processes, handed.stdout)  # trials 0-2, 3-5, 6: each in a fresh process
    # every process closed both stores as it exited (a process of sweep's own leaves without the
    # interpreter's teardown, sweep.lifecycle.leave, once sweep.storage.close_all has closed every
    # connection): SQLite removes a store's write-ahead log with its last connection, and nothing
    # is left outside the files (checked before this test opens them)
    assert sorted(p.name for p in (tmp_path / "handover").glob("sweep-*.db-*")) == []

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'handover' / 'sweep-optuna.db'}")
    trials = optuna.load_study(study_name="handover", storage=storage).get_trials()
    assert [t.number for t in trials] == list(range(7))
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 7
    run_ids = [t.user_attrs[obj.RUN_ID] for t in trials]
    assert len(set(run_ids)) == 7

    client = MlflowClient(f"sqlite:///{tmp_path / 'handover' / 'sweep-mlflow.db'}")
    (exp,) = [e for e in client.search_experiments() if e.name == "handover"]
    runs = client.search_runs([exp.experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert sorted(r.info.run_id for r in children) == sorted(run_ids)  # one child run per trial, no more
    assert {r.info.status for r in runs} == {"FINISHED"}
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.data.metrics["trials_complete"] == 7

    # the same lines as a run whose one process trains all 7
    whole, processes = _run(tmp_path / "whole", study, "{trials_per_process: null, max_memory_growth_mb: null}")
    assert whole.returncode == 0, whole.stdout
    assert not processes  # no bound: the trials ran in the process the user started
    assert _shape(handed.stdout, tmp_path / "handover") == _shape(whole.stdout, tmp_path / "whole"), \
        (handed.stdout, whole.stdout)
    assert handed.stdout.count("trial(s) to run") == 1 and "Traceback" not in handed.stdout


def test_memory_bound_hands_over_and_n_trials_counts_across_processes(tmp_path: Path, tiny_npz: Path) -> None:
    """A 1 MB budget: every trial's model grows the process past it, so each trial after the
    first two runs in a fresh process; `--n-trials` still counts the chain's trials."""
    study = write_study(tmp_path, _sampled(tiny_npz, 10))
    r, processes = _run(tmp_path / "run", study, "{trials_per_process: null, max_memory_growth_mb: 1}",
                        "--n-trials", "4", "-v")
    assert r.returncode == 0, r.stdout
    assert "resident memory grew" in r.stdout and "workers.max_memory_growth_mb 1" in r.stdout
    assert len(processes) >= 2, r.stdout
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'run' / 'sweep-optuna.db'}")
    trials = optuna.load_study(study_name="handover", storage=storage).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4, r.stdout


def test_killing_the_command_kills_its_trial_process(tmp_path: Path, tiny_npz: Path) -> None:
    """SIGKILL of `sweep run` (no handler runs) takes its trial process with it: the trial is left
    RUNNING to go stale and be retried, as when one process did everything; no orphan trains on."""
    study = write_study(tmp_path, _sampled(tiny_npz, 1, epochs=200))
    proc = subprocess.Popen([sys.executable, "-m", "sweep", "run", str(study)], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = tmp_path / "sweep-optuna.db"
    deadline = time.monotonic() + 180
    epochs = 0
    while not epochs and time.monotonic() < deadline:  # read-only: Optuna would race to create tables
        assert proc.poll() is None
        time.sleep(0.5)
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
                epochs = c.execute("SELECT COUNT(*) FROM trial_intermediate_values").fetchone()[0]
        except sqlite3.OperationalError:  # not created yet
            pass
    assert epochs, "no trial started training"
    (child,) = _children(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(child), "the trial process outlived the command"
    s = optuna.load_study(study_name="handover", storage=f"sqlite:///{db}")
    assert s.trials[0].state == TrialState.RUNNING


def test_bound_reasons() -> None:
    rss = iter([500.0, 510.0, 520.0, 760.0])
    b = Bound(trials=10, growth_mb=250, memory=lambda: next(rss))
    assert [b.due(n) for n in (1, 2, 3)] == [None, None, None]
    why = b.due(4)
    assert "grew 260 MB since its first trial" in why and "workers.max_memory_growth_mb 250" in why
    by_count = Bound(trials=2, growth_mb=None, memory=lambda: 100.0)
    assert by_count.due(1) is None and "2 trials run (workers.trials_per_process)" in by_count.due(2)
    never = Bound(trials=None, growth_mb=None, memory=lambda: 1e9)
    assert all(never.due(n) is None for n in range(1, 50))
    no_proc = Bound(trials=None, growth_mb=10, memory=lambda: None)  # no /proc: only the count applies
    assert no_proc.due(5) is None


@pytest.mark.parametrize("field, value", [("trials_per_process", "0"), ("max_memory_growth_mb", "-5"),
                                          ("trials_per_process", "many")])
def test_bad_bound_exits_2_naming_the_field(tmp_path: Path, tiny_npz: Path, field: str, value: str) -> None:
    study = write_study(tmp_path, _sampled(tiny_npz, 1))
    (tmp_path / "mlflow.yaml").write_text(f"workers: {{{field}: {value}}}\n")
    r = subprocess.run([sys.executable, "-m", "sweep", "run", str(study)], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert f"workers.{field}" in r.stderr and value in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "sweep-optuna.db").exists()


# --- how a process of sweep's own ends (sweep.lifecycle.leave) ---

_LEAVE = """
import atexit, sys, threading
from pathlib import Path
from sweep import lifecycle

out = Path(sys.argv[1])

class Late:
    def __del__(self):  # run by the interpreter's teardown, which frees module globals
        (out / "teardown").write_text("x")

late = Late()
atexit.register(lambda: (out / "atexit").write_text("x"))
if "trains" in sys.argv:
    lifecycle.leave_quickly()
running = threading.Event()  # a non-daemon thread that runs until `leave` has returned
if "thread" in sys.argv:
    threading.Thread(target=running.wait, args=(60,)).start()
lifecycle.leave(7, lambda: (out / "closed").write_text("x"))
running.set()
print("returned", flush=True)
"""


@pytest.mark.parametrize("case", ["trains", "other", "thread"])
def test_a_command_that_trains_leaves_after_its_exit_steps_without_the_teardown(tmp_path: Path, case: str) -> None:
    args = {"trains": ["trains"], "other": [], "thread": ["trains", "thread"]}[case]
    r = subprocess.run([sys.executable, "-c", _LEAVE, str(tmp_path), *args], capture_output=True, text=True,
                       timeout=60, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    made = sorted(p.name for p in tmp_path.iterdir())
    if case == "trains":
        # what a usual exit runs first (atexit: MLflow's queues, the console's drain), the stores
        # closed, the status kept; the teardown after that skipped
        assert (r.returncode, r.stdout, made) == (7, "", ["atexit", "closed"]), (r, made)
    else:
        # a process that is not one of sweep's commands that train, or one whose non-daemon thread
        # still runs (the usual exit waits for it): the usual exit, teardown and all
        assert (r.returncode, r.stdout, made) == (0, "returned\n", ["atexit", "teardown"]), (r, made)


def test_close_all_closes_every_store_this_process_opened(tmp_path: Path) -> None:
    from sweep.runner.setup import open_storage
    from sweep.settings import WorkerSettings
    from sweep.storage import close_all

    optuna_db, mlflow_db = tmp_path / "o.db", tmp_path / "m.db"
    for db in (optuna_db, mlflow_db):
        with sqlite3.connect(db) as conn:
            conn.execute("PRAGMA journal_mode=WAL")  # kept in the file, as sweep's stores are
    rdb = open_storage(f"sqlite:///{optuna_db}", WorkerSettings())
    optuna.create_study(study_name="s", storage=rdb).enqueue_trial({"x": 1})
    client = MlflowClient(f"sqlite:///{mlflow_db}")
    client.create_run(client.create_experiment("e"))
    assert sorted(p.name for p in tmp_path.glob("*-wal")) == ["m.db-wal", "o.db-wal"]  # connections open
    close_all()
    # the last connection to each closed: SQLite folded its log back into the store
    assert sorted(p.name for p in tmp_path.glob("*-wal")) == []
    assert len(optuna.load_study(study_name="s", storage=rdb).trials) == 1  # and they open again on demand
