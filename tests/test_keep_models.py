"""`tracking.keep_models`: only the K best trials keep their logged model, deleted through MLflow's
own API as they fall out, on the embedded store and through a real `sweep server` (proxied
artifacts); every trial's params, metrics and plots stay. Real Keras training on tiny data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import optuna
import pytest
from helpers import free_port, logged_weights, study_dict, weights_digest, write_study
from mlflow import MlflowClient

import sweep
from sweep.record import CONFIG_ATTR
from sweep.runner import objective as obj
from sweep.tracking.models import DELETED_TAG

SIX = [{"activation": a} for a in ("relu", "elu", "tanh", "selu", "gelu", "silu")]


@pytest.fixture(scope="module")
def sweep_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A real `sweep server` (MLflow, artifacts proxied into a folder of its own)."""
    from sweep.settings import ServerSettings
    from sweep.server import start

    tmp = tmp_path_factory.mktemp("keep-server")
    s = ServerSettings(port=free_port(), backend_store_uri=f"sqlite:///{tmp / 'mlflow.db'}",
                       artifacts_destination=str(tmp / "artifacts"))
    server = start(s, log_path=tmp / "server.log")
    yield {"url": server.url, "artifacts": tmp / "artifacts"}
    server.stop()


def _study(tiny_npz: Path, name: str, keep: Any, **search: Any) -> dict[str, Any]:
    d = study_dict(tiny_npz, **{"configs": SIX, "metric": "val_loss", **search})
    d["study"] = name
    d["training"].update(epochs=2, batch_size=100)
    if keep is not None:
        d["tracking"] = {"keep_models": keep}
    return d


def _model_files(folder: Path) -> dict[str, int]:
    """Logged models with files on disk: model id -> bytes (MLflow keeps each under models/ID/)."""
    out = {}
    for d in folder.rglob("models/m-*"):
        size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
        if size:
            out[d.name] = size
    return out


