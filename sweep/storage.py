"""Where results live: the one place storage URLs are resolved, masked and checked.

Optuna keeps the study (trials, the validated config, the MLflow parent run id) in an RDB;
MLflow keeps runs, metrics and artifacts. Every other module receives a `Stores`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from sweep.errors import ServiceError

if TYPE_CHECKING:
    import optuna

    from sweep.config import ServiceSettings

log = logging.getLogger(__name__)

DEFAULT_OPTUNA_DB = "sweep-optuna.db"
DEFAULT_MLFLOW_DB = "sweep-mlflow.db"
ENV_OPTUNA = "SWEEP_OPTUNA_STORAGE"
ENV_TRACKING = "MLFLOW_TRACKING_URI"
ENV_CONFIG = "SWEEP_CONFIG"
DEFAULT_CONFIG = "mlflow.yaml"


@dataclass(frozen=True)
class Stores:
    optuna: str
    tracking: str

    def __str__(self) -> str:
        return f"optuna={mask(self.optuna)} mlflow={mask(self.tracking)}"


def mask(url: str) -> str:
    """Hide the password in `scheme://user:password@host` URLs."""
    return re.sub(r"(://[^:/@]+:)[^@/]*@", r"\1***@", url)


def db_url(url: str) -> str:
    """Pin plain `postgresql://` URLs to psycopg2, the driver we ship.

    SQLAlchemy 2.1 maps `postgresql://` to psycopg 3, which is not installed; users who do
    install it can still say `postgresql+psycopg://`.
    """
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg2://" + url.removeprefix(plain)
    return url


def _sqlite_file(name: str) -> str:
    return f"sqlite:///{Path.cwd() / name}"


def settings(config: str | Path | None = None) -> ServiceSettings:
    """mlflow.yaml: the given path (must exist), else $SWEEP_CONFIG, else ./mlflow.yaml if present."""
    from sweep.config import ServiceSettings, load_settings

    path = config or os.environ.get(ENV_CONFIG)
    if path:
        return load_settings(path)
    if Path(DEFAULT_CONFIG).is_file():
        return load_settings(DEFAULT_CONFIG)
    return ServiceSettings()


def resolve(
    storage: str | None = None, tracking_uri: str | None = None, config: str | Path | None = None
) -> Stores:
    """Resolve both stores, highest first: argument (CLI flag) > environment variable >
    mlflow.yaml > SQLite files in the working directory."""
    s = settings(config)
    optuna_url = storage or os.environ.get(ENV_OPTUNA) or s.optuna_storage or _sqlite_file(DEFAULT_OPTUNA_DB)
    tracking = tracking_uri or os.environ.get(ENV_TRACKING) or s.tracking_uri or _sqlite_file(DEFAULT_MLFLOW_DB)
    return Stores(optuna=db_url(optuna_url), tracking=db_url(tracking))


def optuna_storage(url: str) -> optuna.storages.BaseStorage:
    """Open Optuna's RDB storage, turning connection failures into one clear message."""
    import optuna
    import sqlalchemy.exc

    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url))
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as e:
        reason = _first_line(e)
        raise ServiceError(
            f"cannot open the Optuna storage {mask(url)}: {mask(reason)}. Check that the database "
            "server is running and the URL (user, password, host, port, database) is right."
        ) from None


def _first_line(e: BaseException) -> str:
    """The driver's own message (SQLAlchemy wraps it in `orig`), first line only."""
    return str(getattr(e, "orig", None) or e).strip().splitlines()[0]


def scheme(url: str) -> str:
    """`postgresql` for `postgresql+psycopg2://...`, `sqlite` for `sqlite:///...`."""
    return url.split(":", 1)[0].split("+", 1)[0]


def _engine_kwargs(url: str) -> dict:
    if url.startswith("postgresql"):
        # fail in seconds, not minutes, when the server is down
        return {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    return {}


def tracking_artifact_location(tracking: str, experiment: str) -> str | None:
    """Artifact root for a new experiment on a local SQLite tracking store (None: server decides)."""
    if tracking.startswith("sqlite:///"):
        db = Path(tracking.removeprefix("sqlite:///"))
        return (db.parent / "sweep-artifacts" / experiment).resolve().as_uri()
    return None


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
    elif uri.startswith(("postgresql", "mysql")):
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
        reason = _first_line(e)
        raise ServiceError(
            f"cannot connect to the {what} at {mask(url)}: {mask(reason)}. Check that the database "
            "server is running and the URL (user, password, host, port, database) is right."
        ) from None
    finally:
        engine.dispose()


@contextlib.contextmanager
def study_lock(url: str, study: str) -> Iterator[None]:
    """Serialize study set-up (create, parent run, enqueue) between workers sharing a storage.

    PostgreSQL: a session advisory lock; SQLite: a file lock beside the database.
    """
    key = zlib.crc32(f"sweep:{study}".encode())
    if url.startswith("postgresql"):
        import sqlalchemy as sa

        engine = sa.create_engine(url, **_engine_kwargs(url))
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": key})
                try:
                    yield
                finally:
                    conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        finally:
            engine.dispose()
    elif url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        import fcntl

        lock_path = Path(url.removeprefix("sqlite:///") + ".lock")
        with open(lock_path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
    else:
        yield
