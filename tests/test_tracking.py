"""MLflow tracking off the training thread (sweep/tracking/runs.py, trial.py, sender.py) and its replay
from Optuna (sweep/tracking/sync.py), against a real `mlflow server` process and real stores."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import optuna
import pytest
import requests
from helpers import free_port, start_cli_server, study_dict, wait_health, write_study
from mlflow import MlflowClient
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from sweep import config as config_mod
from sweep.record import CONFIG_ATTR, PARENT_ATTR
from sweep.tracking.runs import Tracker
from sweep.tracking.trial import TrialRun
from sweep.tracking.sync import sync
from sweep.training import Result

# --- a real server we can stop and start again on the same port (as in test_server.py) ---


def stop(proc: subprocess.Popen) -> None:
    # the server and its mlflow child share the process group we started it in
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)


def eventually(check: Callable[[], bool], timeout: float = 120) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


def arrival_order(db: Path, run_id: str, key: str) -> list[int]:
    """Steps of a metric in the order the server stored them (its SQLite rows)."""
    with sqlite3.connect(db) as c:
        return [s for (s,) in c.execute("SELECT step FROM metrics WHERE run_uuid = ? AND key = ? ORDER BY rowid",
                                        (run_id, key))]


def test_outage_neither_blocks_nor_loses_logging(tmp_path: Path) -> None:
    import keras

    from sweep.lifecycle import mlflow_http_retries

    # what sweep.run sets before it logs (the test's environment is restored after it): without
    # it, MLflow's own 7 retries held the first call past this test's wait, and the test passed
    # only after a module fixture elsewhere in the same pytest worker had run a study
    mlflow_http_retries()
    port, log = free_port(), tmp_path / "server.log"
    url, db = f"http://127.0.0.1:{port}", tmp_path / "mlflow.db"
    args = ["--port", str(port), "--backend-store-uri", f"sqlite:///{db}",
            "--artifacts-destination", str(tmp_path / "artifacts")]
    procs = [start_cli_server(args, tmp_path, log)]
    try:
        wait_health(url, procs[0], log)
        tracker = Tracker(url, "outage")
        parent = tracker.parent_run(None, {"study": "outage"})
        run0 = TrialRun.start(tracker, parent, 0, {"activation": "relu", "seed": 0}, "relu")
        assert run0.run_id is not None  # server up: the run's id comes back as the trial starts
        epochs = run0.epoch_logger()
        epochs.on_epoch_end(0, {"loss": 1.0, "accuracy": 0.1})
        assert tracker.flush(60)

        stop(procs[0])
        with pytest.raises(requests.ConnectionError):
            requests.get(url + "/health", timeout=2)
        go, back = threading.Event(), threading.Event()

        def restart() -> None:
            # only when the test says so: a call that waited for the server would keep it down
            # until this gives up, and find `back` set when it returns
            go.wait(300)
            procs.append(start_cli_server(args, tmp_path, log))
            wait_health(url, procs[-1], log)
            back.set()

        threading.Thread(target=restart, daemon=True).start()

        epochs.on_epoch_end(1, {"loss": 0.5, "accuracy": 0.2})
        assert eventually(lambda: not tracker.sender.healthy)  # the sender met the outage
        for e in range(2, 5):
            epochs.on_epoch_end(e, {"loss": 1.0 / (e + 1), "accuracy": 0.1 * (e + 1)})
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
        result = Result(history={"loss": [1.0, 0.5, 0.33, 0.25, 0.2], "accuracy": [0.1, 0.2, 0.3, 0.4, 0.5]},
                        test={"test_accuracy": 0.6, "test_loss": 0.7}, epoch_seconds=[1.0] * 5)
        assert run0.log_result(result, model, "relu") is None  # not now: uploaded once MLflow is back
        keras.backend.clear_session()  # as the objective does before the next trial
        del model
        run0.end("COMPLETE", value=0.5)
        run1 = TrialRun.start(tracker, parent, 1, {"activation": "elu", "seed": 1}, "elu")
        assert run1.run_id is None  # not created yet, and the trial goes on regardless
        run1.epoch_logger().on_epoch_end(0, {"loss": 2.0, "accuracy": 0.05})
        run1.end("FAIL", reason="NaN loss")
        assert not back.is_set()  # every call above returned while the server was down

        go.set()
        assert back.wait(300)
        assert tracker.flush(180)
        assert tracker.sender.healthy and not tracker.sender.unsent

        # everything arrived, in the order it was logged (the order read from the backend store)
        assert run1.run_id is not None
        client = MlflowClient(url)
        r0, r1 = client.get_run(run0.run_id), client.get_run(run1.run_id)
        assert arrival_order(db, run0.run_id, "loss") == [0, 1, 2, 3, 4]
        accuracy = sorted(client.get_metric_history(run0.run_id, "accuracy"), key=lambda m: m.step)
        assert [m.value for m in accuracy] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
        assert (r0.info.status, r0.data.tags["optuna.state"]) == ("FINISHED", "COMPLETE")
        assert r0.data.metrics["objective_value"] == 0.5 and r0.data.metrics["test_accuracy"] == 0.6
        assert r0.data.metrics["mean_epoch_seconds"] == 1.0
        assert r0.data.params == {"activation": "relu", "seed": "0"}
        # the run's end came after its metrics: the sender kept each run's order
        assert r0.info.end_time >= max(m.timestamp for m in client.get_metric_history(run0.run_id, "loss"))
        plots = {a.path for a in client.list_artifacts(run0.run_id, "plots")}
        assert plots == {"plots/accuracy.png", "plots/loss.png"}
        # the model went up after the outage, from the files saved before the Keras session was cleared
        import mlflow

        from sweep.lifecycle import mlflow_tracking_uri

        with mlflow_tracking_uri(url):  # a models:/ URI is read through MLflow's global URI: the user sets it
            loaded = mlflow.keras.load_model(r0.data.tags["sweep.model_uri"])
        assert loaded.output_shape == (None, 3)
        assert (r1.info.status, r1.data.tags["optuna.state"], r1.data.tags["sweep.fail_reason"]) == \
            ("FAILED", "FAIL", "NaN loss")
        assert r1.data.params == {"activation": "elu", "seed": "1"}
        assert r1.data.tags["mlflow.parentRunId"] == parent and r1.data.tags["optuna.trial_number"] == "1"
        assert arrival_order(db, run1.run_id, "loss") == [0]
    finally:
        for p in procs:
            stop(p)


def test_tracking_trouble_never_raises_into_a_trial(tmp_path: Path) -> None:
    """A run the server no longer has: every call returns, what could not be sent is reported."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "gone")
    parent = tracker.parent_run(None, {})
    run = TrialRun.start(tracker, parent, 0, {"activation": "relu"}, "relu")
    assert run.run_id is not None
    MlflowClient(uri).delete_run(run.run_id)  # logging to a deleted run is refused
    run.epoch_logger().on_epoch_end(0, {"loss": 1.0})
    run.log_extra({"x": 1.0}, [tmp_path / "missing.png"], "extra", step=1)
    run.end("COMPLETE", value=1.0)
    assert tracker.flush(60) is False  # rejected for good: given up and counted for `sweep sync`
    count, trials = tracker.sender.pending()
    assert count >= 2 and trials == [0]


