"""Many workers, nothing lost: real worker processes, real kills, real PostgreSQL, a real MLflow server.

Each scenario of the many-workers issue runs end to end: `sweep` commands as subprocesses against
a PostgreSQL study and an `mlflow server` on a free loopback port. Heartbeats are fast here
(1 s, stale after 4 s) through the `workers:` section of mlflow.yaml.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import quote

import optuna
import pytest
import sqlalchemy as sa
from helpers import (RENDEZVOUS, PostgresCluster, descendants, free_port, postgres_database, recorded_test_metrics,
                     rendezvous, fail_without_postgres, still_running, study_dict, watch_study, write_study)
from mlflow import MlflowClient
from optuna.trial import TrialState

from sweep.runner import objective as obj

pytestmark = pytest.mark.postgres

POSTGRES_URL = os.environ.get("SWEEP_TEST_POSTGRES_URL")
SECRET = "w0rker-Pa55/wo?rd"  # trust auth ignores it; it must never show up anywhere
# URLs carry it percent-escaped (w0rker-Pa55%2Fwo%3Frd): a leak may show either spelling
SPELLINGS = (SECRET, quote(SECRET, safe=""))


def _leaks(text: str) -> bool:
    return any(s in text for s in SPELLINGS)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` (via sweep.server.start), shared by this module's tests."""
    from sweep.settings import ServerSettings
    from sweep.server import start

    tmp = tmp_path_factory.mktemp("mlflow-server")
    s = ServerSettings(port=free_port(), backend_store_uri=f"sqlite:///{tmp / 'mlflow.db'}",
                       artifacts_destination=str(tmp / "artifacts"))
    server = start(s, log_path=tmp / "server.log")
    yield server.url
    server.stop()


@pytest.fixture
def optuna_pg() -> Iterator[str]:
    if not POSTGRES_URL:
        fail_without_postgres()
    url, drop = postgres_database(POSTGRES_URL)
    yield sa.make_url(url).set(password=SECRET).render_as_string(hide_password=False)
    drop()


def _settings(folder: Path, **workers: Any) -> Path:
    w = {"heartbeat_interval": 1, "grace_period": 4, "storage_outage": 60, **workers}
    path = folder / "mlflow.yaml"
    path.write_text("workers: {" + ", ".join(f"{k}: {v}" for k, v in w.items()) + "}\n")
    return path


def _env(storage: str, tracking: str, settings: Path) -> dict[str, str]:
    return {**os.environ, "SWEEP_OPTUNA_STORAGE": storage, "MLFLOW_TRACKING_URI": tracking,
            "SWEEP_CONFIG": str(settings), "TF_CPP_MIN_LOG_LEVEL": "3"}


def _sweep(args: list[str], env: dict[str, str], cwd: Path, stdout: Any = subprocess.PIPE,
           **kw: Any) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sweep", *args], env=env, cwd=cwd,
                            stdout=stdout, stderr=subprocess.STDOUT, text=True, **kw)


def _finish(proc: subprocess.Popen, timeout: float = 400) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"sweep did not finish within {timeout}s:\n{out}")
    return out or ""


_study = watch_study


def _wait_for(what: str, check: Callable[[], Any], proc: subprocess.Popen | None = None,
              timeout: float = 300) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended before {what}:\n{proc.stdout.read() if proc.stdout else ''}")
        try:
            got = check()
        except KeyError:  # the study is not created yet
            got = None
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _training(storage: str, name: str, at_least: int = 1) -> list[optuna.trial.FrozenTrial]:
    """Trials RUNNING that finished an epoch (so they are mid-training), once there are enough."""
    running = [t for t in _study(storage, name).get_trials(states=(TrialState.RUNNING,))
               if t.intermediate_values]
    return running if len(running) >= at_least else []




def _runs(tracking: str, experiment: str) -> tuple[Any, list[Any]]:
    client = MlflowClient(tracking)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    assert len(parents) == 1, f"expected one parent run, got {len(parents)}"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == len(runs) - 1, "every run but the parent is one of its children"
    return parents[0], children


def _plan_study(data: Path, name: str, configs: list[str], epochs: int, **search: Any) -> dict[str, Any]:
    d = study_dict(data, configs=[{"activation": a} for a in configs], **search)
    d["study"] = name
    d["training"].update(epochs=epochs, batch_size=100)
    return d


# --- 1. SIGKILL of a worker mid-trial ---

def test_killed_worker_trial_goes_stale_and_is_retried(tmp_path: Path, tiny_npz: Path, optuna_pg: str,
                                                      mlflow_server: str) -> None:
    env = _env(optuna_pg, mlflow_server, _settings(tmp_path))
    path = write_study(tmp_path, _plan_study(tiny_npz, "killed", ["relu", "elu", "tanh"], epochs=25))
    first = _sweep(["run", str(path)], env, tmp_path)
    victim = _wait_for("a trial mid-training", lambda: _training(optuna_pg, "killed"), first)[0]
    first.kill()  # SIGKILL: no handler runs, the trial is left RUNNING
    first.communicate()
    assert _study(optuna_pg, "killed").trials[victim.number].state == TrialState.RUNNING

    out = _finish(_sweep(["worker", "killed"], env, tmp_path))
    trials = _study(optuna_pg, "killed").get_trials()
    assert trials[victim.number].state == TrialState.FAIL, out
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE, out
    assert retries[0].params == victim.params
    assert retries[0].user_attrs[obj.SEED] == victim.user_attrs[obj.SEED]  # "same params and seed"
    assert retries[0].user_attrs[obj.CONFIG_INDEX] == victim.user_attrs[obj.CONFIG_INDEX]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.params["activation"] for t in complete) == ["elu", "relu", "tanh"]
    assert len(trials) == 4  # three configs and one retry: nothing surplus
    assert f"trial {victim.number}" in out and "stopped sending heartbeats" in out

    _, runs = _runs(mlflow_server, "killed")
    by_id = {r.info.run_id: r for r in runs}
    dead = by_id[victim.user_attrs[obj.RUN_ID]]
    assert dead.info.status == "FAILED" and "heartbeats" in dead.data.tags["sweep.fail_reason"]
    assert all(r.info.status != "RUNNING" for r in runs)
    assert sorted(by_id[t.user_attrs[obj.RUN_ID]].info.status for t in complete) == ["FINISHED"] * 3


