"""End-to-end sweeps over real parts: Keras training, Optuna RDB storage, MLflow tracking store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
import optuna
import pytest
from helpers import (TESTS, fail_without_postgres, free_port, logged_weights, on_backend, postgres_database,
                     study_dict, write_study)
from mlflow import MlflowClient
from optuna.trial import TrialState

import sweep
from sweep.models.activations import resolve_params
from sweep.runner import objective as obj
from sweep.errors import ConfigError
from sweep.record import CONFIG_ATTR, PARENT_ATTR

POSTGRES_URL = os.environ.get("SWEEP_TEST_POSTGRES_URL")


def _children(client: MlflowClient, experiment: str) -> tuple[Any, list[Any]]:
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    assert len(parents) == 1, f"expected one parent run, got {len(parents)}"
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return parent, sorted(children, key=lambda r: int(r.data.tags["optuna.trial_number"]))


# --- the real-MNIST sweep of the "done when", on every Optuna backend ---

@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def mnist_sweep(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                mnist_path: Path) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp(f"mnist-{request.param}")
    drop = None
    if request.param == "sqlite":
        storage = f"sqlite:///{tmp / 'optuna.db'}"
    elif not POSTGRES_URL:
        fail_without_postgres()
    else:
        storage, drop = postgres_database(POSTGRES_URL)
    tracking = f"sqlite:///{tmp / 'mlflow.db'}"
    d = study_dict(mnist_path)
    d["study"] = "mnist-families"
    d["dataset"].update(train_samples=3000, test_samples=1000)
    d["training"].update(epochs=2, batch_size=250, learning_rate=0.001)
    path = write_study(tmp, d)
    study = sweep.run(path, storage=storage, tracking_uri=tracking)
    yield {"study": study, "storage": storage, "tracking": tracking, "tmp": tmp, "path": path}
    if drop:
        drop()


def test_all_three_families_complete_in_optuna(mnist_sweep: dict[str, Any]) -> None:
    trials = mnist_sweep["study"].get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert [t.params["activation"] for t in trials] == ["relu", "leaky_relu", "prelu"]
    assert trials[1].params["leaky_alpha"] == 0.1
    assert trials[2].params["prelu_shared_axes"] == "spatial"
    for t in trials:
        assert 0.5 < t.value <= 1.0  # 3,000 real MNIST digits, 2 epochs: far above chance
        assert len(t.intermediate_values) == 2
        assert t.user_attrs[obj.RUN_ID]


def test_mlflow_holds_parent_and_child_runs(mnist_sweep: dict[str, Any]) -> None:
    client = MlflowClient(mnist_sweep["tracking"])
    parent, children = _children(client, "mnist-families")
    study = mnist_sweep["study"]
    assert study.user_attrs[PARENT_ATTR] == parent.info.run_id
    assert parent.data.params["training.epochs"] == "2"
    # the finished study's summary is on its parent run, which is FINISHED
    assert parent.info.status == "FINISHED" and parent.info.end_time
    assert parent.data.metrics["best_val_accuracy"] == pytest.approx(study.best_value)
    assert (parent.data.metrics["trials_complete"], parent.data.metrics["trials_fail"]) == (3, 0)
    assert parent.data.tags["sweep.best.trial"] == str(study.best_trial.number)
    assert parent.data.tags["sweep.best.activation"] == study.best_trial.params["activation"]
    # MLflow 3's UI opens a model-training experiment on its runs, not the GenAI overview
    assert client.get_experiment_by_name("mnist-families").tags["mlflow.experimentKind"] == "custom_model_development"
    assert "study_config.json" in [a.path for a in client.list_artifacts(parent.info.run_id)]
    assert len(children) == 3
    for trial, run in zip(study.get_trials(), children):
        assert run.info.run_id == trial.user_attrs[obj.RUN_ID]
        assert run.data.tags["optuna.trial_number"] == str(trial.number)
        assert run.data.tags["optuna.study_name"] == "mnist-families"
        assert run.data.tags["optuna.state"] == "COMPLETE" and run.info.status == "FINISHED"
        assert run.data.params["activation"] == trial.params["activation"]
        assert run.data.params["seed"] == str(trial.user_attrs["seed"])
        for key in ("loss", "accuracy", "val_loss", "val_accuracy", "epoch_seconds"):
            hist = client.get_metric_history(run.info.run_id, key)
            assert sorted(m.step for m in hist) == [0, 1], key
        val_acc = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert max(val_acc, key=lambda m: m.step).value == pytest.approx(trial.value)
        assert 0 < run.data.metrics["test_accuracy"] <= 1
        assert "test_loss" in run.data.metrics
        plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
        assert plots == {"plots/accuracy.png", "plots/loss.png"}
        png = Path(client.download_artifacts(run.info.run_id, "plots/accuracy.png", str(mnist_sweep["tmp"])))
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_logged_model_loads_back_and_predicts(mnist_sweep: dict[str, Any], mnist_path: Path) -> None:
    mlflow.set_tracking_uri(mnist_sweep["tracking"])
    client = MlflowClient(mnist_sweep["tracking"])
    with np.load(mnist_path) as f:
        x = (f["x_test"][:1000].astype("float32") / 255.0)[..., None]
        y = f["y_test"][:1000]
    for trial in mnist_sweep["study"].get_trials():
        model = mlflow.keras.load_model(trial.user_attrs[obj.MODEL_URI])
        probs = model.predict(x, verbose=0)
        assert probs.shape == (1000, 10)
        acc = float((probs.argmax(1) == y).mean())
        logged = client.get_run(trial.user_attrs[obj.RUN_ID]).data.metrics["test_accuracy"]
        assert acc == pytest.approx(logged, abs=1e-6)


def test_logged_model_shows_the_final_metrics(mnist_sweep: dict[str, Any]) -> None:
    """MLflow links the run's metrics at one step to a logged model; at step 0 its page showed the
    first epoch's accuracy and no test accuracy."""
    client = MlflowClient(mnist_sweep["tracking"])
    for trial in mnist_sweep["study"].get_trials():
        model_id = trial.user_attrs[obj.MODEL_URI].removeprefix("models:/")
        linked = {m.key: m for m in client.get_logged_model(model_id).metrics}
        assert linked["val_accuracy"].value == pytest.approx(trial.value)  # the last epoch's (2 epochs)
        assert linked["val_accuracy"].step == 1
        assert linked["test_accuracy"].value == pytest.approx(trial.user_attrs["test_accuracy"])


