"""Is the difference real? Per-configuration statistics over repeats, against a baseline.

`compare_samples` is pure (a table of samples in, a `Comparison` out): per configuration the
mean with its Student t interval; against the baseline the test that fits the design (paired by
seed, or Welch; see `sweep.analysis.stats`), its p-value raw and adjusted for the number of
comparisons, an effect size with its interval, the minimum detectable difference and, for a
difference the user names, the repeats it would need. `compare` feeds it a study's complete
trials; `format_comparison` renders the table. No TensorFlow here.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from sweep import stats
from sweep.config import direction_of
from sweep.errors import SweepError
from sweep.models.activations import resolve_params
from sweep.ranking import config_labels  # noqa: F401 (sweep.analysis.compare.config_labels, as before)

if TYPE_CHECKING:
    import optuna
    import pandas as pd

    from sweep.config import StudyConfig
    from sweep.storage import Stores

COLUMNS = ("config", "n", "mean", "std", "ci_low", "ci_high", "test", "n_tested", "diff", "diff_ci_low",
           "diff_ci_high", "p_value", "p_adjusted", "significant", "effect_measure", "effect_size",
           "effect_ci_low", "effect_ci_high", "mde", "repeats_needed", "verdict", "epoch_seconds",
           "epoch_seconds_std", "time_ratio")
CORRECTION_NAMES = stats.CORRECTION_NAMES


@dataclass(frozen=True)
class Comparison:
    """One row per configuration (columns `COLUMNS`), in the study's order; the baseline's diff is 0.

    `mde_alpha` is the level the minimum detectable difference (and `repeats_needed`, for a named
    `effect`) is computed at: alpha / m, the strictest step of the correction over m comparisons.
    """

    metric: str
    baseline: str
    direction: str
    confidence: float
    table: pd.DataFrame
    correction: str = "holm"
    comparisons: int = 0
    mde_alpha: float = math.nan
    effect: float | None = None
    study: str = ""
    left_out: int = 0

    @property
    def design(self) -> str:
        tests = set(self.table["test"].dropna())
        if tests == {stats.PAIRED}:
            return "paired"
        return "unpaired" if tests == {stats.WELCH} else ("mixed" if tests else "none")

    def to_dict(self) -> dict[str, Any]:
        def clean(v: Any) -> Any:
            if isinstance(v, float) and math.isnan(v):
                return None
            return v.item() if isinstance(v, np.generic) else v

        rows = []
        for r in self.table.to_dict(orient="records"):
            row = {k: clean(v) for k, v in r.items() if k not in ("effect_ci_low", "effect_ci_high")}
            lo, hi = clean(r["effect_ci_low"]), clean(r["effect_ci_high"])
            row["effect_ci"] = None if lo is None or hi is None else [lo, hi]
            if self.effect is None:
                row.pop("repeats_needed")
            elif row["repeats_needed"] is not None:  # pandas keeps the column as float (NaN for none)
                row["repeats_needed"] = int(row["repeats_needed"])
            rows.append(row)
        return {"study": self.study, "metric": self.metric, "baseline": self.baseline,
                "direction": self.direction, "confidence": self.confidence, "design": self.design,
                "correction": self.correction, "comparisons": self.comparisons,
                "power": stats.POWER, "mde_alpha": clean(self.mde_alpha), "effect": self.effect,
                "left_out": self.left_out, "rows": rows}


def _pick_baseline(labels: list[str], baseline: str | None) -> str:
    if baseline is None:  # plain relu when the study has it, else the first configuration
        return next((lb for lb in labels if lb == "relu"), labels[0])
    if baseline in labels:
        return baseline
    matches = [lb for lb in labels if lb.split("(")[0] == baseline]
    if len(matches) == 1:
        return matches[0]
    what = "several configurations match" if matches else "no configuration matches"
    raise SweepError(f"{what} baseline {baseline!r}; configurations: {', '.join(labels)}. "
                     "Pass --baseline with one of them.")


def _at(r: stats.TestResult, n: int, nb: int) -> str:
    if r.test == stats.PAIRED and not n == nb == r.n:
        return f"{r.n} seed pairs"
    return f"n={n}" if n == nb else f"n={n} vs {nb}"


def _verdict(r: stats.TestResult, n: int, nb: int, p_adj: float, alpha: float, baseline: str, better: str) -> str:
    at = _at(r, n, nb)
    if r.n < 2 or r.n_base < 2:
        return f"too few runs to test at {at}"
    if math.isnan(r.p_value):
        return "identical in every run" if r.diff == 0 else f"no spread in either group at {at}; cannot test"
    if p_adj < alpha:
        way = "higher" if r.diff > 0 else "lower"
        return f"{way} than {baseline} ({'better' if way == better else 'worse'}) at {at}"
    return f"no detectable difference at {at}"


def _seeds(frame: pd.DataFrame) -> dict[int, float] | None:
    """Value by seed, or None when a seed is missing or repeated (then nothing can be paired)."""
    if "seed" not in frame or frame["seed"].isna().any() or frame["seed"].duplicated().any():
        return None
    return {int(s): float(v) for s, v in zip(frame["seed"], frame["value"])}


def _test(x: pd.DataFrame, b: pd.DataFrame, confidence: float) -> stats.TestResult:
    return stats.compare_runs(_seeds(x), _seeds(b), x["value"].to_numpy(float), b["value"].to_numpy(float),
                              confidence)


def compare_samples(
    samples: pd.DataFrame,
    baseline: str | None,
    metric: str = "value",
    direction: str = "maximize",
    confidence: float = 0.95,
    correction: str = "holm",
    effect: float | None = None,
) -> Comparison:
    """Statistics per configuration from `samples` (columns `config`, `value`; optional `seed`,
    `epoch_seconds`).

    `baseline` is a config label, or an activation name that matches exactly one label; None:
    `relu` if the study has it, else the first configuration. `correction` (holm | bh) adjusts
    the p-values over all comparisons with the baseline; verdicts use the adjusted ones.
    `effect`: a difference of interest, in the metric's units; each row then says how many
    repeats would detect it with 80% power. Configurations keep their order of first appearance.
    """
    import pandas as pd

    if not 0 < confidence < 1:
        raise SweepError(f"confidence must be between 0 and 1, got {confidence}")
    if correction not in stats.CORRECTIONS:
        raise SweepError(f"correction must be one of {', '.join(stats.CORRECTIONS)}, got {correction!r}")
    if effect is not None and not (math.isfinite(effect) and effect > 0):
        raise SweepError(f"--effect must be a positive difference in {metric} units, got {effect}")
    if samples.empty:
        raise SweepError(f"no complete trial has a {metric!r} value to compare")
    labels = list(dict.fromkeys(samples["config"]))
    base = _pick_baseline(labels, baseline)
    groups = {lb: samples[samples["config"] == lb] for lb in labels}
    values = {lb: g["value"].to_numpy(dtype=float) for lb, g in groups.items()}
    seconds = {lb: (g["epoch_seconds"].dropna().to_numpy(dtype=float) if "epoch_seconds" in g else np.array([]))
               for lb, g in groups.items()}
    alpha = 1 - confidence
    tests = {lb: _test(groups[lb], groups[base], confidence) for lb in labels if lb != base}
    adjusted = dict(zip(tests, stats.adjust([r.p_value for r in tests.values()], correction)))
    m = sum(not math.isnan(r.p_value) for r in tests.values())
    mde_alpha = alpha / max(m, 1)
    base_time = float(seconds[base].mean()) if len(seconds[base]) else math.nan
    better = "higher" if direction == "maximize" else "lower"
    rows = []
    for lb in labels:
        x = values[lb]
        lo, hi = stats.mean_ci(x, confidence)
        t = seconds[lb]
        mean_t = float(t.mean()) if len(t) else math.nan
        row: dict[str, Any] = {
            "config": lb, "n": len(x), "mean": float(x.mean()),
            "std": float(x.std(ddof=1)) if len(x) >= 2 else math.nan, "ci_low": lo, "ci_high": hi,
            "test": None, "n_tested": len(x), "diff": 0.0, "diff_ci_low": math.nan, "diff_ci_high": math.nan,
            "p_value": math.nan, "p_adjusted": math.nan, "significant": False, "effect_measure": None,
            "effect_size": math.nan, "effect_ci_low": math.nan, "effect_ci_high": math.nan,
            "mde": math.nan, "repeats_needed": None, "verdict": "baseline", "epoch_seconds": mean_t,
            "epoch_seconds_std": float(t.std(ddof=1)) if len(t) >= 2 else math.nan,
            "time_ratio": mean_t / base_time if base_time else math.nan,
        }
        if lb != base:
            r, p_adj = tests[lb], adjusted[lb]
            row.update({
                "test": r.test if r.n >= 2 and r.n_base >= 2 else None,  # too few runs: no test ran
                "n_tested": r.n, "diff": r.diff, "diff_ci_low": r.diff_ci[0],
                "diff_ci_high": r.diff_ci[1], "p_value": r.p_value, "p_adjusted": p_adj,
                "significant": bool(p_adj < alpha), "effect_measure": r.effect_measure,
                "effect_size": r.effect_size, "effect_ci_low": r.effect_ci[0], "effect_ci_high": r.effect_ci[1],
                "mde": stats.mde(r, mde_alpha),
                "repeats_needed": stats.repeats_needed(r, effect, mde_alpha) if effect is not None else None,
                "verdict": _verdict(r, len(x), len(values[base]), p_adj, alpha, base, better),
            })
        rows.append(row)
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    return Comparison(metric, base, direction, confidence, table, correction, m, mde_alpha, effect)


def _num(v: float, signed: bool = False) -> str:
    if v is None or math.isnan(v):
        return "n/a"
    return f"{v:+.4f}" if signed else f"{v:.4f}"


def _p(v: float) -> str:
    if math.isnan(v):
        return "n/a"
    return "<0.001" if v < 0.001 else f"{v:.3f}"


def _d(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:+.2f}"


def _short_test(test: str | None) -> str:
    return {stats.PAIRED: "paired", stats.WELCH: "Welch"}.get(test or "", "—")


def format_comparison(c: Comparison, markdown: bool = False) -> str:
    """The comparison as an aligned text table (or a Markdown table) with a legend below."""
    pct = f"{c.confidence:.0%}"
    corr = CORRECTION_NAMES[c.correction]
    head = ["configuration", "n", f"{c.metric} mean ± std", f"{pct} CI", f"Δ vs {c.baseline} [{pct} CI]", "test",
            "p", f"p adj ({corr})", f"effect d [{pct} CI]", "MDE"]
    if c.effect is not None:
        head.append(f"repeats for Δ={c.effect:g}")
    head += ["verdict", "s/epoch (× baseline)"]
    body = []
    for r in c.table.itertuples(index=False):
        is_base = r.config == c.baseline
        delta = "—" if is_base else f"{_num(r.diff, True)} [{_num(r.diff_ci_low, True)}, {_num(r.diff_ci_high, True)}]"
        secs = "n/a" if math.isnan(r.epoch_seconds) else (
            f"{r.epoch_seconds:.2f}" + ("" if math.isnan(r.epoch_seconds_std) else f" ± {r.epoch_seconds_std:.2f}")
            + ("" if math.isnan(r.time_ratio) or is_base else f" (×{r.time_ratio:.2f})"))
        effect = "—" if is_base else (
            "n/a" if math.isnan(r.effect_size) else
            f"{_d(r.effect_size)} [{_d(r.effect_ci_low)}, {_d(r.effect_ci_high)}]")
        row = [r.config, str(r.n), f"{_num(r.mean)} ± {_num(r.std)}", f"[{_num(r.ci_low)}, {_num(r.ci_high)}]",
               delta, _short_test(r.test), "—" if is_base else _p(r.p_value),
               "—" if is_base else _p(r.p_adjusted), effect, "—" if is_base else _num(r.mde)]
        if c.effect is not None:
            need = r.repeats_needed
            row.append("—" if is_base else ("n/a" if need is None or need != need else f"{int(need)}"))
        body += [row + [r.verdict, secs]]
    better = "higher" if c.direction == "maximize" else "lower"
    legend = [
        f"{c.metric}: {better} is better; mean ± sample std over repeats (seeds); CI: Student t interval of the mean.",
        _design_line(c),
        f"p: that test's p-value; p adj: {corr}-adjusted over the {c.comparisons} comparison(s) with "
        f"{c.baseline}. The verdict uses p adj < {1 - c.confidence:.2g}; the Δ and d intervals are per comparison.",
        "effect d: the difference in standard deviations — Cohen's d_z (per-seed differences / their std) "
        f"when paired, Cohen's d (pooled std) when not — with its exact {pct} CI (noncentral t).",
        f"MDE: the smallest true Δ this n detects with {stats.POWER:.0%} power at α = {c.mde_alpha:.3g} "
        f"({1 - c.confidence:.2g} / {max(c.comparisons, 1)} comparisons), given the spread seen so far.",
    ]
    if c.effect is not None:
        legend.append(f"repeats for Δ={c.effect:g}: repeats per configuration that detect a true difference of "
                      f"{c.effect:g} with {stats.POWER:.0%} power at that α; raise search.repeats in the study "
                      "file and run it again to add only the missing ones.")
    legend.append("s/epoch: mean wall-clock seconds per training epoch (validation included), over repeats.")
    if (c.table["n"] < 2).any():
        legend.append("A configuration with n < 2 cannot be tested: raise search.repeats and run the study again.")
    if c.left_out:
        legend.append(f"{c.left_out} trial(s) not COMPLETE (failed, pruned, running) are left out.")
    if markdown:
        align = ["---", "--:", "--:", "--:", "--:", "---", "--:", "--:", "--:", "--:"]
        align += ["--:"] * (c.effect is not None) + ["---", "--:"]
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines) + "\n\n" + "\n".join(f"- {x}" for x in legend) + "\n"
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    left = {0, 5, len(head) - 2}
    fmt = lambda row: "  ".join(v.ljust(w) if i in left else v.rjust(w)  # noqa: E731
                                for i, (v, w) in enumerate(zip(row, widths))).rstrip()
    title = f"study {c.study}: {c.metric} by configuration" if c.study else f"{c.metric} by configuration"
    return "\n".join([title, fmt(head), *(fmt(r) for r in body), "", *legend])


def _design_line(c: Comparison) -> str:
    if c.design == "paired":
        return ("test: paired t-test on per-seed differences — every configuration ran with the same seeds "
                "(seed, seed+1, …), so each repeat is compared with the baseline's run of that seed.")
    if c.design == "none":
        return "test: none — a test needs at least 2 runs of a configuration and of the baseline."
    if c.design == "unpaired":
        return ("test: Welch's t-test — the runs share no seeds with the baseline's (a sampled search draws "
                "a fresh seed per trial), so they are compared as independent samples.")
    return ("test: paired t-test where a configuration shares at least two seeds with the baseline "
            "(compared seed by seed), Welch's t-test where it does not.")


# the trial attributes `trial_samples` reads (sweep/peek.py reads only these)
SAMPLE_ATTRS = ("config_index", "seed", "mean_epoch_seconds", "test_accuracy", "test_loss")


def trial_samples(study: optuna.Study, metric: str) -> tuple[pd.DataFrame, int, str]:
    """The complete trials of a sweep study as samples: (frame, trials left out, direction).

    `metric` is a recorded test metric (`test_accuracy`, `test_loss`) or the study's own metric.
    """
    from sweep.record import stored_config

    return samples(study.get_trials(deepcopy=False), stored_config(study), study.study_name, metric)


def samples(every: list[Any], cfg: StudyConfig, name: str, metric: str) -> tuple[pd.DataFrame, int, str]:
    """`trial_samples` of `every` trial of the study `name`: Optuna's, or `sweep.peek.Brief`s."""
    import pandas as pd

    from sweep.record import CONFIG_INDEX, state_name

    done = [t for t in every if state_name(t) == "COMPLETE"]
    done.sort(key=lambda t: (t.user_attrs.get(CONFIG_INDEX, math.inf), t.number))

    objectives = cfg.search.metrics  # one metric, or several (a multi-objective study)

    def value(t: Any) -> Any:
        if metric in t.user_attrs:
            return t.user_attrs[metric]
        return t.values[objectives.index(metric)] if metric in objectives and t.values else None

    missing = [t.number for t in done if value(t) is None]
    if missing:
        known = sorted({"test_accuracy", "test_loss", *objectives})
        raise SweepError(f"study {name!r}: trial(s) {missing[:5]} have no {metric!r}; "
                         f"pass --metric with one of: {', '.join(known)}")
    labels = config_labels([resolve_params(t.params) for t in done])
    frame = pd.DataFrame({
        "config": labels,
        "value": [float(value(t)) for t in done],
        "epoch_seconds": [float(t.user_attrs.get("mean_epoch_seconds", math.nan)) for t in done],
        "trial": [t.number for t in done],
        "seed": [t.user_attrs.get("seed") for t in done],
    })
    return frame, len(every) - len(done), direction_of(metric)