# --- sync: Optuna -> MLflow ---


def _stored_study(tmp_path: Path, npz: Path, name: str = "replayed") -> tuple[optuna.Study, str]:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    d = study_dict(npz)
    d["study"] = name
    cfg = config_mod.load(write_study(tmp_path, d))
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    study.set_user_attr(CONFIG_ATTR, cfg.model_dump(mode="json"))
    return study, storage


def _epochs(n: int, base: float) -> list[dict[str, float]]:
    return [{"loss": base / (e + 1), "accuracy": 0.5 + e / 10, "val_loss": base / (e + 2),
             "val_accuracy": 0.4 + e / 10, "epoch_seconds": 1.5} for e in range(n)]


def _add(study: optuna.Study, state: TrialState, activation: str, n_epochs: int, **attrs: Any) -> None:
    epochs = _epochs(n_epochs, 2.0)
    finished = state != TrialState.RUNNING
    user_attrs = {"seed": 7, "config_index": 0, "repeat": 0,
                  "mlflow_params": {"activation": activation, "seed": 7, "epochs": 2, "input_shape": [28, 28, 1]},
                  "epoch_metrics": epochs, **attrs}
    if state == TrialState.COMPLETE:
        user_attrs.update(test_accuracy=0.91, test_loss=0.3, mean_epoch_seconds=1.5)
    study.add_trial(optuna.trial.create_trial(
        state=state, value=epochs[-1]["val_accuracy"] if state == TrialState.COMPLETE else None,
        params={"activation": activation},
        distributions={"activation": CategoricalDistribution(["relu", "elu", "tanh", "gelu", "selu"])},
        user_attrs=user_attrs,
        intermediate_values={e: r["val_accuracy"] for e, r in enumerate(epochs)} if finished else {},
    ))