# --- 2 and 6. Four workers on one study; a password nowhere ---

def test_four_workers_train_exactly_n_distinct_trials(tmp_path: Path, tiny_npz: Path, optuna_pg: str,
                                                      mlflow_server: str) -> None:
    env = _env(optuna_pg, mlflow_server, _settings(tmp_path))
    d = study_dict(tiny_npz, configs=None, sampler="random", n_trials=6, seed=7, space={
        "activation": ["leaky_relu"], "leaky_alpha": {"low": 0.01, "high": 0.5}})
    d["study"] = "four"
    d["training"].update(epochs=1, batch_size=100)
    proc = _sweep(["run", str(write_study(tmp_path, d)), "--workers", "4", "--threads-per-worker", "2"], env,
                  tmp_path)
    seen_cmdlines = []
    seen_pids = set()
    threads = {}  # worker pid -> TensorFlow's thread and GPU memory settings in its environment
    while proc.poll() is None:  # every process of the sweep, as `ps` would show it
        for pid in [proc.pid, *descendants(proc.pid)]:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
                seen_cmdlines.append(cmdline)
                seen_pids.add(pid)
                if "\0worker\0" in cmdline:
                    environ = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
                    threads[pid] = sorted(v for v in environ if v.startswith(("TF_NUM_", "TF_FORCE_GPU", "XLA_")))
            except OSError:
                pass
        time.sleep(0.5)
    out = _finish(proc)
    assert proc.returncode == 0, out

    trials = _study(optuna_pg, "four").get_trials()
    assert len(trials) == 6, out  # exactly n_trials: no surplus trial was ever created
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6
    assert sorted(t.number for t in trials) == list(range(6))
    alphas = [t.params["leaky_alpha"] for t in trials]
    assert len(set(alphas)) == 6, f"workers drew the same parameters: {alphas}"
    assert len({t.user_attrs[obj.WORKER] for t in trials}) >= 2
    assert {t.user_attrs[obj.WORKER] for t in trials} <= {"w0", "w1", "w2", "w3"}

    client = MlflowClient(mlflow_server)
    assert sum(e.name == "four" for e in client.search_experiments()) == 1
    parent, runs = _runs(mlflow_server, "four")
    assert len(runs) == 6
    assert sorted(r.info.run_id for r in runs) == sorted(t.user_attrs[obj.RUN_ID] for t in trials)
    assert {r.info.status for r in runs} == {"FINISHED"}

    # the password: not on any command line, in the output, MLflow, or `sweep status`
    status = subprocess.run([sys.executable, "-m", "sweep", "status", "four"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stderr
    assert "6/6 trials done" in status.stdout
    assert all(t.user_attrs[obj.WORKER] in status.stdout for t in trials)
    logged = [str(r.data.params) + str(r.data.tags) for r in [parent, *runs]]
    report = subprocess.run([sys.executable, "-m", "sweep", "report", "four", "--metric", "val_accuracy",
                             "--out", str(tmp_path / "report")], env=env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert report.returncode == 0, report.stderr
    written = (tmp_path / "report" / "report.md").read_text()
    assert "Optuna storage `postgresql" in written  # the storage is named there, masked
    assert _leaks(optuna_pg)  # the workers were given the password: its absence below means something
    for text in [*seen_cmdlines, out, status.stdout, status.stderr, report.stdout, report.stderr, written,
                 *logged]:
        assert not _leaks(text)
    # the parent and its four workers were looked at (the workers by their own pids, just below)
    assert proc.pid in seen_pids and set(threads) <= seen_pids
    # --threads-per-worker 2 (4 workers on 2 cores would get 1 each by default); on a GPU each
    # worker would take memory as it needs it, not all of it at start
    assert len(threads) == 4 and all(v == ["TF_FORCE_GPU_ALLOW_GROWTH=true", "TF_NUM_INTEROP_THREADS=2",
                                           "TF_NUM_INTRAOP_THREADS=2", "XLA_PYTHON_CLIENT_PREALLOCATE=false"]
                                     for v in threads.values()), threads


def test_pool_workers_hand_over_to_fresh_processes(tmp_path: Path, tiny_npz: Path, optuna_pg: str,
                                                   mlflow_server: str) -> None:
    """Each of 2 workers gives way to a fresh process every 2 trials (sweep/runner/handover.py):
    the study still trains exactly its 7 trials, one MLflow run each, under the two worker names."""
    env = _env(optuna_pg, mlflow_server, _settings(tmp_path, trials_per_process=2))
    d = study_dict(tiny_npz, configs=None, sampler="random", n_trials=7, seed=5, space={
        "activation": ["leaky_relu"], "leaky_alpha": {"low": 0.01, "high": 0.5}})
    d["study"] = "relay"
    d["training"].update(epochs=1, batch_size=100)
    proc = _sweep(["run", str(write_study(tmp_path, d)), "--workers", "2"], env, tmp_path)
    pids = set()
    while proc.poll() is None:
        pids |= {p for p in descendants(proc.pid) if "\0worker\0" in _cmdline(p)}
        time.sleep(0.2)
    out = _finish(proc)
    assert proc.returncode == 0, out
    assert len(pids) >= 4, (pids, out)  # 7 trials, 2 a process: at least 4 processes

    trials = _study(optuna_pg, "relay").get_trials()
    assert [t.number for t in trials] == list(range(7)), out
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 7
    assert {t.user_attrs[obj.WORKER] for t in trials} <= {"w0", "w1"}
    _, runs = _runs(mlflow_server, "relay")
    assert sorted(r.info.run_id for r in runs) == sorted(t.user_attrs[obj.RUN_ID] for t in trials)
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert out.count("trial(s) to run") == 2 and "Traceback" not in out  # once per worker, not per process


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


# --- 5. Ctrl-C on `sweep run --workers 4` ---

def test_ctrl_c_stops_all_workers_and_trials_resume(tmp_path: Path, tiny_npz: Path, optuna_pg: str,
                                                    mlflow_server: str) -> None:
    # the first two trials to train wait for each other at their first step: two are mid-training
    # at once however late one worker's TensorFlow import is (tests/rendezvous.py)
    env = {**_env(optuna_pg, mlflow_server, _settings(tmp_path)), **rendezvous(tmp_path)}
    path = write_study(tmp_path, _plan_study(tiny_npz, "ctrlc", [RENDEZVOUS], epochs=40, repeats=4))
    # its own process group, as a terminal's foreground job: Ctrl-C signals the whole group
    proc = _sweep(["run", str(path), "--workers", "4"], env, tmp_path, start_new_session=True)
    _wait_for("two trials mid-training", lambda: _training(optuna_pg, "ctrlc", at_least=2), proc)
    workers = descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)  # once
    out = _finish(proc, timeout=60)
    assert proc.returncode == 130, out
    assert "Traceback" not in out
    assert still_running(workers, 10) == [], "orphan worker processes"

    trials = _study(optuna_pg, "ctrlc").get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING], out
    stopped = [t for t in trials if t.state == TrialState.FAIL]
    assert len(stopped) >= 2 and all(t.user_attrs.get(obj.INTERRUPTED) for t in stopped)
    _, runs = _runs(mlflow_server, "ctrlc")
    by_id = {r.info.run_id: r for r in runs}
    # a trial stopped before its MLflow run existed has none (tests/test_study.py covers that case)
    assert all(by_id[t.user_attrs[obj.RUN_ID]].info.status == "KILLED" for t in stopped
               if t.user_attrs.get(obj.RUN_ID))
    assert all(r.info.status != "RUNNING" for r in runs)

    out = _finish(_sweep(["run", "ctrlc", "--workers", "2"], env, tmp_path))
    trials = _study(optuna_pg, "ctrlc").get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.user_attrs[obj.REPEAT] for t in complete) == [0, 1, 2, 3], out  # each seed once
    assert len(trials) == len(complete) + len(stopped)  # nothing surplus, nothing twice