def compare_study(study: optuna.Study, metric: str = "test_accuracy", baseline: str | None = None,
                  confidence: float = 0.95, correction: str = "holm", effect: float | None = None) -> Comparison:
    """`compare` on an already loaded study."""
    return _compared(trial_samples(study, metric), study.study_name, metric, baseline, confidence, correction,
                     effect)


def _compared(sampled: tuple[pd.DataFrame, int, str], name: str, metric: str, baseline: str | None,
              confidence: float, correction: str, effect: float | None) -> Comparison:
    frame, left_out, direction = sampled
    if frame.empty:
        raise SweepError(f"study {name!r} has no complete trial yet; run `sweep run` first")
    c = compare_samples(frame, baseline, metric, direction, confidence, correction, effect)
    return dataclasses.replace(c, study=name, left_out=left_out)


def _winner(study: str, stores: Stores) -> str | None:
    """The label of a repeated study's configuration with the best mean of its own metric."""
    from sweep import ranking
    from sweep.record import load_study, stored_config

    s = load_study(study, stores)
    best = ranking.best_configuration(s.get_trials(deepcopy=False), stored_config(s).search.direction)
    return best.label if best is not None else None


def compare(study: str, storage: str | Stores | None = None, metric: str = "test_accuracy", baseline: str | None = None,
            confidence: float = 0.95, correction: str = "holm", effect: float | None = None) -> Comparison:
    """Per configuration: n, mean ± std and CI of `metric`; against `baseline`: the difference with
    its CI, the test that fits the design (paired by seed, else Welch), p raw and adjusted
    (`correction`: holm | bh), an effect size with its CI, the minimum detectable difference and,
    with `effect`, the repeats that difference needs.

    Groups the study's complete trials by configuration (its repeats differ only in seed). The
    baseline defaults to `relu` (else the first configuration).
    `format_comparison(result)` renders it; `result.table` is a DataFrame, `result.to_dict()` JSON.
    """
    from sweep import peek
    from sweep.record import load_study, parse_stored
    from sweep.runner.confirm import confirmation_of
    from sweep.storage import resolve

    stores = resolve(storage)  # once: the confirmation, the trials and the study
    confirmed = confirmation_of(study, stores)
    if confirmed is not None:
        # a search whose finalists were trained again on fresh seeds (sweep confirm): those runs, paired
        # by seed, answer; against the confirmed winner unless a baseline is named
        try:
            c = compare(confirmed, stores, metric, baseline or _winner(confirmed, stores), confidence, correction,
                        effect)
            return dataclasses.replace(c, study=f"{confirmed} (the confirmation of {study})")
        except SweepError as e:
            if "no complete trial" not in str(e):
                raise
    # the trials' few columns compare reads, straight from Optuna's tables where it can (peek.py)
    read = peek.trials(stores.optuna, study, (*SAMPLE_ATTRS, metric))
    if read is not None and read[1] is not None:
        cfg = parse_stored(read[1], study)
        return _compared(samples(read[0], cfg, study, metric), study, metric, baseline, confidence, correction,
                         effect)
    return compare_study(load_study(study, stores), metric, baseline, confidence, correction, effect)
