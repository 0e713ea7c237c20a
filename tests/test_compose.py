"""The docker-compose stack, validated by the real compose parser (no Docker engine here)."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml
from helpers import compose_command

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def rendered(tmp_path: Path) -> dict:
    for name in ("docker-compose.yml", ".env.example"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "deploy", tmp_path / "deploy")
    shutil.copy(ROOT / ".env.example", tmp_path / ".env")
    r = subprocess.run([*compose_command(), "config"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return yaml.safe_load(r.stdout)


def test_stack_topology(rendered: dict) -> None:
    s = rendered["services"]
    assert set(s) == {"postgres", "mlflow", "schema", "worker"}
    assert s["mlflow"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    # the schemas made once before any worker: replicas never race to create tables
    assert s["schema"]["depends_on"] == {"mlflow": {"condition": "service_healthy"}}
    assert s["worker"]["depends_on"] == {"mlflow": {"condition": "service_healthy"},
                                         "schema": {"condition": "service_completed_successfully"}}
    assert s["schema"]["image"] == s["worker"]["image"] and s["schema"]["build"] == s["worker"]["build"]
    for name in ("postgres", "mlflow"):
        assert s[name]["healthcheck"]["test"]
    assert "/health" in " ".join(s["mlflow"]["healthcheck"]["test"])
    assert {"pgdata", "mlartifacts", "outbox"} <= set(rendered["volumes"])
    assert s["mlflow"]["build"]["dockerfile"] == "deploy/docker/mlflow.Dockerfile"
    assert s["worker"]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert s["worker"]["environment"]["SWEEP_OPTUNA_STORAGE"].endswith("@postgres:5432/optuna")
    mlflow = s["mlflow"]["environment"]  # `mlflow server`'s options as its own variables: no URL in argv
    assert mlflow["MLFLOW_SERVE_ARTIFACTS"] == "true" and mlflow["MLFLOW_ARTIFACTS_DESTINATION"] == "/mlartifacts"
    assert "MLFLOW_BACKEND_STORE_URI" not in " ".join(s["mlflow"]["command"]).replace("os.environ['MLFLOW_BACKEND_STORE_URI']", "")


def test_secrets_come_from_env_file_only(rendered: dict) -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    assert "change-me" not in text  # the example password lives in .env.example only
    env = rendered["services"]["postgres"]["environment"]
    assert env["POSTGRES_PASSWORD"] == "change-me"


def test_missing_password_is_refused(tmp_path: Path) -> None:
    shutil.copy(ROOT / "docker-compose.yml", tmp_path / "docker-compose.yml")
    shutil.copytree(ROOT / "deploy", tmp_path / "deploy")
    r = subprocess.run([*compose_command(), "config"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                       env={k: v for k, v in os.environ.items() if k != "POSTGRES_PASSWORD"})
    assert r.returncode != 0
    assert "set POSTGRES_PASSWORD in .env" in r.stderr


def test_mlflow_image_bakes_the_driver() -> None:
    text = (ROOT / "deploy" / "docker" / "mlflow.Dockerfile").read_text()
    assert "psycopg2-binary" in text and "mlflow==3.17.2" in text


def test_postgres_init_script_creates_both_databases() -> None:
    url = os.environ.get("SWEEP_TEST_POSTGRES_URL")
    if not url:
        from helpers import fail_without_postgres

        fail_without_postgres()
    import sqlalchemy as sa

    from sweep.urls import db_url

    u = sa.make_url(db_url(url))
    names = [f"sweep_init_{uuid.uuid4().hex[:6]}_{n}" for n in ("mlflow", "optuna")]
    env = {**os.environ, "POSTGRES_USER": u.username or "postgres", "POSTGRES_DB": u.database or "postgres",
           "PGHOST": u.host or "127.0.0.1", "PGPORT": str(u.port or 5432), "SWEEP_DATABASES": " ".join(names)}
    if u.password:
        env["PGPASSWORD"] = u.password
    r = subprocess.run(["sh", str(ROOT / "deploy" / "kubernetes" / "postgres" / "postgres-init.sh")], env=env, capture_output=True, text=True)
    engine = sa.create_engine(u, isolation_level="AUTOCOMMIT")
    try:
        assert r.returncode == 0, r.stderr
        with engine.connect() as c:
            have = {row[0] for row in c.execute(sa.text("SELECT datname FROM pg_database"))}
        assert set(names) <= have
    finally:
        with engine.connect() as c:
            for n in names:
                c.execute(sa.text(f'DROP DATABASE IF EXISTS "{n}"'))
        engine.dispose()
