"""`sweep server`: a real `mlflow server` process, configured from mlflow.yaml.

Starting means: check the port and the databases, migrate both schemas with the libraries' own
tools (`mlflow db upgrade`, Optuna's `RDBStorage.upgrade`), launch, and wait for `/health`.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sweep.errors import ConfigError, ServiceError
from sweep.lifecycle import on_stop_signals, stop_on_signals
from sweep.storage import ENV_BACKEND, Stores, check_database, check_separate, seed_tracking
from sweep.urls import db_url, mask, scheme

if TYPE_CHECKING:
    from sweep.settings import ServerSettings

log = logging.getLogger(__name__)

# the SQL backends MLflow's tracking server supports (storage.SQL_BACKENDS also knows oracle)
SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
# Database URLs reach every child process through the environment, never argv: a command line
# is readable by every user of the machine (`ps`, /proc/PID/cmdline), an environment only by its owner.
URL_ENV = "SWEEP_DATABASE_URL"
# `mlflow server` reads --backend-store-uri from here (click `envvar=`) and hands it to its
# uvicorn/gunicorn workers through their environment too
MLFLOW_BACKEND_ENV = ENV_BACKEND
# the mlflow server's own output, beside the default stores (sweep-*.db, sweep-artifacts/)
LOG_DIR = Path("sweep-logs")


# `mlflow server` runs uvicorn (or gunicorn) as a child of its own. Signalled alone, or left
# behind when sweep server is SIGKILLed, that child keeps the port and answers clients. So
# `mlflow server` runs under a guard (`python -m sweep.server CMD`, `guard` below): the guard leads
# the server's process group and reads a pipe whose only writer is sweep server. End of file, because
# sweep server stopped it or because sweep server died however it died, makes the guard stop the
# whole group: SIGTERM, then SIGKILL after GUARD_GRACE seconds. Linux's PR_SET_PDEATHSIG would
# reach one process, not the children it starts; the pipe reaches the guard whatever ends sweep server.
GUARD_GRACE = 10.0


@dataclass
class Server:
    process: subprocess.Popen  # the guard, leader of the server's process group; stdin: its lifeline
    url: str
    log_path: Path

    def stop(self, timeout: float = GUARD_GRACE + 10.0) -> int:
        """Close the lifeline (the guard stops the group), SIGKILL the group after `timeout`;
        returns the exit code. A signal that interrupts this leaves the lifeline closed: the
        guard finishes the job."""
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()
        if self.process.poll() is None:
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode


def guard(cmd: list[str]) -> int:
    """Run `cmd` in this process's group until it exits or stdin reaches end of file, then stop
    every other process of the group (see GUARD_GRACE). Returns `cmd`'s exit code."""
    import selectors

    if os.getpgrp() != os.getpid():
        os.setpgid(0, 0)  # a group of its own, whoever started it: the group is what it stops
    stopping = False

    def on_signal() -> None:  # the group's SIGTERM reaches the guard too
        nonlocal stopping
        stopping = True

    on_stop_signals(on_signal)
    child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
    lifeline = selectors.DefaultSelector()
    lifeline.register(sys.stdin.fileno(), selectors.EVENT_READ)
    while child.poll() is None and not stopping:
        if lifeline.select(timeout=0.5) and not os.read(sys.stdin.fileno(), 4096):
            break  # end of file: sweep server stopped it, or is gone
    group = os.getpgrp()
    os.killpg(group, signal.SIGTERM)
    deadline = time.monotonic() + GUARD_GRACE
    while (child.poll() is None or _others_in_group(group)) and time.monotonic() < deadline:
        time.sleep(0.1)
    if child.poll() is None or _others_in_group(group):
        os.killpg(group, signal.SIGKILL)  # this guard too
    code = child.wait()
    return 128 - code if code < 0 else code


def _others_in_group(group: int) -> bool:
    """Whether a live process other than this one is in process group `group` (Linux's /proc;
    elsewhere: False, and only `mlflow server` itself is waited for)."""
    me = os.getpid()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == group and int(stat.parent.name) != me:
            return True
    return False


def _tool(name: str) -> list[str]:
    """A console script installed beside this Python (mlflow, optuna)."""
    exe = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    return [exe] if exe else [sys.executable, "-m", name]


def _run_tool(args: list[str], shown: str, url: str) -> None:
    """Run a migration in a child process that reads its database URL from $SWEEP_DATABASE_URL."""
    r = subprocess.run(args, capture_output=True, text=True, env={**os.environ, URL_ENV: url})
    if r.returncode != 0:
        tail = mask("\n".join((r.stderr or r.stdout).strip().splitlines()[-5:]))
        raise ServiceError(f"`{shown}` failed:\n{tail}")


def check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        # as every server does (uvicorn too): the connections of a server that just stopped stay in
        # TIME_WAIT for a minute, and without it they would make the port look taken
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise ServiceError(
                f"cannot serve on {host}:{port}: {e.strerror or e}. Another process (another MLflow "
                "server?) holds the port: stop it, or pick another with --port / server.port."
            ) from None


def _check_backend(uri: str) -> str:
    if scheme(uri) not in SQL_SCHEMES:
        raise ConfigError(
            "server.backend_store_uri",
            [f"expected a database URI (sqlite:///file.db or postgresql://user:pass@host:5432/db), "
             f"got {mask(uri)!r}"],
        )
    uri = db_url(uri)
    check_database(uri, "MLflow backend store")
    return uri


