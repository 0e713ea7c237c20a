from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import study_dict, write_study

from sweep import storage
from sweep.config import load_settings
from sweep.errors import ConfigError, ServiceError

SECRET = "s3cr3t-Pa55"


def test_mask_hides_passwords() -> None:
    assert storage.mask(f"postgresql://bob:{SECRET}@db:5432/x") == "postgresql://bob:***@db:5432/x"
    assert storage.mask(f"http://u:{SECRET}@mlflow:5000") == "http://u:***@mlflow:5000"
    assert storage.mask("sqlite:///a.db") == "sqlite:///a.db"


def test_plain_postgresql_urls_use_the_shipped_driver() -> None:
    assert storage.db_url("postgresql://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert storage.db_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
    assert storage.db_url("sqlite:///x.db") == "sqlite:///x.db"


def test_defaults_are_sqlite_files_in_the_working_directory(tmp_path: Path) -> None:
    s = storage.resolve()
    assert s.optuna == f"sqlite:///{tmp_path / 'sweep-optuna.db'}"
    assert s.tracking == f"sqlite:///{tmp_path / 'sweep-mlflow.db'}"


def test_precedence_flag_over_env_over_file_over_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mlflow.yaml").write_text("tracking_uri: http://file:5000\noptuna_storage: sqlite:///file.db\n")
    assert storage.resolve() == storage.Stores("sqlite:///file.db", "http://file:5000")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    monkeypatch.setenv("SWEEP_OPTUNA_STORAGE", "sqlite:///env.db")
    assert storage.resolve() == storage.Stores("sqlite:///env.db", "http://env:5000")
    assert storage.resolve("sqlite:///flag.db", "http://flag:5000") == storage.Stores("sqlite:///flag.db", "http://flag:5000")


def test_config_path_from_env_and_argument(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "team.yaml").write_text("tracking_uri: http://team:5000\n")
    monkeypatch.setenv("SWEEP_CONFIG", str(tmp_path / "team.yaml"))
    assert storage.resolve().tracking == "http://team:5000"
    (tmp_path / "other.yaml").write_text("tracking_uri: http://other:5000\n")
    assert storage.resolve(config=tmp_path / "other.yaml").tracking == "http://other:5000"


def test_settings_expand_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPASS", SECRET)
    p = tmp_path / "m.yaml"
    p.write_text("optuna_storage: postgresql://sweep:${PGPASS}@db/optuna\n"
                 "server: {port: 5111, backend_store_uri: 'postgresql://sweep:${PGPASS}@${PGHOST_X:-db}/mlflow'}\n")
    s = load_settings(p)
    assert s.optuna_storage == f"postgresql://sweep:{SECRET}@db/optuna"
    assert s.server.backend_store_uri == f"postgresql://sweep:{SECRET}@db/mlflow"
    assert s.server.port == 5111 and s.server.host == "127.0.0.1"


def test_settings_errors_name_field_and_variable(tmp_path: Path) -> None:
    p = tmp_path / "m.yaml"
    p.write_text("server: {port: 99999, backend_store_uri: 'postgresql://u:${NOT_SET_ANYWHERE}@db/x', colour: red}\n")
    with pytest.raises(ConfigError) as e:
        load_settings(p)
    assert e.value.problems == ["server.backend_store_uri: environment variable NOT_SET_ANYWHERE is not set "
                                "(referenced as ${NOT_SET_ANYWHERE}); export it or put it in .env"]
    p.write_text("server: {port: 99999, colour: red}\n")
    with pytest.raises(ConfigError) as e:
        load_settings(p)
    text = str(e.value)
    assert "server.port: Input should be less than or equal to 65535, got 99999" in text
    assert "server.colour: unknown key 'colour'" in text


def test_shipped_mlflow_yaml_validates() -> None:
    s = load_settings(Path(__file__).resolve().parents[1] / "mlflow.yaml")
    assert s.server.host == "127.0.0.1" and s.server.workers == 1 and s.server.job_execution is False


def test_unreachable_database_is_one_masked_message() -> None:
    with pytest.raises(ServiceError) as e:
        storage.optuna_storage(f"postgresql+psycopg2://bob:{SECRET}@127.0.0.1:1/optuna")
    msg = str(e.value)
    assert SECRET not in msg and "bob:***@127.0.0.1:1" in msg and "database server is running" in msg


def test_unreachable_tracking_server() -> None:
    with pytest.raises(ServiceError, match=r"cannot reach the MLflow tracking server at http://127.0.0.1:1"):
        storage.check_tracking("http://127.0.0.1:1", timeout=2)


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sweep", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=180)


@pytest.mark.parametrize("flag", ["--storage", "--tracking-uri"])
def test_cli_unreachable_service_stops_before_training(flag: str, tmp_path: Path, tiny_npz: Path) -> None:
    study = write_study(tmp_path, study_dict(tiny_npz))
    url = f"postgresql://bob:{SECRET}@127.0.0.1:1/x" if flag == "--storage" else f"http://bob:{SECRET}@127.0.0.1:1"
    r = _cli(["run", str(study), flag, url], tmp_path)
    assert r.returncode == 3, r.stderr
    assert "Traceback" not in r.stderr and "trial 0" not in r.stderr
    assert SECRET not in r.stdout + r.stderr
    assert "bob:***@127.0.0.1:1" in r.stderr


def test_study_lock_serializes_on_sqlite(tmp_path: Path) -> None:
    import threading
    import time

    url = f"sqlite:///{tmp_path / 'o.db'}"
    order: list[str] = []

    def hold() -> None:
        with storage.study_lock(url, "s"):
            order.append("a-in")
            time.sleep(0.5)
            order.append("a-out")

    t = threading.Thread(target=hold)
    t.start()
    time.sleep(0.1)
    with storage.study_lock(url, "s"):
        order.append("b-in")
    t.join()
    assert order == ["a-in", "a-out", "b-in"]