def test_sigterm_of_one_worker_marks_its_trial_interrupted_and_another_runs_it(
        tmp_path: Path, tiny_npz: Path, optuna_pg: str, mlflow_server: str) -> None:
    """One of two workers stopped mid-trial (`docker compose stop` of a replica, a Job's
    `parallelism` patched down): its trial ends interrupted and the worker still running queues
    that config again and runs it; no worker has to start for the study to be whole."""
    env = {**_env(optuna_pg, mlflow_server, _settings(tmp_path)), **rendezvous(tmp_path)}  # both train at once
    path = write_study(tmp_path, _plan_study(tiny_npz, "term", [RENDEZVOUS], epochs=20, repeats=2))
    procs = {name: _sweep([cmd, str(path)], {**env, "SWEEP_WORKER_NAME": name}, tmp_path)
             for name, cmd in (("stopped", "run"), ("kept", "worker"))}
    both = _wait_for("two trials mid-training", lambda: _training(optuna_pg, "term", at_least=2), procs["kept"])
    victim = next(t for t in both if t.user_attrs[obj.WORKER] == "stopped")
    procs["stopped"].terminate()  # what `docker compose stop` sends
    out = _finish(procs["stopped"], timeout=60)
    assert procs["stopped"].returncode == 143, out
    kept = _finish(procs["kept"])
    assert procs["kept"].returncode == 0, kept

    trials = _study(optuna_pg, "term").trials
    t = trials[victim.number]
    assert t.state == TrialState.FAIL and t.user_attrs[obj.INTERRUPTED] is True
    run = MlflowClient(mlflow_server).get_run(t.user_attrs[obj.RUN_ID])
    assert run.info.status == "KILLED"
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.user_attrs[obj.REPEAT] for t in complete) == [0, 1], kept
    again = next(t for t in complete if t.user_attrs[obj.REPEAT] == victim.user_attrs[obj.REPEAT])
    assert again.user_attrs[obj.WORKER] == "kept" and again.number > victim.number
    assert again.user_attrs[obj.SEED] == victim.user_attrs[obj.SEED]
    assert len(trials) == 3  # two runs and the one run again: nothing surplus
    assert f"trial {victim.number} was interrupted" in kept, kept


def _two_workers_mid_training(tmp_path: Path, tiny_npz: Path, storage: str, tracking: str, name: str,
                              **search: Any) -> tuple[dict[str, subprocess.Popen], Any]:
    """Workers `victim` (`sweep run FILE`) and `kept` (`sweep worker FILE`) on one study of
    Rendezvous trials, once each is mid-training on one of them; returns the victim's trial."""
    env = {**_env(storage, tracking, _settings(tmp_path)), **rendezvous(tmp_path)}
    d = study_dict(tiny_npz, **search)
    d["study"] = name
    d["training"].update(epochs=20, batch_size=100)
    path = write_study(tmp_path, d)
    procs = {who: _sweep([cmd, str(path)], {**env, "SWEEP_WORKER_NAME": who}, tmp_path)
             for who, cmd in (("victim", "run"), ("kept", "worker"))}
    both = _wait_for("two trials mid-training", lambda: _training(storage, name, at_least=2), procs["kept"])
    return procs, next(t for t in both if t.user_attrs[obj.WORKER] == "victim")


