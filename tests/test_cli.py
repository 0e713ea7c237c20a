"""The CLI's own surface: help texts as users read them in a terminal."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


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
