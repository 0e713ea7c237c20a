from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Iterator

import pytest
from helpers import fail_without_postgres, postgres_database, write_tiny_npz

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# the models that killed workers leave waiting for MLflow (sweep/tracking/outbox.py) go to a folder
# of this run's, not the user's cache; every process the tests start inherits it
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="sweep-tests-cache-")

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist.npz"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
CHROMIUM = "/usr/bin/chromium"


def _postgres_answers(url: str) -> bool:
    import sqlalchemy as sa

    from sweep.urls import db_url

    engine = sa.create_engine(db_url(url), connect_args={"connect_timeout": 2})
    try:
        with engine.connect():
            return True
    except Exception:  # noqa: BLE001 - nothing there: the PostgreSQL tests fail, saying so
        return False
    finally:
        engine.dispose()


# A bare `python -m pytest` uses the PostgreSQL at the default address when it answers; test
# modules read the variable at import, after this file.
if "SWEEP_TEST_POSTGRES_URL" not in os.environ and _postgres_answers(DEFAULT_POSTGRES_URL):
    os.environ["SWEEP_TEST_POSTGRES_URL"] = DEFAULT_POSTGRES_URL
POSTGRES_URL = os.environ.get("SWEEP_TEST_POSTGRES_URL")


# `-n 2 --dist loadfile --no-loadscope-reorder` (pyproject.toml) runs two test files at once, each
# file whole in one worker, handed out in collection order (not xdist's default, most tests first):
# the longest go first, so that none starts last while the other worker idles (each took 200-440 s of the 2,500 s suite run one file after another here on
# 2026-12-05, AMD EPYC family 25 model 17, 2 cores; the rest 0-110 s)
LONGEST_FIRST = ("test_workers.py", "test_study.py", "test_chaos.py", "test_compose_stack.py", "test_server.py",
                 "test_confirm.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's own order kept


def pytest_report_header(config: pytest.Config) -> list[str]:
    """The system parts the tests use, found or missing, at the top of every run (tests that need a
    missing one fail, saying how to get it; tests/setup-machine.sh installs them)."""
    import shutil

    from sweep.urls import mask

    parts = {"PostgreSQL": mask(POSTGRES_URL) if POSTGRES_URL else None,
             "docker-compose": shutil.which("docker-compose"), "dockerd": shutil.which("dockerd"),
             "debootstrap": shutil.which("debootstrap"),
             "chromium": shutil.which("chromium") or (CHROMIUM if Path(CHROMIUM).is_file() else None),
             "kubectl": shutil.which("kubectl")}
    return ["system parts: " + ", ".join(f"{k} {v or 'MISSING'}" for k, v in parts.items())]


@pytest.fixture(scope="session")
def mnist_path() -> Path:
    if not MNIST.is_file():
        pytest.fail(f"real MNIST expected at {MNIST} (see ../shared/data/README.md)")
    return MNIST


@pytest.fixture
def tiny_npz(tmp_path: Path) -> Path:
    """A few hundred synthetic 28x28 images whose class is readable from a bright band."""
    return write_tiny_npz(tmp_path / "tiny.npz")


BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def optuna_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty Optuna storage on every backend: SQLite always, PostgreSQL when configured."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'optuna.db'}"
        return
    if not POSTGRES_URL:
        fail_without_postgres()
    url, drop = postgres_database(POSTGRES_URL)
    yield url
    drop()


@pytest.fixture
def tracking_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(autouse=True)
def _workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # default stores are files in the cwd: keep every test's in its own folder
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SWEEP_OPTUNA_STORAGE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(autouse=True)
def _environment_restored() -> Iterator[None]:
    """What a test's in-process sweep writes to os.environ goes with the test: `backend.use()`
    sets KERAS_BACKEND before Keras is imported, as a trial process must, and a later test's
    `sweep` subprocess inherited it as the user's own choice (test_one_box, after test_server's
    in-process studies in the same pytest worker: "KERAS_BACKEND=tensorflow", not "auto")."""
    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(autouse=True)
def _sweep_logger_restored() -> Iterator[None]:
    """An in-process CLI call (`sweep.console.setup_logging`) gives sweep's logger its own handler
    and stops it propagating, as a command should; a later test in the same pytest worker then saw
    nothing in caplog (test_storage after test_report's CliRunner calls, in CI). Give it back."""
    own = logging.getLogger("sweep")
    kept = own.handlers[:], own.level, own.propagate
    yield
    own.handlers[:], own.level, own.propagate = kept
