"""sweep/peek.py reads what Optuna's storage would return, on every backend, or says it cannot."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from sweep import peek, results
from sweep.urls import db_url

DISTS = {"activation": CategoricalDistribution(["relu", "leaky_relu", "prelu"]),
         "leaky_alpha": FloatDistribution(0.01, 0.5, log=True), "units": IntDistribution(8, 64)}


def _trial(value: float | None, state: TrialState = TrialState.COMPLETE, **params: object) -> optuna.trial.FrozenTrial:
    p = {"activation": "leaky_relu", "leaky_alpha": 0.1, "units": 16, **params}
    return create_trial(params=p, distributions=DISTS, value=value, state=state,
                        user_attrs={"seed": 7, "mlflow_run_id": f"run-{p['units']}", "input_shape": [28, 28, 1]})


def _study(url: str, name: str, direction: str, trials: list) -> optuna.Study:
    s = optuna.create_study(study_name=name, storage=db_url(url), direction=direction)
    s.add_trials(trials)
    return s


def _same(url: str, s: optuna.Study) -> dict:
    got = peek.best(url, s.study_name)
    want = s.best_trial
    assert got["number"] == want.number and got["value"] == want.value
    assert got["params"] == want.params and got["user_attrs"] == want.user_attrs
    return got


def test_best_is_optunas_best_trial(optuna_url: str) -> None:
    # ties at the top (0.9 twice): the same one as Optuna's query picks
    trials = [_trial(0.8, units=10), _trial(0.9, units=20, activation="prelu"), _trial(0.9, units=30),
              _trial(None, TrialState.PRUNED, units=40), _trial(None, TrialState.FAIL, units=50),
              _trial(0.85, units=60, leaky_alpha=0.3)]
    up = _same(optuna_url, _study(optuna_url, "up", "maximize", trials))
    assert up["direction"] == "maximize" and up["config"] is None
    assert isinstance(up["params"]["units"], int) and up["params"]["activation"] in ("prelu", "leaky_relu")
    down = _same(optuna_url, _study(optuna_url, "down", "minimize", [_trial(0.3, units=9), _trial(0.1, units=11),
                                                                      _trial(0.2, units=12)]))
    assert down["number"] == 1 and down["direction"] == "minimize"
    inf = _same(optuna_url, _study(optuna_url, "inf", "maximize", [_trial(0.5), _trial(math.inf, units=13)]))
    assert inf["value"] == math.inf


def test_what_it_cannot_say_is_left_to_optuna(optuna_url: str) -> None:
    assert peek.best(optuna_url, "nowhere") is None  # Optuna's path names the studies that exist
    _study(optuna_url, "empty", "maximize", [_trial(None, TrialState.PRUNED)])
    assert peek.best(optuna_url, "empty") == {}  # no complete trial
    two = optuna.create_study(study_name="two", storage=db_url(optuna_url), directions=["maximize", "minimize"])
    two.add_trial(create_trial(params={}, distributions={}, values=[0.9, 3.0]))
    assert peek.best(optuna_url, "two") is None  # no single best: the Pareto front is Optuna's
    assert peek.best("mysql://u@h/db", "x") is None
    assert peek.best("postgresql://u:p@ss@127.0.0.1:1/db", "x") is None  # a bare `@`: sweep.storage repairs it


def test_missing_sqlite_file_is_not_created(tmp_path: Path) -> None:
    assert peek.best(f"sqlite:///{tmp_path / 'none.db'}", "x") is None
    assert not (tmp_path / "none.db").exists()


def test_best_config_is_the_same_either_way(optuna_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`sweep best` through peek, and through Optuna's storage (peek unable), print the same."""
    from sweep.config import parse

    cfg = parse({"study": "both", "dataset": {"name": "digits"}, "search": {
        "metric": "val_accuracy", "configs": [{"activation": "relu"}]}}, "test")
    s = _study(optuna_url, "both", "maximize", [_trial(0.7, units=10), _trial(0.75, units=20)])
    s.set_user_attr("sweep.config", cfg.model_dump(mode="json"))
    quick = results.best_config("both", storage=optuna_url)
    assert results._peek_best("both", db_url(optuna_url)) is not None
    monkeypatch.setattr(peek, "best", lambda url, study: None)
    slow = results.best_config("both", storage=optuna_url)
    assert quick == slow and quick["trial"] == 1


