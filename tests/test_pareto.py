"""Two objectives: `search.metric: [val_accuracy, epoch_seconds]`, a real sweep with Optuna's
multi-objective TPE, its Pareto front read back (Python, `sweep best`, `sweep report`)."""

from __future__ import annotations

import json
import logging
import re
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import study_dict, write_study, write_tiny_npz
from mlflow import MlflowClient
from optuna.study import StudyDirection
from optuna.trial import TrialState
from typer.testing import CliRunner

import sweep
from sweep import config
from sweep.cli import app
from sweep.errors import ConfigError
from sweep.models.activations import resolve_params
from sweep.ranking import config_labels
from sweep.record import EPOCH_METRICS, RUN_ID
from sweep.tracking.sync import sync

ROOT = Path(__file__).resolve().parents[1]
TWO = ["val_accuracy", "epoch_seconds"]
PNG = b"\x89PNG\r\n\x1a\n"


def _two(data: Path, **search: Any) -> dict[str, Any]:
    d = study_dict(data, metric=TWO, **search)
    d["search"].pop("pruner")  # a study of several metrics defaults to no pruner
    return d


# --- config: several metrics, directions inferred; one metric exactly as before ---

def test_metric_list_infers_directions_and_one_metric_stays_as_it_was(tiny_npz: Path) -> None:
    cfg = config.parse(_two(tiny_npz), "x.yaml")
    assert cfg.search.metrics == ("val_accuracy", "epoch_seconds")
    assert cfg.search.directions == ["maximize", "minimize"]
    assert cfg.search.pruner.name == "none"  # Optuna cannot prune it, so none is the default
    assert cfg.model_dump(mode="json")["search"]["metric"] == TWO
    three = config.parse(study_dict(tiny_npz, metric=["val_loss", "test_accuracy", "epoch_seconds"], pruner="none"), "x")
    assert three.search.directions == ["minimize", "maximize", "minimize"]
    # one metric: a plain string in the stored config (old studies resume); an explicit plan is a
    # comparison, not pruned by default (see test_config.test_default_pruner_by_kind_of_search)
    old = study_dict(tiny_npz)
    old["search"].pop("pruner")
    single = config.parse(old, "x.yaml")
    assert (single.search.metric, single.search.direction, single.search.pruner.name) == ("val_accuracy", "maximize", "none")
    assert single.model_dump(mode="json")["search"]["metric"] == "val_accuracy"
    assert config.from_json(single.to_json(), "stored").model_dump() == single.model_dump()
    multi = config.from_json(cfg.to_json(), "stored")
    assert (multi.search.metric, multi.search.pruner.name) == (TWO, "none")
    # a list of one is that metric, single-objective
    assert config.parse(study_dict(tiny_npz, metric=["val_loss"]), "x").search.metric == "val_loss"
    shipped = config.load(ROOT / "studies" / "two-objectives.yaml")
    assert shipped.search.directions == ["maximize", "minimize"]
    assert shipped.search.space.activation == ["relu", "leaky_relu", "prelu"]


@pytest.mark.parametrize("search, problem", [
    ({"metric": TWO, "pruner": "median"},
     "search.pruner: a study of several metrics (val_accuracy, epoch_seconds) cannot be pruned: Optuna prunes "
     "single-objective studies only; set `pruner: none`, got 'median'"),
    ({"metric": TWO, "pruner": {"name": "hyperband", "min_resource": 1}},
     "search.pruner: a study of several metrics (val_accuracy, epoch_seconds) cannot be pruned"),
    ({"metric": ["val_loss", "val_loss"], "pruner": "none"},
     "search.metric: each metric may be listed once, got val_loss more than once"),
    ({"metric": ["val_accuracy", "seconds"], "pruner": "none"},
     "search.metric: expected a metric or a list of distinct metrics from val_accuracy, val_loss, accuracy, loss, "
     "test_accuracy, test_loss, epoch_seconds; got ['val_accuracy', 'seconds'] ('seconds' unknown)"),
    ({"metric": [], "pruner": "none"}, "search.metric: expected a metric or a list of distinct metrics"),
])
def test_bad_metric_lists_give_one_line_naming_the_field(tiny_npz: Path, search: dict, problem: str) -> None:
    with pytest.raises(ConfigError) as e:
        config.parse(study_dict(tiny_npz, **search), "x.yaml")
    assert len(e.value.problems) == 1, e.value.problems
    assert e.value.problems[0].startswith(problem), e.value.problems