def test_best_config_agrees_with_optuna_and_rebuilds(mnist_sweep: dict[str, Any]) -> None:
    study = mnist_sweep["study"]
    cfg = sweep.best_config("mnist-families", storage=mnist_sweep["storage"],
                            tracking_uri=mnist_sweep["tracking"])
    assert cfg["trial"] == study.best_trial.number
    assert cfg["value"] == study.best_value
    assert cfg["params"]["activation"] == study.best_trial.params["activation"]
    assert cfg["mlflow_run_id"] == study.best_trial.user_attrs[obj.RUN_ID]
    assert (cfg["metric"], cfg["input_shape"], cfg["num_classes"]) == ("val_accuracy", [28, 28, 1], 10)
    rebuilt = sweep.build_model(cfg["model"], cfg["input_shape"], cfg["num_classes"], **cfg["params"])
    logged = mlflow.keras.load_model(cfg["mlflow_model_uri"])
    assert [type(layer).__name__ for layer in rebuilt.layers] == [type(layer).__name__ for layer in logged.layers]
    assert [w.shape for w in rebuilt.weights] == [w.shape for w in logged.weights]
    # the requirements name the backend the model ran on, given rather than inferred (5 s a model)
    import tensorflow as tf

    reqs = Path(mlflow.pyfunc.get_model_dependencies(cfg["mlflow_model_uri"])).read_text()
    assert f"tensorflow=={tf.__version__}" in reqs.split() and f"keras=={keras.__version__}" in reqs.split()