def test_status_is_the_same_either_way(optuna_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`sweep status` from briefs (peek) and from Optuna's whole trials count the same: states,
    workers, interrupted and retried trials, what runs and at which epoch, the mean trial."""
    import datetime as dt

    from sweep.config import parse
    from sweep.runner.status import status

    cfg = parse({"study": "st", "dataset": {"name": "digits"}, "search": {
        "metric": "val_accuracy", "sampler": "random", "n_trials": 9, "space": {"activation": ["relu", "elu"]}}},
        "test")
    s = optuna.create_study(study_name="st", storage=db_url(optuna_url), direction="maximize")
    s.set_user_attr("sweep.config", cfg.model_dump(mode="json"))
    t0 = dt.datetime(2026, 11, 24, 10, 0, 0)
    dist = {"activation": CategoricalDistribution(["relu", "elu"])}

    def add(state: TrialState, worker: str, minutes: int, **kw: object) -> None:
        s.add_trial(optuna.trial.FrozenTrial(
            number=0, trial_id=0, params={"activation": "relu"}, distributions=dist, state=state,
            value=0.9 if state == TrialState.COMPLETE else None, user_attrs={"worker": worker, **kw.pop("ua", {})},
            system_attrs=kw.pop("sa", {}), intermediate_values=kw.pop("iv", {}),
            datetime_start=t0, datetime_complete=None if state == TrialState.RUNNING
            else t0 + dt.timedelta(minutes=minutes)))

    add(TrialState.COMPLETE, "w0", 3)
    add(TrialState.COMPLETE, "w1", 5)
    add(TrialState.PRUNED, "w0", 1, iv={0: 0.5})
    add(TrialState.FAIL, "w1", 2, ua={"interrupted": True})  # Ctrl-C: run again, not done
    add(TrialState.FAIL, "w0", 4)  # went stale ...
    add(TrialState.COMPLETE, "w1", 6, sa={"failed_trial": 4, "retry_history": [4]})  # ... and its retry
    add(TrialState.RUNNING, "w0", 0, iv={0: 0.4, 1: 0.6, 2: 0.7})
    add(TrialState.RUNNING, "w1", 0)

    def fixed(st: object) -> dict:
        d = st.to_dict()
        for r in d["running"]:
            r["seconds"] = round(r["seconds"] / 3600)  # hours since 10:00 that day: equal either way
        for k in ("mean_trial_seconds", "eta_seconds"):  # SQLite's julianday() is exact to ~0.1 ms
            d[k] = round(d[k], 3)
        return d

    add(TrialState.FAIL, "w2", 1, sa={"failed_trial": 3, "retry_history": [3]})  # an interrupted one retried

    quick = fixed(status("st", storage=optuna_url))  # a study stored before sweep.target: from its config
    s.set_user_attr("sweep.target", 12)
    stored = fixed(status("st", storage=optuna_url))
    monkeypatch.setattr(peek, "tally", lambda url, study: None)
    assert stored == fixed(status("st", storage=optuna_url))
    s.set_user_attr("sweep.target", None)  # Optuna keeps the key: read as absent
    assert quick == fixed(status("st", storage=optuna_url))
    assert quick["target"] == 9 and stored["target"] == 12
    assert {**stored, "target": 9, "eta_seconds": quick["eta_seconds"]} == quick
    assert quick["done"] == 5 and quick["retried"] == 2
    assert quick["states"] == {"COMPLETE": 3, "PRUNED": 1, "FAIL": 3, "RUNNING": 2}
    assert quick["by_worker"] == {"w0": {"COMPLETE": 1, "PRUNED": 1, "FAIL": 1, "RUNNING": 1},
                                  "w1": {"COMPLETE": 2, "FAIL": 1, "RUNNING": 1}, "w2": {"FAIL": 1}}
    assert [(r["trial"], r["worker"], r["epoch"]) for r in quick["running"]] == [(6, "w0", 2), (7, "w1", None)]
    assert quick["mean_trial_seconds"] == pytest.approx((3 + 5 + 1 + 6 + 1) * 60 / 5)


def test_status_counts_in_the_database_without_optuna_or_pydantic(tmp_path: Path) -> None:
    """`sweep status` of a study with `sweep.target` stored, in a fresh process: counted by the
    database (sweep/peek.py), and neither Optuna, NumPy nor pydantic imported for it."""
    import json
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'o.db'}"
    s = _study(url, "light", "maximize", [_trial(0.8, units=10), _trial(None, TrialState.RUNNING, units=20)])
    s.set_user_attr("sweep.target", 5)
    code = ("import json, sys\n"
            "from sweep.runner.status import status\n"
            "st = status('light', storage=sys.argv[1]).to_dict()\n"
            "print(json.dumps([st['done'], st['target'], st['states'], "
            "sorted(m for m in ('optuna', 'numpy', 'pydantic', 'sqlalchemy') if m in sys.modules)]))\n")
    r = subprocess.run([sys.executable, "-c", code, url], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout) == [1, 5, {"COMPLETE": 1, "RUNNING": 1}, []]


def test_trials_table_is_the_same_either_way(optuna_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`sweep trials` from columns (peek) prints what Optuna's `trials_dataframe` gave."""
    s = _study(optuna_url, "tab", "maximize", [
        _trial(0.8, units=10), _trial(0.9, units=20, activation="prelu"),
        _trial(None, TrialState.PRUNED, units=40), _trial(math.inf, units=45)])
    s.add_trial(create_trial(params={"activation": "relu"}, distributions={"activation": DISTS["activation"]},
                             state=TrialState.FAIL, user_attrs={"fail_reason": "NaN loss at epoch 2", "worker": "w1"}))
    quick = results.trials_table("tab", storage=optuna_url)
    assert list(quick["number"]) == [0, 1, 2, 3, 4] and quick["value"][3] == math.inf
    monkeypatch.setattr(peek, "trials", lambda url, study, attrs: None)
    slow = results.trials_table("tab", storage=optuna_url)
    assert quick.to_string(index=False) == slow.to_string(index=False)
    assert "NaN loss at epoch 2" in quick.to_string(index=False)


def test_compare_is_the_same_either_way(optuna_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`sweep compare` from the trials' columns (peek) and from Optuna's whole trials agree."""
    import random

    from sweep.analysis.compare import compare
    from sweep.config import parse

    configs = [{"activation": "relu"}, {"activation": "leaky_relu", "leaky_alpha": 0.1}]
    cfg = parse({"study": "cmp", "dataset": {"name": "digits"}, "search": {
        "metric": "val_accuracy", "configs": configs, "repeats": 4}}, "test")
    s = optuna.create_study(study_name="cmp", storage=db_url(optuna_url), direction="maximize")
    s.set_user_attr("sweep.config", cfg.model_dump(mode="json"))
    draw = random.Random(1)
    dists = {"activation": CategoricalDistribution(["relu", "leaky_relu"]), "leaky_alpha": FloatDistribution(0.0, 1.0)}
    for i, params in enumerate(configs):
        for r in range(4):
            s.add_trial(create_trial(
                params=params, distributions={k: dists[k] for k in params}, value=0.9 + draw.random() / 100,
                user_attrs={"config_index": i, "repeat": r, "seed": r, "test_accuracy": 0.95 + i / 100 + draw.random() / 200,
                            "mean_epoch_seconds": 1.0 + i, "worker": "w0"}))
    s.add_trial(create_trial(params={"activation": "relu"}, distributions={"activation": dists["activation"]},
                             state=TrialState.FAIL))
    for metric in ("test_accuracy", "val_accuracy"):
        quick = compare("cmp", storage=optuna_url, metric=metric).to_dict()
        with monkeypatch.context() as m:
            m.setattr(peek, "trials", lambda url, study, attrs: None)
            slow = compare("cmp", storage=optuna_url, metric=metric).to_dict()
        assert quick == slow
        assert quick["left_out"] == 1 and len(quick["rows"]) == 2 and quick["design"] == "paired"
