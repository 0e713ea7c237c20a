"""`sweep confirm` (sweep/runner/confirm.py): a search's finalists trained again on fresh seeds, the same
for each, in a study of their own. Real training on 400 MNIST digits, real stores, real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import optuna
import pytest
from helpers import free_port, postgres_database, fail_without_postgres, study_dict, watch_study, write_study
from mlflow import MlflowClient
from optuna.trial import TrialState

import sweep
from sweep import config, ranking
from sweep.errors import SweepError
from sweep.peek import Brief
from sweep.record import CONFIRMED_BY, CONFIRMS, SEED
from sweep.runner import confirm

POSTGRES_URL = os.environ.get("SWEEP_TEST_POSTGRES_URL")
SPACE = {"activation": ["relu", "leaky_relu", "elu", "tanh"], "leaky_alpha": {"low": 0.01, "high": 0.3}}


def _search(data: Path, name: str = "rs", **extra: Any) -> dict[str, Any]:
    """A random search of 6 one-epoch trials on 400 real digits."""
    d = study_dict(data)
    d["study"] = name
    d["search"] = {"sampler": "random", "n_trials": 6, "metric": "val_accuracy", "pruner": "none", "seed": 0,
                   "space": SPACE}
    d["dataset"].update(train_samples=400, test_samples=200)
    d["training"].update(epochs=1, batch_size=64)
    d.update(extra)
    return d


def _cli(args: list[str], cwd: Path, storage: str, tracking: str, **kw: Any) -> subprocess.CompletedProcess:
    env = {**os.environ, "SWEEP_OPTUNA_STORAGE": storage, "MLFLOW_TRACKING_URI": tracking, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "sweep", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600, **kw)


_study = watch_study


def _stores_said_once(stderr: str) -> None:
    """`-v` names the stores once, where they came from: a step handed the resolved URL resolved it
    again as if it were --storage, and said so (the search's confirmation, read by report and compare)."""
    said = [line for line in stderr.splitlines() if "Optuna storage" in line and "(from " in line]
    assert len(said) == 1 and "(from $SWEEP_OPTUNA_STORAGE)" in said[0], said


def _expected_finalists(search: optuna.Study, top: int) -> list[dict[str, Any]]:
    """The top distinct configurations by their best value, computed here from the recorded trials."""
    best: dict[str, tuple[float, int, dict]] = {}
    for t in search.get_trials(states=(TrialState.COMPLETE,)):
        params = sweep.models.activations.resolve_params(t.params)
        key = json.dumps(params, sort_keys=True)
        if key not in best or (t.value, -t.number) > (best[key][0], -best[key][1]):
            best[key] = (t.value, t.number, params)
    ranked_ = sorted(best.values(), key=lambda v: (-v[0], v[1]))
    return [p for _, _, p in ranked_[:top]]


# --- finalists, seeds and refusals, from recorded trials ---

def _brief(n: int, value: float | None, state: str = "COMPLETE", **params: Any) -> Brief:
    return Brief(n, state, values=None if value is None else [value], params=params, user_attrs={SEED: n})


def test_finalists_are_distinct_configurations_by_their_best_run_or_one_per_activation() -> None:
    trials = [_brief(0, 0.80, activation="relu"), _brief(1, 0.90, activation="leaky_relu", leaky_alpha=0.1),
              _brief(2, 0.85, activation="relu"), _brief(3, 0.70, activation="leaky_relu", leaky_alpha=0.2),
              _brief(4, None, "FAIL", activation="elu"), _brief(5, 0.60, activation="tanh")]
    top = confirm.finalists(trials, "maximize", "s", top=2)
    assert [(f.params, f.trial, f.value) for f in top] == [
        ({"activation": "leaky_relu", "leaky_alpha": 0.1}, 1, 0.90), ({"activation": "relu"}, 2, 0.85)]
    per = confirm.finalists(trials, "maximize", "s", per="activation")
    assert [f.params["activation"] for f in per] == ["leaky_relu", "relu", "tanh"]  # elu never completed
    assert [f.trial for f in per] == [1, 2, 5]
    low = confirm.finalists(trials, "minimize", "s", top=1)
    assert low[0].trial == 5
    with pytest.raises(SweepError, match=r"^--top 5: study 's' has 4 distinct complete configuration\(s\); "
                                         r"ask for at most 4$"):
        confirm.finalists(trials, "maximize", "s", top=5)


def test_the_confirmation_uses_seeds_no_search_trial_used_and_refuses_what_it_cannot_confirm(tiny_npz: Path) -> None:
    cfg = config.parse(_search(tiny_npz), "test")
    trials = [_brief(n, 0.5 + n / 100, activation=a) for n, a in enumerate(["relu", "elu", "tanh", "relu", "elu",
                                                                            "selu"])]
    trials[2].user_attrs[SEED] = 40  # a seed recorded by hand, above search.seed + number
    confirmation, finals = confirm.plan(cfg, trials, config.ConfirmConfig(top=2, repeats=3))
    assert confirmation.study == "rs-confirm" and confirmation.search.repeats == 3
    assert confirmation.search.seed == 41 and confirmation.search.pruner.name == "none"
    assert [c.params() for c in confirmation.search.configs] == [f.params for f in finals]
    assert [f.params["activation"] for f in finals] == ["selu", "elu"]
    assert confirmation.dataset == cfg.dataset and confirmation.training == cfg.training
    named = confirm.plan(cfg, trials, config.ConfirmConfig(top=1, study="mine"))[0]
    assert named.study == "mine" and named.search.repeats == config.CONFIRM_REPEATS

    running = trials[:-1] + [Brief(5, "RUNNING", params={"activation": "selu"})]
    with pytest.raises(SweepError, match="study 'rs' is not complete"):
        confirm.plan(cfg, running, config.ConfirmConfig())
    with pytest.raises(SweepError, match="study 'rs' is not complete"):  # n_trials not used up
        confirm.plan(cfg, trials[:4], config.ConfirmConfig())
    repeated = config.parse({**_search(tiny_npz), "search": {"configs": [{"activation": "relu"}], "repeats": 3,
                                                               "metric": "val_accuracy"}}, "test")
    with pytest.raises(SweepError, match="already runs every configuration over 3 seeds"):
        confirm.plan(repeated, trials, config.ConfirmConfig())
    with pytest.raises(config.ConfigError, match="confirm: every configuration already runs over 3 seeds"):
        config.parse({**_search(tiny_npz), "search": repeated.search.model_dump(mode="json"),
                      "confirm": {"top": 2}}, "test")
    with pytest.raises(config.ConfigError, match=r"confirm: give `top` or `per`, not both"):
        config.parse({**_search(tiny_npz), "confirm": {"top": 2, "per": "activation"}}, "test")


# --- end to end ---

def test_confirm_trains_the_finalists_on_the_same_fresh_seeds_and_best_answers_from_it(
        tmp_path: Path, mnist_path: Path) -> None:
    storage, tracking = f"sqlite:///{tmp_path / 'optuna.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}"
    search = sweep.run(write_study(tmp_path, _search(mnist_path)), storage=storage, tracking_uri=tracking)
    done = search.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 6
    distinct = len({json.dumps(sweep.models.activations.resolve_params(t.params), sort_keys=True) for t in done})

    # before: one seed decided, and sweep best says so
    before = json.loads(_cli(["best", "rs", "--json"], tmp_path, storage, tracking).stdout)
    assert before["judged_by"] == "trial" and before["trial"] == search.best_trial.number
    assert before["note"].startswith("one seed decided") and "sweep confirm" in before["note"]

    r = _cli(["confirm", "rs", "--top", str(distinct + 1)], tmp_path, storage, tracking)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"error: --top {distinct + 1}: study 'rs' has {distinct} distinct complete configuration(s); "
        f"ask for at most {distinct}"], r.stderr

    r = _cli(["confirm", "rs", "--top", "2", "--repeats", "3"], tmp_path, storage, tracking)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "confirming study rs in study rs-confirm" in r.stderr and "Traceback" not in r.stderr
    conf = _study(storage, "rs-confirm")
    trials = conf.get_trials()
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials)  # exactly 2 x 3 runs
    finals = _expected_finalists(search, 2)
    by_config: dict[str, list[int]] = {}
    for t in trials:
        by_config.setdefault(json.dumps(sweep.models.activations.resolve_params(t.params), sort_keys=True),
                             []).append(t.user_attrs[SEED])
    assert sorted(by_config) == sorted(json.dumps(p, sort_keys=True) for p in finals)
    seeds = [sorted(s) for s in by_config.values()]
    assert seeds[0] == seeds[1] and len(set(seeds[0])) == 3  # the same three seeds for both: paired
    search_seeds = {t.user_attrs[SEED] for t in search.get_trials()}
    assert not set(seeds[0]) & search_seeds and min(seeds[0]) > max(search_seeds)

    assert conf.metric_names == _study(storage, "rs").metric_names == ["val_accuracy"]  # as Optuna's tools show them
    # linked both ways: Optuna and MLflow
    assert conf.user_attrs[CONFIRMS] == "rs" and _study(storage, "rs").user_attrs[CONFIRMED_BY] == "rs-confirm"
    client = MlflowClient(tracking)
    conf_parent = client.get_run(conf.user_attrs["sweep.mlflow_parent_run_id"])
    search_parent = client.get_run(search.user_attrs["sweep.mlflow_parent_run_id"])
    assert conf_parent.data.tags[CONFIRMS] == "rs" and search_parent.data.tags[CONFIRMED_BY] == "rs-confirm"
    exp = client.get_experiment_by_name("rs-confirm")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.data.tags.get("sweep.role") for r in runs) == ["parent"] + ["trial"] * 6
    assert all(r.info.status == "FINISHED" for r in runs)

    # compare: the confirmation's runs, paired by seed, against the confirmed winner
    r = _cli(["compare", "rs", "--metric", "val_accuracy", "--json", "-v"], tmp_path, storage, tracking)
    assert r.returncode == 0, r.stderr
    _stores_said_once(r.stderr)
    c = json.loads(r.stdout)
    assert c["design"] == "paired" and c["study"] == "rs-confirm (the confirmation of rs)"
    configs = ranking.configurations(trials)
    winner = ranking.best_configuration(trials, "maximize")
    assert c["baseline"] == winner.label

    # best: the confirmed winner, and how much the search flattered it
    r = _cli(["best", "rs", "--json"], tmp_path, storage, tracking)
    assert r.returncode == 0, r.stderr
    b = json.loads(r.stdout)
    assert b["judged_by"] == "confirmation" and b["confirmation"] == "rs-confirm" and b["configuration"] == winner.label
    assert b["value"] == pytest.approx(winner.mean) and b["n"] == 3
    search_best = max((t for t in done if sweep.models.activations.resolve_params(t.params) == winner.params),
                      key=lambda t: t.value)
    assert b["search_trial"] == search_best.number
    assert b["optimism"] == pytest.approx(search_best.value - winner.mean)
    assert [f["config"] for f in b["finalists"]] == [x.label for x in ranking.ranked(configs, "maximize")]
    text = _cli(["best", "rs"], tmp_path, storage, tracking).stdout
    assert "confirmed in        study rs-confirm" in text and f"optimism {b['optimism']:+.4f}" in text

    # @best of the search is the confirmed winner's representative model
    version = client.get_model_version_by_alias("rs", "best")
    rep = next(t for t in trials if t.number == winner.representative)
    assert version.source == rep.user_attrs["mlflow_model_uri"] and version.tags["sweep.confirmed_in"] == "rs-confirm"
    assert version.tags["sweep.configuration"] == winner.label

    # report on the search: the finalists' per-seed values beside their search values
    r = _cli(["report", "rs", "--metric", "val_accuracy", "--out", str(tmp_path / "rep"), "-v"], tmp_path, storage,
             tracking)
    assert r.returncode == 0, r.stderr[-3000:]
    _stores_said_once(r.stderr)
    md = (tmp_path / "rep" / "report.md").read_text()
    section = md.split("## Confirmation", 1)[1].split("\n## ", 1)[0]
    for f in b["finalists"]:
        per_seed = ", ".join(f"{s}: {v:.4f}" for s, v in zip(f["seeds"], f["values"]))
        assert (f"| {f['config']} | {f['search_trial']} | {f['search_value']:.4f} | {f['mean']:.4f} ± "
                f"{f['std']:.4f} (3) | {per_seed} | {f['optimism']:+.4f} |") in section, section

    # more repeats: only the missing seed of each finalist
    r = _cli(["confirm", "rs", "--top", "2", "--repeats", "4"], tmp_path, storage, tracking)
    assert r.returncode == 0, r.stderr[-3000:]
    more = _study(storage, "rs-confirm").get_trials()
    assert len(more) == 8 and all(t.state == TrialState.COMPLETE for t in more)
    assert sorted(t.user_attrs[SEED] for t in more[6:]) == [max(seeds[0]) + 1] * 2
    # other finalists for the same confirmation are refused, naming the field
    r = _cli(["confirm", "rs", "--top", "1", "--repeats", "4"], tmp_path, storage, tracking)
    assert r.returncode == 2 and "different search.configs" in r.stderr and "Traceback" not in r.stderr


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    from sweep.settings import ServerSettings
    from sweep.server import start

    s = ServerSettings(port=free_port(), backend_store_uri=f"sqlite:///{tmp_path / 'server-mlflow.db'}",
                       artifacts_destination=str(tmp_path / "artifacts"))
    running = start(s, log_path=tmp_path / "server.log")
    yield running.url
    running.stop()


