"""`sweep compare`: the statistics checked against SciPy on known inputs and by simulation (a
wrong formula would miss its promised coverage or power); `compare` on a stored study."""

from __future__ import annotations

import ast
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
from sweep import stats
from sweep.analysis.compare import compare_samples, config_labels, format_comparison
from sweep.errors import SweepError
from sweep.record import CONFIG_ATTR

RELU = [0.9901, 0.9893, 0.9910]
LEAKY = [0.9921, 0.9930, 0.9925]  # clearly higher, small spread
PRELU = [0.9890, 0.9912, 0.9899]  # overlaps relu
# seed by seed 0.0019-0.0024 above relu: clear when paired; LEAKY's own spread hides less
ABOVE = [r + d for r, d in zip(RELU, [0.0020, 0.0024, 0.0019])]


def _samples(**groups: list[float]) -> pd.DataFrame:
    """Unpaired samples: no seeds, as from a sampled search."""
    rows = [(label, v, 2.0 + i) for i, (label, vs) in enumerate(groups.items()) for v in vs]
    return pd.DataFrame(rows, columns=["config", "value", "epoch_seconds"])


def _paired(**groups: list[float]) -> pd.DataFrame:
    """Repeat r of every configuration ran with seed r, as in an explicit plan."""
    frame = _samples(**groups)
    frame["seed"] = [r for vs in groups.values() for r in range(len(vs))]
    return frame


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
    assert pd.isna(t.loc["tanh", "test"])  # no test ran, so none is named
    one = compare_samples(_paired(relu=[0.9], gelu=[0.8]), "relu")  # a grid without repeats
    assert one.design == "none" and "test: none — a test needs at least 2 runs" in format_comparison(one)
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
    assert "p adj (Holm)" in text and f"{p:.3f}" in text and "0.9901 ± 0.0009" in text
    assert "test: Welch's t-test" in text and "Welch  " in text
    assert "repeats for" not in text
    md = format_comparison(c, markdown=True).splitlines()
    assert md[0].startswith("| configuration |") and len([x for x in md if x.startswith("| ")]) == 4
    assert len(md[1].split("|")) == len(md[0].split("|"))  # one alignment cell per column
    with_effect = format_comparison(compare_samples(_paired(relu=RELU, leaky=LEAKY), "relu", effect=0.001))
    assert "repeats for Δ=0.001" in with_effect and "test: paired t-test" in with_effect


# --- `compare` on a stored study (trials added directly: no training needed) ---