def migrate(backend_uri: str, optuna_storage: str | None) -> None:
    """Create or upgrade both schemas with MLflow's and Optuna's own migrations."""
    # subprocesses: both run alembic, whose logging set-up would silence ours. `mlflow db upgrade`
    # takes its URL only as an argument (no envvar), so the child runs mlflow's own CLI in-process.
    code = f"import os, mlflow.cli; mlflow.cli.cli.main(['db', 'upgrade', os.environ['{URL_ENV}']], 'mlflow')"
    _run_tool([sys.executable, "-c", code], f"mlflow db upgrade {mask(backend_uri)}", backend_uri)
    if optuna_storage and scheme(optuna_storage) in SQL_SCHEMES:
        url = db_url(optuna_storage)
        check_database(url, "Optuna storage")
        # what `optuna storage upgrade` runs, after RDBStorage has created the tables of a new
        # database (the CLI alone fails on an empty one)
        code = (f"import os, optuna; optuna.storages.RDBStorage(os.environ['{URL_ENV}'], "
                "skip_compatibility_check=True).upgrade()")
        _run_tool([sys.executable, "-c", code], f"optuna storage upgrade --storage {mask(url)}", url)


def upgrade_schemas(backend_store_uri: str, optuna_storage: str | None) -> str:
    """Check both databases answer and are not one, then create or upgrade both schemas (`sweep
    schema`, and every `sweep server` start). Returns the backend store URL as MLflow takes it."""
    if optuna_storage:
        # before either schema is written: both keep alembic's `alembic_version` table
        check_separate(Stores(optuna=db_url(optuna_storage), tracking=db_url(backend_store_uri)))
    # before anything connects (which makes an empty file); `migrate` then checks the copy
    seed_tracking(backend_store_uri)
    backend = _check_backend(backend_store_uri)
    migrate(backend, optuna_storage)
    return backend


def command(s: ServerSettings) -> list[str]:
    """`mlflow server` with every setting but the backend URI, which goes in $MLFLOW_BACKEND_STORE_URI."""
    cmd = [*_tool("mlflow"), "server", "--host", s.host, "--port", str(s.port), "--serve-artifacts",
           "--artifacts-destination", s.artifacts_destination, "--workers", str(s.workers)]
    if s.allowed_hosts:
        cmd += ["--allowed-hosts", s.allowed_hosts]
    if s.basic_auth:
        cmd += ["--app-name", "basic-auth"]
    return cmd


def start(s: ServerSettings, optuna_storage: str | None = None, log_path: Path | None = None,
          timeout: float = 120.0) -> Server:
    """Validate, migrate, launch `mlflow server` and wait until `/health` answers."""
    check_port(s.host, s.port)
    backend = upgrade_schemas(s.backend_store_uri, optuna_storage)
    dest = s.artifacts_destination
    if "://" not in dest:
        Path(dest).mkdir(parents=True, exist_ok=True)
    log_path = log_path or LOG_DIR / f"mlflow-server-{s.port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": str(s.job_execution).lower(),
           MLFLOW_BACKEND_ENV: backend}
    with open(log_path, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "sweep.server", *command(s)], stdin=subprocess.PIPE,
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    host = "127.0.0.1" if s.host in ("0.0.0.0", "::") else s.host
    server = Server(proc, f"http://{host}:{s.port}", log_path)
    try:
        _wait_healthy(server, timeout)
    except BaseException:
        server.stop()  # its own session: nothing else would stop it (Ctrl-C, SIGTERM, no /health)
        raise
    return server


def _wait_healthy(server: Server, timeout: float) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            tail = mask("\n".join(server.log_path.read_text().strip().splitlines()[-8:]))
            raise ServiceError(f"mlflow server exited with code {server.process.returncode}:\n{tail}")
        try:
            if requests.get(server.url + "/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    server.stop()
    raise ServiceError(f"mlflow server did not answer {server.url}/health within {timeout:.0f}s; "
                       f"see {server.log_path}")


def serve(s: ServerSettings, optuna_storage: str | None = None) -> int:
    """Run the server in the foreground until Ctrl-C (or SIGTERM), then stop it cleanly."""

    # from before start(): a signal while the server starts must stop it too, not orphan it.
    # docker compose and Kubernetes stop containers with SIGTERM (the policy: sweep/lifecycle.py)
    with stop_on_signals():
        try:
            server = start(s, optuna_storage)
        except KeyboardInterrupt:
            return 0
        log.info("MLflow UI and tracking server at %s (backend %s, artifacts %s, log %s); Ctrl-C stops it",
                 server.url, mask(s.backend_store_uri), s.artifacts_destination, server.log_path)
        return _follow(server)


def _follow(server: Server) -> int:
    """Wait for Ctrl-C or SIGTERM, then stop the server; or for the server to exit by itself."""
    # `sweep server -v`: the server's own log in the terminal too, as it is written
    follow = log.isEnabledFor(logging.DEBUG)
    seen = 0
    try:
        while server.process.poll() is None:
            if follow:
                seen = _echo_log(server.log_path, seen)
            time.sleep(0.5)
        log.error("mlflow server exited with code %s; see %s", server.process.returncode, server.log_path)
        return server.process.returncode or 1
    except KeyboardInterrupt:
        log.info("stopping the MLflow server")
        server.stop()
        return 0


def _echo_log(path: Path, seen: int) -> int:
    """Log the lines `path` gained since byte `seen`; returns the new position."""
    try:
        with open(path, "rb") as f:
            f.seek(seen)
            chunk = f.read()
    except OSError:
        return seen
    end = chunk.rfind(b"\n") + 1  # whole lines only; the rest next time
    for line in chunk[:end].decode("utf-8", "replace").splitlines():
        log.debug("mlflow server: %s", mask(line))
    return seen + end


if __name__ == "__main__":  # the guard of `mlflow server` (see GUARD_GRACE)
    sys.exit(guard(sys.argv[1:]))
