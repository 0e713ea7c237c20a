"""The best model in MLflow's Model Registry: `models:/STUDY@best`, set when a study completes and
by `sweep promote` at any time. Real Keras training on tiny data, a real MLflow store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from helpers import logged_weights, study_dict, weights_digest, write_study
from mlflow import MlflowClient

import sweep
from sweep.runner import objective as obj

ROOT = Path(__file__).resolve().parents[1]


def _cli(args: list[str], cwd: Path, storage: str, tracking: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SWEEP_OPTUNA_STORAGE": storage, "MLFLOW_TRACKING_URI": tracking, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "sweep", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_best_alias_loads_in_a_fresh_process_and_predicts_the_logged_accuracy(tmp_path: Path,
                                                                              tiny_npz: Path) -> None:
    storage, tracking = f"sqlite:///{tmp_path / 'optuna.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}"
    d = study_dict(tiny_npz, metric="val_loss",
                   configs=[{"activation": a} for a in ("relu", "tanh", "elu")])
    d["study"] = "reg"
    d["training"].update(epochs=2, batch_size=100)
    study = sweep.run(write_study(tmp_path, d), storage=storage, tracking_uri=tracking)
    best = study.best_trial

    client = MlflowClient(tracking)
    version = client.get_model_version_by_alias("reg", "best")
    assert version.tags["sweep.trial"] == str(best.number)
    assert version.source == best.user_attrs[obj.MODEL_URI]
    assert float(version.tags["sweep.value"]) == pytest.approx(best.value)
    assert version.tags["sweep.param.activation"] == best.params["activation"]
    assert version.run_id == best.user_attrs[obj.RUN_ID]
    parent = client.get_run(study.user_attrs["sweep.mlflow_parent_run_id"])
    assert parent.data.tags["sweep.best.registered"] == f"models:/reg@best (version {version.version})"

    # a fresh process that knows only the tracking store and the registered name
    code = ("import json, sys, numpy as np, mlflow\n"
            "model = mlflow.pyfunc.load_model('models:/reg@best')\n"
            "with np.load(sys.argv[1]) as f:\n"
            "    x = (f['x_test'].astype('float32') / 255.0)[..., None]\n"
            "    y = f['y_test']\n"
            "pred = np.asarray(model.predict(x))\n"
            "print(json.dumps({'acc': float((pred.argmax(1) == y).mean())}))\n")
    r = subprocess.run([sys.executable, "-c", code, str(tiny_npz)], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300, env={**os.environ, "MLFLOW_TRACKING_URI": tracking})
    assert r.returncode == 0, r.stderr[-3000:]
    acc = json.loads(r.stdout.strip().splitlines()[-1])["acc"]
    assert acc == pytest.approx(best.user_attrs["test_accuracy"], abs=1e-6)
    # sweep.load_model gives the same model: the best trial's weights, no other trial's
    logged = logged_weights(tracking, study.get_trials())
    assert len(set(logged.values())) == 3  # precondition: three different models to tell apart
    assert weights_digest(sweep.load_model("reg", storage=storage, tracking_uri=tracking)) == logged[best.number]


def test_promote_moves_the_alias_and_a_completed_study_takes_it_back(tmp_path: Path, tiny_npz: Path) -> None:
    storage, tracking = f"sqlite:///{tmp_path / 'optuna.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}"
    d = study_dict(tiny_npz, metric="val_loss", configs=None, sampler="random", n_trials=2,
                   space={"activation": ["relu", "tanh", "elu", "selu"]})
    d["study"] = "moves"
    d["training"].update(epochs=2, batch_size=100)
    path = write_study(tmp_path, d)
    sweep.run(path, storage=storage, tracking_uri=tracking)
    client = MlflowClient(tracking)
    study = optuna.load_study(study_name="moves", storage=storage)
    worse = max(study.trials, key=lambda t: t.value)
    assert client.get_model_version_by_alias("moves", "best").tags["sweep.trial"] == str(study.best_trial.number)

    r = _cli(["promote", "moves", "--trial", str(worse.number)], tmp_path, storage, tracking)
    assert r.returncode == 0, r.stderr
    assert f"trial {worse.number} " in r.stdout and "is now models:/moves@best" in r.stdout
    assert client.get_model_version_by_alias("moves", "best").tags["sweep.trial"] == str(worse.number)

    d["search"]["n_trials"] = 3  # resumed and completed: the alias goes to the study's best again
    study = sweep.run(write_study(tmp_path, d), storage=storage, tracking_uri=tracking)
    now = client.get_model_version_by_alias("moves", "best")
    assert now.tags["sweep.trial"] == str(study.best_trial.number) and int(now.version) == 3

    again = _cli(["promote", "moves", "--json"], tmp_path, storage, tracking)
    assert again.returncode == 0, again.stderr
    out = json.loads(again.stdout)
    assert out["changed"] is False and out["version"] == 3 and out["trial"] == study.best_trial.number
    assert len(client.search_model_versions("name = 'moves'")) == 3  # nothing registered twice

    bad = _cli(["promote", "moves", "--trial", "99"], tmp_path, storage, tracking)
    assert bad.returncode != 0 and "trial 99" in bad.stderr and "Traceback" not in bad.stderr


def test_best_and_promote_before_any_trial_completed_say_so(tmp_path: Path, tiny_npz: Path) -> None:
    storage, tracking = f"sqlite:///{tmp_path / 'optuna.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}"
    d = study_dict(tiny_npz)
    d["study"] = "empty"
    study = sweep.run(write_study(tmp_path, d), storage=storage, tracking_uri=tracking, n_trials=0)
    assert {t.state.name for t in study.trials} == {"WAITING"}  # the plan enqueued, nothing run
    for args, words in ((["best", "empty"], "no completed trial yet"),
                        (["promote", "empty"], "no complete trial yet: nothing to promote")):
        r = _cli(args, tmp_path, storage, tracking)
        assert r.returncode != 0 and words in r.stderr and "Traceback" not in r.stderr, r.stderr