@pytest.mark.postgres
def test_an_interrupted_confirmation_resumes_with_two_workers_training_only_the_missing_runs(
        tmp_path: Path, mnist_path: Path, server: str) -> None:
    """Ctrl-C of `sweep confirm`, then `sweep confirm --workers 2` on PostgreSQL: the runs finished
    before the stop are kept, each missing (finalist, seed) is trained once, nothing surplus."""
    if not POSTGRES_URL:
        fail_without_postgres()
    storage, drop = postgres_database(POSTGRES_URL)
    try:
        _interrupt_then_resume(tmp_path, mnist_path, storage, server)
    finally:
        drop()


def _interrupt_then_resume(tmp_path: Path, mnist_path: Path, storage: str, tracking: str) -> None:
    sweep.run(write_study(tmp_path, _search(mnist_path, "ci")), storage=storage, tracking_uri=tracking)
    env = {**os.environ, "SWEEP_OPTUNA_STORAGE": storage, "MLFLOW_TRACKING_URI": tracking, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen([sys.executable, "-m", "sweep", "confirm", "ci", "--top", "2", "--repeats", "3"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    before: list[int] = []
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            before = [t.number for t in _study(storage, "ci-confirm").get_trials(states=(TrialState.COMPLETE,))]
        except KeyError:
            pass
        if len(before) >= 2:
            break
        time.sleep(0.1)
    assert proc.poll() is None, proc.stdout.read()
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in out, out
    stopped = _study(storage, "ci-confirm").get_trials()
    complete_before = [t for t in stopped if t.state == TrialState.COMPLETE]
    assert 2 <= len(complete_before) < 6 and not [t for t in stopped if t.state == TrialState.RUNNING]

    r = _cli(["confirm", "ci", "--top", "2", "--repeats", "3", "--workers", "2"], tmp_path, storage, tracking)
    assert r.returncode == 0, r.stderr[-3000:]
    trials = _study(storage, "ci-confirm").get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 6
    # the runs finished before the stop are kept; only the missing (config, seed) pairs were trained
    assert {t.number for t in complete_before} <= {t.number for t in complete}
    pairs = [(json.dumps(t.params, sort_keys=True), t.user_attrs[SEED]) for t in complete]
    assert len(set(pairs)) == 6
    assert len(trials) == 6 + sum(t.state == TrialState.FAIL for t in stopped)  # nothing surplus


@pytest.mark.postgres
def test_a_confirm_section_runs_after_the_search_and_its_workers_go_on_to_it(tmp_path: Path, mnist_path: Path,
                                                                            server: str) -> None:
    """`sweep run FILE --workers 2`: two `sweep worker` processes run the search, then both take the
    confirmation's trials; each (finalist, seed) is trained once."""
    if not POSTGRES_URL:
        fail_without_postgres()
    storage, drop = postgres_database(POSTGRES_URL)
    try:
        path = write_study(tmp_path, _search(mnist_path, "pgsec", confirm={"top": 2, "repeats": 3}))
        r = _cli(["run", str(path), "--workers", "2"], tmp_path, storage, server)
        assert r.returncode == 0, r.stderr[-3000:]
        assert len(_study(storage, "pgsec").get_trials(states=(TrialState.COMPLETE,))) == 6
        trials = _study(storage, "pgsec-confirm").get_trials()
        assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials), r.stderr[-3000:]
        assert len({t.user_attrs["worker"] for t in trials}) == 2
        assert len({(json.dumps(t.params, sort_keys=True), t.user_attrs[SEED]) for t in trials}) == 6
        # after the search, not beside it
        first_confirm = min(t.datetime_start for t in trials)
        assert max(t.datetime_complete for t in _study(storage, "pgsec").get_trials()) <= first_confirm
        assert "confirming study pgsec in study pgsec-confirm" in r.stderr
        # the same command again, in one process: both complete, nothing trained
        r = _cli(["run", str(path)], tmp_path, storage, server)
        assert r.returncode == 0 and len(_study(storage, "pgsec-confirm").get_trials()) == 6, r.stderr[-2000:]
        assert len(_study(storage, "pgsec").get_trials()) == 6
        assert json.loads(_cli(["best", "pgsec", "--json"], tmp_path, storage, server).stdout)["judged_by"] == \
            "confirmation"
    finally:
        drop()