def test_a_sampled_study_reaches_n_trials_after_sigterm_to_one_worker(tmp_path: Path, tiny_npz: Path,
                                                                      optuna_pg: str, mlflow_server: str) -> None:
    """A random search of 2 trials over two workers; one is stopped with SIGTERM mid-trial. Its
    trial ends interrupted and does not count: the worker still running draws another, and the
    study ends with n_trials complete."""
    procs, victim = _two_workers_mid_training(tmp_path, tiny_npz, optuna_pg, mlflow_server, "term-sampled",
                                              configs=None, sampler="random", n_trials=2,
                                              space={"activation": [RENDEZVOUS]})
    procs["victim"].terminate()
    out = _finish(procs["victim"], timeout=60)
    assert procs["victim"].returncode == 143, out
    kept = _finish(procs["kept"])
    assert procs["kept"].returncode == 0, kept
    trials = _study(optuna_pg, "term-sampled").get_trials()
    assert trials[victim.number].state == TrialState.FAIL and trials[victim.number].user_attrs[obj.INTERRUPTED]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 2 and len(trials) == 3, kept  # n_trials complete, nothing surplus
    assert {t.user_attrs[obj.WORKER] for t in complete} == {"kept"}  # its own trial and the one drawn again


def test_a_waiting_worker_takes_over_a_killed_peers_trial(tmp_path: Path, tiny_npz: Path, optuna_pg: str,
                                                          mlflow_server: str) -> None:
    """Two workers, two runs; one worker is SIGKILLed mid-trial. The other finishes its own trial,
    finds nothing to take but the dead one's RUNNING trial, waits, and once that trial is past
    `grace_period` marks it FAIL, takes its retry (same params, same seed) and completes it: no
    new worker has to start."""
    procs, victim = _two_workers_mid_training(tmp_path, tiny_npz, optuna_pg, mlflow_server, "takeover",
                                              configs=[{"activation": RENDEZVOUS}], repeats=2)
    procs["victim"].kill()
    procs["victim"].communicate()
    kept = _finish(procs["kept"])
    assert procs["kept"].returncode == 0, kept
    trials = _study(optuna_pg, "takeover").get_trials()
    assert trials[victim.number].state == TrialState.FAIL, kept
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE, kept
    assert retries[0].user_attrs[obj.WORKER] == "kept"
    assert retries[0].user_attrs[obj.SEED] == victim.user_attrs[obj.SEED]
    assert retries[0].user_attrs[obj.REPEAT] == victim.user_attrs[obj.REPEAT]
    assert len(trials) == 3 and f"trial {victim.number}" in kept and "stopped sending heartbeats" in kept


def test_a_signal_swallowed_by_a_finalizer_is_delivered_again() -> None:
    """Ctrl-C landing in a weakref callback (SQLAlchemy has them) raises there, where Python only
    prints "Exception ignored"; the worker would train on. It is delivered again, outside."""
    import weakref

    from sweep.lifecycle import Interrupted, stop_on_signals

    class Thing:
        pass

    def finalizer(ref: object) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler runs in here

    with pytest.raises(Interrupted):
        with stop_on_signals():
            thing = Thing()
            ref = weakref.ref(thing, finalizer)  # noqa: F841
            del thing
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                time.sleep(0.01)


def test_the_echo_of_a_stop_is_dropped_after_the_handler_is_gone() -> None:
    """Ctrl-C reaches a worker twice: from the terminal's process group and from its supervisor.
    The echo may land while nested blocks unwind, or after the command's handler is gone: one stop,
    never a second KeyboardInterrupt in the clean-up (it printed a traceback in CI)."""
    from sweep.lifecycle import Interrupted, stop_on_signals

    def echo(when: str) -> None:
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
        except KeyboardInterrupt:
            pytest.fail(f"the echo {when} stopped us a second time")

    before = signal.getsignal(signal.SIGINT)
    # Python's own Ctrl-C handler as the one before, whatever pytest was started with (from a
    # script's `cmd &`, SIGINT comes ignored and Python installs none: the last check would not hold)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(Interrupted):
            with stop_on_signals():  # the command's, from its start
                try:
                    with stop_on_signals():  # the trial loop's, nested: the outer one stays
                        os.kill(os.getpid(), signal.SIGINT)
                        time.sleep(1)
                finally:
                    echo("while unwinding")
        echo("after the handler is gone")
        # any other signal still does what it did before
        with pytest.raises(KeyboardInterrupt) as raised:
            signal.getsignal(signal.SIGINT)(signal.SIGTERM, None)
        assert not isinstance(raised.value, Interrupted)
    finally:
        signal.signal(signal.SIGINT, before)


@pytest.mark.parametrize("where", ["ask", "tell"])
def test_a_stop_while_a_trial_is_taken_or_told_never_leaves_it_running(tmp_path: Path, where: str) -> None:
    """A trial is RUNNING from the moment `study.ask()` commits it. A stop that lands between that
    and the code that runs it (the study lock being released), or inside the `tell` of a trial that
    trained, left it RUNNING until its heartbeat went stale: seen twice under load, after one Ctrl-C
    to `sweep run --workers`. The stop is held for those few milliseconds and raised once the trial
    can be told: FAIL and interrupted (run again on resume) if it had not begun, COMPLETE if it had
    finished. The signal is real; only its moment is chosen, from inside Optuna's own ask or tell."""
    import functools

    from sweep import config, lifecycle
    from sweep.runner import worker
    from sweep.storage import study_lock

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="held", storage=url, direction="maximize")
    cfg = config.load(Path(__file__).resolve().parents[1] / "studies" / "quickstart.yaml")
    trained: list[int] = []

    def objective(trial: optuna.Trial) -> float:
        trained.append(trial.number)
        return 0.5

    def stop_inside(method: str) -> None:
        real = getattr(study, method)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if method == "ask":
                result = real(*args, **kwargs)  # committed: the trial is RUNNING
            # to this thread: Python runs the handler before pthread_kill returns, no sleep to wait in
            signal.pthread_kill(threading.get_ident(), signal.SIGTERM)
            return result if method == "ask" else real(*args, **kwargs)

        setattr(study, method, wrapped)

    stop_inside(where)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with pytest.raises(lifecycle.Interrupted):
            with lifecycle.stop_on_signals():
                worker.work(study, objective, cfg, worker.Hooks(),
                            functools.partial(study_lock, url, "held"), poll_seconds=0.1, n_trials=2)
    finally:
        for s, h in before.items():
            signal.signal(s, h)
    [trial] = optuna.load_study(study_name="held", storage=url).get_trials()
    if where == "ask":
        assert trained == [] and trial.state == TrialState.FAIL and trial.user_attrs[obj.INTERRUPTED] is True
    else:
        assert trained == [0] and trial.state == TrialState.COMPLETE and trial.value == 0.5