def test_load_model_predicts_without_setting_up_mlflow(mnist_sweep: dict[str, Any], mnist_path: Path,
                                                      tmp_path: Path) -> None:
    """`mlflow.pyfunc.load_model(best["mlflow_model_uri"])` alone fails ("Logged model not found")
    and leaves ./mlflow.db behind; `sweep.load_model` points MLflow at the study's store for the
    call. A fresh process, so nothing this test session set up for MLflow helps it."""
    study = mnist_sweep["study"]
    other = min(t.number for t in study.get_trials() if t.number != study.best_trial.number)
    code = ("import sys, json, mlflow, numpy as np, sweep\n"
            "storage, tracking, npz, other, tests = sys.argv[1:6]\n"
            "before = mlflow.get_tracking_uri()\n"
            "model = sweep.load_model('mnist-families', storage=storage, tracking_uri=tracking)\n"
            "with np.load(npz) as f:\n"
            "    x = (f['x_test'][:1000].astype('float32') / 255.0)[..., None]\n"
            "    y = f['y_test'][:1000]\n"
            "acc = float((model.predict(x, verbose=0).argmax(1) == y).mean())\n"
            "sys.path.insert(0, tests)\n"
            "from helpers import weights_digest\n"
            "best = weights_digest(model)\n"
            "n = weights_digest(sweep.load_model('mnist-families', trial=int(other), storage=storage, "
            "tracking_uri=tracking))\n"
            "try:\n"
            "    sweep.load_model('mnist-families', trial=99, storage=storage, tracking_uri=tracking)\n"
            "    missing = ''\n"
            "except sweep.SweepError as e:\n"
            "    missing = str(e)\n"
            "print(json.dumps({'acc': acc, 'best': best, 'other': n, 'same_uri': mlflow.get_tracking_uri() == before, "
            "'missing': missing}))\n")
    r = subprocess.run([sys.executable, "-c", code, mnist_sweep["storage"], mnist_sweep["tracking"], str(mnist_path),
                        str(other), str(TESTS)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["acc"] == pytest.approx(study.best_trial.user_attrs["test_accuracy"], abs=1e-6)
    assert out["same_uri"] and "has no trial 99" in out["missing"]
    # each load is that trial's own model (weights bit for bit), not another trial's
    logged = logged_weights(mnist_sweep["tracking"], study.get_trials())
    assert len(set(logged.values())) == 3
    assert (out["best"], out["other"]) == (logged[study.best_trial.number], logged[other])
    assert not list(tmp_path.glob("*.db"))  # no stray ./mlflow.db


def test_trials_dataframe(mnist_sweep: dict[str, Any]) -> None:
    df = sweep.trials("mnist-families", storage=mnist_sweep["storage"])
    assert list(df["number"]) == [0, 1, 2]
    assert list(df["state"]) == ["COMPLETE"] * 3
    assert list(df["activation"]) == ["relu", "leaky_relu", "prelu"]
    assert df["mlflow_run_id"].notna().all()
    # Optuna's own readers (optuna-dashboard, `optuna best-trial`, its plots) see the metric's name
    study = optuna.load_study(study_name="mnist-families", storage=mnist_sweep["storage"])
    assert study.metric_names == ["val_accuracy"]
    assert study.user_attrs["sweep.target"] == 3  # what `sweep status` counts against, without the config
    assert list(df["value"]) == [t.value for t in study.get_trials()]  # still `value` in sweep's table


def test_optuna_dashboard_names_the_metric(mnist_sweep: dict[str, Any], tmp_path: Path) -> None:
    """optuna-dashboard (the `dashboard` extra) on the study's store, as the README runs it, labels
    the objective with the study's metric, not "Objective 0"."""
    import urllib.request

    port = free_port()
    log = tmp_path / "dashboard.log"
    proc = subprocess.Popen([str(Path(sys.executable).with_name("optuna-dashboard")), mnist_sweep["storage"], "--host", "127.0.0.1",
                             "--port", str(port)], stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=30) as r:
                    studies = {s["study_name"]: s["study_id"] for s in json.loads(r.read())["study_summaries"]}
                break
            except OSError:
                assert proc.poll() is None, f"optuna-dashboard exited {proc.returncode}: {log.read_text()[-2000:]}"
                assert time.monotonic() < deadline, f"optuna-dashboard never answered: {log.read_text()[-2000:]}"
                time.sleep(0.5)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{studies['mnist-families']}?after=0",
                                    timeout=60) as r:
            detail = json.loads(r.read())
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert detail["objective_names"] == ["val_accuracy"]
    assert len(detail["trials"]) == 3


def test_cli_best_json_without_tensorflow(mnist_sweep: dict[str, Any]) -> None:
    code = ("import sys; from sweep.cli import main; sys.argv = ['sweep', *sys.argv[1:]]\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "print('TF_LOADED' if 'tensorflow' in sys.modules else 'TF_NOT_LOADED', file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code, "best", "mnist-families", "--json",
                        "--storage", mnist_sweep["storage"], "--tracking-uri", mnist_sweep["tracking"]],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "TF_NOT_LOADED" in r.stderr
    out = json.loads(r.stdout)
    best = mnist_sweep["study"].best_trial
    assert {"study", "trial", "value", "metric", "params", "mlflow_run_id"} <= set(out)
    assert (out["trial"], out["value"], out["mlflow_run_id"]) == (best.number, best.value, best.user_attrs[obj.RUN_ID])


def test_help_does_not_import_tensorflow() -> None:
    r = subprocess.run([sys.executable, "-c", "import sys; from sweep.cli import main; sys.argv=['sweep','--help']\n"
                        "try:\n    main()\nexcept SystemExit:\n    pass\nprint('tensorflow' in sys.modules)"],
                       capture_output=True, text=True, timeout=60)
    assert r.stdout.strip().endswith("False"), r.stdout + r.stderr
    assert "run" in r.stdout and "best" in r.stdout


# --- behaviours, on small synthetic data ---

def _run(tmp_path: Path, data: dict[str, Any], optuna_url: str, tracking_uri: str, **kw: Any) -> optuna.Study:
    return sweep.run(write_study(tmp_path, data), storage=optuna_url, tracking_uri=tracking_uri, **kw)


@on_backend("sqlite")
def test_conditional_space_samples_only_relevant_params(tmp_path: Path, tiny_npz: Path, optuna_url: str,
                                                       tracking_uri: str) -> None:
    d = study_dict(tiny_npz, configs=None, sampler="random", n_trials=3, seed=8, space={
        "activation": ["relu", "leaky_relu", "prelu"], "leaky_alpha": {"low": 0.01, "high": 0.5, "log": True},
        "prelu_alpha_init": ["zeros", 0.25], "prelu_shared_axes": ["none", "spatial", "all"]})
    d["training"]["epochs"] = 1
    study = _run(tmp_path, d, optuna_url, tracking_uri)
    expected = {"relu": {"activation"}, "leaky_relu": {"activation", "leaky_alpha"},
                "prelu": {"activation", "prelu_alpha_init", "prelu_shared_axes"}}
    trials = study.get_trials()
    # the draw, pinned by the seed: every activation, so every branch below is checked
    assert [t.params["activation"] for t in trials] == ["leaky_relu", "prelu", "relu"]
    for t in trials:
        assert set(t.params) == expected[t.params["activation"]]
        if "leaky_alpha" in t.params:
            assert 0.01 <= t.params["leaky_alpha"] <= 0.5
    # run names read as people write them (4 significant digits); params keep the exact value
    _, runs = _children(MlflowClient(tracking_uri), "tiny")
    for t, r in zip(trials, runs):
        assert r.info.run_name == "trial-{}-{}".format(t.number, "-".join(
            f"{v:.4g}" if isinstance(v, float) else str(v) for v in resolve_params(t.params).values()))
        if "leaky_alpha" in t.params:
            assert float(r.data.params["leaky_alpha"]) == t.params["leaky_alpha"]
            assert len(r.info.run_name.rsplit("-", 1)[1].replace(".", "").lstrip("0")) <= 4


@on_backend("postgresql")
def test_deterministic_pruner_prunes_and_sweep_goes_on(tmp_path: Path, tiny_npz: Path, optuna_url: str,
                                                       tracking_uri: str) -> None:
    # val_accuracy can never reach 1.1, so the threshold pruner stops every trial after epoch 0
    d = study_dict(tiny_npz, pruner={"name": "threshold", "lower": 1.1})
    d["training"]["epochs"] = 3
    study = _run(tmp_path, d, optuna_url, tracking_uri)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.PRUNED] * 3
    assert all(list(t.intermediate_values) == [0] for t in trials)
    _, runs = _children(MlflowClient(tracking_uri), "tiny")
    assert [(r.info.status, r.data.tags["optuna.state"]) for r in runs] == [("KILLED", "PRUNED")] * 3
    assert all(len(MlflowClient(tracking_uri).get_metric_history(r.info.run_id, "loss")) == 1 for r in runs)


@on_backend("sqlite")
def test_nan_trial_fails_with_reason_and_sweep_goes_on(tmp_path: Path, tiny_npz: Path, optuna_url: str,
                                                       tracking_uri: str) -> None:
    with np.load(tiny_npz) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["x_train"] = arrays["x_train"].astype("float32")
    arrays["x_train"][5, 3, 3] = np.nan
    bad = tmp_path / "nan.npz"
    np.savez(bad, **arrays)
    # (not relu: TF's max(NaN, 0) is 0, so ReLU swallows a NaN pixel)
    d = study_dict(bad, configs=[{"activation": "elu"}, {"activation": "tanh"}])
    study = _run(tmp_path, d, optuna_url, tracking_uri)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL] * 2  # the second ran after the first failed
    assert all("nan" in t.user_attrs[obj.FAIL_REASON].lower() for t in trials)
    _, runs = _children(MlflowClient(tracking_uri), "tiny")
    assert [r.info.status for r in runs] == ["FAILED", "FAILED"]
    assert "nan" in runs[0].data.tags["sweep.fail_reason"].lower()
    # failed trials count against the budget: a rerun has nothing left to do
    assert len(_run(tmp_path, d, optuna_url, tracking_uri).get_trials()) == 2


