"""The runs' Dataset column (sweep/tracking/describe.py `dataset_inputs`, trial.py, sync.py): what each trial
trained, validated and tested on, read back through MlflowClient from a real sweep."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

from helpers import free_port, start_cli_server, study_dict, wait_health, write_study, write_tiny_npz
from mlflow import MlflowClient

from sweep.tracking.sync import sync


def _sweep(tmp_path: Path, npz: Path, study: str, tracking: str) -> str:
    """A real two-trial sweep of one epoch over `npz`; returns its Optuna storage URL."""
    import sweep

    storage = f"sqlite:///{tmp_path / f'{study}-optuna.db'}"
    d = study_dict(npz, configs=[{"activation": "relu"}, {"activation": "elu"}])
    d["study"], d["training"]["epochs"] = study, 1
    sweep.run(write_study(tmp_path, d, f"{study}.yaml"), storage=storage, tracking_uri=tracking)
    return storage


def _inputs(client: MlflowClient, study: str) -> dict[int, dict[str, Any]]:
    """Each trial's dataset inputs by context: {trial: {context: mlflow Dataset}}."""
    exp = client.get_experiment_by_name(study)
    out: dict[int, dict[str, Any]] = {}
    for r in client.search_runs([exp.experiment_id]):
        if r.data.tags.get("sweep.role") != "trial":
            continue
        run = client.get_run(r.info.run_id)  # as the run page reads it
        by_context = {}
        for di in run.inputs.dataset_inputs:
            [context] = [t.value for t in di.tags if t.key == "mlflow.data.context"]
            assert context not in by_context, (r.info.run_id, context)
            by_context[context] = di.dataset
        out[int(r.data.tags["optuna.trial_number"])] = by_context
    return out


def _check_tiny(inputs: dict[int, dict[str, Any]], npz: Path) -> None:
    """tiny_npz: 300 training images, 20% validation, 100 test images, all 28x28x1."""
    assert sorted(inputs) == [0, 1]
    rows = {"training": 240, "validation": 60, "test": 100}
    for parts in inputs.values():
        assert set(parts) == set(rows)
        for context, ds in parts.items():
            assert ds.name == "tiny"  # a generic npz is named after its file
            assert (ds.source_type, json.loads(ds.source)) == ("local", {"uri": str(npz.resolve())})
            profile = json.loads(ds.profile)
            assert profile["num_rows"] == rows[context] and profile["num_classes"] == 10
            assert profile["features_shape"] == [rows[context], 28, 28, 1]
            assert profile["targets_shape"] == [rows[context]]
            assert len(ds.digest) == 8
    # the same data for both trials, and a different digest for each part
    assert {c: d.digest for c, d in inputs[0].items()} == {c: d.digest for c, d in inputs[1].items()}
    assert len({d.digest for d in inputs[0].values()}) == 3


def test_trials_log_their_dataset_and_sync_restores_it(tmp_path: Path, tiny_npz: Path) -> None:
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = _sweep(tmp_path, tiny_npz, "tiny", tracking)
    client = MlflowClient(tracking)
    inputs = _inputs(client, "tiny")
    _check_tiny(inputs, tiny_npz)

    # other data (another file, same shapes): other digests
    (tmp_path / "other").mkdir()
    other = write_tiny_npz(tmp_path / "other" / "tiny.npz", seed=1)
    _sweep(tmp_path, other, "other", tracking)
    others = _inputs(client, "other")
    assert json.loads(others[0]["training"].source) == {"uri": str(other.resolve())}
    for context in ("training", "validation", "test"):
        assert others[0][context].digest != inputs[0][context].digest

    # a run sync has to create again gets the same inputs, made from the stored config
    exp = client.get_experiment_by_name("tiny")
    [gone] = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("optuna.trial_number") == "1"]
    client.delete_run(gone.info.run_id)
    counts = sync("tiny", storage=storage, tracking_uri=tracking)
    assert counts["runs_created"] == 1 and counts["datasets_logged"] == 3
    replayed = _inputs(client, "tiny")
    assert {c: (d.name, d.digest, d.source) for c, d in replayed[1].items()} == \
        {c: (d.name, d.digest, d.source) for c, d in inputs[0].items()}
    assert sync("tiny", storage=storage, tracking_uri=tracking)["datasets_logged"] == 0


def test_dataset_inputs_go_through_the_tracking_server(tmp_path: Path, tiny_npz: Path) -> None:
    port, log = free_port(), tmp_path / "server.log"
    url = f"http://127.0.0.1:{port}"
    proc = start_cli_server(["--port", str(port), "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                             "--artifacts-destination", str(tmp_path / "artifacts")], tmp_path, log)
    try:
        wait_health(url, proc, log)
        _sweep(tmp_path, tiny_npz, "tiny", url)
        _check_tiny(_inputs(MlflowClient(url), "tiny"), tiny_npz)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(60)


def test_no_validation_part_without_a_split(tiny_npz: Path) -> None:
    from sweep.config import ImageDatasetConfig
    from sweep.data import load
    from sweep.tracking.describe import dataset_inputs

    inputs = dataset_inputs(load(ImageDatasetConfig(name="npz", path=tiny_npz, validation_split=0.0)))
    contexts = [t.value for di in inputs for t in di.tags if t.key == "mlflow.data.context"]
    assert contexts == ["training", "test"]
    assert json.loads(inputs[0].dataset.profile)["num_rows"] == 300