def _cli_sync(study: str, storage: str, tracking: str, cwd: Path) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "sweep", "sync", study, "--storage", storage, "--tracking-uri", tracking],
                       cwd=cwd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    return r


def _children(client: MlflowClient, study: str) -> dict[int, Any]:
    exp = client.get_experiment_by_name(study)
    runs = [r for r in client.search_runs([exp.experiment_id], max_results=1000)
            if r.data.tags.get("sweep.role") == "trial"]
    out: dict[int, Any] = {}
    for r in runs:
        n = int(r.data.tags["optuna.trial_number"])
        assert n not in out, f"two runs for trial {n}"
        out[n] = r
    return out


def _assert_complete(client: MlflowClient, study: optuna.Study) -> None:
    runs = _children(client, study.study_name)
    parent = study.user_attrs[PARENT_ATTR]
    expected = {"COMPLETE": ("FINISHED", "COMPLETE"), "PRUNED": ("KILLED", "PRUNED"), "FAIL": ("FAILED", "FAIL")}
    finished = [t for t in study.get_trials() if t.state.is_finished()]
    assert sorted(runs) == [t.number for t in finished]  # the RUNNING trial is its worker's business
    for t in finished:
        r = runs[t.number]
        status, state = ("KILLED", "INTERRUPTED") if t.user_attrs.get("interrupted") else expected[t.state.name]
        assert (r.info.status, r.data.tags["optuna.state"]) == (status, state), t.number
        assert r.data.tags["mlflow.parentRunId"] == parent
        assert r.data.params == {k: str(v) if not isinstance(v, list) else str(v).replace("'", '"')
                                 for k, v in t.user_attrs["mlflow_params"].items()}
        for key in ("loss", "accuracy", "val_loss", "val_accuracy", "epoch_seconds"):
            hist = sorted(client.get_metric_history(r.info.run_id, key), key=lambda m: m.step)
            want = [row[key] for row in t.user_attrs["epoch_metrics"]]
            assert [m.step for m in hist] == list(range(len(want))), (t.number, key)
            assert [m.value for m in hist] == pytest.approx(want)
        if t.state == TrialState.COMPLETE:
            assert r.data.metrics["objective_value"] == pytest.approx(t.value)
            assert r.data.metrics["test_accuracy"] == pytest.approx(0.91)
        if t.user_attrs.get("fail_reason"):
            assert r.data.tags["sweep.fail_reason"] == t.user_attrs["fail_reason"]


def test_sync_rebuilds_mlflow_from_optuna_and_is_idempotent(tmp_path: Path, tiny_npz: Path) -> None:
    study, storage = _stored_study(tmp_path, tiny_npz)
    _add(study, TrialState.COMPLETE, "relu", 2)
    _add(study, TrialState.PRUNED, "elu", 1)
    _add(study, TrialState.FAIL, "tanh", 1, fail_reason="NaN loss at epoch 1")
    _add(study, TrialState.FAIL, "gelu", 1, interrupted=True)
    _add(study, TrialState.RUNNING, "selu", 0)
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"

    # nothing in MLflow yet: everything is created, from the experiment down
    out = _cli_sync("replayed", storage, tracking, tmp_path).stdout
    assert "4 finished trial(s)" in out and "4 run(s) created" in out and "1 running trial(s)" in out
    client = MlflowClient(tracking)
    study = optuna.load_study(study_name="replayed", storage=storage)
    _assert_complete(client, study)

    # damage: a run's epoch metrics and a param, a whole run, a closed run set RUNNING again
    runs = _children(client, "replayed")
    with sqlite3.connect(tmp_path / "mlflow.db") as c:
        c.execute("DELETE FROM latest_metrics WHERE run_uuid = ? AND key IN (SELECT key FROM metrics "
                  "WHERE run_uuid = ? AND step = 1)", (runs[0].info.run_id, runs[0].info.run_id))
        c.execute("DELETE FROM metrics WHERE run_uuid = ? AND step = 1", (runs[0].info.run_id,))
        c.execute("DELETE FROM params WHERE run_uuid = ? AND key = 'seed'", (runs[0].info.run_id,))
    client.delete_run(runs[1].info.run_id)
    client.update_run(runs[2].info.run_id, status="RUNNING")
    _cli_sync("replayed", storage, tracking, tmp_path)
    _assert_complete(client, study)
    assert _children(client, "replayed")[1].info.run_id != runs[1].info.run_id  # a new run for the deleted one

    # a second sync has nothing left to write
    counts = sync("replayed", storage=storage, tracking_uri=tracking)
    assert {k: counts[k] for k in ("runs_created", "params_logged", "metrics_logged", "tags_set", "runs_ended")} \
        == dict.fromkeys(("runs_created", "params_logged", "metrics_logged", "tags_set", "runs_ended"), 0)
    assert counts["trials"] == 4 and counts["running"] == 1


