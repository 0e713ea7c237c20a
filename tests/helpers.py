from __future__ import annotations

import os
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Any, Callable

import yaml


def weights_digest(model: Any) -> str:
    """The model's weights, bit for bit, as one hash: two loads are the same model when these are
    equal (two trials' models never share it; their seeds and updates differ). Fresh processes in
    tests import this file to print it."""
    import hashlib

    import numpy as np

    h = hashlib.sha256()
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()


def logged_weights(tracking: str, trials: Any) -> dict[int, str]:
    """Each trial's logged model (its own `mlflow_model_uri`), loaded through MLflow from the
    `tracking` store: trial number -> weights_digest. MLflow's global URI is put back after."""
    import mlflow

    from sweep.record import MODEL_URI

    mlflow.set_tracking_uri(tracking)
    try:
        return {t.number: weights_digest(mlflow.keras.load_model(t.user_attrs[MODEL_URI])) for t in trials}
    finally:
        mlflow.set_tracking_uri(None)


def recorded_test_metrics(model: Any, npz: Path | str) -> tuple[float, float]:
    """(loss, accuracy) of `model` on a Keras-layout .npz's test images, scaled as sweep scales
    them, to compare with the test_loss and test_accuracy its trial recorded. They tell two
    trials' models apart only where the losses differ (not on data so easy that both are ~0)."""
    import numpy as np

    with np.load(npz) as f:
        x = f["x_test"].astype("float32")[..., None] / 255.0
    return predicted_test_metrics(model.predict(x, verbose=0), npz)


def predicted_test_metrics(predictions: Any, npz: Path | str) -> tuple[float, float]:
    """(loss, accuracy) of class probabilities predicted for a Keras-layout .npz's test images (by
    a model however loaded or served), against its labels."""
    import keras
    import numpy as np

    with np.load(npz) as f:
        y = f["y_test"]
    p = np.asarray(predictions, dtype="float32")
    return float(keras.losses.SparseCategoricalCrossentropy()(y, p)), float((p.argmax(1) == y).mean())


TESTS = Path(__file__).resolve().parent  # on a fresh process's sys.path: `from helpers import weights_digest`


_STORAGES: dict[str, Any] = {}


def watch_study(storage: str, name: str) -> Any:
    """The study as another process sees it, for tests that poll it while workers run. One
    storage per URL, without a pool: a poll many times a second must neither hold connections the
    workers need nor open a new pool each time (PostgreSQL then refuses: too many clients)."""
    import optuna
    import sqlalchemy as sa

    if storage not in _STORAGES:
        _STORAGES[storage] = optuna.storages.RDBStorage(
            storage.replace("postgresql://", "postgresql+psycopg2://", 1),
            engine_kwargs={"poolclass": sa.pool.NullPool})
    return optuna.load_study(study_name=name, storage=_STORAGES[storage])


RENDEZVOUS = "rendezvous.py:Rendezvous"  # tests/rendezvous.py, a custom activation


def rendezvous(cwd: Path, n: int = 2) -> dict[str, str]:
    """Make `RENDEZVOUS` usable from `cwd`, and the environment in which the first `n` processes to
    train through it wait for one another (tests/rendezvous.py)."""
    import shutil

    from rendezvous import COUNT, FOLDER

    shutil.copy(TESTS / "rendezvous.py", cwd / "rendezvous.py")
    folder = cwd / "rendezvous"
    folder.mkdir()
    return {FOLDER: str(folder), COUNT: str(n)}


def study_dict(data_path: Path | str, **search: Any) -> dict[str, Any]:
    """A small study over a local .npz, with the search section overridable."""
    base_search: dict[str, Any] = {
        "metric": "val_accuracy",
        "pruner": "none",
        "seed": 0,
        "configs": [
            {"activation": "relu"},
            {"activation": "leaky_relu", "leaky_alpha": 0.1},
            {"activation": "prelu", "prelu_alpha_init": 0.25, "prelu_shared_axes": "spatial"},
        ],
    }
    base_search.update(search)
    return {
        "study": "tiny",
        "dataset": {"name": "npz", "path": str(data_path), "validation_split": 0.2},
        "model": "seed_cnn",
        "training": {"epochs": 2, "batch_size": 64, "optimizer": "adam", "learning_rate": 0.003},
        "search": base_search,
    }