@on_backend("postgresql")
def test_resume_continues_with_same_parent_run(tmp_path: Path, tiny_npz: Path, optuna_url: str,
                                               tracking_uri: str) -> None:
    d = study_dict(tiny_npz)
    first = _run(tmp_path, d, optuna_url, tracking_uri, n_trials=1)
    assert len(first.get_trials(states=(TrialState.COMPLETE,))) == 1
    parent = first.user_attrs[PARENT_ATTR]
    run = MlflowClient(tracking_uri).get_run(parent)  # two trials to go: not finished
    assert run.info.status == "RUNNING" and run.data.metrics["trials_complete"] == 1
    again = _run(tmp_path, d, optuna_url, tracking_uri)
    assert [t.state for t in again.get_trials()] == [TrialState.COMPLETE] * 3
    assert [t.params["activation"] for t in again.get_trials()] == ["relu", "leaky_relu", "prelu"]
    assert again.user_attrs[PARENT_ATTR] == parent
    p, runs = _children(MlflowClient(tracking_uri), "tiny")
    assert p.info.run_id == parent and len(runs) == 3
    assert p.info.status == "FINISHED" and p.data.metrics["trials_complete"] == 3
    # complete: a third call runs nothing
    assert len(_run(tmp_path, d, optuna_url, tracking_uri).get_trials()) == 3