@pytest.mark.parametrize("where", ["embedded", "server"])
def test_keep_models_2_leaves_the_two_best_models(where: str, tmp_path: Path, tiny_npz: Path,
                                                  request: pytest.FixtureRequest) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    if where == "server":
        server = request.getfixturevalue("sweep_server")
        tracking, artifacts = server["url"], server["artifacts"]
    else:
        tracking, artifacts = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "sweep-artifacts"
    name = f"keep-{where}"
    study = sweep.run(write_study(tmp_path, _study(tiny_npz, name, 2)), storage=storage, tracking_uri=tracking)

    trials = study.get_trials()
    assert len(trials) == 6 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert len({round(t.value, 9) for t in trials}) == 6  # val_loss: no ties to decide
    best_two = {t.number for t in sorted(trials, key=lambda t: t.value)[:2]}
    run_of = {t.user_attrs[obj.RUN_ID]: t.number for t in trials}

    client = MlflowClient(tracking)
    exp = client.get_experiment_by_name(name)
    models = client.search_logged_models(experiment_ids=[exp.experiment_id])
    assert {run_of[m.source_run_id] for m in models} == best_two and len(models) == 2
    # on disk, only those two models' files are left (not just hidden from MLflow's listing)
    on_disk = _model_files(artifacts)
    assert set(on_disk) == {m.model_id for m in models}, on_disk
    assert all(size > 100_000 for size in on_disk.values())  # the Keras model itself

    for t in trials:  # every trial's record stays whole
        run = client.get_run(t.user_attrs[obj.RUN_ID])
        assert run.info.status == "FINISHED"
        assert len(client.get_metric_history(run.info.run_id, "val_loss")) == 2
        assert "activation" in run.data.params
        assert {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
        if t.number in best_two:
            assert DELETED_TAG not in run.data.tags
        else:
            assert "tracking.keep_models: 2" in run.data.tags[DELETED_TAG]

    best = sweep.load_model(name, storage=storage, tracking_uri=tracking)
    digests = logged_weights(tracking, [t for t in trials if t.number in best_two])  # the kept models
    assert len(set(digests.values())) == 2 and weights_digest(best) == digests[study.best_trial.number]
    # the completed study registered its best model (sweep/tracking/registry.py), here too
    registered = client.get_model_version_by_alias(name, "best")
    assert registered.tags["sweep.trial"] == str(study.best_trial.number)
    dropped = min(set(range(6)) - best_two)
    with pytest.raises(sweep.SweepError, match=r"tracking.keep_models: 2"):
        sweep.load_model(name, trial=dropped, storage=storage, tracking_uri=tracking)


def test_a_study_stored_before_keep_models_keeps_every_model(tmp_path: Path, tiny_npz: Path) -> None:
    """An upgrade deletes nothing: a study whose stored config predates `tracking` goes on keeping
    every model when resumed from a file that does not set keep_models (the default is 3)."""
    storage, tracking = f"sqlite:///{tmp_path / 'optuna.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}"
    d = _study(tiny_npz, "legacy", None, configs=None, sampler="random", n_trials=3,
               space={"activation": ["relu", "elu", "tanh", "selu", "gelu"]})
    sweep.run(write_study(tmp_path, d), storage=storage, tracking_uri=tracking)
    study = optuna.load_study(study_name="legacy", storage=storage)
    stored = dict(study.user_attrs[CONFIG_ATTR])
    assert stored.pop("tracking") == {"keep_models": 3}
    study.set_user_attr(CONFIG_ATTR, stored)  # as sweep before 2026-11-24 stored it

    d["search"]["n_trials"] = 5
    study = sweep.run(write_study(tmp_path, d), storage=storage, tracking_uri=tracking)
    assert len(study.trials) == 5
    client = MlflowClient(tracking)
    exp = client.get_experiment_by_name("legacy")
    assert len(client.search_logged_models(experiment_ids=[exp.experiment_id])) == 5
    assert len(_model_files(tmp_path / "sweep-artifacts")) == 5
    assert study.user_attrs[CONFIG_ATTR]["tracking"] == {"keep_models": "all"}  # and says so


def test_keep_models_lowered_on_resume_deletes_down_to_it_but_never_a_registered_model(tmp_path: Path,
                                                                                       tiny_npz: Path) -> None:
    """`keep_models: all`, then `sweep promote --trial` of the worst trial, then the study resumed
    with `keep_models: 1` and one more trial: every model but the best's and the promoted one's is
    deleted (a registry version reads its files); the promoted one still loads, bit for bit."""
    storage, tracking = f"sqlite:///{tmp_path / 'optuna.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}"
    d = _study(tiny_npz, "lowered", "all", configs=None, sampler="random", n_trials=3,
               space={"activation": ["relu", "elu", "tanh", "selu", "gelu"]})
    study = sweep.run(write_study(tmp_path, d), storage=storage, tracking_uri=tracking)
    worst = max(study.get_trials(), key=lambda t: t.value)  # val_loss
    assert worst.number != study.best_trial.number
    before = logged_weights(tracking, [worst])[worst.number]
    promoted = sweep.promote("lowered", trial=worst.number, storage=storage, tracking_uri=tracking)
    assert promoted["trial"] == worst.number

    d["tracking"] = {"keep_models": 1}
    d["search"]["n_trials"] = 4
    study = sweep.run(write_study(tmp_path, d), storage=storage, tracking_uri=tracking)
    trials = study.get_trials()
    assert len(trials) == 4 and study.user_attrs[CONFIG_ATTR]["tracking"] == {"keep_models": 1}
    client = MlflowClient(tracking)
    exp = client.get_experiment_by_name("lowered")
    run_of = {t.user_attrs[obj.RUN_ID]: t.number for t in trials}
    # every version ever registered (the first run's best, the promoted worst, the resumed best)
    registered = {int(v.tags["sweep.trial"]) for v in client.search_model_versions("name='lowered'")}
    assert worst.number in registered
    stay = registered | {study.best_trial.number}
    assert len(stay) < 4  # precondition: something to delete
    models = client.search_logged_models(experiment_ids=[exp.experiment_id])
    assert sorted(run_of[m.source_run_id] for m in models) == sorted(stay)
    assert len(_model_files(tmp_path / "sweep-artifacts")) == len(stay)
    for t in trials:
        tags = client.get_run(t.user_attrs[obj.RUN_ID]).data.tags
        assert (DELETED_TAG in tags) == (t.number not in stay), t.number
    again = sweep.load_model("lowered", trial=worst.number, storage=storage, tracking_uri=tracking)
    assert weights_digest(again) == before


def test_a_model_whose_run_optuna_never_learned_is_deleted_when_it_falls_out(tmp_path: Path,
                                                                           tiny_npz: Path) -> None:
    """A trial's run created after the trial ended (MLflow away for the whole trial; or made by
    a replay) is not named in Optuna: its model must still go when it falls out of keep_models
    (tests/chaos.py found 12 such models left over 30 minutes). The state is made as a fault
    leaves it: the trial's run id removed from Optuna's table."""
    import sqlite3

    storage, tracking = f"sqlite:///{tmp_path / 'optuna.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}"
    d = _study(tiny_npz, "unnamed", "all", configs=None, sampler="random", n_trials=3,
               space={"activation": ["relu", "elu", "tanh", "selu", "gelu"]})
    study = sweep.run(write_study(tmp_path, d), storage=storage, tracking_uri=tracking)
    worst = max(study.get_trials(), key=lambda t: t.value)  # val_loss
    run_id = worst.user_attrs[obj.RUN_ID]
    with sqlite3.connect(tmp_path / "optuna.db") as c:
        gone = c.execute("DELETE FROM trial_user_attributes WHERE trial_id = ? AND key = ?",
                         (worst._trial_id, obj.RUN_ID)).rowcount
    assert gone == 1
    d["tracking"] = {"keep_models": 1}
    d["search"]["n_trials"] = 4
    study = sweep.run(write_study(tmp_path, d), storage=storage, tracking_uri=tracking)
    client = MlflowClient(tracking)
    exp = client.get_experiment_by_name("unnamed")
    left = {m.source_run_id for m in client.search_logged_models(experiment_ids=[exp.experiment_id])}
    assert run_id not in left and DELETED_TAG in client.get_run(run_id).data.tags


@pytest.mark.parametrize("value", [0, -2, "best", 1.5])
def test_bad_keep_models_exits_2_naming_the_field(tmp_path: Path, tiny_npz: Path, value: Any) -> None:
    path = write_study(tmp_path, _study(tiny_npz, "bad-keep", value))
    r = subprocess.run([sys.executable, "-m", "sweep", "run", str(path)], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "tracking.keep_models" in lines[0] and "`all`" in lines[0], r.stderr
    assert repr(value) in lines[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "sweep-optuna.db").exists()