def test_a_stop_while_a_trials_mlflow_run_is_being_created_closes_that_run_as_killed(tmp_path: Path,
                                                                                     tiny_npz: Path) -> None:
    """SIGTERM (`docker compose stop` of a worker) while the trial's child run is being created:
    the stop was raised inside `TrialRun.start`, where no `run` existed yet to close, and the sender
    went on to create the run, which stayed RUNNING (tests/test_compose_stack.py saw it twice).
    The stop now waits for the run, then ends it KILLED; the trial ends FAIL, interrupted."""
    import functools

    from mlflow import MlflowClient

    from sweep import config, lifecycle, search
    from sweep.data import load
    from sweep.runner import worker
    from sweep.runner.objective import make_objective
    from sweep.storage import study_lock
    from sweep.tracking.runs import Tracker

    cfg = config.load(write_study(tmp_path, _plan_study(tiny_npz, "made", ["relu"], epochs=2, repeats=1)))
    url, tracking = f"sqlite:///{tmp_path / 'optuna.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}"
    study = optuna.create_study(study_name="made", storage=url, direction="maximize")
    study.enqueue_trial({"activation": "relu"})
    tracker = Tracker(tracking, "made")
    parent = tracker.parent_run(None, {})
    objective = make_objective(cfg, load(cfg.dataset, "test"), tracker, parent,
                               search.space_of(search.plan(cfg.search)))
    real_wait, calls = tracker.sender.wait, []

    def wait(*args: Any, **kwargs: Any) -> Any:  # the first wait is TrialRun.start's, for the run's id
        if not calls:
            # to this thread: Python runs the handler before pthread_kill returns, no sleep to wait in
            signal.pthread_kill(threading.get_ident(), signal.SIGTERM)
        calls.append(args)
        return real_wait(*args, **kwargs)

    tracker.sender.wait = wait
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with pytest.raises(lifecycle.Interrupted):
            with lifecycle.stop_on_signals():
                worker.work(study, objective, cfg, worker.Hooks(), functools.partial(study_lock, url, "made"),
                            poll_seconds=0.1, n_trials=1)
    finally:
        for s, h in before.items():
            signal.signal(s, h)
    assert tracker.flush(30)
    [trial] = optuna.load_study(study_name="made", storage=url).get_trials()
    assert trial.state == TrialState.FAIL and trial.user_attrs[obj.INTERRUPTED] is True
    [run] = MlflowClient(tracking).search_runs([tracker.experiment_id], "tags.`sweep.role` = 'trial'")
    assert run.info.status == "KILLED" and run.info.run_id == trial.user_attrs[obj.RUN_ID]