@on_backend("sqlite")
def test_interrupted_trial_is_rerun_on_resume(tmp_path: Path, tiny_npz: Path, optuna_url: str,
                                              tracking_uri: str) -> None:
    class CtrlC(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            raise KeyboardInterrupt

    d = study_dict(tiny_npz)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, d, optuna_url, tracking_uri, extra_callbacks=lambda data, params: [CtrlC()])
    study = sweep.run("tiny", storage=optuna_url, tracking_uri=tracking_uri)  # join by name
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.FAIL] + [TrialState.COMPLETE] * 3
    assert study.get_trials()[0].user_attrs[obj.INTERRUPTED] is True
    assert sorted(t.params["activation"] for t in study.get_trials()[1:]) == ["leaky_relu", "prelu", "relu"]
    _, runs = _children(MlflowClient(tracking_uri), "tiny")
    assert runs[0].info.status == "KILLED" and runs[0].data.tags["optuna.state"] == "INTERRUPTED"


@on_backend("sqlite")
def test_a_stop_during_a_trials_set_up_marks_it_interrupted_too(tmp_path: Path, tiny_npz: Path, optuna_url: str,
                                                               tracking_uri: str, monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    """A real SIGINT that lands while the trial's MLflow run is being created, before training:
    the trial is marked for resume like one stopped mid-epoch (it was a plain FAIL, seen in CI
    with Ctrl-C of four workers), and the resume trains the plan exactly once."""
    import signal

    from sweep.tracking.trial import TrialRun

    real = TrialRun.start.__func__  # type: ignore[attr-defined]
    calls = []

    def start(cls: type[TrialRun], *a: Any, **kw: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:  # the second trial, its first trial done
            os.kill(os.getpid(), signal.SIGINT)
        return real(cls, *a, **kw)

    monkeypatch.setattr(TrialRun, "start", classmethod(start))
    d = study_dict(tiny_npz)
    d["training"]["epochs"] = 1
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, d, optuna_url, tracking_uri)
    first = [(t.state, t.user_attrs.get(obj.INTERRUPTED)) for t in optuna.load_study(
        study_name="tiny", storage=optuna_url).get_trials()]
    assert first == [(TrialState.COMPLETE, None), (TrialState.FAIL, True), (TrialState.WAITING, None)]
    monkeypatch.setattr(TrialRun, "start", classmethod(real))
    study = sweep.run("tiny", storage=optuna_url, tracking_uri=tracking_uri)
    complete = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert len(study.get_trials()) == 4
    assert sorted(t.params["activation"] for t in complete) == ["leaky_relu", "prelu", "relu"]


@on_backend("postgresql")
def test_changed_study_file_is_refused_but_budget_may_grow(tmp_path: Path, tiny_npz: Path, optuna_url: str,
                                                           tracking_uri: str) -> None:
    d = study_dict(tiny_npz, configs=None, sampler="random", n_trials=1,
                   space={"activation": ["relu", "elu"]})
    d["training"]["epochs"] = 1
    _run(tmp_path, d, optuna_url, tracking_uri)
    d["search"]["n_trials"] = 2
    assert len(_run(tmp_path, d, optuna_url, tracking_uri).get_trials()) == 2
    d["training"]["epochs"] = 5
    with pytest.raises(ConfigError, match=r"different training.epochs: stored 1, file has 5"):
        _run(tmp_path, d, optuna_url, tracking_uri)


@on_backend("sqlite")
def test_a_new_pruner_is_taken_on_resume(tmp_path: Path, tiny_npz: Path, optuna_url: str, tracking_uri: str
                                         ) -> None:
    """A plan stored with the median pruner (the default for every study before 2026-11) resumes
    from a file that names none, with `none`, the default for plans now."""
    d = study_dict(tiny_npz, configs=[{"activation": "relu"}, {"activation": "elu"}], pruner="median")
    d["training"]["epochs"] = 1
    _run(tmp_path, d, optuna_url, tracking_uri, n_trials=1)
    del d["search"]["pruner"]
    study = _run(tmp_path, d, optuna_url, tracking_uri)
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 2
    assert isinstance(study.pruner, optuna.pruners.NopPruner)
    assert study.user_attrs[CONFIG_ATTR]["search"]["pruner"] == {"name": "none"}
    parent = MlflowClient(tracking_uri).get_run(study.user_attrs[PARENT_ATTR])
    assert parent.data.tags["sweep.config.search.pruner.name"] == "none"


@on_backend("postgresql")
def test_repeats_use_paired_seeds(tmp_path: Path, tiny_npz: Path, optuna_url: str, tracking_uri: str) -> None:
    d = study_dict(tiny_npz, configs=[{"activation": "relu"}, {"activation": "gelu"}], repeats=2, seed=10)
    d["training"]["epochs"] = 1
    trials = _run(tmp_path, d, optuna_url, tracking_uri).get_trials()
    got = sorted((t.params["activation"], t.user_attrs["seed"]) for t in trials)
    assert got == [("gelu", 10), ("gelu", 11), ("relu", 10), ("relu", 11)]


@on_backend("sqlite")
def test_study_stored_before_a_new_config_section_still_resumes(tmp_path: Path, tiny_npz: Path, optuna_url: str,
                                                                tracking_uri: str) -> None:
    d = study_dict(tiny_npz, configs=[{"activation": "relu"}, {"activation": "elu"}])
    d["training"]["epochs"] = 1
    study = _run(tmp_path, d, optuna_url, tracking_uri, n_trials=1)
    old = dict(study.user_attrs["sweep.config"])
    del old["diagnostics"]  # as written by a sweep that had no diagnostics section yet
    study.set_user_attr("sweep.config", old)
    assert len(_run(tmp_path, d, optuna_url, tracking_uri).get_trials()) == 2


@on_backend("postgresql")
def test_raised_repeats_add_only_the_missing_ones(tmp_path: Path, tiny_npz: Path, optuna_url: str,
                                                  tracking_uri: str) -> None:
    d = study_dict(tiny_npz, configs=[{"activation": "relu"}, {"activation": "elu"}], repeats=1, seed=0)
    d["training"]["epochs"] = 1
    before = [(t.number, t.value, t.datetime_complete) for t in _run(tmp_path, d, optuna_url, tracking_uri).get_trials()]
    assert len(before) == 2
    d["search"]["repeats"] = 3
    study = _run(tmp_path, d, optuna_url, tracking_uri)
    trials = study.get_trials()
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials)
    assert [(t.number, t.value, t.datetime_complete) for t in trials[:2]] == before
    seeds: dict[str, set[int]] = {}
    for t in trials:
        seeds.setdefault(t.params["activation"], set()).add(t.user_attrs["seed"])
    assert seeds == {"relu": {0, 1, 2}, "elu": {0, 1, 2}}
    assert study.user_attrs["sweep.config"]["search"]["repeats"] == 3
    # MLflow params cannot change: the parent keeps its params, and says what is current
    client = MlflowClient(tracking_uri)
    parent, runs = _children(client, "tiny")
    assert len(runs) == 6 and parent.data.params["search.repeats"] == "1"
    assert parent.data.tags["sweep.config.search.repeats"] == "3"
    logged = json.loads(Path(client.download_artifacts(parent.info.run_id, "study_config.json", str(tmp_path))).read_text())
    assert logged["search"]["repeats"] == 3
    d["search"]["repeats"] = 2
    with pytest.raises(ConfigError, match=r"search.repeats: stored 3, file has 2; repeats can only be raised"):
        _run(tmp_path, d, optuna_url, tracking_uri)
    assert len(study.get_trials()) == 6 and study.user_attrs["sweep.config"]["search"]["repeats"] == 3


