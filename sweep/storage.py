"""Where results live: the one place storage URLs are resolved, masked and checked.

Optuna keeps the study (trials, the validated config, the MLflow parent run id) in an RDB;
MLflow keeps runs, metrics and artifacts. Every other module receives a `Stores`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import weakref
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from sweep.errors import ConfigError, ServiceError, first_line
from sweep.lifecycle import ENV_WORKER_NAME, TF_THREADS
from sweep.urls import SQL_BACKENDS, backend_of, database_of, db_url, mask, parse_url, scheme, sqlite_path

if TYPE_CHECKING:
    import optuna

    from sweep.settings import ServiceSettings

log = logging.getLogger(__name__)

DEFAULT_OPTUNA_DB = "sweep-optuna.db"
DEFAULT_MLFLOW_DB = "sweep-mlflow.db"
ENV_OPTUNA = "SWEEP_OPTUNA_STORAGE"
ENV_TRACKING = "MLFLOW_TRACKING_URI"
ENV_CONFIG = "SWEEP_CONFIG"
ENV_BACKEND = "MLFLOW_BACKEND_STORE_URI"
DEFAULT_CONFIG = "mlflow.yaml"
# What a deployment (docker-compose.yml, deploy/kubernetes) may set in the environment of sweep's
# own processes, and where each is read; tests/test_kubernetes.py holds both to this list. A
# settings file adds the names its `${VAR}`s expand (passwords from a Secret or .env).
DEPLOY_ENV = {
    ENV_OPTUNA: "the Optuna storage URL (sweep.storage.resolve)",
    ENV_TRACKING: "the MLflow tracking URI (sweep.storage.resolve)",
    ENV_CONFIG: "the settings file, mlflow.yaml (sweep.storage.settings)",
    ENV_BACKEND: "MLflow's database, for `sweep schema` (the MLflow server's own name for it)",
    ENV_WORKER_NAME: "the worker's name on its trials (sweep.runner.worker)",
    TF_THREADS[0]: "TensorFlow threads per trial process (sweep.runner.pool)",
    "MLFLOW_TRACKING_USERNAME": "MLflow basic auth, read by MLflow's client in sweep",
    "MLFLOW_TRACKING_PASSWORD": "MLflow basic auth, read by MLflow's client in sweep",
}
# the engines of this process's Optuna storages (`close_all`); one outlives its storage, in a cycle
_opened: weakref.WeakSet = weakref.WeakSet()
SQLITE_BUSY_SECONDS = 30.0  # how long a write to an SQLite store waits for another process's


@dataclass(frozen=True)
class Stores:
    """Where both stores are, and the settings file read to find them: what a command resolves once
    (`resolve`, from its flags, the environment and `--config`) and hands down."""

    optuna: str
    tracking: str
    # mlflow.yaml as `resolve` read it; None: no file (its defaults). Not part of what a Stores is
    file: ServiceSettings | None = field(default=None, compare=False, repr=False)

    @property
    def service(self) -> ServiceSettings:
        """The rest of mlflow.yaml (workers, server), from the same file as the stores."""
        if self.file is not None:
            return self.file
        from sweep.settings import ServiceSettings

        return ServiceSettings()

    def __str__(self) -> str:
        return f"optuna={mask(self.optuna)} mlflow={mask(self.tracking)}"

    def __repr__(self) -> str:
        # the dataclass repr would print both URLs, passwords included, into logs and tracebacks
        return f"Stores(optuna={mask(self.optuna)!r}, tracking={mask(self.tracking)!r})"


def _sqlite_file(name: str) -> str:
    return f"sqlite:///{Path.cwd() / name}"


def settings(config: str | Path | None = None) -> ServiceSettings:
    """mlflow.yaml: the given path (must exist), else $SWEEP_CONFIG, else ./mlflow.yaml if present."""
    from sweep.settings import ServiceSettings, load_settings

    path = _settings_file(config)
    return load_settings(path) if path else ServiceSettings()


def _settings_file(config: str | Path | None) -> str | Path | None:
    """The settings file to read: the given path, else $SWEEP_CONFIG, else ./mlflow.yaml if present."""
    return config or os.environ.get(ENV_CONFIG) or (DEFAULT_CONFIG if Path(DEFAULT_CONFIG).is_file() else None)


def resolve(
    storage: str | Stores | None = None, tracking_uri: str | None = None, config: str | Path | None = None
) -> Stores:
    """Resolve both stores, highest first: argument (CLI flag) > environment variable >
    mlflow.yaml > SQLite files in the working directory. Stores already resolved pass through, as
    Optuna's `storage` takes a URL or a storage: a command resolves once, from its own flags and
    `--config`, and hands the result down."""
    if isinstance(storage, Stores):
        if tracking_uri is not None or config is not None:
            raise TypeError("resolve: resolved Stores take no tracking_uri or config")
        return storage
    where = _settings_file(config)  # what is read is what the `-v` line names
    # no settings file: nothing to validate (and no pydantic import for `sweep best`)
    s = settings(where) if where else None
    optuna_url, optuna_from = _first((storage, "--storage"), (os.environ.get(ENV_OPTUNA), f"${ENV_OPTUNA}"),
                                     (s and s.optuna_storage, f"{where} optuna_storage"),
                                     (_sqlite_file(DEFAULT_OPTUNA_DB), "the default"))
    tracking, tracking_from = _first((tracking_uri, "--tracking-uri"),
                                     (os.environ.get(ENV_TRACKING), f"${ENV_TRACKING}"),
                                     (s and s.tracking_uri, f"{where} tracking_uri"),
                                     (_sqlite_file(DEFAULT_MLFLOW_DB), "the default"))
    stores = Stores(optuna=db_url(optuna_url), tracking=db_url(tracking), file=s)
    said = (stores, optuna_from, tracking_from)
    if said not in _said:  # `-v`: once per process, though several steps resolve the stores
        _said.add(said)
        log.debug("Optuna storage %s (from %s); MLflow tracking %s (from %s)", mask(stores.optuna), optuna_from,
                  mask(stores.tracking), tracking_from)
    return stores


_said: set[tuple[Stores, str, str]] = set()


def _first(*candidates: tuple[str | None, str]) -> tuple[str, str]:
    return next((value, source) for value, source in candidates if value)


def optuna_storage(url: str, cls: type | None = None, **kwargs: Any) -> optuna.storages.RDBStorage:
    """Open Optuna's RDB storage (or the subclass `cls`, with its `kwargs`), turning connection
    failures into one clear message."""
    import optuna
    import sqlalchemy.exc

    try:
        storage = (cls or optuna.storages.RDBStorage)(url, engine_kwargs=_engine_kwargs(url), **kwargs)
        _opened.add(storage.engine)
        return storage
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError, ImportError, ValueError) as e:
        # Optuna wraps a connection the database dropped mid-check (its schema check's commit) in
        # StorageInternalError, whose own message blames the data (tests/chaos.py: a traceback)
        reason = first_line(e.__cause__ if isinstance(e, optuna.exceptions.StorageInternalError) and e.__cause__
                             else e)
        raise ServiceError(
            f"cannot open the Optuna storage {mask(url)}: {mask(reason)}. Check that the database "
            "server is running and the URL (user, password, host, port, database) is right."
        ) from None


def close_all() -> None:
    """Close every database connection this process still holds: the Optuna storages it opened
    (`optuna_storage`) and MLflow's SQL stores, whose engines MLflow keeps in class attributes for
    the life of the process. For a process that then leaves without the interpreter's teardown
    (sweep.lifecycle.leave), which would otherwise close them: SQLite folds its -wal file back
    into the store only as the last connection closes."""
    for engine in list(_opened):
        with contextlib.suppress(Exception):
            engine.dispose()
    for module in ("mlflow.store.tracking.sqlalchemy_store", "mlflow.store.model_registry.sqlalchemy_store",
                   "mlflow.store.jobs.sqlalchemy_store"):
        store = getattr(sys.modules.get(module), "SqlAlchemyStore", None)  # only what was imported
        for engine in list(getattr(store, "_engine_map", {}).values()):
            with contextlib.suppress(Exception):
                engine.dispose()


def _advisory_lock(engine: Any, key: int, url: str, wait: float) -> Any:
    """A connection holding PostgreSQL's advisory lock `key`, the database waited for up to `wait` s."""
    import sqlalchemy as sa

    deadline, delay = time.monotonic() + wait, 0.5
    while True:
        conn = None
        try:
            conn = engine.connect()
            conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            return conn
        except sa.exc.OperationalError as e:  # refused, or dropped: the outage kind
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
            left = deadline - time.monotonic()
            if left <= 0:
                waited = f" for {wait:g} s (workers.storage_outage)" if wait else ""
                raise ServiceError(
                    f"the Optuna storage {mask(url)} has been unreachable{waited} ({mask(first_line(e))}); "
                    "stopping. Finished trials are saved: run the same command again once the database is back."
                ) from None
            time.sleep(min(delay, left))
            delay = min(delay * 2, 5.0)