def test_ctrl_c_while_a_worker_starts_is_one_clean_stop(tmp_path: Path, tiny_npz: Path) -> None:
    """Ctrl-C before the trial loop (loading data, importing TensorFlow) and its echo from the
    supervisor: one line, exit 130, no traceback."""
    path = write_study(tmp_path, _plan_study(tiny_npz, "early", ["relu"], epochs=1))
    proc = subprocess.Popen([sys.executable, "-m", "sweep", "run", str(path)], cwd=tmp_path,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:  # said just before TensorFlow's import (3-4 s) and the first trial
        seen.append(line)
        if "trial(s) to run" in line:
            break
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    err = "".join(seen) + err
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.count("interrupted: finished trials are saved") == 1, err


def test_workers_share_a_gpu_unless_the_user_capped_memory() -> None:
    """Each worker takes GPU memory as it needs it; a user's JAX cap (which needs preallocation)
    or their own TensorFlow setting is kept, not overridden."""
    from sweep.lifecycle import share_gpu

    assert share_gpu({}) == {"TF_FORCE_GPU_ALLOW_GROWTH": "true", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    capped = share_gpu({"XLA_PYTHON_CLIENT_MEM_FRACTION": ".2", "TF_FORCE_GPU_ALLOW_GROWTH": "false"})
    assert capped == {"XLA_PYTHON_CLIENT_MEM_FRACTION": ".2", "TF_FORCE_GPU_ALLOW_GROWTH": "false"}

# --- 4. PostgreSQL restarts, or stays away, during a sweep (a throwaway cluster of our own) ---

def test_a_trial_whose_worker_died_with_its_logging_queued_is_replayed_when_the_study_completes(
        tmp_path: Path, tiny_npz: Path, optuna_pg: str) -> None:
    """The MLflow server goes away mid-trial; the trial completes in Optuna with its last epochs'
    metrics and its end still queued, and its `sweep run` is SIGKILLed while it waits for the
    server. Once the server is back, `sweep run --workers 2` of the complete study replays that
    trial: its run FINISHED with every epoch's metrics and the model the dead process left waiting
    on disk, which is registered as @best; `sweep sync` finds nothing left."""
    from sweep.settings import ServerSettings
    from sweep.server import start

    s = ServerSettings(port=free_port(), backend_store_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                       artifacts_destination=str(tmp_path / "artifacts"))
    server = start(s, log_path=tmp_path / "server1.log")
    env = _env(optuna_pg, server.url, _settings(tmp_path))
    path = write_study(tmp_path, _plan_study(tiny_npz, "queued", ["relu"], epochs=6))
    proc = _sweep(["run", str(path)], env, tmp_path, start_new_session=True)
    try:
        _wait_for("a trial mid-training", lambda: _training(optuna_pg, "queued"), proc)
        server.stop()
        _wait_for("the trial COMPLETE", lambda: [t for t in _study(optuna_pg, "queued").get_trials()
                                                 if t.state == TrialState.COMPLETE], proc)
        os.killpg(proc.pid, signal.SIGKILL)  # within its 30 s wait for the server at exit
        proc.communicate()
        server = start(s, log_path=tmp_path / "server2.log")
        client = MlflowClient(server.url)
        trial = _study(optuna_pg, "queued").get_trials()[0]
        before = client.get_run(trial.user_attrs[obj.RUN_ID])
        assert before.info.status == "RUNNING"  # what the SIGKILL left: the end never sent
        again = _sweep(["run", str(path), "--workers", "2"], env, tmp_path)
        out = _finish(again)
        assert again.returncode == 0, out
        run = client.get_run(trial.user_attrs[obj.RUN_ID])
        assert run.info.status == "FINISHED", out
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")) == list(range(6))
        # the model: uploaded from where its killed worker left it, linked to the last epoch, @best
        uri = run.data.tags["sweep.model_uri"]
        assert client.get_logged_model(uri.removeprefix("models:/")).metrics, out
        best = client.get_model_version_by_alias("queued", "best")
        assert best.tags["sweep.trial"] == str(trial.number) and best.source == uri
        synced = _sweep(["sync", "queued"], env, tmp_path)
        said = _finish(synced)
        assert synced.returncode == 0 and ": 0 run(s) created, 0 metric value(s)" in said \
            and " 0 run(s) ended, 0 model(s) uploaded" in said, said
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        server.stop()


def test_a_worker_on_a_tracked_study_waits_for_the_mlflow_server_and_a_new_study_does_not(
        tmp_path: Path, tiny_npz: Path, optuna_pg: str) -> None:
    """A resumed, handed-over or joining worker meets the MLflow server restarting: it waits for it
    (up to workers.storage_outage) and goes on, where it exited 3 at once (tests/chaos.py). A study
    MLflow never saw still fails fast, with one line: the address is likely wrong."""
    from sweep.settings import ServerSettings
    from sweep.server import start

    s = ServerSettings(port=free_port(), backend_store_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                       artifacts_destination=str(tmp_path / "artifacts"))
    server = start(s, log_path=tmp_path / "server1.log")
    env = _env(optuna_pg, server.url, _settings(tmp_path))
    path = write_study(tmp_path, _plan_study(tiny_npz, "tracked", ["relu"], epochs=1))
    first = _sweep(["run", str(path)], env, tmp_path)
    out = _finish(first)
    assert first.returncode == 0, out
    server.stop()
    again = _sweep(["run", str(path)], env, tmp_path)
    try:
        assert again.stdout is not None
        said = _wait_for("the wait for the server", lambda: [line for line in [again.stdout.readline()]
                                                              if "waiting up to 60 s" in line], again)
        assert "cannot reach the MLflow tracking server" in said[0], said
        server = start(s, log_path=tmp_path / "server2.log")
        out = _finish(again)
        assert again.returncode == 0 and "is complete (1 trials); nothing to run" in out, out
    finally:
        if again.poll() is None:
            again.kill()
        server.stop()
    t0 = time.monotonic()
    other = write_study(tmp_path, _plan_study(tiny_npz, "never-tracked", ["relu"], epochs=1), name="new.yaml")
    new = subprocess.run([sys.executable, "-m", "sweep", "run", str(other)], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert new.returncode == 3 and "cannot reach the MLflow tracking server" in new.stderr, new.stderr
    assert "waiting" not in new.stderr and time.monotonic() - t0 < 50
    assert not _leaks(new.stderr + out)


def test_every_database_call_optunas_cache_makes_is_retried() -> None:
    """A study reads and writes through Optuna's `_CachedStorage`, which calls some of RDBStorage's
    private methods; every method it calls on its backend is one that rides out an outage (one
    was not: `study.get_trials()` died in a 2 s PostgreSQL restart, found by tests/chaos.py)."""
    import inspect
    import re

    from optuna.storages import _cached_storage

    from sweep.runner.liveness import ResilientRDBStorage

    called = set(re.findall(r"self\._backend\.(\w+)\(", inspect.getsource(_cached_storage)))
    assert {"_get_trials", "get_trial", "_create_new_trial"} <= called
    # settings Optuna reads from the object, not the database
    called -= {"get_heartbeat_interval", "get_heartbeat_stale_trial_callback"}
    assert {m for m in called if not hasattr(getattr(ResilientRDBStorage, m), "__wrapped__")} == set()


@pytest.fixture
def own_postgres() -> Iterator[dict[str, Any]]:
    """A PostgreSQL cluster in a temp dir on a free loopback port, that tests may stop and start."""
    cluster = PostgresCluster()
    try:
        yield {"url": cluster.url("postgres", SECRET), "stop": cluster.stop, "start": cluster.start}
    finally:
        cluster.close()


def test_an_error_inside_the_study_lock_is_what_is_raised_when_the_database_went_away(
        own_postgres: dict[str, Any]) -> None:
    """The set-up under the study lock fails because a store went away; unlocking on a connection
    the database dropped must not replace that error with its own (tests/chaos.py: a traceback
    and exit 1 where the one line of the ServiceError was due)."""
    from sweep.errors import ServiceError
    from sweep.storage import study_lock

    with pytest.raises(ServiceError, match="the reason"):
        with study_lock(own_postgres["url"], "locked"):
            own_postgres["stop"]()
            raise ServiceError("the reason")
    own_postgres["start"]()
    with study_lock(own_postgres["url"], "locked"):  # the lock went with its session
        pass


def test_the_study_lock_waits_out_a_database_restart_and_says_one_line_after_its_wait(
        own_postgres: dict[str, Any]) -> None:
    """A worker takes the study lock before each trial: PostgreSQL stopped just then is waited for
    (up to workers.storage_outage), as its storage calls are; past that, one ServiceError line (it
    was a psycopg2 traceback and exit 1 in tests/chaos.py)."""
    import threading

    from sweep.errors import ServiceError
    from sweep.storage import study_lock

    own_postgres["stop"]()
    with pytest.raises(ServiceError) as e:
        with study_lock(own_postgres["url"], "locked", wait=1):
            pass
    said = str(e.value)
    assert "unreachable for 1 s (workers.storage_outage)" in said and "\n" not in said and not _leaks(said)
    back = threading.Timer(3, own_postgres["start"])
    back.start()
    t0 = time.monotonic()
    with study_lock(own_postgres["url"], "locked", wait=60):
        assert time.monotonic() - t0 >= 2.5
    back.join()


def test_a_worker_whose_trial_another_worker_failed_goes_on_to_the_next(tmp_path: Path, tiny_npz: Path,
                                                                       optuna_pg: str) -> None:
    """A worker's heartbeats could not be written through an outage longer than grace_period, so
    another worker marked its trial FAIL (Optuna's fail_stale_trials, run here by hand on the real
    study). The worker finds it out at its next write: one warning, and it goes on with the next
    trial (it died with a traceback in tests/chaos.py)."""
    env = _env(optuna_pg, f"sqlite:///{tmp_path / 'mlflow.db'}", _settings(tmp_path, grace_period=600))
    path = write_study(tmp_path, _plan_study(tiny_npz, "zombie", ["relu", "elu"], epochs=40))
    proc = _sweep(["run", str(path)], env, tmp_path)
    try:
        first = _wait_for("a trial mid-training", lambda: _training(optuna_pg, "zombie"), proc)[0]
        study = _study(optuna_pg, "zombie")
        study._storage.set_trial_state_values(first._trial_id, TrialState.FAIL)  # what fail_stale does
        out = _finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Traceback" not in out and f"trial {first.number} was marked FAIL by another worker" in out, out
    states = {t.number: t.state for t in _study(optuna_pg, "zombie").get_trials()}
    assert states[first.number] == TrialState.FAIL and TrialState.COMPLETE in states.values(), (states, out)


def test_database_restart_mid_trial_is_ridden_out(tmp_path: Path, tiny_npz: Path, own_postgres: dict[str, Any],
                                                  mlflow_server: str) -> None:
    storage = own_postgres["url"]
    env = _env(storage, mlflow_server, _settings(tmp_path, grace_period=30))
    path = write_study(tmp_path, _plan_study(tiny_npz, "restart", ["relu", "elu"], epochs=25))
    log = tmp_path / "run.log"
    with open(log, "w") as fh:  # read while it runs
        proc = _sweep(["run", str(path)], env, tmp_path, stdout=fh)
    victim = _wait_for("a trial mid-training", lambda: _training(storage, "restart"), proc)[0]
    own_postgres["stop"]()
    # down until a storage call has met the outage (the worker says so), however long that takes
    _wait_for("the outage met", lambda: "unreachable" in log.read_text(), proc, timeout=120)
    own_postgres["start"]()
    _finish(proc)
    out = log.read_text()
    assert proc.returncode == 0, out
    assert "unreachable" in out and "reachable again" in out  # it did meet the outage
    trials = _study(storage, "restart").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2, out
    assert len(trials[victim.number].intermediate_values) == 25  # the trial went on to the end
    assert not _leaks(out)


def test_long_database_outage_stops_with_one_line_and_resumes(tmp_path: Path, tiny_npz: Path,
                                                              own_postgres: dict[str, Any],
                                                              mlflow_server: str) -> None:
    storage = own_postgres["url"]
    env = _env(storage, mlflow_server, _settings(tmp_path, storage_outage=4))
    path = write_study(tmp_path, _plan_study(tiny_npz, "outage", ["relu", "elu"], epochs=25))
    proc = _sweep(["run", str(path)], env, tmp_path)
    _wait_for("a trial mid-training", lambda: _training(storage, "outage"), proc)
    own_postgres["stop"]()
    out = _finish(proc, timeout=120)
    assert proc.returncode == 3, out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "unreachable" in errors[0] and "run the same command again" in errors[0], out
    assert "Traceback" not in out and not _leaks(out)

    own_postgres["start"]()
    out = _finish(_sweep(["run", "outage"], env, tmp_path))
    trials = _study(storage, "outage").get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.params["activation"] for t in complete) == ["elu", "relu"], out
    assert not [t for t in trials if t.state == TrialState.RUNNING], out


# --- 3. The MLflow server goes away mid-sweep and comes back on the same port ---

def test_mlflow_outage_neither_stops_training_nor_loses_records(tmp_path: Path, tiny_npz: Path, optuna_pg: str
                                                                ) -> None:
    from sweep.settings import ServerSettings
    from sweep.server import start

    s = ServerSettings(port=free_port(), backend_store_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                       artifacts_destination=str(tmp_path / "artifacts"))
    server = start(s, log_path=tmp_path / "server-1.log")
    env = _env(optuna_pg, server.url, _settings(tmp_path))
    epochs = 20
    path = write_study(tmp_path, _plan_study(tiny_npz, "away", ["relu", "elu", "tanh"], epochs=epochs))
    proc = _sweep(["run", str(path)], env, tmp_path)
    try:
        victim = _wait_for("a trial mid-training", lambda: _training(optuna_pg, "away"), proc)[0]
        server.stop()
        # training goes on while the server is away: epochs keep arriving in Optuna
        seen = len(victim.intermediate_values)

        def trained_on() -> bool:
            t = _study(optuna_pg, "away").trials[victim.number]
            return len(t.intermediate_values) >= min(epochs, seen + 3) or t.state.is_finished()

        _wait_for("epochs trained while MLflow is down", trained_on, proc, timeout=120)
        server = start(s, log_path=tmp_path / "server-2.log")  # the same port, at once
        out = _finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    try:
        assert proc.returncode == 0, out
        trials = _study(optuna_pg, "away").get_trials()
        assert [t.state for t in trials] == [TrialState.COMPLETE] * 3, out  # nothing lost or repeated
        assert all(len(t.intermediate_values) == epochs for t in trials)

        # MLflow ends complete: params, every epoch's metrics, final metrics, state of every trial
        client = MlflowClient(server.url)
        _, runs = _runs(server.url, "away")
        assert len(runs) == 3, out
        by_trial = {int(r.data.tags["optuna.trial_number"]): r for r in runs}
        for t in trials:
            run = by_trial[t.number]
            assert run.info.status == "FINISHED" and run.data.tags["optuna.state"] == "COMPLETE"
            assert run.data.params["activation"] == t.params["activation"]
            assert run.data.params["seed"] == str(t.user_attrs[obj.SEED])
            for key in ("loss", "val_accuracy", "epoch_seconds"):
                steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
                assert steps == list(range(epochs)), (t.number, key, steps)
            assert run.data.metrics["test_accuracy"] == pytest.approx(t.user_attrs["test_accuracy"])
        # every trial's model arrived, the one trained across the outage included, and is its own
        import mlflow

        models = {m.source_run_id: m for m in client.search_logged_models(
            experiment_ids=[runs[0].info.experiment_id])}
        assert sorted(models) == sorted(r.info.run_id for r in runs)
        mlflow.set_tracking_uri(server.url)
        try:
            for t in trials:
                model = mlflow.keras.load_model(f"models:/{models[by_trial[t.number].info.run_id].model_id}")
                loss, acc = recorded_test_metrics(model, tiny_npz)  # (tiny data: losses near 0)
                assert loss == pytest.approx(t.user_attrs["test_loss"], rel=1e-3, abs=1e-5), t.number
                assert acc == pytest.approx(t.user_attrs["test_accuracy"], abs=1e-6), t.number
        finally:
            mlflow.set_tracking_uri(None)
        # whatever the automatic replay did, `sweep sync` now has nothing left to write
        r = subprocess.run([sys.executable, "-m", "sweep", "sync", "away"], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert "0 run(s) created, 0 metric value(s), 0 param(s) and 0 tag(s) logged, 0 run(s) ended" in r.stdout
        again = MlflowClient(server.url).search_runs([runs[0].info.experiment_id])
        assert len(again) == 4  # the parent and three children: sync created nothing
    finally:
        server.stop()


def test_one_database_for_both_stores_is_refused_before_writing(tmp_path: Path, tiny_npz: Path,
                                                                optuna_pg: str) -> None:
    path = write_study(tmp_path, _plan_study(tiny_npz, "shared-db", ["relu"], epochs=1))
    r = subprocess.run([sys.executable, "-m", "sweep", "run", str(path), "--storage", optuna_pg,
                        "--tracking-uri", optuna_pg], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "alembic_version" in r.stderr and "two databases" in r.stderr and "Traceback" not in r.stderr
    assert not _leaks(r.stderr)
    engine = sa.create_engine(optuna_pg.replace("postgresql://", "postgresql+psycopg2://", 1))
    with engine.connect() as c:
        assert sa.inspect(c).get_table_names() == []  # nothing was written
    engine.dispose()


@pytest.mark.parametrize("max_retry", [0, 2])
def test_max_retry_caps_how_often_a_dead_workers_trial_is_queued_again(tmp_path: Path, max_retry: int) -> None:
    """`workers.max_retry` reaches Optuna's RetryHeartbeatStaleTrialCallback through sweep's own
    storage: a trial whose worker dies again and again is queued again `max_retry` times, then
    left FAIL. Each "worker" takes the next trial, beats once and is gone; the retries keep the
    trial's seed."""
    from sweep.settings import WorkerSettings
    from sweep.runner import worker
    from sweep.runner.liveness import StaleTrialCallback
    from sweep.runner.setup import open_storage
    from sweep.tracking.runs import Tracker

    ws = WorkerSettings(heartbeat_interval=1, grace_period=2, max_retry=max_retry)
    rdb = open_storage(f"sqlite:///{tmp_path / 'o.db'}", ws)
    rdb.heartbeat_stale_trial_callback = StaleTrialCallback(ws.max_retry, Tracker(f"sqlite:///{tmp_path / 'm.db'}", "s"))
    study = optuna.create_study(storage=rdb, study_name="s")
    study.enqueue_trial({}, user_attrs={obj.SEED: 7})
    for _ in range(max_retry + 2):  # one more death than retries allowed, and a look after it
        waiting = study.get_trials(states=(TrialState.WAITING,))
        if not waiting:
            break
        trial = study.ask()
        rdb.record_heartbeat(trial._trial_id)
        deadline = time.monotonic() + 60
        while trial.number not in {t.number for t in study.get_trials(states=(TrialState.FAIL,))}:
            assert time.monotonic() < deadline
            time.sleep(0.5)  # past grace_period, the next worker's look finds it stale
            worker.fail_stale(study)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL] * (max_retry + 1)
    assert [t.user_attrs[obj.SEED] for t in trials] == [7] * (max_retry + 1)


def test_a_worker_with_nothing_to_take_leaves_as_soon_as_the_last_running_trial_ends(tmp_path: Path) -> None:
    """The wait of a worker with nothing left to take (`sweep.runner.worker._await_change`): it
    looks again every `poll_seconds` for stale trials, but returns as soon as the running trials
    change, another worker's last trial ending. It waited out the whole poll (2 s) before, which
    the pool's command then waited for too."""
    from sweep.runner.worker import CHANGE_POLL_SECONDS, _await_change

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'o.db'}", study_name="waiting")
    other = study.ask()  # another worker's trial, running
    waited = {}

    def wait(seconds: float) -> None:
        t0 = time.monotonic()
        _await_change(study, [other.number], seconds)
        waited[seconds] = time.monotonic() - t0

    wait(0.5)  # nothing changes: the whole poll
    assert waited[0.5] >= 0.5
    done = threading.Timer(0.5, lambda: study.tell(other, 1.0))
    done.start()
    wait(120)
    done.join()
    assert waited[120] < 60, waited  # returned at the change, not at the end of the poll
    assert study.trials[0].state == TrialState.COMPLETE and CHANGE_POLL_SECONDS <= 1