@on_backend("sqlite")
def test_study_stored_with_every_pruner_field_still_resumes(tmp_path: Path, tiny_npz: Path, optuna_url: str,
                                                            tracking_uri: str) -> None:
    d = study_dict(tiny_npz, configs=[{"activation": "relu"}, {"activation": "elu"}], pruner="hyperband")
    d["training"]["epochs"] = 1
    study = _run(tmp_path, d, optuna_url, tracking_uri, n_trials=1)
    old = dict(study.user_attrs["sweep.config"])
    # as written by a sweep that stored (and ignored) the median pruner's fields for every pruner
    old["search"] = {**old["search"], "pruner": {"name": "hyperband", "n_startup_trials": 5, "n_warmup_steps": 0,
                                                 "lower": None, "upper": None}}
    study.set_user_attr("sweep.config", old)
    again = _run(tmp_path, d, optuna_url, tracking_uri)
    assert [t.state for t in again.get_trials()] == [TrialState.COMPLETE] * 2
    assert again.user_attrs["sweep.config"]["search"]["pruner"] == {
        "name": "hyperband", "min_resource": 1, "max_resource": 1, "reduction_factor": 3}


@on_backend("postgresql")
def test_median_pruner_stops_a_trial_behind_the_first(tmp_path: Path, tiny_npz: Path, optuna_url: str,
                                                      tracking_uri: str) -> None:
    # on the tiny data selu's first-epoch val_loss is ~0.01, gelu's ~0.8: with one startup trial
    # the median is selu's, so gelu is pruned after its first epoch
    d = study_dict(tiny_npz, metric="val_loss", configs=[{"activation": "selu"}, {"activation": "gelu"}],
                   pruner={"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0})
    d["training"]["epochs"] = 3
    study = _run(tmp_path, d, optuna_url, tracking_uri)
    assert isinstance(study.pruner, optuna.pruners.MedianPruner)
    first, second = study.get_trials()
    assert (first.state, list(first.intermediate_values)) == (TrialState.COMPLETE, [0, 1, 2])
    assert (second.state, list(second.intermediate_values)) == (TrialState.PRUNED, [0])
    assert second.intermediate_values[0] > first.intermediate_values[0]
    _, runs = _children(MlflowClient(tracking_uri), "tiny")
    assert [(r.info.status, r.data.tags["optuna.state"]) for r in runs] == [("FINISHED", "COMPLETE"),
                                                                             ("KILLED", "PRUNED")]


@on_backend("sqlite")
def test_hyperband_pruner_is_consulted(tmp_path: Path, tiny_npz: Path, optuna_url: str, tracking_uri: str) -> None:
    d = study_dict(tiny_npz, pruner={"name": "hyperband", "min_resource": 1, "reduction_factor": 3})
    d["training"]["epochs"] = 2
    study = _run(tmp_path, d, optuna_url, tracking_uri)
    pruner = study.pruner
    assert isinstance(pruner, optuna.pruners.HyperbandPruner)
    # max_resource defaults to training.epochs: one reported value per epoch
    assert (pruner._min_resource, pruner._max_resource, pruner._reduction_factor) == (1, 2, 3)
    assert study.user_attrs["sweep.config"]["search"]["pruner"]["max_resource"] == 2  # not "auto"
    trials = study.get_trials()
    assert len(trials) == 3 and {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    # successive halving records each trial's value at its first rung (min_resource=1: step 1)
    for t in trials:
        assert t.system_attrs["completed_rung_0"] == t.intermediate_values[1]


@on_backend("postgresql")
def test_grid_over_a_space_minimises_val_loss(tmp_path: Path, tiny_npz: Path, optuna_url: str,
                                             tracking_uri: str) -> None:
    d = study_dict(tiny_npz, configs=None, sampler="grid", metric="val_loss",
                   space={"activation": ["relu", "leaky_relu"], "leaky_alpha": [0.05, 0.2]})
    d["training"]["epochs"] = 2
    study = _run(tmp_path, d, optuna_url, tracking_uri)
    trials = study.get_trials()
    assert sorted((t.params["activation"], t.params.get("leaky_alpha")) for t in trials) == [
        ("leaky_relu", 0.05), ("leaky_relu", 0.2), ("relu", None)]
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    assert study.best_value == min(t.value for t in trials)
    client = MlflowClient(tracking_uri)
    _, runs = _children(client, "tiny")
    for t, run in zip(trials, runs):
        assert t.state == TrialState.COMPLETE
        assert t.value == t.intermediate_values[1]
        history = client.get_metric_history(run.info.run_id, "val_loss")
        assert max(history, key=lambda m: m.step).value == pytest.approx(t.value)