def write_study(folder: Path, data: dict[str, Any], name: str = "study.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def postgres_database(server_url: str) -> tuple[str, Callable[[], None]]:
    """A fresh database on the test server and the function that drops it."""
    import sqlalchemy as sa

    from sweep.urls import db_url

    server_url = db_url(server_url)
    name = f"sweep_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(server_url).set(database=name).render_as_string(hide_password=False)

    def drop() -> None:
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return url, drop


def fail_without_postgres() -> None:
    """A PostgreSQL test fails, never skips, when no PostgreSQL answers: one line saying how to get one."""
    import pytest

    pytest.fail("no PostgreSQL: SWEEP_TEST_POSTGRES_URL is not set and none answers at 127.0.0.1:5432 "
                "(tests/setup-machine.sh, the README's test command, starts Debian's postgresql; or set "
                "SWEEP_TEST_POSTGRES_URL=postgresql://USER@HOST:PORT/DB)", pytrace=False)


def compose_command() -> list[str]:
    """Debian's docker-compose, or the docker CLI's compose plugin; the test fails, saying how to
    get one, when there is neither."""
    import shutil

    import pytest

    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    pytest.fail("no compose parser: the compose tests need Debian's docker-compose (apt-get install "
                "docker-compose; tests/setup-machine.sh, the README's test command, installs it)", pytrace=False)


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_cli_server(args: list[str], cwd: Path, log: Path, ignore_sigint: bool = False) -> subprocess.Popen:
    """`sweep server ARGS` as a real process in its own process group, its output appended to `log`.
    `ignore_sigint`: started as from a script's `cmd &` or nohup, with SIGINT ignored (inherited)."""
    import signal
    import sys

    def ignore() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    return subprocess.Popen([sys.executable, "-m", "sweep", "server", *args], cwd=cwd,
                            stdout=open(log, "a"), stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=ignore if ignore_sigint else None)


def wait_health(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    """Wait until the server at `url` answers /health (failing with its log if it exits)."""
    import time

    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            if requests.get(url + "/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise AssertionError(f"no /health within {timeout}s:\n{log.read_text()}")


def write_tiny_npz(path: Path, seed: int = 0, n_train: int = 300, n_test: int = 100, noise: int = 40) -> Path:
    """The `tiny_npz` images: the class is readable from a bright band, over pixel noise below
    `noise` (more noise: accuracy differs more between trials)."""
    import numpy as np

    rng = np.random.default_rng(seed)

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 10, n).astype(np.uint8)
        x = rng.integers(0, noise, (n, 28, 28)).astype(np.uint8)
        for i, c in enumerate(y):
            x[i, 2 * c + 4 : 2 * c + 6, :] = 255
        return x, y

    (xtr, ytr), (xte, yte) = make(n_train), make(n_test)
    np.savez(path, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    return path


def on_backend(backend: str) -> Any:
    """Run a test that takes `optuna_url` on one Optuna backend instead of both.

    For tests of what a study does (resume, repeats, pruners, the grid), which goes through
    Optuna's storage API the same way on either backend: they take turns between SQLite and
    PostgreSQL, so the suite still runs each kind of study on both, at half the time. What differs
    between the backends (URLs, locks, outages, concurrent workers, two objectives' values) is
    tested on both, in test_storage, test_workers, test_server and test_pareto."""
    import pytest

    param = pytest.param("postgresql", marks=pytest.mark.postgres) if backend == "postgresql" else backend
    return pytest.mark.parametrize("optuna_url", [param], indirect=True)


def process_tree() -> dict[int, list[int]]:
    """Every process's children, read from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    return children


def descendants(pid: int) -> list[int]:
    children = process_tree()
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def alive(pid: int) -> bool:
    """Running, and not a zombie waiting for its parent."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def still_running(pids: list[int] | dict[int, Any], seconds: float) -> list[int]:
    """Those of `pids` still running after waiting up to `seconds` for them all to exit: each
    process's pidfd becomes readable when it exits (a zombie counts as gone), so this wakes at
    the last exit rather than polling."""
    import select
    import time

    fds = {}
    for pid in pids:
        try:
            fds[pid] = os.pidfd_open(pid)
        except ProcessLookupError:
            pass  # gone already
    try:
        deadline = time.monotonic() + seconds
        waiting = dict(fds)
        while waiting and (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select(list(waiting.values()), [], [], left)
            waiting = {p: fd for p, fd in waiting.items() if fd not in ready}
        return [p for p in waiting if alive(p)]
    finally:
        for fd in fds.values():
            os.close(fd)


class PostgresCluster:
    """A PostgreSQL cluster of its own, in a temp dir on a free loopback port (initdb, pg_ctl), that
    a test may stop and start; never the machine's. Started on creation; `close` removes it."""

    def __init__(self) -> None:
        import glob
        import os
        import pwd
        import shutil
        import tempfile

        import pytest

        # on PATH, or where Debian's postgresql packages put them
        path = os.pathsep.join([os.environ.get("PATH", ""), *sorted(glob.glob("/usr/lib/postgresql/*/bin"))])
        initdb, self.pg_ctl = shutil.which("initdb", path=path), shutil.which("pg_ctl", path=path)
        if not initdb or not self.pg_ctl:
            pytest.fail("initdb/pg_ctl are needed for a PostgreSQL of the test's own (Debian: postgresql)",
                        pytrace=False)
        self.folder = Path(tempfile.mkdtemp(prefix="sweep-pg-"))
        self.as_user: list[str] = []
        if os.getuid() == 0:  # initdb refuses to run as root
            pw = pwd.getpwnam("postgres")
            os.chown(self.folder, pw.pw_uid, pw.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.port = free_port()
        self.data = self.folder / "data"
        self.opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.folder}"
        subprocess.run([*self.as_user, initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust"],
                       check=True, capture_output=True, timeout=120)
        self.start()

    def _ctl(self, *args: str) -> None:
        subprocess.run([*self.as_user, self.pg_ctl, "-D", str(self.data), "-l", str(self.folder / "log"), "-w",
                        *args], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self._ctl("-o", self.opts, "start")

    def stop(self) -> None:
        self._ctl("-m", "fast", "stop")

    def url(self, database: str = "postgres", password: str = "") -> str:
        auth = f"postgres:{password}" if password else "postgres"
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new database on the cluster; its URL."""
        import psycopg2

        conn = psycopg2.connect(self.url())
        conn.autocommit = True
        try:
            conn.cursor().execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return self.url(name)

    def close(self) -> None:
        import shutil

        subprocess.run([*self.as_user, self.pg_ctl, "-D", str(self.data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(self.folder, ignore_errors=True)


def stop_group(proc: subprocess.Popen, grace: float = 60) -> None:
    """SIGTERM to the process group a test started (start_new_session), SIGKILL after `grace` s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
