"""Statistics over repeats, checked against SciPy on known inputs; `compare` on a stored study."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from helpers import study_dict, write_study
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState
from scipy import stats as sps

import sweep
from sweep import config
from sweep.errors import SweepError
from sweep.analysis.compare import compare_samples, config_labels, format_comparison
from sweep.runner.study import CONFIG_ATTR

RELU = [0.9901, 0.9893, 0.9910]
LEAKY = [0.9921, 0.9930, 0.9925]  # clearly higher, small spread
PRELU = [0.9890, 0.9912, 0.9899]  # overlaps relu


def _samples(**groups: list[float]) -> pd.DataFrame:
    rows = [(label, v, 2.0 + i) for i, (label, vs) in enumerate(groups.items()) for v in vs]
    return pd.DataFrame(rows, columns=["config", "value", "epoch_seconds"])


def test_statistics_match_scipy_on_known_inputs() -> None:
    c = compare_samples(_samples(relu=RELU, leaky=LEAKY, prelu=PRELU), "relu", "test_accuracy")
    t = c.table.set_index("config")
    assert list(t.index) == ["relu", "leaky", "prelu"]
    for label, x in (("relu", RELU), ("leaky", LEAKY), ("prelu", PRELU)):
        row = t.loc[label]
        assert row["n"] == 3
        assert row["mean"] == pytest.approx(np.mean(x))
        assert row["std"] == pytest.approx(np.std(x, ddof=1))
        lo, hi = sps.t.interval(0.95, 2, loc=np.mean(x), scale=sps.sem(x))
        assert (row["ci_low"], row["ci_high"]) == (pytest.approx(lo), pytest.approx(hi))
    for label, x in (("leaky", LEAKY), ("prelu", PRELU)):
        ref = sps.ttest_ind(x, RELU, equal_var=False)
        ci = ref.confidence_interval(confidence_level=0.95)
        row = t.loc[label]
        assert row["diff"] == pytest.approx(np.mean(x) - np.mean(RELU))
        assert row["p_value"] == pytest.approx(ref.pvalue)
        assert (row["diff_ci_low"], row["diff_ci_high"]) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert t.loc["leaky", "p_value"] < 0.05 < t.loc["prelu", "p_value"]
    assert t.loc["leaky", "verdict"] == "higher than relu (better) at n=3"
    assert t.loc["prelu", "verdict"] == "no detectable difference at n=3"
    assert t.loc["relu", "verdict"] == "baseline" and math.isnan(t.loc["relu", "p_value"])
    # per-epoch time: mean per configuration, ratio to the baseline's
    assert t.loc["leaky", "epoch_seconds"] == pytest.approx(3.0)
    assert t.loc["leaky", "time_ratio"] == pytest.approx(1.5)


def test_other_confidence_level_and_a_loss_metric() -> None:
    c = compare_samples(_samples(relu=RELU, leaky=LEAKY), "relu", "test_loss", "minimize", confidence=0.9)
    row = c.table.set_index("config").loc["leaky"]
    ci = sps.ttest_ind(LEAKY, RELU, equal_var=False).confidence_interval(confidence_level=0.9)
    assert (row["diff_ci_low"], row["diff_ci_high"]) == (pytest.approx(ci.low), pytest.approx(ci.high))
    lo, _ = sps.t.interval(0.9, 2, loc=np.mean(LEAKY), scale=sps.sem(LEAKY))
    assert row["ci_low"] == pytest.approx(lo)
    # a higher loss is worse
    assert row["verdict"] == "higher than relu (worse) at n=3"


def test_too_few_runs_and_identical_runs_get_no_test() -> None:
    c = compare_samples(_samples(relu=[0.9, 0.9], gelu=[0.9, 0.9], tanh=[0.8]), None, "test_accuracy")
    t = c.table.set_index("config")
    assert c.baseline == "relu"  # the default baseline
    assert t.loc["gelu", "verdict"] == "identical in every run"
    assert t.loc["relu", "ci_low"] == t.loc["relu", "ci_high"] == 0.9
    assert t.loc["tanh", "verdict"] == "too few runs to test at n=1 vs 2"
    assert math.isnan(t.loc["tanh", "p_value"]) and math.isnan(t.loc["tanh", "std"])
    assert "n < 2 cannot be tested" in format_comparison(c)


def test_baseline_by_activation_name_label_or_error() -> None:
    s = _samples(**{"relu": RELU, "prelu(alpha_init=zeros)": PRELU, "prelu(alpha_init=0.25)": LEAKY})
    assert compare_samples(s, "prelu(alpha_init=0.25)").baseline == "prelu(alpha_init=0.25)"
    with pytest.raises(SweepError, match=r"several configurations match baseline 'prelu'; configurations: relu,"):
        compare_samples(s, "prelu")
    with pytest.raises(SweepError, match=r"no configuration matches baseline 'elu'.*--baseline"):
        compare_samples(s, "elu")
    assert compare_samples(_samples(gelu=RELU, elu=PRELU), None).baseline == "gelu"


def test_labels_show_what_tells_configs_apart() -> None:
    assert config_labels([
        {"activation": "relu"},
        {"activation": "leaky_relu", "leaky_alpha": 0.1},
        {"activation": "prelu", "prelu_alpha_init": "zeros", "prelu_shared_axes": "none"},
        {"activation": "prelu", "prelu_alpha_init": 0.25, "prelu_shared_axes": "none"},
        {"activation": "leaky_relu", "leaky_alpha": 0.3},
    ]) == ["relu", "leaky_relu(alpha=0.1)", "prelu(alpha_init=zeros)", "prelu(alpha_init=0.25)",
           "leaky_relu(alpha=0.3)"]
    assert config_labels([{"activation": "prelu", "prelu_alpha_init": "zeros", "prelu_shared_axes": "all"}]) == [
        "prelu(shared_axes=all)"]


def test_format_text_and_markdown() -> None:
    c = compare_samples(_samples(relu=RELU, leaky=LEAKY, prelu=PRELU), "relu", "test_accuracy")
    text = format_comparison(c)
    p = sps.ttest_ind(PRELU, RELU, equal_var=False).pvalue
    assert "p (Welch)" in text and f"{p:.3f}" in text and "0.9901 ± 0.0009" in text
    assert "Welch's t-test (scipy.stats.ttest_ind, equal_var=False)" in text
    md = format_comparison(c, markdown=True).splitlines()
    assert md[0].startswith("| configuration |") and len([x for x in md if x.startswith("| ")]) == 4


# --- `compare` on a stored study (trials added directly: no training needed) ---

def _stored_study(tmp_path: Path, tiny_npz: Path) -> tuple[str, dict[str, list[float]]]:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="stats", storage=storage, direction="maximize")
    cfg = config.parse(study_dict(tiny_npz, repeats=3), "test")
    study.set_user_attr(CONFIG_ATTR, cfg.model_dump(mode="json"))
    dist = {"activation": CategoricalDistribution(["relu", "leaky_relu"]),
            "leaky_alpha": CategoricalDistribution([0.1])}
    values = {"relu": RELU, "leaky_relu(alpha=0.1)": LEAKY}
    for i, (params, accs) in enumerate([({"activation": "relu"}, RELU),
                                        ({"activation": "leaky_relu", "leaky_alpha": 0.1}, LEAKY)]):
        for r, acc in enumerate(accs):
            study.add_trial(optuna.trial.create_trial(
                params=params, distributions={k: dist[k] for k in params}, value=acc - 0.01,
                user_attrs={"config_index": i, "repeat": r, "seed": r, "test_accuracy": acc,
                            "test_loss": 1 - acc, "mean_epoch_seconds": 1.0 + i}))
    study.add_trial(optuna.trial.create_trial(params={"activation": "relu"}, distributions=
                                              {"activation": dist["activation"]}, state=TrialState.FAIL))
    return storage, values


def test_compare_reads_complete_trials_of_a_study(tmp_path: Path, tiny_npz: Path) -> None:
    storage, values = _stored_study(tmp_path, tiny_npz)
    c = sweep.compare("stats", storage=storage)
    assert (c.study, c.metric, c.baseline, c.left_out) == ("stats", "test_accuracy", "relu", 1)
    t = c.table.set_index("config")
    assert list(t["n"]) == [3, 3]
    assert t.loc["leaky_relu(alpha=0.1)", "p_value"] == pytest.approx(
        sps.ttest_ind(LEAKY, RELU, equal_var=False).pvalue)
    assert t.loc["leaky_relu(alpha=0.1)", "epoch_seconds"] == 2.0
    # the study's own metric (here val_accuracy) comes from the trial values
    v = sweep.compare("stats", storage=storage, metric="val_accuracy").table.set_index("config")
    assert v.loc["relu", "mean"] == pytest.approx(np.mean(RELU) - 0.01)
    with pytest.raises(SweepError, match=r"have no 'accuracy'; pass --metric with one of: test_accuracy"):
        sweep.compare("stats", storage=storage, metric="accuracy")
    with pytest.raises(SweepError, match="no study named 'nope'"):
        sweep.compare("nope", storage=storage)


def test_cli_compare_prints_table_and_json_without_tensorflow(tmp_path: Path, tiny_npz: Path) -> None:
    storage, _ = _stored_study(tmp_path, tiny_npz)
    code = ("import sys; from sweep.cli import main; sys.argv = ['sweep', *sys.argv[1:]]\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "print('TF_LOADED' if 'tensorflow' in sys.modules else 'TF_NOT_LOADED', file=sys.stderr)")
    for extra in ([], ["--json"]):
        r = subprocess.run([sys.executable, "-c", code, "compare", "stats", "--storage", storage, *extra],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert "TF_NOT_LOADED" in r.stderr
    out = json.loads(r.stdout)
    assert [row["config"] for row in out["rows"]] == ["relu", "leaky_relu(alpha=0.1)"]
    assert out["rows"][0]["p_value"] is None and out["rows"][1]["p_value"] > 0
    r = subprocess.run([sys.executable, "-m", "sweep", "compare", "stats", "--storage", storage],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "leaky_relu(alpha=0.1)" in r.stdout and "higher than relu (better) at n=3" in r.stdout
    r = subprocess.run([sys.executable, "-m", "sweep", "compare", "stats", "--storage", storage,
                        "--baseline", "elu"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "no configuration matches baseline 'elu'" in r.stderr


def test_seed_comparison_study_runs_and_compares_four_variants(tmp_path: Path, mnist_path: Path) -> None:
    """The issue's "done when": the shipped study, 3 repeats, capped to 600 real digits and 1 epoch."""
    d = config.read_yaml(Path(__file__).resolve().parents[1] / "studies" / "seed-comparison.yaml")
    d["dataset"].update(name="npz", path=str(mnist_path), train_samples=600, test_samples=300)
    d["training"]["epochs"] = 1
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    sweep.run(write_study(tmp_path, d), storage=storage, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    c = sweep.compare("seed-comparison", storage=storage)
    t = c.table
    assert list(t["config"]) == ["relu", "leaky_relu(alpha=0.1)", "prelu(alpha_init=zeros)", "prelu(alpha_init=0.25)"]
    assert list(t["n"]) == [3, 3, 3, 3] and c.left_out == 0
    assert t["ci_low"].notna().all() and (t["ci_low"] <= t["mean"]).all() and (t["mean"] <= t["ci_high"]).all()
    assert t["p_value"][1:].between(0, 1).all() and t["diff_ci_low"][1:].notna().all()
    assert (t["epoch_seconds"] > 0).all()
    text = format_comparison(c)
    assert all(label in text for label in t["config"]) and "p (Welch)" in text