def test_cli_refuses_a_pruner_with_two_metrics(tmp_path: Path, tiny_npz: Path) -> None:
    write_study(tmp_path, study_dict(tiny_npz, metric=TWO, pruner="median"), "bad.yaml")
    # this checkout's package, whatever an editable install elsewhere points to
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "sweep", "run", "bad.yaml"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120, env=env)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == (
        "error: bad.yaml: search.pruner: a study of several metrics (val_accuracy, epoch_seconds) cannot be pruned: "
        "Optuna prunes single-objective studies only; set `pruner: none`, got 'median'"), r.stderr
    assert {p.name for p in tmp_path.iterdir()} == {"bad.yaml", "tiny.npz"}  # no store written


# --- a real two-objective sweep on every Optuna backend ---

def _noisy_npz(path: Path) -> Path:
    """Synthetic digits with enough pixel noise that accuracy differs between trials."""
    return write_tiny_npz(path, seed=1, noise=150)


def _dominates(a: list[float], b: list[float], directions: list[str]) -> bool:
    # written out here rather than Optuna's, so the front is checked against the definition
    better = [x >= y if d == "maximize" else x <= y for x, y, d in zip(a, b, directions)]
    strictly = [x != y for x, y in zip(a, b)]
    return all(better) and any(strictly)


