"""`sweep server` as a real process, and sweeps logging to it over HTTP, on every backend."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests
from helpers import (TESTS, free_port, postgres_database, fail_without_postgres, start_cli_server, study_dict,
                     alive, still_running, stop_group, wait_health, write_study)
from mlflow import MlflowClient

import sweep
import sweep.record
from sweep.runner import objective as obj

POSTGRES_URL = os.environ.get("SWEEP_TEST_POSTGRES_URL")
SECRET = "n0t-a-real-Pa55word"  # trust auth ignores it; it must never show up anywhere


def _with_password(url: str) -> str:
    import sqlalchemy as sa

    u = sa.make_url(url)
    return u.set(password=SECRET).render_as_string(hide_password=False)


def process_tree(root: int) -> dict[int, str]:
    """The command lines of `root` and all its descendants now, from /proc."""
    parents: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                # the command name may hold spaces and parentheses: ppid is the 2nd field after the last ")"
                parents[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    tree, grew = {root}, True
    while grew:
        more = {pid for pid, ppid in parents.items() if ppid in tree} - tree
        tree |= more
        grew = bool(more)
    cmdlines = {}
    for pid in tree:
        try:
            cmdlines[pid] = (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            pass
    return cmdlines


class CommandLines(threading.Thread):
    """Every command line seen in a process tree, polled from its start (so short-lived
    migration processes are caught) until stop()."""

    def __init__(self, root: int) -> None:
        super().__init__(daemon=True)
        self.root, self.seen, self.interval = root, set(), 0.02
        self._stop_event = threading.Event()
        self.start()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.seen |= set(process_tree(self.root).values())
            self._stop_event.wait(self.interval)

    def stop(self) -> set[str]:
        self._stop_event.set()
        self.join()
        return self.seen


@contextlib.contextmanager
def _logs_to(path: Path) -> Iterator[None]:
    """Everything logged in this process meanwhile (all of sweep's own lines, and what Optuna,
    MLflow and the rest pass on at WARNING and up), appended to `path`."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    own = logging.getLogger("sweep")
    loggers = [logging.getLogger(), logging.getLogger("optuna"), logging.getLogger("mlflow")]
    # an in-process CLI call earlier in the session (`sweep.console.setup_logging`) stops sweep's
    # lines from reaching the root logger: let them through while this runs
    level, propagate = own.level, own.propagate
    own.setLevel(logging.DEBUG)
    own.propagate = True
    for lg in loggers:
        lg.addHandler(handler)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
        own.setLevel(level)
        own.propagate = propagate
        handler.close()


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def served_sweep(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A real `sweep server` process and a small sweep logged to it over HTTP.

    On both backends the sweep logs through a tracking URI with a password in it, as for a server
    behind basic auth (this one has none and ignores it), taken from the same mlflow.yaml the
    server reads; on PostgreSQL both database URLs carry it too."""
    tmp = tmp_path_factory.mktemp(f"server-{request.param}")
    drops = []
    if request.param == "sqlite":
        backend, optuna_url = f"sqlite:///{tmp / 'mlflow.db'}", f"sqlite:///{tmp / 'optuna.db'}"
    else:
        if not POSTGRES_URL:
            fail_without_postgres()
        backend, d1 = postgres_database(POSTGRES_URL)
        optuna_url, d2 = postgres_database(POSTGRES_URL)
        drops = [d1, d2]
        backend, optuna_url = _with_password(backend), _with_password(optuna_url)
    port = free_port()
    log = tmp / "server.log"
    url = f"http://127.0.0.1:{port}"
    tracking = f"http://sweep:{SECRET}@127.0.0.1:{port}"
    # the backend URL in the settings file, not on `sweep server`'s own command line
    settings = tmp / "mlflow.yaml"
    settings.write_text(f"optuna_storage: '{optuna_url}'\ntracking_uri: '{tracking}'\n"
                        f"server: {{port: {port}, backend_store_uri: '{backend}'}}\n")
    proc = start_cli_server(["--artifacts-destination", str(tmp / "artifacts")], tmp, log)
    cmdlines = CommandLines(proc.pid)
    try:
        wait_health(url, proc, log)
        cmdlines.interval = 0.5  # the migrations are over
        rng_npz = tmp / "tiny.npz"
        _tiny(rng_npz)
        d = study_dict(rng_npz)
        d["study"] = f"served-{request.param}"
        d["training"]["epochs"] = 1
        run_log = tmp / "sweep-run.log"
        with _logs_to(run_log):
            study = sweep.run(write_study(tmp, d), storage=optuna_url, tracking_uri=tracking, config=settings)
        yield {"study": study, "url": url, "tracking": tracking, "optuna": optuna_url, "tmp": tmp, "proc": proc,
               "log": log, "run_log": run_log, "settings": settings, "npz": rng_npz, "port": port,
               "backend": backend, "cmdlines": cmdlines}
    finally:
        cmdlines.stop()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(60)
        for drop in drops:
            drop()


def _tiny(path: Path) -> None:
    import numpy as np

    rng = np.random.default_rng(1)
    y = rng.integers(0, 10, 300).astype("uint8")
    x = rng.integers(0, 40, (300, 28, 28)).astype("uint8")
    for i, c in enumerate(y):
        x[i, 2 * c + 4: 2 * c + 6, :] = 255
    np.savez(path, x_train=x[:240], y_train=y[:240], x_test=x[240:], y_test=y[240:])


def test_runs_read_back_over_http(served_sweep: dict[str, Any]) -> None:
    client = MlflowClient(served_sweep["url"])
    study = served_sweep["study"]
    exp = client.get_experiment_by_name(study.study_name)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("sweep.role") == "trial"]
    assert len(parents) == 1 and len(children) == 3
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    for r in children:
        assert r.info.status == "FINISHED"
        assert len(client.get_metric_history(r.info.run_id, "val_accuracy")) == 1
        # artifacts went through the server's proxy, not a local path
        assert r.info.artifact_uri.startswith("mlflow-artifacts:")
        assert {a.path for a in client.list_artifacts(r.info.run_id, "plots")} == {"plots/accuracy.png", "plots/loss.png"}
    best = sweep.best_config(study.study_name, storage=served_sweep["optuna"], tracking_uri=served_sweep["url"])
    assert best["trial"] == study.best_trial.number and best["value"] == study.best_value
    assert best["mlflow_run_id"] in {r.info.run_id for r in children}


def test_model_logged_through_server_loads_in_another_process(served_sweep: dict[str, Any]) -> None:
    """The model read back over HTTP in another process is the trial's own: on the test set it
    gives the loss and accuracy that trial recorded when it trained (no other model does)."""
    best = served_sweep["study"].best_trial
    code = ("import json, sys, mlflow\n"
            "sys.path.insert(0, sys.argv[4])\n"
            "from helpers import recorded_test_metrics\n"
            "mlflow.set_tracking_uri(sys.argv[1])\n"
            "print(json.dumps(recorded_test_metrics(mlflow.keras.load_model(sys.argv[2]), sys.argv[3])))\n")
    r = subprocess.run([sys.executable, "-c", code, served_sweep["url"], best.user_attrs[obj.MODEL_URI],
                        str(served_sweep["npz"]), str(TESTS)], capture_output=True, text=True, timeout=300, cwd="/")
    assert r.returncode == 0, r.stderr[-3000:]
    loss, acc = json.loads(r.stdout.strip().splitlines()[-1])
    assert acc == pytest.approx(best.user_attrs["test_accuracy"], abs=1e-6)
    assert loss == pytest.approx(best.user_attrs["test_loss"], rel=1e-4)
    others = [t.user_attrs["test_loss"] for t in served_sweep["study"].get_trials() if t.number != best.number]
    assert all(abs(v - loss) > 1e-3 for v in others)  # precondition: the loss tells the models apart


def test_no_password_anywhere(served_sweep: dict[str, Any]) -> None:
    tmp, port, settings = served_sweep["tmp"], served_sweep["port"], served_sweep["settings"]
    run_log = served_sweep["run_log"].read_text()
    # preconditions: the secret was there to leak, and the sweep logged through it (and said so, masked)
    assert SECRET in served_sweep["tracking"] and SECRET in settings.read_text()
    if "postgresql" in served_sweep["backend"]:
        assert SECRET in served_sweep["backend"] and SECRET in served_sweep["optuna"]
    assert f"mlflow=http://sweep:***@127.0.0.1:{port}" in run_log, run_log[-3000:]

    client = MlflowClient(served_sweep["url"])
    study = served_sweep["study"]
    exp = client.get_experiment_by_name(study.study_name)
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.data.tags.get("sweep.role") for r in runs) == ["parent", "trial", "trial", "trial"]
    texts = {"what sweep.run logged": run_log, "the experiment": repr(exp)}
    for r in runs:
        texts[f"run {r.info.run_name}"] = repr(r.info) + repr(r.data.params) + repr(r.data.tags)
    stored = sweep.record.load_study(study.study_name, served_sweep["optuna"])
    system_attrs = stored._storage.get_study_system_attrs(stored._study_id)  # Optuna 5 has no public reader
    texts["the Optuna study"] = repr(stored.user_attrs) + repr(system_attrs)
    for t in stored.get_trials():
        texts[f"trial {t.number}"] = repr(t.params) + repr(t.user_attrs) + repr(t.system_attrs)
    texts["sweep server's log"] = served_sweep["log"].read_text()
    texts["mlflow server's log"] = (tmp / "sweep-logs" / f"mlflow-server-{port}.log").read_text()
    assert [what for what, text in texts.items() if SECRET in text] == []
    # and every file the sweep and the server wrote (artifacts, SQLite stores), but the settings
    assert (tmp / "artifacts").is_dir()
    files = [p for p in tmp.rglob("*") if p.is_file() and p != settings]
    assert [p for p in files if SECRET.encode() in p.read_bytes()] == []


def test_no_password_on_any_command_line(served_sweep: dict[str, Any]) -> None:
    """`ps` shows every user every command line: `sweep server`, both migrations, `mlflow server`
    and its workers get the database URLs through their environment."""
    seen = served_sweep["cmdlines"].seen | set(process_tree(served_sweep["proc"].pid).values())
    # the server had the secret: its settings file names the tracking URI with it, and on
    # PostgreSQL both database URLs
    assert SECRET in served_sweep["settings"].read_text()
    if "postgresql" in served_sweep["backend"]:
        assert SECRET in served_sweep["backend"] and SECRET in served_sweep["optuna"]
    # all of them were watched: the MLflow and Optuna migrations, the server and its uvicorn worker
    assert any("'db', 'upgrade'" in c for c in seen), seen
    assert any("RDBStorage" in c and "upgrade()" in c for c in seen), seen
    assert any("mlflow server --host" in c for c in seen), seen
    assert any("uvicorn" in c for c in seen), seen
    assert [c for c in seen if SECRET in c] == []


def test_port_in_use_is_refused(served_sweep: dict[str, Any], tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "sweep", "server", "--port", str(served_sweep["port"]),
                        "--backend-store-uri", f"sqlite:///{tmp_path / 'x.db'}"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 3
    assert f"cannot serve on 127.0.0.1:{served_sweep['port']}" in r.stderr and "--port" in r.stderr
    assert "Traceback" not in r.stderr


def test_two_workers_share_one_study(served_sweep: dict[str, Any]) -> None:
    """Two `sweep run` processes started together: one parent run, each (config, repeat) once."""
    tmp = served_sweep["tmp"]
    d = study_dict(served_sweep["npz"], repeats=2)
    d["study"] = "two-workers"
    d["training"]["epochs"] = 1
    path = write_study(tmp, d, "workers.yaml")
    env = {**os.environ, "SWEEP_OPTUNA_STORAGE": served_sweep["optuna"],
           "MLFLOW_TRACKING_URI": served_sweep["tracking"]}
    procs = [subprocess.Popen([sys.executable, "-m", "sweep", "run", str(path)], cwd=tmp, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    # they logged through the tracking URI with the secret, and showed it masked only
    assert SECRET in env["MLFLOW_TRACKING_URI"] and "mlflow=http://sweep:***@" in "".join(outs), outs
    assert SECRET not in "".join(outs)
    study = sweep.record.load_study("two-workers", served_sweep["optuna"])
    # trials are taken under the study lock: exactly the plan, no surplus trial
    keys = sorted((t.user_attrs["config_index"], t.user_attrs["repeat"]) for t in study.get_trials())
    assert keys == [(i, r) for i in range(3) for r in range(2)]
    assert {t.state.name for t in study.get_trials()} == {"COMPLETE"}
    client = MlflowClient(served_sweep["url"])
    exp = client.get_experiment_by_name("two-workers")
    runs = client.search_runs([exp.experiment_id])
    assert sum(r.data.tags.get("sweep.role") == "parent" for r in runs) == 1
    assert sum(r.data.tags.get("sweep.role") == "trial" for r in runs) == 6


def _own_server_settings(folder: Path, port: int) -> None:
    """mlflow.yaml for a server of one test's own, on SQLite files in `folder`."""
    (folder / "mlflow.yaml").write_text(
        f"optuna_storage: 'sqlite:///{folder / 'optuna.db'}'\n"
        f"server: {{port: {port}, backend_store_uri: 'sqlite:///{folder / 'mlflow.db'}', "
        f"artifacts_destination: '{folder / 'artifacts'}'}}\n")


def _clean_up(procs: list[subprocess.Popen], tree: dict[int, str]) -> None:
    """Stop the `sweep server`s a test started and anything of `tree` left, whatever failed."""
    for proc in procs:
        stop_group(proc)
    for pid in tree:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize(("signum", "ignore_sigint"), [
    (signal.SIGINT, False), (signal.SIGINT, True), (signal.SIGTERM, False)],
    ids=["ctrl-c", "ctrl-c, started with SIGINT ignored (nohup, cmd &)", "sigterm (compose, kubernetes)"])
def test_ctrl_c_stops_server_cleanly(tmp_path: Path, signum: int, ignore_sigint: bool) -> None:
    """A server of its own: the module's shared one must outlive every test, in any order."""
    import time

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    _own_server_settings(tmp_path, port)
    log = tmp_path / "server.log"
    proc = start_cli_server([], tmp_path, log, ignore_sigint=ignore_sigint)
    tree: dict[int, str] = {}
    try:
        wait_health(url, proc, log)
        tree = process_tree(proc.pid)
        assert any("mlflow server --host" in c for c in tree.values()), tree
        # its log is where the start-up line says, not loose in the working directory; the line
        # comes once `sweep server` itself has seen /health answer, a moment after this test did
        deadline = time.monotonic() + 30
        while "MLflow UI and tracking server at" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert f"log sweep-logs/mlflow-server-{port}.log" in log.read_text()
        assert (tmp_path / "sweep-logs" / f"mlflow-server-{port}.log").is_file()
        assert not list(tmp_path.glob("mlflow-server-*.log"))
        os.killpg(proc.pid, signum)
        assert proc.wait(60) == 0, log.read_text()
        with pytest.raises(requests.ConnectionError):
            requests.get(url + "/health", timeout=2)
        assert "stopping the MLflow server" in log.read_text()
        # nothing it started is left behind (its children may take a moment to exit)
        assert still_running(tree, 30) == []
    finally:
        _clean_up([proc], tree)


@pytest.mark.parametrize(("signals", "backend"), [((signal.SIGKILL,), "sqlite"),
                                                  ((signal.SIGINT, signal.SIGTERM), "postgresql")],
                         ids=["sigkill", "sigint then sigterm at once (a supervisor escalating), postgresql"])
def test_nothing_outlives_sweep_server(tmp_path: Path, signals: tuple[int, ...], backend: str) -> None:
    """Whatever ends `sweep server`, SIGKILL included, every process it started (mlflow server and
    its uvicorn) is gone within its guard's grace, and a new `sweep server` serves on the port."""
    from sweep.server import GUARD_GRACE

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    drops = []
    if backend == "postgresql":
        if not POSTGRES_URL:
            fail_without_postgres()
        backend_url, d1 = postgres_database(POSTGRES_URL)
        optuna_url, d2 = postgres_database(POSTGRES_URL)
        drops = [d1, d2]
        (tmp_path / "mlflow.yaml").write_text(
            f"optuna_storage: '{optuna_url}'\n"
            f"server: {{port: {port}, backend_store_uri: '{backend_url}', "
            f"artifacts_destination: '{tmp_path / 'artifacts'}'}}\n")
    else:
        _own_server_settings(tmp_path, port)
    procs, tree = [], {}
    try:
        log = tmp_path / "first.log"
        procs.append(start_cli_server([], tmp_path, log))
        wait_health(url, procs[0], log)
        tree = process_tree(procs[0].pid)
        assert any("mlflow server --host" in c for c in tree.values()) and len(tree) >= 3, tree
        for signum in signals:
            os.kill(procs[0].pid, signum)
        procs[0].wait(60)
        # the guard stops the group: SIGTERM, SIGKILL after its grace
        assert still_running(tree, GUARD_GRACE + 20) == []
        with pytest.raises(requests.ConnectionError):
            requests.get(url + "/health", timeout=2)
        log = tmp_path / "second.log"
        procs.append(start_cli_server([], tmp_path, log))
        wait_health(url, procs[1], log)
    finally:
        _clean_up(procs, tree)
        for drop in drops:
            drop()


def test_restart_on_the_same_port_at_once(tmp_path: Path) -> None:
    """Connections a stopped server had leave the port in TIME_WAIT for a minute; the port check
    must not take that for another server (SO_REUSEADDR, as uvicorn binds)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    _own_server_settings(tmp_path, port)
    log = tmp_path / "first.log"
    proc = start_cli_server([], tmp_path, log)
    try:
        wait_health(url, proc, log)
        http = requests.Session()  # keep-alive: the connections stay open until the server stops
        for _ in range(3):
            assert http.get(url + "/health", timeout=10).status_code == 200
            assert http.get(url + "/api/2.0/mlflow/experiments/search", params={"max_results": 5},
                            timeout=10).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()
        http.close()
        with pytest.raises(requests.ConnectionError):
            requests.get(url + "/health", timeout=2)

        log = tmp_path / "second.log"
        proc = start_cli_server([], tmp_path, log)
        wait_health(url, proc, log)
        assert "cannot serve on" not in log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(60)


@pytest.mark.parametrize(("uri", "code", "message"), [
    (f"nosuch://bob:{SECRET}@db", 2, "server.backend_store_uri: expected a database URI (sqlite:///file.db or "
                                     "postgresql://user:pass@host:5432/db), got 'nosuch://bob:***@db'"),
    (f"postgresql://bob:{SECRET}@127.0.0.1:1/mlflow", 3, "cannot connect to the MLflow backend store at postgresql+psycopg2://bob:***@127.0.0.1:1/mlflow"),
], ids=["not-a-database", "unreachable"])
def test_bad_backend_uri(uri: str, code: int, message: str, tmp_path: Path) -> None:
    assert SECRET in uri
    r = subprocess.run([sys.executable, "-m", "sweep", "server", "--port", str(free_port()),
                        "--backend-store-uri", uri], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == code, r.stderr
    assert message in r.stderr
    assert SECRET not in r.stdout + r.stderr and "Traceback" not in r.stderr
