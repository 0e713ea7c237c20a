"""One box, no database server: `sweep run --workers N` on the embedded default (two SQLite files).

The guarantees the PostgreSQL path gives (tests/test_workers.py) hold here too, on real worker
processes: exactly N trials with distinct draws, one MLflow child run each, the hand-over, a
`kill -9`'d worker's trial retried, Ctrl-C and resume, and no "database is locked" in any log
(`-v`: Optuna's, MLflow's and SQLAlchemy's own lines come through too).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from helpers import (RENDEZVOUS, descendants, free_port, rendezvous, study_dict, watch_study, write_study,
                     still_running)
from mlflow import MlflowClient
from optuna.trial import TrialState

from sweep.runner import objective as obj


def _settings(folder: Path, **workers: Any) -> Path:
    """mlflow.yaml with fast heartbeats (1 s, stale after 4 s) and no store: the embedded default."""
    w = {"heartbeat_interval": 1, "grace_period": 4, **workers}
    path = folder / "mlflow.yaml"
    path.write_text("workers: {" + ", ".join(f"{k}: {v}" for k, v in w.items()) + "}\n")
    return path


def _env(folder: Path, **workers: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SWEEP_OPTUNA_STORAGE", "MLFLOW_TRACKING_URI")}
    return {**env, "SWEEP_CONFIG": str(_settings(folder, **workers)), "TF_CPP_MIN_LOG_LEVEL": "3"}


def _stores(folder: Path) -> tuple[str, str]:
    return f"sqlite:///{folder / 'sweep-optuna.db'}", f"sqlite:///{folder / 'sweep-mlflow.db'}"


def _sweep(args: list[str], env: dict[str, str], cwd: Path, **kw: Any) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sweep", *args], env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def _finish(proc: subprocess.Popen, timeout: float = 400) -> str:
    try:
        return proc.communicate(timeout=timeout)[0] or ""
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"sweep did not finish within {timeout}s:\n{proc.communicate()[0]}") from None


def _wait_for(what: str, check: Callable[[], Any], proc: subprocess.Popen, timeout: float = 300) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"process ended before {what}:\n{proc.stdout.read()}")
        try:
            got = check()
        except KeyError:  # not created yet
            got = None
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _training(storage: str, name: str, at_least: int) -> list[Any]:
    running = [t for t in watch_study(storage, name).get_trials(states=(TrialState.RUNNING,))
               if t.intermediate_values]
    return running if len(running) >= at_least else []


def _children(tracking: str, experiment: str) -> list[Any]:
    client = MlflowClient(tracking)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    assert len(parents) == 1, parents
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == len(runs) - 1
    return children


def _no_lock_error(out: str) -> None:
    assert "locked" not in out.lower(), [line for line in out.splitlines() if "locked" in line.lower()]
    assert "Traceback" not in out, out


def _plan(data: Path, name: str, epochs: int, repeats: int) -> dict[str, Any]:
    d = study_dict(data, configs=[{"activation": RENDEZVOUS}], repeats=repeats)
    d["study"] = name
    d["training"].update(epochs=epochs, batch_size=100)
    return d


def test_three_workers_on_the_embedded_default_train_exactly_n_with_no_lock_error(tmp_path: Path,
                                                                                 tiny_npz: Path) -> None:
    """`sweep run --workers 3` with no server configured: 7 sampled trials, each worker handing over
    to a fresh process every 2 trials, on the two SQLite files in the working directory."""
    env = _env(tmp_path, trials_per_process=2)
    d = study_dict(tiny_npz, configs=None, sampler="random", n_trials=7, seed=5, space={
        "activation": ["leaky_relu"], "leaky_alpha": {"low": 0.01, "high": 0.5}})
    d["study"] = "box"
    d["training"].update(epochs=1, batch_size=100)
    proc = _sweep(["run", str(write_study(tmp_path, d)), "--workers", "3", "-v"], env, tmp_path)
    pids = set()
    while proc.poll() is None:
        pids |= {p for p in descendants(proc.pid) if b"\0worker\0" in _cmdline(p)}
        time.sleep(0.2)
    out = _finish(proc)
    assert proc.returncode == 0, out
    _no_lock_error(out)
    optuna_url, tracking = _stores(tmp_path)
    # the backend, said once by the pool and by each worker with its device
    assert "keras on tensorflow for 3 workers (auto: no GPU visible)" in out, out
    assert {f"[w{i}] keras" for i in range(3)} <= {line.split(" ", 1)[1][:10] for line in out.splitlines()
                                                    if " keras " in line}, out

    trials = watch_study(optuna_url, "box").get_trials()
    assert [t.number for t in trials] == list(range(7)), out  # exactly n_trials, no surplus
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 7
    alphas = [t.params["leaky_alpha"] for t in trials]
    assert len(set(alphas)) == 7, f"workers drew the same parameters: {alphas}"
    assert 2 <= len({t.user_attrs[obj.WORKER] for t in trials}) and \
        {t.user_attrs[obj.WORKER] for t in trials} <= {"w0", "w1", "w2"}
    assert len(pids) >= 4, pids  # 7 trials over 3 workers, 2 a process: one handed over at least

    runs = _children(tracking, "box")
    assert sorted(r.info.run_id for r in runs) == sorted(t.user_attrs[obj.RUN_ID] for t in trials)
    assert {r.info.status for r in runs} == {"FINISHED"}
    for name in ("sweep-optuna.db", "sweep-mlflow.db"):  # readers do not wait for a writer
        with sqlite3.connect(tmp_path / name) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _two_training(tmp_path: Path, tiny_npz: Path, name: str, epochs: int, repeats: int,
                  ) -> tuple[subprocess.Popen, dict[str, str]]:
    """`sweep run --workers 2` in its own process group (a terminal's foreground job), once two of
    its trials are mid-training together (tests/rendezvous.py), and its environment."""
    env = {**_env(tmp_path), **rendezvous(tmp_path)}
    path = write_study(tmp_path, _plan(tiny_npz, name, epochs=epochs, repeats=repeats))
    proc = _sweep(["run", str(path), "--workers", "2"], env, tmp_path, start_new_session=True)
    try:
        _wait_for("two trials mid-training", lambda: _training(_stores(tmp_path)[0], name, 2), proc)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return proc, env


def test_kill_9_of_a_worker_on_the_embedded_default_gets_its_trial_retried(tmp_path: Path,
                                                                          tiny_npz: Path) -> None:
    """`sweep run --workers 2`, one worker SIGKILLed mid-trial: the other takes its trial over, the
    study completes, and the command exits 0, having said what happened to the worker. (Storage
    apart, the same on PostgreSQL, where `sweep worker`'s own kill is tested in test_workers.)"""
    optuna_url, tracking = _stores(tmp_path)
    proc, _ = _two_training(tmp_path, tiny_npz, "box-kill", epochs=20, repeats=2)
    try:
        workers = [p for p in descendants(proc.pid) if b"\0worker\0" in _cmdline(p)]
        assert len(workers) >= 2, workers
        os.kill(workers[-1], signal.SIGKILL)
        out = _finish(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, out
    assert "killed by SIGKILL" in out and "the study is complete although 1 of 2 worker(s)" in out, out
    _no_lock_error(out)
    trials = watch_study(optuna_url, "box-kill").get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.user_attrs[obj.REPEAT] for t in complete) == [0, 1] and len(trials) == 3, out
    (dead,) = [t for t in trials if t.state == TrialState.FAIL]
    assert dead.user_attrs[obj.REPEAT] in (0, 1)  # retried with its own seed
    statuses = {r.info.run_id: r.info.status for r in _children(tracking, "box-kill")}
    assert [statuses[t.user_attrs[obj.RUN_ID]] for t in complete] == ["FINISHED"] * 2
    assert statuses[dead.user_attrs[obj.RUN_ID]] == "FAILED"  # closed by the worker that found it stale


def test_ctrl_c_of_workers_on_the_embedded_default_stops_them_and_the_study_resumes(tmp_path: Path,
                                                                                    tiny_npz: Path) -> None:
    optuna_url, tracking = _stores(tmp_path)
    proc, env = _two_training(tmp_path, tiny_npz, "box-stop", epochs=40, repeats=3)
    workers = descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)  # one Ctrl-C, to the whole foreground job
    out = _finish(proc, timeout=60)
    assert proc.returncode == 130, out
    _no_lock_error(out)
    assert still_running(workers, 10) == [], "orphan worker processes"
    trials = watch_study(optuna_url, "box-stop").get_trials()
    assert not [t.number for t in trials if t.state == TrialState.RUNNING], out
    stopped = [t for t in trials if t.state == TrialState.FAIL]
    assert len(stopped) >= 2 and all(t.user_attrs.get(obj.INTERRUPTED) for t in stopped)

    out = _finish(_sweep(["run", "box-stop", "--workers", "2"], env, tmp_path))
    _no_lock_error(out)
    trials = watch_study(optuna_url, "box-stop").get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.user_attrs[obj.REPEAT] for t in complete) == [0, 1, 2], out  # each seed once
    assert len(trials) == len(complete) + len(stopped)  # nothing surplus, nothing twice
    statuses = {r.info.run_id: r.info.status for r in _children(tracking, "box-stop")}
    assert all(statuses[t.user_attrs[obj.RUN_ID]] == "FINISHED" for t in complete)
    assert "RUNNING" not in statuses.values()

    # once more: the workers, started while the study was set up, go unheard when it has nothing to run
    again = _sweep(["run", "box-stop", "--workers", "2"], env, tmp_path)
    out = _finish(again)
    assert again.returncode == 0 and "study box-stop is complete; nothing to run" in out, out
    assert "[w0]" not in out and "[w1]" not in out and not _trial_processes_of(again.pid), out


