"""The compose stack for real: a real dockerd builds the images of deploy/docker from local bases
(tests/docker/build-bases.sh: no image registry here), `docker-compose up` starts PostgreSQL and
the MLflow server until their healthchecks pass, two worker containers run a tiny study to its end,
the host reads it back through the published ports, and `down -v` leaves nothing behind.

The images built here are the Kubernetes manifests' too (sweep-worker:latest, sweep-mlflow:latest).
A broken Dockerfile or healthcheck fails the test with one line naming the service.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Iterator

import pytest
from helpers import compose_command, free_port, study_dict, write_study, write_tiny_npz

ROOT = Path(__file__).resolve().parents[1]
TITLES = ("sweep-worker", "sweep-mlflow")  # the Dockerfiles' org.opencontainers.image.title labels
BASES = {"PYTHON_IMAGE": "sweep-local/python:3.11-bookworm", "POSTGRES_IMAGE": "sweep-local/postgres:15-bookworm"}
HEALTHY_WITHIN = 300  # s: above both healthchecks' own limits (postgres 20 x 5 s, mlflow 20 s + 30 x 5 s)


def _sudo() -> list[str]:
    return [] if os.geteuid() == 0 else ["sudo", "-n"]


def _docker_up(folder: Path) -> subprocess.Popen | None:
    """A running dockerd: the one already there, or one started here (returned, to be stopped; its
    log in `folder`, the test's own)."""
    if shutil.which("docker") is None or shutil.which("dockerd") is None:
        pytest.fail("no Docker engine: the stack test needs Debian's docker.io (apt-get install docker.io)", pytrace=False)
    if subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
        return None
    log = open(folder / "dockerd.log", "w")
    daemon = subprocess.Popen([*_sudo(), "dockerd"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    for _ in range(120):  # the daemon's socket answering is the event waited for
        if subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
            return daemon
        if daemon.poll() is not None:
            break
        time.sleep(0.5)
    pytest.fail(f"dockerd did not start (exit {daemon.poll()}; its log: {log.name})", pytrace=False)


class Stack:
    """One compose project of docker-compose.yml (+ tests/docker/compose.test.yml), its settings in
    an env file that only this test reads; every line it shows has the password masked."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.project = f"sweepstack{uuid.uuid4().hex[:8]}"
        self.password = secrets.token_urlsafe(18)
        self.postgres_port, self.mlflow_port = free_port(), free_port()
        data = folder / "data"  # mounted read-only at /data: the workers' user must read it
        data.mkdir(mode=0o755)
        data.chmod(0o755)
        write_tiny_npz(data / "tiny.npz", noise=120)
        spec = study_dict("/data/tiny.npz")
        spec["study"] = "stack"
        spec["training"]["epochs"] = 1
        write_study(data, spec, "stack.yaml")
        # the faults' study: trials long enough to be stopped in the middle, one config more than
        # there are workers' first trials
        spec = study_dict("/data/tiny.npz", configs=[*spec["search"]["configs"], {"activation": "elu"}])
        spec["study"] = "faults"
        spec["training"]["epochs"] = 8
        write_study(data, spec, "faults.yaml")
        for f in data.iterdir():
            f.chmod(0o644)
        self.settings = {**BASES, "POSTGRES_USER": "sweep", "POSTGRES_PASSWORD": self.password,
                         "POSTGRES_PORT": str(self.postgres_port), "MLFLOW_PORT": str(self.mlflow_port),
                         "SWEEP_DATA_DIR": str(data), "SWEEP_STUDY": "/data/stack.yaml"}
        self.env_file = folder / "stack.env"
        self.env_file.touch(mode=0o600)
        self.set()
        # the shell's own values would win over the env file's
        self.env = {k: v for k, v in os.environ.items() if k not in self.settings}

    def set(self, **settings: str) -> None:
        self.settings.update(settings)
        self.env_file.write_text("".join(f"{k}={v}\n" for k, v in self.settings.items()))

    def mask(self, text: str) -> str:
        return text.replace(self.password, "***")

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [*compose_command(), "--env-file", str(self.env_file), "-p", self.project,
               "-f", str(ROOT / "docker-compose.yml"), "-f", str(ROOT / "tests" / "docker" / "compose.test.yml"), *args]
        r = subprocess.run(cmd, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            pytest.fail(f"docker-compose {' '.join(args)} exited {r.returncode}: "
                        f"{self.mask(_last_lines(r.stdout + r.stderr))}", pytrace=False)
        return r

    def containers(self, service: str) -> list[str]:
        return self.compose("ps", "-q", service).stdout.split()

    def wait_healthy(self, service: str) -> None:
        """Until the service's healthcheck passes; fails at once when docker marks it unhealthy or
        its container stops, with the healthcheck's last output and the container's log."""
        found = self.containers(service)
        if not found:
            pytest.fail(f"{service}: no container (not started)", pytrace=False)
        cid = found[0]
        deadline = time.monotonic() + HEALTHY_WITHIN
        while True:
            state = json.loads(_docker("inspect", "-f", "{{json .State}}", cid))
            health = state.get("Health") or {}
            if health.get("Status") == "healthy":
                return
            if health.get("Status") == "unhealthy" or not state["Running"] or time.monotonic() > deadline:
                probe = _last_lines((health.get("Log") or [{}])[-1].get("Output", ""), 1)  # a traceback's last line
                logs = subprocess.run(["docker", "logs", "--tail", "15", cid], capture_output=True, text=True)
                pytest.fail(f"{service}: healthcheck {health.get('Status', 'missing')} ({state['Status']}, exit "
                            f"{state['ExitCode']}); last probe: {self.mask(probe) or '-'}; log: "
                            f"{self.mask(_last_lines(logs.stdout + logs.stderr))}", pytrace=False)
            time.sleep(1)

    def leftovers(self) -> list[str]:
        label = f"label=com.docker.compose.project={self.project}"
        found = [f"container {c}" for c in _docker("ps", "-aq", "--filter", label).split()]
        found += [f"volume {v}" for v in _docker("volume", "ls", "-q").split() if v.startswith(self.project + "_")]
        found += [f"network {n}" for n in _docker("network", "ls", "--format", "{{.Name}}").split()
                  if n.startswith(self.project + "_")]
        return found


def _docker(*args: str) -> str:
    r = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"docker {' '.join(args)}: {r.stderr.strip()}"
    return r.stdout


def _logs(container: str) -> str:
    r = subprocess.run(["docker", "logs", container], capture_output=True, text=True, timeout=60)
    return r.stdout + r.stderr


def _last_lines(text: str, n: int = 15) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)  # compose's colours
    return " | ".join(line.strip() for line in text.strip().splitlines()[-n:] if line.strip())


@contextlib.contextmanager
def _one_stack_per_daemon() -> Iterator[None]:
    """The images' tags are the Kubernetes manifests' (sweep-worker:latest, sweep-mlflow:latest),
    one pair per Docker daemon: two runs of this test on one machine (two CI clones) would build over
    and run each other's images. The second waits for the first, on a lock the kernel drops when
    its holder ends, however it ends."""
    with open(Path(tempfile.gettempdir()) / "sweep-compose-stack.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _prune_superseded() -> None:
    """The project's images that a rebuild took the tag from (dangling, labelled by the Dockerfiles):
    the build cache and the images with a tag stay."""
    for title in TITLES:
        _docker("image", "prune", "--force", "--filter", f"label=org.opencontainers.image.title={title}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with _one_stack_per_daemon():
        yield from _stack(tmp_path_factory.mktemp("stack"))


def _stack(folder: Path) -> Iterator[Stack]:
    daemon = _docker_up(folder)
    s = Stack(folder)
    try:
        r = subprocess.run([str(ROOT / "tests" / "docker" / "build-bases.sh")], cwd=ROOT, capture_output=True,
                           text=True, timeout=1800, env={**os.environ, "PYTHON": os.environ.get("PYTHON", sys.executable)})
        if r.returncode != 0:
            pytest.fail(f"tests/docker/build-bases.sh exited {r.returncode}: {_last_lines(r.stderr)}", pytrace=False)
        # the project's images, on the local bases; docker's build cache makes a warm build quick
        for service in ("mlflow", "worker"):
            s.compose("build", "--force-rm", service, timeout=1800)  # a failed step's container removed too
        _prune_superseded()
        yield s
    finally:
        s.compose("down", "-v", "--remove-orphans", timeout=300, check=False)
        if daemon is not None:
            subprocess.run([*_sudo(), "kill", "-TERM", str(daemon.pid)])
            daemon.wait(timeout=60)


def test_images_are_the_kubernetes_manifests(stack: Stack) -> None:
    """The tags deploy/kubernetes expects, built from local bases and running as the non-root user."""
    for image, command in (("sweep-worker:latest", ["--help"]), ("sweep-mlflow:latest", ["mlflow", "--version"])):
        config = json.loads(_docker("image", "inspect", "-f", "{{json .Config}}", image))
        assert config["User"] == "10001", image
        r = subprocess.run(["docker", "run", "--rm", image, *command], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"{image} {' '.join(command)}: {_last_lines(r.stderr)}"
        assert ("3.17.2" if "mlflow" in image else "worker") in r.stdout
    # no image of this project that a rebuild took the tag from is left (each holds its own top layers)
    for title in TITLES:
        left = _docker("images", "-q", "--filter", "dangling=true", "--filter", f"label=org.opencontainers.image.title={title}")
        assert left.split() == [], f"{title}: superseded images left: {left.split()}"


def test_up_until_healthy(stack: Stack) -> None:
    up = stack.compose("up", "-d", "postgres", "mlflow", check=False)
    for service in ("postgres", "mlflow"):  # an unhealthy one named, with its healthcheck's last output
        stack.wait_healthy(service)
    assert up.returncode == 0, stack.mask(_last_lines(up.stdout + up.stderr))
    # published on the loopback only, and answering there
    ports = _docker("port", stack.containers("mlflow")[0]) + _docker("port", stack.containers("postgres")[0])
    assert {line.split(" -> ")[1].rsplit(":", 1)[0] for line in ports.splitlines()} == {"127.0.0.1"}
    # the store's password is on no process's command line in any container (`docker top`: the
    # host's `ps` of them; mlflow takes its store URL from the environment, not an argument)
    for service in ("postgres", "mlflow"):
        for cid in stack.containers(service):
            top = _docker("top", cid, "-eo", "pid,args")
            assert "mlflow server" in top or service != "mlflow", top
            assert stack.password not in top, f"{service}: the password is on a command line: {stack.mask(top)}"
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.mlflow_port}/health", timeout=10) as r:
        assert r.read().decode().strip() == "OK"
    # the init script made both databases, and the password is the env file's (TCP: scram)
    import sqlalchemy as sa

    for db in ("mlflow", "optuna"):
        url = sa.URL.create("postgresql+psycopg2", "sweep", stack.password, "127.0.0.1", stack.postgres_port, db)
        engine = sa.create_engine(url)
        with engine.connect() as c:
            assert c.execute(sa.text("SELECT current_database()")).scalar() == db
        engine.dispose()
    wrong = sa.create_engine(sa.URL.create("postgresql+psycopg2", "sweep", "not-it", "127.0.0.1", stack.postgres_port, "optuna"))
    with pytest.raises(sa.exc.OperationalError, match="password authentication failed"):
        wrong.connect()
    wrong.dispose()


def test_two_workers_finish_a_study_read_from_the_host(stack: Stack) -> None:
    stack.compose("up", "-d", "--scale", "worker=2", "worker")
    workers = stack.containers("worker")
    assert len(workers) == 2
    codes = _docker("wait", *workers).split()  # until both exit: the study is done
    logs = {w: _logs(w) for w in workers}
    assert codes == ["0", "0"], stack.mask(" / ".join(_last_lines(text, 8) for text in logs.values()))
    assert stack.password not in "".join(logs.values())

    # the study, from the host through PostgreSQL's published port: `sweep best`, and each trial
    # run in one of the two containers (a trial's worker attribute is its hostname, the container id)
    storage = f"postgresql://sweep:{stack.password}@127.0.0.1:{stack.postgres_port}/optuna"
    env = {**os.environ, "SWEEP_OPTUNA_STORAGE": storage, "PYTHONPATH": str(ROOT)}  # the password: not in argv
    r = subprocess.run([sys.executable, "-m", "sweep", "best", "stack", "--json"], cwd=stack.folder, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, stack.mask(r.stderr)
    best = json.loads(r.stdout)
    import optuna

    trials = optuna.load_study(study_name="stack", storage=storage.replace("postgresql:", "postgresql+psycopg2:")).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    assert {t.user_attrs["worker"].split("-")[0] for t in trials} <= {w[:12] for w in workers}
    top = max(trials, key=lambda t: t.value)
    assert best["value"] == top.value and best["trial"] in {t.number for t in trials if t.value == top.value}

    # the MLflow server's runs over HTTP, through its published port: one finished run per trial,
    # each with the trial's own value, and the best one `sweep best` names
    by_trial = _mlflow_runs(stack, "stack")
    assert sorted(by_trial) == [0, 1, 2]
    for t in trials:
        run = by_trial[t.number]
        assert run["info"]["status"] == "FINISHED"
        assert _val_accuracy(run) == pytest.approx(t.value)
    assert best["mlflow_run_id"] == by_trial[best["trial"]]["info"]["run_id"]


def _mlflow_runs(stack: Stack, study: str) -> dict[int, dict]:
    """The MLflow server's runs of a study over HTTP, through its published port, by trial number."""
    api = f"http://127.0.0.1:{stack.mlflow_port}/api/2.0/mlflow"
    with urllib.request.urlopen(f"{api}/experiments/get-by-name?experiment_name={study}", timeout=30) as resp:
        experiment = json.load(resp)["experiment"]["experiment_id"]
    request = urllib.request.Request(f"{api}/runs/search", method="POST", headers={"Content-Type": "application/json"},
                                     data=json.dumps({"experiment_ids": [experiment], "max_results": 100}).encode())
    with urllib.request.urlopen(request, timeout=30) as resp:
        runs = json.load(resp)["runs"]
    by_trial = {}
    for run in runs:
        tags = {t["key"]: t["value"] for t in run["data"].get("tags", [])}
        if "optuna.trial_number" in tags:
            by_trial[int(tags["optuna.trial_number"])] = run
    return by_trial


def _val_accuracy(run: dict) -> float:
    return {m["key"]: m["value"] for m in run["data"]["metrics"]}["val_accuracy"]


def test_a_worker_stopped_mid_trial_and_an_mlflow_outage(stack: Stack) -> None:
    """A worker container stopped in the middle of a trial (SIGTERM, as `docker compose stop`
    sends: compose stops every replica, so `docker stop` names one): its trial is marked
    interrupted and the other worker trains that config again. Meanwhile `docker-compose kill
    mlflow`, then `up -d mlflow`: the worker goes on through the outage, and nothing is lost."""
    import optuna
    from sqlalchemy.pool import NullPool

    stack.set(SWEEP_STUDY="/data/faults.yaml")
    stack.compose("up", "-d", "--scale", "worker=2", "worker")  # the workers made again for the new study
    workers = stack.containers("worker")
    assert len(workers) == 2
    url = f"postgresql+psycopg2://sweep:{stack.password}@127.0.0.1:{stack.postgres_port}/optuna"
    storage = optuna.storages.RDBStorage(url, engine_kwargs={"poolclass": NullPool})

    victim = None  # the event: a trial RUNNING in the store, in one of the two containers
    deadline = time.monotonic() + 300
    while victim is None and time.monotonic() < deadline:
        try:
            study = optuna.load_study(study_name="faults", storage=storage)
        except KeyError:  # not created yet
            time.sleep(0.5)
            continue
        running = [t for t in study.get_trials(deepcopy=False) if t.state.name == "RUNNING" and "worker" in t.user_attrs]
        if running:
            victim = running[0]
        else:
            time.sleep(0.5)
    assert victim is not None, "no trial of the study 'faults' started within 300 s"
    # and its MLflow run there with an epoch's metrics: the trial is training, 7 epochs to go, the
    # middle of a trial this test means. (A stop while the run was still being created once left it
    # RUNNING on the server; fixed in sweep/runner/objective.py, tested in test_workers.py.)
    while time.monotonic() < deadline:
        try:
            run = _mlflow_runs(stack, "faults").get(victim.number)
            if run and any(m["key"] == "loss" for m in run["data"].get("metrics", [])):  # Keras' per-epoch loss
                break
        except (urllib.error.HTTPError, KeyError):  # the experiment is not there yet
            pass
        time.sleep(0.5)
    else:
        pytest.fail(f"trial {victim.number} of 'faults' has no MLflow run with metrics after 300 s", pytrace=False)
    for w in workers:  # a worker mid-trial, its trial process included: no password on a command line
        top = _docker("top", w, "-eo", "pid,args")
        assert "sweep" in top and stack.password not in top, stack.mask(top)
    stopped = next(w for w in workers if victim.user_attrs["worker"].startswith(w[:12]))
    survivor = next(w for w in workers if w != stopped)
    _docker("stop", "-t", "30", stopped)
    stopped_state = json.loads(_docker("inspect", "-f", "{{json .State}}", stopped))

    stack.compose("kill", "mlflow")
    assert json.loads(_docker("inspect", "-f", "{{json .State}}", stack.containers("mlflow")[0]))["Running"] is False
    stack.compose("up", "-d", "mlflow")
    stack.wait_healthy("mlflow")

    code = _docker("wait", survivor).strip()
    log = _logs(survivor)
    assert code == "0", stack.mask(_last_lines(log, 12))
    assert stopped_state["ExitCode"] != 137, "the stopped worker did not stop within its 30 s grace"

    trials = optuna.load_study(study_name="faults", storage=storage).trials
    first = next(t for t in trials if t.number == victim.number)
    assert first.state.name == "FAIL" and first.user_attrs.get("interrupted"), (first.state, first.user_attrs)
    done = [t for t in trials if t.state.name == "COMPLETE"]
    configs = [tuple(sorted(t.params.items())) for t in done]
    assert len(configs) == len(set(configs)) == 4, [t.params for t in done]  # each config once, none twice
    again = [t for t in done if t.params == first.params]
    assert len(again) == 1 and again[0].number > first.number, "the interrupted trial was not taken again"
    assert again[0].user_attrs["worker"].startswith(survivor[:12])

    runs = _mlflow_runs(stack, "faults")  # nothing lost to the outage: every trial's run, in its state
    assert runs[first.number]["info"]["status"] == "KILLED", stack.mask(_last_lines(_logs(stopped), 10))
    for t in done:
        assert runs[t.number]["info"]["status"] == "FINISHED", (t.number, runs[t.number]["info"])
        assert _val_accuracy(runs[t.number]) == pytest.approx(t.value)


def test_down_leaves_nothing(stack: Stack) -> None:
    assert stack.leftovers()  # the check below sees the stack while it is there
    stack.compose("down", "-v", "--remove-orphans", timeout=300)
    assert stack.leftovers() == []