def test_two_objective_study_end_to_end(tmp_path: Path, optuna_url: str, tracking_uri: str,
                                        caplog: pytest.LogCaptureFixture) -> None:
    d = _two(_noisy_npz(tmp_path / "noisy.npz"), configs=None, sampler="tpe", n_trials=5,
             space={"activation": ["relu", "leaky_relu", "prelu"], "leaky_alpha": [0.05, 0.3],
                    "prelu_alpha_init": ["zeros", 0.25]})
    d["study"] = "pareto-tiny"
    d["training"].update(epochs=2, learning_rate=0.001)
    with caplog.at_level(logging.INFO, logger="sweep"):
        study = sweep.run(write_study(tmp_path, d), storage=optuna_url, tracking_uri=tracking_uri)

    # Optuna: a multi-objective study, each trial told both values, nothing reported for pruning
    assert study.directions == [StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE]
    assert study.metric_names == TWO
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 5
    for t in trials:
        epochs = t.user_attrs[EPOCH_METRICS]
        assert len(epochs) == 2 and t.intermediate_values == {}
        assert t.values[0] == pytest.approx(epochs[-1]["val_accuracy"])
        # the trial's mean epoch, not its last one
        assert t.values[1] == pytest.approx(statistics.fmean(e["epoch_seconds"] for e in epochs))
        assert t.values[1] == pytest.approx(t.user_attrs["mean_epoch_seconds"])
    # the finished-trial lines (the epoch lines in between are `trial N epoch i/n: ...`)
    lines = [r.getMessage() for r in caplog.records if re.match(r"trial \d+ [A-Z]+ ", r.getMessage())]
    assert len(lines) == 5
    for t, line in zip(trials, lines):
        assert f"val_accuracy={t.values[0]:.4f} epoch_seconds={t.values[1]:.4f}" in line, line
        assert "| Pareto front: trial(s) " in line, line

    # the Python API: exactly Optuna's best_trials, and that is the Pareto front by definition
    front = sweep.pareto_front("pareto-tiny", storage=optuna_url, tracking_uri=tracking_uri)
    assert sweep.best_config("pareto-tiny", storage=optuna_url, tracking_uri=tracking_uri) == front
    assert (front["metrics"], front["directions"], front["num_classes"]) == (TWO, ["maximize", "minimize"], 10)
    best = {t.number: t for t in study.best_trials}
    members = {m["trial"]: m for m in front["pareto"]}
    assert members and set(members) == set(best)
    for n, m in members.items():
        assert m["values"] == dict(zip(TWO, best[n].values))
        assert m["params"] == resolve_params(best[n].params)
        assert m["mlflow_run_id"] == best[n].user_attrs[RUN_ID]
    for t in trials:
        dominated = any(_dominates(o.values, t.values, front["directions"]) for o in trials)
        assert dominated == (t.number not in members), t.number
    firsts = [m["values"]["val_accuracy"] for m in front["pareto"]]
    assert firsts == sorted(firsts, reverse=True)  # read along the trade-off, most accurate first

    # `sweep best`: JSON with the front, and a table with one row per member
    runner = CliRunner()
    args = ["best", "pareto-tiny", "--storage", optuna_url, "--tracking-uri", tracking_uri]
    r = runner.invoke(app, [*args, "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["pareto"] == front["pareto"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    out = r.output.splitlines()
    assert out[0].startswith(f"study pareto-tiny: Pareto front of {len(members)} trial(s) "
                             "(val_accuracy maximized, epoch_seconds minimized)")
    assert out[1].split()[:4] == ["trial", "val_accuracy", "epoch_seconds", "activation"]
    for line, m in zip(out[2:], front["pareto"]):
        assert line.split()[:4] == [str(m["trial"]), f"{m['values']['val_accuracy']:.4f}",
                                    f"{m['values']['epoch_seconds']:.4f}", m["params"]["activation"]]
    assert len(out) == 3 + len(members)

    # MLflow: each child run carries both objective values, named
    client = MlflowClient(tracking_uri)
    for t in trials:
        logged = client.get_run(t.user_attrs[RUN_ID]).data.metrics
        assert logged["objective_value/val_accuracy"] == pytest.approx(t.values[0])
        assert logged["objective_value/epoch_seconds"] == pytest.approx(t.values[1])
        assert "objective_value" not in logged
    # the models kept are the front's (tracking.keep_models, default 3: for two metrics, the front)
    exp = client.get_experiment_by_name("pareto-tiny")
    kept = {m.source_run_id for m in client.search_logged_models(experiment_ids=[exp.experiment_id])}
    assert kept == {best[n].user_attrs[RUN_ID] for n in members}
    # no single best to register: a member of the front is promoted by number
    with pytest.raises(sweep.SweepError, match="several metrics and no single best"):
        sweep.promote("pareto-tiny", storage=optuna_url, tracking_uri=tracking_uri)
    chosen = front["pareto"][0]
    promoted = sweep.promote("pareto-tiny", trial=chosen["trial"], storage=optuna_url, tracking_uri=tracking_uri)
    assert promoted["value"] == chosen["values"] and promoted["changed"]
    version = client.get_model_version_by_alias("pareto-tiny", "best")
    assert float(version.tags["sweep.value.epoch_seconds"]) == pytest.approx(chosen["values"]["epoch_seconds"])
    # sync reads trial.values under the same names: MLflow already has everything, nothing is written
    counts = sync("pareto-tiny", storage=optuna_url, tracking_uri=tracking_uri)
    assert (counts["trials"], counts["metrics_logged"], counts["runs_created"]) == (5, 0, 0)

    # `sweep report`: the Pareto front instead of the single-objective history and slice plots
    folder = sweep.report("pareto-tiny", out=tmp_path / "report", storage=optuna_url, tracking_uri=tracking_uri)
    names = {p.name for p in folder.iterdir()}
    assert "optuna_pareto_front.png" in names and not names & {"optuna_history.png", "optuna_slice.png"}
    assert (folder / "optuna_pareto_front.png").read_bytes()[:8] == PNG
    text = (folder / "report.md").read_text()
    assert "](optuna_pareto_front.png)" in text
    assert f"Pareto front (val_accuracy maximized, epoch_seconds minimized), {len(members)} trial(s)" in text
    # compare stays on a recorded test metric and works on a study of several metrics
    assert "test_accuracy" in text and len(sweep.compare("pareto-tiny", storage=optuna_url).table) >= 1
    df = sweep.trials("pareto-tiny", storage=optuna_url)
    assert list(df["val_accuracy"]) == [t.values[0] for t in trials]

    # `sweep compare` on either objective reads the trial's own value for it: every row's n and
    # mean are those of its configuration's trials, whatever the sampler drew
    resolved = [json.dumps(resolve_params(t.params), sort_keys=True) for t in trials]
    distinct = list(dict.fromkeys(resolved))
    label = dict(zip(distinct, config_labels([json.loads(k) for k in distinct])))
    for i, metric in enumerate(("val_accuracy", "epoch_seconds")):
        c = sweep.compare("pareto-tiny", storage=optuna_url, metric=metric)
        assert c.direction == ("maximize" if i == 0 else "minimize")
        groups: dict[str, list[float]] = {}
        for t, key in zip(trials, resolved):
            groups.setdefault(label[key], []).append(t.values[i])
        rows = c.table.set_index("config")
        assert sorted(rows.index) == sorted(groups)
        for name, values in groups.items():
            assert rows.loc[name, "n"] == len(values)
            assert rows.loc[name, "mean"] == pytest.approx(statistics.fmean(values))
    with pytest.raises(sweep.SweepError, match=r"pass --metric with one of: epoch_seconds, test_accuracy, "
                                               r"test_loss, val_accuracy"):
        sweep.compare("pareto-tiny", storage=optuna_url, metric="val_loss")