def _trial_processes_of(supervisor: int) -> list[int]:
    """The trial processes whose command line names `supervisor` (sweep.lifecycle.trial_process_command)."""
    mark = f"--trial-process\0{supervisor}:".encode()
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and mark in _cmdline(int(p.name))]


def test_a_pool_whose_set_up_fails_leaves_no_worker_behind(tmp_path: Path, tiny_npz: Path) -> None:
    """`sweep run --workers 2` starts its workers while it sets the study up, so that their imports
    overlap the set-up. When the set-up fails (an MLflow server that is not there, for a study it
    never tracked), the workers go with it: the one line, exit 3, nothing of theirs said, none left."""
    env = {**_env(tmp_path), "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}
    d = study_dict(tiny_npz, configs=[{"activation": "relu"}], repeats=2)
    d["study"] = "box-nowhere"
    path = write_study(tmp_path, d)
    proc = subprocess.Popen([sys.executable, "-m", "sweep", "run", str(path), "--workers", "2"], env=env,
                            cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 3, err
    said = [line for line in err.splitlines() if "keras on tensorflow for 2 workers" not in line]
    assert len(said) == 1 and "cannot reach the MLflow tracking server" in said[0], err
    assert _trial_processes_of(proc.pid) == [], "worker processes left behind"


@pytest.mark.parametrize("moment", ["set-up begins", "workers start"])
def test_ctrl_c_while_a_pool_sets_its_study_up_is_one_clean_stop(tmp_path: Path, tiny_npz: Path,
                                                                   moment: str) -> None:
    """Ctrl-C to the terminal's process group while `sweep run --workers 2` sets its study up:
    as the set-up begins (its first line), and as its workers' processes appear, their Python still
    starting (a worker died there with "Fatal Python error"). The one line, exit 130, no traceback,
    nothing from a worker, and no worker left."""
    d = study_dict(tiny_npz, configs=[{"activation": "relu"}], repeats=2)
    d["study"] = "box-early"
    path = write_study(tmp_path, d)
    proc = subprocess.Popen([sys.executable, "-m", "sweep", "run", str(path), "--workers", "2"], env=_env(tmp_path),
                            cwd=tmp_path, stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stderr is not None
    first = proc.stderr.readline()  # "keras on tensorflow for 2 workers": the set-up is next
    if moment == "workers start":
        deadline = time.monotonic() + 60  # looked for as often as /proc can be read: their Python starts now
        while not _trial_processes_of(proc.pid) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGINT)
    err = first + proc.communicate(timeout=60)[1]
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Fatal" not in err and "[w" not in err, err
    assert err.count("interrupted") == 1, err
    assert _trial_processes_of(proc.pid) == [], "worker processes left behind"


_JOIN = """
import contextlib, json, sys
from sweep.runner import setup
from sweep.storage import resolve

folder, study = sys.argv[1], sys.argv[2]
stores = resolve(f"sqlite:///{folder}/sweep-optuna.db", f"sqlite:///{folder}/sweep-mlflow.db", None)
held, real = [], setup.study_lock

@contextlib.contextmanager
def lock(*args, **kwargs):
    with real(*args, **kwargs):
        before = set(sys.modules)
        yield
        held.extend(sorted(set(sys.modules) - before))

setup.study_lock = lock
setup.prepare(setup.config_for(study, stores), stores, stores.service.workers)
print(json.dumps(held))
"""


def test_a_worker_joining_a_set_up_study_imports_no_store_module_under_the_study_lock(tmp_path: Path, tiny_npz: Path) -> None:
    # every worker of a pool takes the study lock in turn as it joins: an import there (MLflow's SQL
    # store module, 0.6 s) held up every worker after it, 16 of them on the GPU box
    study = write_study(tmp_path, study_dict(tiny_npz))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    imported = []
    for process in ("sets the study up", "joins it"):  # each a fresh process, as a pool's are
        r = subprocess.run([sys.executable, "-c", _JOIN, str(tmp_path), str(study)], capture_output=True, text=True,
                           timeout=120, env=env, cwd=tmp_path)
        assert r.returncode == 0, (process, r.stderr)
        imported.append(r.stdout.strip().splitlines()[-1])
    # only the helpers of MLflow's migration scripts, which its check of an existing store's schema
    # loads (46 ms in all here, with the store's engine)
    assert [m for m in json.loads(imported[1]) if not m.startswith("mlflow.store.db.")] == [], imported[1]