def test_sync_repairs_a_real_sweep(tmp_path: Path, tiny_npz: Path) -> None:
    import sweep

    storage, tracking = f"sqlite:///{tmp_path / 'optuna.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}"
    d = study_dict(tiny_npz)
    d["training"]["epochs"] = 1
    study = sweep.run(write_study(tmp_path, d), storage=storage, tracking_uri=tracking)
    client = MlflowClient(tracking)
    before = _children(client, "tiny")
    assert len(before) == 3
    with sqlite3.connect(tmp_path / "mlflow.db") as c:
        c.execute("DELETE FROM metrics WHERE run_uuid = ? AND key = 'test_accuracy'", (before[0].info.run_id,))
        c.execute("DELETE FROM latest_metrics WHERE run_uuid = ? AND key = 'test_accuracy'", (before[0].info.run_id,))
    client.delete_run(before[1].info.run_id)
    client.update_run(before[2].info.run_id, status="RUNNING")

    _cli_sync("tiny", storage, tracking, tmp_path)
    after = _children(client, "tiny")
    assert sorted(after) == [0, 1, 2] and after[1].info.run_id != before[1].info.run_id
    for t in study.get_trials():
        r = after[t.number]
        assert (r.info.status, r.data.tags["optuna.state"]) == ("FINISHED", "COMPLETE")
        assert r.data.params["activation"] == t.params["activation"]
        assert r.data.metrics["objective_value"] == pytest.approx(t.value)
        assert r.data.metrics["test_accuracy"] == pytest.approx(t.user_attrs["test_accuracy"])
        assert len(t.user_attrs["epoch_metrics"]) == 1  # recorded by the objective, one epoch
        assert len(client.get_metric_history(r.info.run_id, "val_accuracy")) == 1
    counts = sync("tiny", storage=storage, tracking_uri=tracking)
    assert counts["runs_created"] == counts["metrics_logged"] == counts["runs_ended"] == 0


