"""`sweep report` and the per-trial diagnostics over a tiny real sweep with repeats."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from helpers import study_dict, write_study
from mlflow import MlflowClient
from optuna.trial import TrialState
from typer.testing import CliRunner

import sweep
from sweep import diagnostics
from sweep.cli import app
from sweep.analysis.compare import COLUMNS
from sweep.analysis.report import FIGURES, REPORT, TABLE
from sweep.models import activation_layers
from sweep.record import PARENT_ATTR

LAYERS = activation_layers("seed_cnn")
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """relu, leaky_relu and prelu, two repeats each, two epochs on a few hundred synthetic images."""
    tmp = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(1)

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 10, n).astype(np.uint8)
        x = rng.integers(0, 120, (n, 28, 28)).astype(np.uint8)  # noisy: accuracy varies by seed
        for i, c in enumerate(y):
            x[i, 2 * c + 4 : 2 * c + 6, :] = 255
        return x, y

    (xtr, ytr), (xte, yte) = make(300), make(100)
    np.savez(tmp / "tiny.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    d = study_dict(tmp / "tiny.npz", repeats=2)
    d["study"] = "report-tiny"
    d["diagnostics"] = {"probe_samples": 40}
    d["tracking"] = {"keep_models": "all"}  # each PReLU trial's model is read back below
    storage, tracking = f"sqlite:///{tmp / 'optuna.db'}", f"sqlite:///{tmp / 'mlflow.db'}"
    study = sweep.run(write_study(tmp, d), storage=storage, tracking_uri=tracking)
    folder = sweep.report("report-tiny", out=tmp / "out", storage=storage, tracking_uri=tracking)
    return {"study": study, "storage": storage, "tracking": tracking, "folder": folder, "tmp": tmp}


def test_sweep_completed_with_repeats(swept: dict[str, Any]) -> None:
    trials = swept["study"].get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6
    assert sorted((t.params["activation"], t.user_attrs["seed"]) for t in trials) == [
        ("leaky_relu", 0), ("leaky_relu", 1), ("prelu", 0), ("prelu", 1), ("relu", 0), ("relu", 1)]


def test_trials_log_dead_fractions_per_epoch(swept: dict[str, Any]) -> None:
    client = MlflowClient(swept["tracking"])
    for t in swept["study"].get_trials():
        for layer in LAYERS:
            hist = client.get_metric_history(t.user_attrs["mlflow_run_id"], f"dead_fraction/{layer}")
            assert sorted(m.step for m in hist) == [0, 1], layer
            assert all(0.0 <= m.value <= 1.0 for m in hist)
        cost = client.get_metric_history(t.user_attrs["mlflow_run_id"], diagnostics.COST_KEY)
        assert len(cost) == 2 and all(m.value > 0 for m in cost)


def test_prelu_trials_log_alphas_of_the_logged_model(swept: dict[str, Any]) -> None:
    client = MlflowClient(swept["tracking"])
    mlflow.set_tracking_uri(swept["tracking"])
    checked = 0
    for t in swept["study"].get_trials():
        run = client.get_run(t.user_attrs["mlflow_run_id"])
        alpha_keys = {k for k in run.data.metrics if k.startswith("prelu_alpha/")}
        if t.params["activation"] != "prelu":
            assert not alpha_keys and not client.list_artifacts(run.info.run_id, "diagnostics")
            continue
        assert (t.params["prelu_alpha_init"], t.params["prelu_shared_axes"]) == (0.25, "spatial")
        assert alpha_keys == {f"prelu_alpha/{layer}/{s}" for layer in LAYERS for s in ("mean", "min", "max")}
        files = {a.path for a in client.list_artifacts(run.info.run_id, "diagnostics")}
        assert files == {f"diagnostics/{f}" for f in diagnostics.ALPHA_FILES}
        model = mlflow.keras.load_model(t.user_attrs["mlflow_model_uri"])
        expected = diagnostics.prelu_alphas(model)
        local = client.download_artifacts(run.info.run_id, "diagnostics/prelu_alphas.npz", str(swept["tmp"]))
        with np.load(local) as f:
            assert sorted(f.files) == sorted(LAYERS)
            for layer in LAYERS:
                np.testing.assert_allclose(f[layer], expected[layer])
        for layer, n in zip(LAYERS, (32, 64, 256)):
            # the logged model says where its alphas started: Constant(0.25), not Keras' zeros
            init = model.get_layer(layer).get_config()["alpha_initializer"]
            assert (init["class_name"], init["config"].get("value")) == ("Constant", 0.25), (layer, init)
            # shared_axes=spatial: one alpha per channel (per unit after the Dense layer)
            alphas = expected[layer]
            assert alphas.shape == (n,), layer
            # trained alphas of a 0.25 start: moved, but no further than two epochs of Adam steps at
            # lr 0.003 take them (8 steps, each under 0.01); from zeros they would stay below 0.08
            assert np.abs(alphas - 0.25).max() > 1e-4, layer
            np.testing.assert_allclose(alphas, 0.25, atol=0.1, err_msg=layer)
            for stat in ("mean", "min", "max"):
                assert run.data.metrics[f"prelu_alpha/{layer}/{stat}"] == pytest.approx(getattr(np, stat)(alphas))
        checked += 1
    assert checked == 2  # both repeats of the PReLU config


def test_report_writes_every_promised_file_and_logs_it(swept: dict[str, Any]) -> None:
    folder: Path = swept["folder"]
    promised = {REPORT, TABLE, *FIGURES}
    assert {p.name for p in folder.iterdir()} == promised
    for name in FIGURES:
        assert (folder / name).read_bytes()[:8] == PNG, name
    text = (folder / REPORT).read_text()
    for name in FIGURES:
        assert f"]({name})" in text, name
    assert "Not produced" not in text
    client = MlflowClient(swept["tracking"])
    parent = swept["study"].user_attrs[PARENT_ATTR]
    logged = {a.path for a in client.list_artifacts(parent, "report")}
    assert logged == {f"report/{n}" for n in promised}
    back = client.download_artifacts(parent, f"report/{REPORT}", str(swept["tmp"] / "dl"))
    assert Path(back).read_text() == text


def test_report_tables_agree_with_stores(swept: dict[str, Any]) -> None:
    text = (swept["folder"] / REPORT).read_text()
    c = sweep.compare("report-tiny", storage=swept["storage"])
    assert list(c.table["config"]) == ["relu", "leaky_relu(alpha=0.1)", "prelu(alpha_init=0.25, shared_axes=spatial)"]
    assert list(c.table["n"]) == [2, 2, 2]
    trials = swept["study"].get_trials()
    relu_acc = [t.user_attrs["test_accuracy"] for t in trials if t.params["activation"] == "relu"]
    assert c.table["mean"][0] == pytest.approx(np.mean(relu_acc))
    assert f"| relu | 2 | {np.mean(relu_acc):.4f} ± " in text
    # the dead-fraction table is the mean of the last logged epoch over repeats, read from MLflow
    client = MlflowClient(swept["tracking"])
    last = [max(client.get_metric_history(t.user_attrs["mlflow_run_id"], "dead_fraction/act_dense1"),
                key=lambda m: m.step).value for t in trials if t.params["activation"] == "relu"]
    row = re.search(r"^\| relu \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", text, re.M)
    assert row and float(row.group(3)) == pytest.approx(np.mean(last), abs=5e-4)
    # the CSV is the comparison table, one row per config, in the study's order
    csv = pd.read_csv(swept["folder"] / TABLE)
    assert list(csv.columns) == list(COLUMNS) and list(csv["config"]) == list(c.table["config"])
    np.testing.assert_allclose(csv["mean"], c.table["mean"])
    assert list(csv["n"]) == [2, 2, 2]
    # the report's table carries the comparison's test and adjusted p-values too
    assert "| paired | " in text and "p adj (Holm)" in text and "test: paired t-test" in text


def test_cli_report_and_clean_error(swept: dict[str, Any], tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(app, ["report", "report-tiny", "--out", str(tmp_path / "cli"), "--storage", swept["storage"],
                            "--tracking-uri", swept["tracking"]])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "cli" / REPORT).is_file() and str(tmp_path / "cli" / REPORT) in r.output
    r = runner.invoke(app, ["report", "nope", "--storage", swept["storage"], "--tracking-uri", swept["tracking"]])
    assert r.exit_code == 2 and "no study named 'nope'" in r.output and r.exception.__class__ is SystemExit
