"""The CLI's own surface: help texts as users read them in a terminal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _help(*args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "sweep", *args, "--help"], capture_output=True, text=True,
                       timeout=120, env={**os.environ, "COLUMNS": "100"})
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.parametrize("command", ["run", "worker", "status", "best", "trials", "compare", "report", "sync"])
def test_bracketed_defaults_survive_in_help(command: str) -> None:
    """Rich markup took `[env ...; default ...]` for a style tag and printed nothing of it."""
    text = " ".join(_help(command).split())  # help wraps lines
    assert "[env SWEEP_OPTUNA_STORAGE; default sqlite:///sweep-optuna.db]" in text


def test_server_help_explains_every_option() -> None:
    text = " ".join(_help("server").split())
    for option, words in {"--port": "[server.port; default 5000]",
                          "--backend-store-uri": "[server.backend_store_uri; default sqlite:///sweep-mlflow.db]",
                          "--artifacts-destination": "[server.artifacts_destination; default ./sweep-artifacts]",
                          "--workers": "[server.workers; default 1",
                          "--host": "[server.host; default 127.0.0.1]"}.items():
        assert f"{option} " in text and words in text, option


COMMANDS = ["run", "worker", "status", "best", "trials", "compare", "report", "server", "sync", "promote"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_takes_verbose(command: str) -> None:
    text = " ".join(_help(command).split())
    assert "-v, --verbose more detail: where each store URL came from" in text


def test_verbose_says_where_each_store_came_from(tmp_path: Path) -> None:
    """`-v` on a read-only command: the resolved URLs and their source, the password masked."""
    import optuna

    db = tmp_path / "o.db"
    optuna.create_study(study_name="s", storage=f"sqlite:///{db}")
    settings = tmp_path / "mlflow.yaml"
    settings.write_text("tracking_uri: 'http://sweep:s3cret@127.0.0.1:9/'\n")
    env = {**os.environ, "SWEEP_CONFIG": str(settings), "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    quiet = subprocess.run([sys.executable, "-m", "sweep", "status", "s", "--storage", f"sqlite:///{db}"],
                           capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    loud = subprocess.run([sys.executable, "-m", "sweep", "status", "s", "--storage", f"sqlite:///{db}", "-v"],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert quiet.returncode == loud.returncode == 2  # a study with no stored config: refused, cleanly
    assert "Optuna storage" not in quiet.stderr
    assert (f"Optuna storage sqlite:///{db} (from --storage); MLflow tracking http://sweep:***@127.0.0.1:9/ "
            f"(from {settings} tracking_uri)") in loud.stderr, loud.stderr
    assert "s3cret" not in loud.stderr + loud.stdout


def test_config_reaches_a_command_as_its_argument_not_through_the_environment(tmp_path: Path) -> None:
    """`--config` is read by the command that was given it and handed down as resolved stores
    (sweep.storage.resolve): nothing is written to os.environ on the way, where it used to become
    $SWEEP_CONFIG for every later step of the process. A $SWEEP_CONFIG of the user's still loses to it."""
    import optuna
    from typer.testing import CliRunner

    from sweep.cli import app

    team, other = tmp_path / "team.yaml", tmp_path / "other.yaml"
    team.write_text(f"optuna_storage: sqlite:///{tmp_path / 'team.db'}\n")
    other.write_text(f"optuna_storage: sqlite:///{tmp_path / 'other.db'}\n")
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'team.db'}")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    os.environ["SWEEP_CONFIG"] = str(other)  # restored after the test (conftest)
    result = CliRunner().invoke(app, ["trials", "s", "--config", str(team)])
    assert result.exit_code == 0, result.output
    assert "COMPLETE" in result.output  # team.db's study, not other.yaml's
    assert os.environ["SWEEP_CONFIG"] == str(other)


def _sweep(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sweep", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=cwd)


def test_debug_shows_the_traceback_behind_the_one_line(tmp_path: Path) -> None:
    """`sweep --debug COMMAND`: the same one line and exit code, with the traceback above it down to
    the library's own error (which users never see), passwords still hidden."""
    from helpers import free_port

    url = f"postgresql://sweep:s3cret@127.0.0.1:{free_port()}/nothing-listens"
    plain = _sweep("trials", "s", "--storage", url, cwd=tmp_path)
    debug = _sweep("--debug", "trials", "s", "--storage", url, cwd=tmp_path)
    assert plain.returncode == debug.returncode == 3, plain.stderr
    line = plain.stderr.strip()
    assert line.startswith("error: cannot open the Optuna storage") and "\n" not in line
    assert "Traceback" in debug.stderr and "psycopg2.OperationalError" in debug.stderr, debug.stderr
    assert debug.stderr.strip().endswith(line) and "s3cret" not in debug.stderr
    # through `sweep run`'s supervisor to the trial process it starts: a bad study file
    (tmp_path / "bad.yaml").write_text("study: s\nsearch: {n_trials: 0}\n")
    plain = _sweep("run", "bad.yaml", cwd=tmp_path)
    debug = _sweep("--debug", "run", "bad.yaml", cwd=tmp_path)
    assert plain.returncode == debug.returncode == 2, plain.stderr
    assert "Traceback" not in plain.stderr and "Traceback" in debug.stderr
    assert "sweep.errors.ConfigError" in debug.stderr and debug.stderr.strip().endswith(plain.stderr.strip())