def _engine_kwargs(url: str) -> dict:
    u = parse_url(url)
    driver = u.drivername.partition("+")[2] if u is not None else ""
    if u is not None and backend_of(u) == "postgresql" and driver in ("", "psycopg2", "psycopg"):
        # fail in seconds, not minutes, when the server is down
        return {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    if u is not None and backend_of(u) == "sqlite" and driver in ("", "pysqlite"):
        # several local workers write one file in turn: wait for another's write as MLflow's
        # SQLite sessions do (their busy_timeout is 20 s), not sqlite3's 5 s
        return {"connect_args": {"timeout": SQLITE_BUSY_SECONDS}}
    return {}


def write_ahead(stores: Stores) -> None:
    """Both stores' SQLite files in write-ahead-log mode, which the file keeps: with `sweep run
    --workers N` (or `sweep worker`s on one machine), readers (`sweep status`, the live view, the
    MLflow UI) never wait for a writer, nor a writer for them. Measured with 1, 2 and 4 worker
    processes on one study (`benchmarks/workers.py --sqlite wal|delete`): no lock error in either
    mode, and 1.16x the trials/min in WAL with 2 workers. An optimization, not a guarantee: a file
    another process holds open keeps its mode, and the waits work without it."""
    import sqlite3

    for url in (stores.optuna, stores.tracking):
        path = sqlite_path(url)
        if path is None or not path.is_file():
            continue
        try:
            with contextlib.closing(sqlite3.connect(path, timeout=1)) as conn:
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        except sqlite3.Error as e:
            mode = f"unchanged ({e})"
        log.debug("SQLite %s: journal mode %s", path, mode)


def seed_tracking(url: str) -> None:
    """A new MLflow SQLite store starts as a copy of an empty, fully migrated one.

    Why: MLflow makes a new store by running every alembic migration since its first schema,
    3-4 s on a 2-core CPU, the largest part of a one-trial `sweep run`'s own start-up and paid by
    every test on a fresh folder (benchmarks/README.md); the result is the same file for every new
    store of one MLflow version. The first new store on a machine runs MLflow's own initialisation
    (what `SqlAlchemyStore` runs on an empty database) into a cache file named by MLflow's version;
    later ones copy it, whole (a link, never over a file another process made meanwhile). MLflow
    checks the schema of what it opens as for any store. A store that exists (or its log), a URL
    that is not an SQLite file, or no cache to write leaves the store to MLflow, as before."""
    path = sqlite_path(url)
    if path is None or path.exists() or not path.parent.is_dir():
        return
    if any(path.with_name(path.name + end).exists() for end in ("-wal", "-journal")):
        return  # a deleted store's log, which SQLite would replay into an identical new file
    template = _tracking_template()
    if template is None:
        return
    try:
        import shutil

        with _scratch(path) as tmp:
            shutil.copyfile(template, tmp)
            os.link(tmp, path)  # fails if `path` exists: another process made the store first
        log.debug("MLflow store %s: a copy of %s", path, template)
    except OSError as e:
        log.debug("MLflow store %s left to MLflow: %s", path, e)


@contextlib.contextmanager
def _scratch(final: Path) -> Iterator[Path]:
    """A temporary file beside `final` (one filesystem: it can be linked or renamed into place),
    removed afterwards whatever happened."""
    tmp = final.with_name(f".{final.name}.{os.getpid()}.new")
    try:
        yield tmp
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def cache_dir() -> Path:
    """This machine's sweep cache: `$XDG_CACHE_HOME/sweep` (`~/.cache/sweep`)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sweep"


def _tracking_template() -> Path | None:
    """An empty MLflow SQLite store at the schema this MLflow creates, made once per version."""
    import mlflow

    cache = cache_dir()
    template = cache / f"mlflow-{mlflow.__version__}-empty.db"
    if template.is_file():
        return template
    try:
        import sqlalchemy as sa
        from mlflow.store.db import utils

        cache.mkdir(parents=True, exist_ok=True)
        with _scratch(template) as tmp:
            tmp.unlink(missing_ok=True)  # left by a dead process of the same pid
            engine = sa.create_engine(f"sqlite:///{tmp}")
            try:
                utils._initialize_tables(engine)  # MLflow's own: create_all of its first schema + upgrade
            finally:
                engine.dispose()
            os.replace(tmp, template)
        return template
    except Exception as e:  # noqa: BLE001 - no cache is no error: MLflow makes the store itself
        log.debug("no MLflow store template in %s: %s", cache, e)
        return None


def tracking_artifact_location(tracking: str, experiment: str) -> str | None:
    """Artifact root for a new experiment on a local SQLite tracking store (None: server decides)."""
    db = sqlite_path(tracking)
    if db is not None:
        return (db.parent / "sweep-artifacts" / experiment).resolve().as_uri()
    return None


def check_separate(stores: Stores) -> None:
    """Refuse one database (one schema) for both stores: Optuna and MLflow both keep alembic's
    `alembic_version` table, so each would find the other's revision and fail to migrate."""
    where = database_of(stores.optuna)
    if where is None or where != database_of(stores.tracking):
        return
    backend = where[0]
    if backend == "sqlite":
        same, split = f"the file {where[1]}", "two files (e.g. sqlite:///sweep-optuna.db and sqlite:///sweep-mlflow.db)"
    else:
        same = f"database {where[3]!r} on {where[1]}:{where[2]}"
        split = "two databases (e.g. .../optuna and .../mlflow)"
    if backend == "postgresql":
        same += f", schema {where[4]!r}"
        split += (" or two schemas of one database (.../db?options=-csearch_path%3Doptuna and "
                  ".../db?options=-csearch_path%3Dmlflow, after CREATE SCHEMA optuna; CREATE SCHEMA mlflow)")
    raise ConfigError("stores", [
        f"the Optuna storage {mask(stores.optuna)} and the MLflow tracking store {mask(stores.tracking)} "
        f"are the same database ({same}). Optuna and MLflow both keep alembic's `alembic_version` table "
        f"there, so they cannot share one database: use {split}."
    ])


def check_tracking(uri: str, timeout: float = 10.0) -> None:
    """Fail fast, before any training, when the MLflow tracking server or database is unreachable."""
    if uri.startswith(("http://", "https://")):
        import requests

        url = uri.rstrip("/") + "/health"
        try:
            r = requests.get(url, timeout=timeout)
        except requests.RequestException as e:
            raise ServiceError(
                f"cannot reach the MLflow tracking server at {mask(uri)}: {type(e).__name__}. Is it "
                "running (`sweep server`, or `docker compose up mlflow`) and is the address right?"
            ) from None
        if r.status_code != 200:
            raise ServiceError(
                f"the MLflow tracking server at {mask(uri)} answered {r.status_code} on /health; "
                "check the server's log (and credentials, if basic auth is on)."
            )
    elif scheme(uri) in SQL_BACKENDS and scheme(uri) != "sqlite":
        check_database(uri, "MLflow tracking store")


def check_database(url: str, what: str) -> None:
    """Connect once to an SQL database, turning failures into one clear, masked message."""
    import sqlalchemy as sa

    try:
        engine = sa.create_engine(db_url(url), **_engine_kwargs(url))
    except Exception as e:  # noqa: BLE001 - bad URL syntax or missing driver
        raise ServiceError(f"{what} URL {mask(url)} is not usable: {mask(str(e))}") from None
    try:
        with engine.connect():
            pass
    except Exception as e:  # noqa: BLE001
        reason = first_line(e)
        raise ServiceError(
            f"cannot connect to the {what} at {mask(url)}: {mask(reason)}. Check that the database "
            "server is running and the URL (user, password, host, port, database) is right."
        ) from None
    finally:
        engine.dispose()


@contextlib.contextmanager
def study_lock(url: str, study: str, wait: float = 0.0) -> Iterator[None]:
    """Serialize study set-up (create, parent run, enqueue) between workers sharing a storage.

    PostgreSQL: a session advisory lock; SQLite: a file lock beside the database. An unreachable
    database is waited for up to `wait` seconds (a worker's `workers.storage_outage`, as its
    storage calls are: sweep/runner/liveness.py), then one ServiceError line; it was a traceback
    and exit 1 when PostgreSQL stopped as a worker took its next trial (tests/chaos.py).
    """
    key = zlib.crc32(f"sweep:{study}".encode())
    sqlite_file = sqlite_path(url)
    if scheme(url) == "postgresql":
        import sqlalchemy as sa

        engine = sa.create_engine(url, **_engine_kwargs(url))
        try:
            conn = _advisory_lock(engine, key, url, wait)
            try:
                yield
            finally:
                try:
                    conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                except sa.exc.DBAPIError as e:
                    if not e.connection_invalidated:
                        raise
                    # the database went away: the session, and its lock, went with it. Raising
                    # here would hide what the body raised (tests/chaos.py: a traceback, exit 1)
                finally:
                    conn.close()
        finally:
            engine.dispose()
    elif sqlite_file is not None:
        import fcntl

        lock_path = Path(f"{sqlite_file}.lock")
        with open(lock_path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
    else:
        yield