def test_a_study_in_this_process_leaves_mlflows_tracking_uri_as_it_found_it(
        tmp_path: Path, tiny_npz: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """sweep.run and sweep.load_model set MLflow's global tracking URI only while MLflow's model
    APIs need it (sweep/lifecycle.py, mlflow_tracking_uri): the user's own URI, here from
    $MLFLOW_TRACKING_URI, is the one their next `mlflow.start_run()` goes to. (A Tracker set it for
    good: the study's store stayed the process's.)"""
    import mlflow

    import sweep

    mine = f"sqlite:///{tmp_path / 'mine.db'}"
    mlflow.set_tracking_uri(None)  # whatever an earlier test in this worker left (it clears the variable too)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mine)
    storage, tracking = f"sqlite:///{tmp_path / 'optuna.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}"
    d = study_dict(tiny_npz, configs=[{"activation": "relu"}])
    d["training"]["epochs"] = 1
    study = sweep.run(write_study(tmp_path, d), storage=storage, tracking_uri=tracking)
    assert study.trials[0].state == TrialState.COMPLETE
    assert (mlflow.get_tracking_uri(), os.environ["MLFLOW_TRACKING_URI"]) == (mine, mine)
    model = sweep.load_model("tiny", storage=storage, tracking_uri=tracking)  # through the study's store
    assert model.count_params() > 0
    assert (mlflow.get_tracking_uri(), os.environ["MLFLOW_TRACKING_URI"]) == (mine, mine)
    # and the study's model is where the study logged it, not in the user's store
    assert MlflowClient(tracking).search_logged_models([MlflowClient(tracking).get_experiment_by_name(
        "tiny").experiment_id])
    assert not (tmp_path / "mine.db").exists() or not MlflowClient(mine).search_experiments(filter_string="name = 'tiny'")


def test_two_replays_at_once_create_each_missing_run_once(tmp_path: Path, tiny_npz: Path) -> None:
    """Two processes replay the same study at the same moment (two workers completing it, or one
    and `sweep sync`): each trial MLflow lacks gets one run, not one per replayer (tests/chaos.py
    found two FINISHED runs for one trial)."""
    study, storage = _stored_study(tmp_path, tiny_npz)
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _add(study, TrialState.COMPLETE, "relu", 2)
    _cli_sync("replayed", storage, tracking, tmp_path)  # the experiment and parent run exist
    for i in range(30):
        _add(study, TrialState.COMPLETE, ["relu", "elu", "tanh"][i % 3], 2)
    cmd = [sys.executable, "-m", "sweep", "sync", "replayed", "--storage", storage, "--tracking-uri", tracking]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    runs = _children(MlflowClient(tracking), "replayed")  # asserts one run per trial
    assert sorted(runs) == list(range(31))
    created = sorted(int(out.split(": ")[1].split(" run(s) created")[0]) for out, _ in outs)
    assert created == [0, 30], outs


def test_sync_unknown_study_is_one_clean_error(tmp_path: Path, tiny_npz: Path) -> None:
    _, storage = _stored_study(tmp_path, tiny_npz)
    r = subprocess.run([sys.executable, "-m", "sweep", "sync", "nope", "--storage", storage,
                        "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no study named 'nope'" in r.stderr and "Traceback" not in r.stderr


def test_what_was_given_up_is_replayed_when_mlflow_answers_again(tmp_path: Path, tiny_npz: Path) -> None:
    """Given the study's storage and the replay, the tracker replays dropped logging from Optuna by itself."""
    from sweep.tracking.sync import replay

    study, storage = _stored_study(tmp_path, tiny_npz)
    _add(study, TrialState.COMPLETE, "relu", 2)
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(tracking, "replayed", storage=storage, replay=replay)
    parent = tracker.parent_run(None, {})
    tracker.sender.max_queued = 0  # a full queue: everything of trial 0 is given up
    run = TrialRun.start(tracker, parent, 0, {"activation": "relu"}, "relu")
    run.epoch_logger().on_epoch_end(0, {"loss": 1.0})
    run.end("COMPLETE", value=0.5)
    assert run.run_id is None and tracker.sender.pending() == (3, [0])
    tracker.sender.max_queued = 100
    assert tracker.flush(120)  # drained: trial 0 was replayed from Optuna
    study = optuna.load_study(study_name="replayed", storage=storage)
    _assert_complete(MlflowClient(tracking), study)


def test_experiment_opens_as_model_training_in_the_mlflow_ui(tmp_path: Path) -> None:
    """MLflow 3's UI shows an experiment without a kind as GenAI (traces); new and older
    experiments get the model-training kind."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_experiment("older")  # as sweep made them before
    for name in ("older", "fresh"):
        Tracker(uri, name)
        assert client.get_experiment_by_name(name).tags.get("mlflow.experimentKind") == "custom_model_development"


def test_an_exception_without_a_message_still_makes_one_clean_line(tmp_path: Path) -> None:
    # four handlers took `str(e).splitlines()[0]`, which raised IndexError on TimeoutError() inside
    # the very code meant to print one line
    from sweep.errors import first_line

    assert first_line(TimeoutError()) == "TimeoutError"
    assert first_line(ValueError("  \n\n  the cause \nmore")) == "the cause"
    assert first_line(RuntimeError("x" * 500)) == "x" * 300
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "s")  # it leaves MLflow's global URI alone
    message = str(tracker._fail("opening the experiment", TimeoutError()))
    assert "opening the experiment failed: TimeoutError." in message and "\n" not in message
