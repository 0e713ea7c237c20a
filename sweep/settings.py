"""mlflow.yaml: where the tracking server and both stores live, and how workers keep a study
honest. Read through sweep.config (the one YAML reader), with `${VAR}` references expanded from
the environment; sweep.storage says which file is read and what overrides it."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, model_validator

from sweep.config import Strict, read_yaml, validation_problems
from sweep.errors import ConfigError

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ServerSettings(Strict):
    """`sweep server`: the MLflow tracking server process."""

    host: str = "127.0.0.1"
    port: int = Field(5000, ge=1, le=65535)
    backend_store_uri: str = "sqlite:///sweep-mlflow.db"
    artifacts_destination: str = "./sweep-artifacts"
    workers: int = Field(1, ge=1, le=64)
    job_execution: bool = False
    basic_auth: bool = False
    allowed_hosts: str | None = None


TRIALS_PER_PROCESS = 100
MAX_MEMORY_GROWTH_MB = 250.0


class WorkerSettings(Strict):
    """How workers keep a study honest when one of them, or the database, goes away."""

    heartbeat_interval: int = Field(10, ge=1)  # seconds between a running trial's heartbeats
    # seconds without a heartbeat before a trial counts as dead, is marked FAIL and queued again
    grace_period: int = Field(60, ge=2)
    max_retry: int = Field(2, ge=0)  # how often one trial is queued again after its worker died
    # seconds a worker waits for the database to return, and at its start for the MLflow server of
    # a study it tracked before
    storage_outage: float = Field(120.0, gt=0)
    # a trial process hands over to a fresh one (sweep/runner/handover.py) after this many trials,
    # or once it grew this many MB past its size after its first trial; null: never. Chosen from
    # benchmarks/README.md ("Memory over a long study"): TensorFlow keeps ~14 MB per model
    trials_per_process: int | None = Field(TRIALS_PER_PROCESS, ge=1)
    max_memory_growth_mb: float | None = Field(MAX_MEMORY_GROWTH_MB, gt=0)

    @model_validator(mode="after")
    def _grace(self) -> WorkerSettings:
        if self.grace_period <= self.heartbeat_interval:
            raise ValueError(f"grace_period must be longer than heartbeat_interval "
                             f"({self.heartbeat_interval} s), got {self.grace_period}")
        return self


class ServiceSettings(Strict):
    """The content of mlflow.yaml."""

    tracking_uri: str | None = None
    optuna_storage: str | None = None
    server: ServerSettings = ServerSettings()
    workers: WorkerSettings = WorkerSettings()


def _expand(value: Any, path: str, problems: list[str]) -> Any:
    """Replace `${VAR}` / `${VAR:-default}` in strings with the environment's values."""
    if isinstance(value, dict):
        return {k: _expand(v, f"{path}.{k}" if path else str(k), problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, f"{path}.{i}", problems) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        problems.append(f"{path}: environment variable {name} is not set (referenced as ${{{name}}}); "
                        "export it or put it in .env")
        return m.group(0)

    return _ENV_REF.sub(sub, value)


def load_settings(path: str | Path) -> ServiceSettings:
    """Read mlflow.yaml, expanding `${VAR}` references from the environment."""
    raw = read_yaml(path, what="an mlflow.yaml settings file") or {}
    if not isinstance(raw, dict):
        raise ConfigError(str(path), [f"expected a mapping of settings, got {type(raw).__name__}"])
    problems: list[str] = []
    expanded = _expand(raw, "", problems)
    if problems:
        raise ConfigError(str(path), problems)
    try:
        return ServiceSettings.model_validate(expanded)
    except ValidationError as e:
        raise ConfigError(str(path), validation_problems(e)) from None
