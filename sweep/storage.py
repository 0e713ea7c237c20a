"""Where results live: the one place storage URLs are resolved, masked and checked.

Optuna keeps the study (trials, the validated config, the MLflow parent run id) in an RDB;
MLflow keeps runs, metrics and artifacts. Every other module receives a `Stores`.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sweep.errors import ServiceError

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

DEFAULT_OPTUNA_DB = "sweep-optuna.db"
DEFAULT_MLFLOW_DB = "sweep-mlflow.db"
ENV_OPTUNA = "SWEEP_OPTUNA_STORAGE"
ENV_TRACKING = "MLFLOW_TRACKING_URI"


@dataclass(frozen=True)
class Stores:
    optuna: str
    tracking: str

    def __str__(self) -> str:
        return f"optuna={mask(self.optuna)} mlflow={mask(self.tracking)}"


def mask(url: str) -> str:
    """Hide the password in `scheme://user:password@host` URLs."""
    return re.sub(r"(://[^:/@]+:)[^@/]*@", r"\1***@", url)


def _sqlite_file(name: str) -> str:
    return f"sqlite:///{Path.cwd() / name}"


def resolve(storage: str | None = None, tracking_uri: str | None = None) -> Stores:
    """Resolve both stores: explicit argument > environment variable > SQLite file in the cwd."""
    optuna_url = storage or os.environ.get(ENV_OPTUNA) or _sqlite_file(DEFAULT_OPTUNA_DB)
    tracking = tracking_uri or os.environ.get(ENV_TRACKING) or _sqlite_file(DEFAULT_MLFLOW_DB)
    return Stores(optuna=optuna_url, tracking=tracking)


def optuna_storage(url: str) -> optuna.storages.BaseStorage:
    """Open Optuna's RDB storage, turning connection failures into one clear message."""
    import optuna
    import sqlalchemy.exc

    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url))
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as e:
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        raise ServiceError(
            f"cannot open the Optuna storage {mask(url)}: {mask(reason)}. Check that the database "
            "server is running and the URL (user, password, host, port, database) is right."
        ) from None


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
