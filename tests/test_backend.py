"""The Keras backend: chosen automatically (JAX where a GPU is visible, TensorFlow otherwise),
forced with KERAS_BACKEND, named on `sweep run`'s first line and on every trial's run, with
MLflow's system metrics; the JAX path runs a real study end to end on the CPU here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import study_dict, write_study
from mlflow import MlflowClient

from sweep import backend
from sweep.errors import ConfigError


@pytest.fixture
def gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the NVIDIA driver lists its GPUs, empty: add a folder to make one visible."""
    folder = tmp_path / "nvidia-gpus"
    folder.mkdir()
    monkeypatch.setattr(backend, "_NVIDIA_GPUS", folder)
    return folder


def test_auto_is_tensorflow_without_a_gpu_and_jax_with_one(gpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert backend.choose({}) == backend.Choice("tensorflow", "auto: no GPU visible")
    (gpus / "0000:19:00.0").mkdir()  # what the driver shows for one GPU
    assert backend.choose({}) == backend.Choice("jax", "auto: a GPU is visible")
    # hidden from this process: the CPU again
    assert backend.choose({"CUDA_VISIBLE_DEVICES": ""}).name == "tensorflow"
    assert backend.choose({"CUDA_VISIBLE_DEVICES": "-1"}).name == "tensorflow"
    assert backend.choose({"CUDA_VISIBLE_DEVICES": "0"}).name == "jax"
    # a GPU but no JAX (a plain `pip install -e .`): TensorFlow on the CPU, and the line says why
    monkeypatch.setattr(backend, "installed", lambda name: name != "jax")
    choice = backend.choose({})
    assert choice.name == "tensorflow" and "pip install -e '.[cuda]'" in choice.why


def test_keras_backend_overrides_the_choice(gpus: Path) -> None:
    assert backend.choose({"KERAS_BACKEND": "jax"}) == backend.Choice("jax", "KERAS_BACKEND=jax")
    (gpus / "0000:19:00.0").mkdir()
    assert backend.choose({"KERAS_BACKEND": "tensorflow"}).name == "tensorflow"


def test_a_backend_that_is_not_one_or_not_installed_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as e:
        backend.choose({"KERAS_BACKEND": "tensorflw"})
    assert "KERAS_BACKEND" in str(e.value) and "expected one of tensorflow, jax, torch, got 'tensorflw'" in str(e.value)
    if not backend.installed("torch"):
        with pytest.raises(ConfigError, match="torch is not installed"):
            backend.choose({"KERAS_BACKEND": "torch"})


def _tiny(tmp_path: Path, tiny_npz: Path, name: str, epochs: int = 2) -> Path:
    d = study_dict(tiny_npz, configs=[{"activation": "prelu", "prelu_alpha_init": 0.25,
                                       "prelu_shared_axes": "spatial"}])
    d["study"] = name
    d["training"].update(epochs=epochs, batch_size=32)
    return write_study(tmp_path, d)


def _sweep(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items()
            if k not in ("KERAS_BACKEND", "SWEEP_OPTUNA_STORAGE", "MLFLOW_TRACKING_URI")}
    return subprocess.run([sys.executable, "-m", "sweep", *args], cwd=cwd, env={**base, **env},
                          capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("value, says", [
    ("tensorflw", "KERAS_BACKEND: expected one of tensorflow, jax, torch, got 'tensorflw'"),
    ("torch", "KERAS_BACKEND: torch is not installed in this environment (pip install torch)"),
])
@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_bad_backend_exits_2_with_one_line_before_anything_is_written(tmp_path: Path, tiny_npz: Path,
                                                                       value: str, says: str, workers: str) -> None:
    if value == "torch" and backend.installed("torch"):
        pytest.skip("torch is installed here")  # never in the test venv: `.[test]` has no torch
    r = _sweep(["run", str(_tiny(tmp_path, tiny_npz, "bad")), "--workers", workers], tmp_path, KERAS_BACKEND=value)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], r.stderr
    assert not (tmp_path / "sweep-optuna.db").exists()


@pytest.mark.parametrize("forced", ["jax"])  # auto (TensorFlow here): tests/test_one_box.py and the suite
def test_a_study_names_its_backend_first_and_on_every_run_with_system_metrics(tmp_path: Path, tiny_npz: Path,
                                                                             forced: str | None) -> None:
    """KERAS_BACKEND=jax on the CPU, a real study: the first line says what trains, every trial's
    run records it, and MLflow's monitor logged CPU and memory."""
    env = {"MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "0.5"}  # MLflow's own setting: trials last seconds here
    if forced:
        env["KERAS_BACKEND"] = forced
    r = _sweep(["run", str(_tiny(tmp_path, tiny_npz, "where", epochs=6))], tmp_path, **env)
    assert r.returncode == 0, r.stderr
    first = r.stderr.splitlines()[0]
    name = forced or "tensorflow"
    why = f"KERAS_BACKEND={forced}" if forced else "auto: no GPU visible"
    assert f" on {name} " in first and f", CPU ({why})" in first, r.stderr

    client = MlflowClient(f"sqlite:///{tmp_path / 'sweep-mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("where").experiment_id],
                              filter_string="tags.`sweep.role` != 'parent'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    params = runs[0].data.params
    assert params["keras_backend"].startswith(f"{name} ") and params["device"] == "CPU", params
    metrics = runs[0].data.metrics
    assert "system/cpu_utilization_percentage" in metrics and "system/system_memory_usage_megabytes" in metrics, \
        sorted(metrics)
    assert metrics["val_accuracy"] > 0.5  # it learned on that backend