def _stored_study(tmp_path: Path, tiny_npz: Path) -> tuple[str, dict[str, list[float]]]:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="stats", storage=storage, direction="maximize")
    cfg = config.parse(study_dict(tiny_npz, repeats=3), "test")
    study.set_user_attr(CONFIG_ATTR, cfg.model_dump(mode="json"))
    dist = {"activation": CategoricalDistribution(["relu", "leaky_relu"]),
            "leaky_alpha": CategoricalDistribution([0.1])}
    values = {"relu": RELU, "leaky_relu(alpha=0.1)": ABOVE}
    for i, (params, accs) in enumerate([({"activation": "relu"}, RELU),
                                        ({"activation": "leaky_relu", "leaky_alpha": 0.1}, ABOVE)]):
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
    # an explicit plan: repeat r of each configuration ran with seed r, so the test is paired
    assert c.design == "paired" and t.loc["leaky_relu(alpha=0.1)", "test"] == stats.PAIRED
    assert t.loc["leaky_relu(alpha=0.1)", "p_value"] == pytest.approx(sps.ttest_rel(ABOVE, RELU).pvalue)
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
    for extra in ([], ["--json", "--effect", "0.001"]):
        r = subprocess.run([sys.executable, "-c", code, "compare", "stats", "--storage", storage, *extra],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert "TF_NOT_LOADED" in r.stderr
    out = json.loads(r.stdout)
    # the other read-only commands too: no TensorFlow, Keras or MLflow
    loaded = ("print(sorted(m for m in ('tensorflow', 'keras', 'mlflow', 'optuna', 'pydantic', 'numpy') "
              "if m in sys.modules), file=sys.stderr)")
    reader = code.replace("print('TF_LOADED' if 'tensorflow' in sys.modules else 'TF_NOT_LOADED', file=sys.stderr)",
                          loaded)
    for command in (["best", "stats"], ["trials", "stats"], ["status", "stats"]):
        r2 = subprocess.run([sys.executable, "-c", reader, *command, "--storage", storage], capture_output=True,
                            text=True, timeout=120)
        assert r2.returncode == 0, r2.stderr
        loaded_now = set(ast.literal_eval(r2.stderr.splitlines()[-1]))
        assert not loaded_now & {"tensorflow", "keras", "mlflow"}, (command, r2.stderr)
        if command[0] == "best":  # read straight from Optuna's tables (sweep/peek.py): no Optuna
            # (a repeated study: NumPy and SciPy judge its configurations, sweep/ranking.py)
            assert "optuna" not in loaded_now, r2.stderr
    # `sweep --help` imports none of them (the package's public names load on first use)
    r2 = subprocess.run([sys.executable, "-c", reader.replace("assert not e.code, e.code", "pass"), "--help"],
                        capture_output=True, text=True, timeout=120)
    assert r2.stderr.splitlines()[-1] == "[]", r2.stderr
    assert [row["config"] for row in out["rows"]] == ["relu", "leaky_relu(alpha=0.1)"]
    assert (out["design"], out["correction"], out["effect"]) == ("paired", "holm", 0.001)
    base, row = out["rows"]
    assert base["p_value"] is None and base["test"] is None
    ref = sps.ttest_rel(ABOVE, RELU)
    assert row["test"] == stats.PAIRED and row["p_value"] == pytest.approx(ref.pvalue)
    assert row["p_adjusted"] == pytest.approx(ref.pvalue)  # one comparison: nothing to adjust
    d = np.subtract(ABOVE, RELU)
    assert row["effect_size"] == pytest.approx(d.mean() / d.std(ddof=1))
    lo, hi = row["effect_ci"]
    assert lo < row["effect_size"] < hi
    assert 0 < row["mde"] < 0.01 and isinstance(row["repeats_needed"], int) and row["repeats_needed"] >= 2
    r = subprocess.run([sys.executable, "-m", "sweep", "compare", "stats", "--storage", storage],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "leaky_relu(alpha=0.1)" in r.stdout and "higher than relu (better) at n=3" in r.stdout
    r = subprocess.run([sys.executable, "-m", "sweep", "compare", "stats", "--storage", storage,
                        "--baseline", "elu"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "no configuration matches baseline 'elu'" in r.stderr
    for flag, value, message in (("--effect", "-0.001", "--effect must be a positive difference in "
                                  "test_accuracy units, got -0.001"),
                                 ("--correction", "bonferroni", "correction must be one of holm, bh, got "
                                  "'bonferroni'")):
        r = subprocess.run([sys.executable, "-m", "sweep", "compare", "stats", "--storage", storage, flag, value],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and r.stderr.strip() == f"error: {message}", r.stderr


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
    assert c.design == "paired" and (t["test"][1:] == stats.PAIRED).all() and c.comparisons == 3
    assert (t["p_adjusted"][1:] >= t["p_value"][1:]).all() and t["mde"][1:].notna().all()
    text = format_comparison(c)
    assert all(label in text for label in t["config"]) and "p adj (Holm)" in text


# --- the design, the correction, effect sizes and power ---

def test_paired_design_pairs_runs_by_seed_and_uses_ttest_rel() -> None:
    frame = _paired(relu=RELU, leaky=ABOVE, prelu=PRELU).sample(frac=1, random_state=3)  # order must not matter
    c = compare_samples(frame, "relu", "test_accuracy")
    t = c.table.set_index("config")
    assert c.design == "paired" and t.loc["leaky", "test"] == stats.PAIRED
    ref = sps.ttest_rel(ABOVE, RELU)
    ci = ref.confidence_interval(0.95)
    assert t.loc["leaky", "p_value"] == pytest.approx(ref.pvalue)
    assert (t.loc["leaky", "diff_ci_low"], t.loc["leaky", "diff_ci_high"]) == (pytest.approx(ci.low),
                                                                              pytest.approx(ci.high))
    # Welch would not see it: the seed-to-seed spread is larger than the difference's spread
    assert sps.ttest_ind(ABOVE, RELU, equal_var=False).pvalue > 5 * ref.pvalue
    d = np.subtract(ABOVE, RELU)
    assert t.loc["leaky", "effect_size"] == pytest.approx(d.mean() / d.std(ddof=1))
    assert t.loc["leaky", "verdict"] == "higher than relu (better) at n=3"


def test_unmatched_seeds_are_left_out_of_a_paired_test() -> None:
    frame = _paired(relu=[*RELU, 0.95], leaky=ABOVE)  # the baseline has one more seed (3)
    row = compare_samples(frame, "relu").table.set_index("config").loc["leaky"]
    assert row["n_tested"] == 3 and row["p_value"] == pytest.approx(sps.ttest_rel(ABOVE, RELU).pvalue)
    assert row["verdict"].endswith("at 3 seed pairs")


def test_runs_without_shared_seeds_use_welch() -> None:
    frame = _paired(relu=RELU, leaky=LEAKY)
    frame.loc[frame["config"] == "leaky", "seed"] += 100  # a sampled search: a fresh seed per trial
    c = compare_samples(frame, "relu")
    row = c.table.set_index("config").loc["leaky"]
    assert c.design == "unpaired" and row["test"] == stats.WELCH
    assert row["p_value"] == pytest.approx(sps.ttest_ind(LEAKY, RELU, equal_var=False).pvalue)
    pooled = math.sqrt((np.var(LEAKY, ddof=1) + np.var(RELU, ddof=1)) / 2)
    assert row["effect_size"] == pytest.approx((np.mean(LEAKY) - np.mean(RELU)) / pooled)


def test_holm_and_benjamini_hochberg_by_hand() -> None:
    p = [0.01, 0.04, 0.03, 0.5, math.nan]
    # Holm: sorted 0.01, 0.03, 0.04, 0.5 times 4, 3, 2, 1 -> 0.04, 0.09, 0.08 -> 0.09 (monotone), 0.5
    assert stats.adjust(p, "holm")[:4] == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert math.isnan(stats.adjust(p, "holm")[4])  # untestable: not counted in m
    assert stats.adjust(p, "bh")[:4] == pytest.approx(list(sps.false_discovery_control(p[:4], method="bh")))
    assert stats.adjust([0.3, 0.9], "holm") == pytest.approx([0.6, 0.9])


def test_verdict_follows_the_adjusted_p_value() -> None:
    rng = np.random.default_rng(0)
    base = list(0.99 + rng.normal(0, 0.001, 4))
    groups = {"relu": base, "a": [b + d for b, d in zip(base, [0.0010, 0.0020, 0.0008, 0.0022])]}
    groups.update({f"null{i}": [b + d for b, d in zip(base, rng.normal(0, 0.001, 4))] for i in range(4)})
    c = compare_samples(_paired(**groups), "relu")
    row = c.table.set_index("config").loc["a"]
    assert row["p_value"] < 0.05 < row["p_adjusted"], (row["p_value"], row["p_adjusted"])
    assert not row["significant"] and row["verdict"] == "no detectable difference at n=4"
    assert c.comparisons == 5 and c.mde_alpha == pytest.approx(0.01)
    bh = compare_samples(_paired(**groups), "relu", correction="bh").table.set_index("config")
    assert bh["p_adjusted"].iloc[1:].tolist() == pytest.approx(
        list(sps.false_discovery_control(bh["p_value"].iloc[1:].tolist(), method="bh")))


@pytest.mark.parametrize("paired", [True, False])
def test_effect_size_interval_covers_the_true_effect_95_percent_of_the_time(paired: bool) -> None:
    rng, true_d, n, hits, runs = np.random.default_rng(42), 0.8, 3, 0, 400  # n as in real studies
    for _ in range(runs):
        b = rng.normal(0, 1, n)
        x = b + rng.normal(true_d, 1, n) if paired else rng.normal(true_d, 1, n)
        r = stats.paired_test(x, b, 0.95) if paired else stats.welch_test(x, b, 0.95)
        hits += r.effect_ci[0] <= true_d <= r.effect_ci[1]
    assert 0.92 <= hits / runs <= 0.98, hits / runs  # binomial sd at 0.95 over 400 runs: 0.011


@pytest.mark.parametrize("paired", [True, False])
def test_mde_is_detected_with_80_percent_power(paired: bool) -> None:
    """Simulate the test at the minimum detectable difference: it must reject about 80% of the time."""
    n, sd, alpha = 5, 0.002, 0.025
    r = stats.TestResult(stats.PAIRED if paired else stats.WELCH, n, n, 0.0, stats.NAN2, 0.5, "", 0.0,
                         stats.NAN2, (sd,) if paired else (sd, sd))
    delta = stats.mde(r, alpha)
    rng, rejects, runs = np.random.default_rng(7), 0, 4000
    for _ in range(runs):
        if paired:
            p = sps.ttest_1samp(rng.normal(delta, sd, n), 0).pvalue
        else:
            p = sps.ttest_ind(rng.normal(delta, sd, n), rng.normal(0, sd, n), equal_var=False).pvalue
        rejects += p < alpha
    assert abs(rejects / runs - 0.8) < 0.035, (delta, rejects / runs)
    # and the repeats a named difference needs: the first n whose power reaches 80%
    need = stats.repeats_needed(r, delta / 2, alpha)
    assert need is not None and need > n
    at = lambda k: stats.power(delta / 2 / stats._se_df(r, k)[0], stats._se_df(r, k)[1], alpha)  # noqa: E731
    assert at(need) >= 0.8 > at(need - 1)
    assert stats.repeats_needed(r, delta, alpha) <= n + 1  # the MDE itself needs about this n


def test_no_spread_gives_no_power_figures() -> None:
    c = compare_samples(_paired(relu=[0.9, 0.9, 0.9], gelu=[0.9, 0.9, 0.9]), "relu", effect=0.01)
    row = c.to_dict()["rows"][1]
    assert row["verdict"] == "identical in every run"
    assert (row["p_value"], row["mde"], row["repeats_needed"], row["effect_ci"]) == (None, None, None, None)
