"""Is the difference real? Per-configuration statistics over repeats, against a baseline.

`compare_samples` is pure (a table of samples in, a `Comparison` out) and uses SciPy for every
statistic: Student t intervals for the means, Welch's t-test (`scipy.stats.ttest_ind` with
`equal_var=False`) and its confidence interval for the differences. `compare` feeds it a
study's complete trials; `format_comparison` renders the table. No TensorFlow here.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from sweep.activations import PARAM_DEFAULTS, resolve_params
from sweep.config import direction_of
from sweep.errors import SweepError

if TYPE_CHECKING:
    import optuna
    import pandas as pd

TEST = "Welch's t-test (scipy.stats.ttest_ind, equal_var=False), two-sided"
COLUMNS = ("config", "n", "mean", "std", "ci_low", "ci_high", "diff", "diff_ci_low", "diff_ci_high",
           "p_value", "significant", "verdict", "epoch_seconds", "epoch_seconds_std", "time_ratio")


@dataclass(frozen=True)
class Comparison:
    """One row per configuration (columns `COLUMNS`), in the study's order; the baseline's diff is 0."""

    metric: str
    baseline: str
    direction: str
    confidence: float
    table: pd.DataFrame
    study: str = ""
    left_out: int = 0
    test: str = TEST

    def to_dict(self) -> dict[str, Any]:
        rows = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
                for r in self.table.to_dict(orient="records")]
        return {"study": self.study, "metric": self.metric, "baseline": self.baseline,
                "direction": self.direction, "confidence": self.confidence, "test": self.test,
                "left_out": self.left_out, "rows": rows}


def _short(param: str) -> str:
    return param.split("_", 1)[1] if param.startswith(("leaky_", "prelu_")) else param


def _fmt_value(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def config_labels(configs: list[dict[str, Any]]) -> list[str]:
    """A short label per resolved config: `relu`, `leaky_relu(alpha=0.1)`, `prelu(alpha_init=zeros)`.

    A parameter is shown when it differs from Keras' default or varies between configs of the
    same activation, so labels stay short but never ambiguous.
    """
    varies: set[tuple[str, str]] = set()
    for c in configs:
        for p, v in c.items():
            if p != "activation" and any(o["activation"] == c["activation"] and o.get(p) != v for o in configs):
                varies.add((c["activation"], p))
    out = []
    for c in configs:
        shown = [f"{_short(p)}={_fmt_value(v)}" for p, v in c.items()
                 if p != "activation" and (v != PARAM_DEFAULTS.get(p) or (c["activation"], p) in varies)]
        out.append(f"{c['activation']}({', '.join(shown)})" if shown else c["activation"])
    return out


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


def _mean_ci(x: np.ndarray, confidence: float) -> tuple[float, float]:
    from scipy import stats

    if len(x) < 2:
        return math.nan, math.nan
    sem = stats.sem(x)
    if sem == 0:  # every repeat gave the same value; scipy's interval is NaN for a zero scale
        return float(x.mean()), float(x.mean())
    lo, hi = stats.t.interval(confidence, len(x) - 1, loc=x.mean(), scale=sem)
    return float(lo), float(hi)


def _verdict(n: int, nb: int, diff: float, p: float, alpha: float, baseline: str, better: str) -> str:
    at = f"n={n}" if n == nb else f"n={n} vs {nb}"
    if n < 2 or nb < 2:
        return f"too few runs to test at {at}"
    if math.isnan(p):
        return "identical in every run" if diff == 0 else f"no spread in either group at {at}; cannot test"
    if p < alpha:
        way = "higher" if diff > 0 else "lower"
        return f"{way} than {baseline} ({'better' if way == better else 'worse'}) at {at}"
    return f"no detectable difference at {at}"


def compare_samples(
    samples: pd.DataFrame,
    baseline: str | None,
    metric: str = "value",
    direction: str = "maximize",
    confidence: float = 0.95,
) -> Comparison:
    """Statistics per configuration from `samples` (columns `config`, `value`, optional `epoch_seconds`).

    `baseline` is a config label, or an activation name that matches exactly one label; None:
    `relu` if the study has it, else the first configuration.
    Configurations keep their order of first appearance.
    """
    import pandas as pd
    from scipy import stats

    if not 0 < confidence < 1:
        raise SweepError(f"confidence must be between 0 and 1, got {confidence}")
    if samples.empty:
        raise SweepError(f"no complete trial has a {metric!r} value to compare")
    labels = list(dict.fromkeys(samples["config"]))
    base = _pick_baseline(labels, baseline)
    values = {lb: samples.loc[samples["config"] == lb, "value"].to_numpy(dtype=float) for lb in labels}
    seconds = {lb: (samples.loc[samples["config"] == lb, "epoch_seconds"].dropna().to_numpy(dtype=float)
                    if "epoch_seconds" in samples else np.array([])) for lb in labels}
    b = values[base]
    base_time = float(seconds[base].mean()) if len(seconds[base]) else math.nan
    better = "higher" if direction == "maximize" else "lower"
    rows = []
    for lb in labels:
        x = values[lb]
        lo, hi = _mean_ci(x, confidence)
        diff, dlo, dhi, p = float(x.mean() - b.mean()), math.nan, math.nan, math.nan
        if lb == base:
            verdict = "baseline"
        else:
            if len(x) >= 2 and len(b) >= 2:
                with warnings.catch_warnings():  # near-identical samples: precision note, NaN p
                    warnings.simplefilter("ignore", RuntimeWarning)
                    res = stats.ttest_ind(x, b, equal_var=False)
                    ci = res.confidence_interval(confidence_level=confidence)
                p, dlo, dhi = float(res.pvalue), float(ci.low), float(ci.high)
            verdict = _verdict(len(x), len(b), diff, p, 1 - confidence, base, better)
        t = seconds[lb]
        mean_t = float(t.mean()) if len(t) else math.nan
        rows.append({
            "config": lb, "n": len(x), "mean": float(x.mean()),
            "std": float(x.std(ddof=1)) if len(x) >= 2 else math.nan,
            "ci_low": lo, "ci_high": hi, "diff": diff, "diff_ci_low": dlo, "diff_ci_high": dhi,
            "p_value": p, "significant": bool(p < 1 - confidence) if not math.isnan(p) else False,
            "verdict": verdict, "epoch_seconds": mean_t,
            "epoch_seconds_std": float(t.std(ddof=1)) if len(t) >= 2 else math.nan,
            "time_ratio": mean_t / base_time if base_time else math.nan,
        })
    return Comparison(metric, base, direction, confidence, pd.DataFrame(rows, columns=list(COLUMNS)))


def _num(v: float, signed: bool = False) -> str:
    if math.isnan(v):
        return "n/a"
    return f"{v:+.4f}" if signed else f"{v:.4f}"


def _p(v: float) -> str:
    if math.isnan(v):
        return "n/a"
    return "<0.001" if v < 0.001 else f"{v:.3f}"


def format_comparison(c: Comparison, markdown: bool = False) -> str:
    """The comparison as an aligned text table (or a Markdown table) with a legend below."""
    pct = f"{c.confidence:.0%}"
    head = ["configuration", "n", f"{c.metric} mean ± std", f"{pct} CI", f"Δ vs {c.baseline} [{pct} CI]",
            "p (Welch)", "verdict", "s/epoch (× baseline)"]
    body = []
    for r in c.table.itertuples(index=False):
        delta = "—" if r.config == c.baseline else (
            f"{_num(r.diff, True)} [{_num(r.diff_ci_low, True)}, {_num(r.diff_ci_high, True)}]")
        secs = "n/a" if math.isnan(r.epoch_seconds) else (
            f"{r.epoch_seconds:.2f}" + ("" if math.isnan(r.epoch_seconds_std) else f" ± {r.epoch_seconds_std:.2f}")
            + ("" if math.isnan(r.time_ratio) or r.config == c.baseline else f" (×{r.time_ratio:.2f})"))
        body.append([r.config, str(r.n), f"{_num(r.mean)} ± {_num(r.std)}",
                     f"[{_num(r.ci_low)}, {_num(r.ci_high)}]", delta,
                     "—" if r.config == c.baseline else _p(r.p_value), r.verdict, secs])
    better = "higher" if c.direction == "maximize" else "lower"
    legend = [
        f"{c.metric}: {better} is better; mean ± sample std over repeats (seeds); CI: Student t interval of the mean.",
        f"Δ: difference of means vs {c.baseline}, with its {pct} CI and p-value from {c.test}; "
        "p-values are not corrected for multiple comparisons.",
        "s/epoch: mean wall-clock seconds per training epoch (validation included), over repeats.",
    ]
    if (c.table["n"] < 2).any():
        legend.append("A configuration with n < 2 cannot be tested: raise search.repeats and resume the study.")
    if c.left_out:
        legend.append(f"{c.left_out} trial(s) not COMPLETE (failed, pruned, running) are left out.")
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["--:"] * 5 + ["---", "--:"]) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines) + "\n\n" + "\n".join(f"- {x}" for x in legend) + "\n"
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    left = {0, 6}
    fmt = lambda row: "  ".join(v.ljust(w) if i in left else v.rjust(w)  # noqa: E731
                                for i, (v, w) in enumerate(zip(row, widths))).rstrip()
    title = f"study {c.study}: {c.metric} by configuration" if c.study else f"{c.metric} by configuration"
    return "\n".join([title, fmt(head), *(fmt(r) for r in body), "", *legend])


def trial_samples(study: optuna.Study, metric: str) -> tuple[pd.DataFrame, int, str]:
    """The complete trials of a sweep study as samples: (frame, trials left out, direction).

    `metric` is a recorded test metric (`test_accuracy`, `test_loss`) or the study's own metric.
    """
    import pandas as pd
    from optuna.trial import TrialState

    from sweep.record import CONFIG_INDEX
    from sweep.record import stored_config

    cfg = stored_config(study)
    every = study.get_trials(deepcopy=False)
    done = [t for t in every if t.state == TrialState.COMPLETE]
    done.sort(key=lambda t: (t.user_attrs.get(CONFIG_INDEX, math.inf), t.number))

    def value(t: optuna.trial.FrozenTrial) -> Any:
        if metric in t.user_attrs:
            return t.user_attrs[metric]
        return t.value if metric == cfg.search.metric else None

    missing = [t.number for t in done if value(t) is None]
    if missing:
        known = sorted({"test_accuracy", "test_loss", cfg.search.metric})
        raise SweepError(f"study {study.study_name!r}: trial(s) {missing[:5]} have no {metric!r}; "
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
                  confidence: float = 0.95) -> Comparison:
    """`compare` on an already loaded study."""
    frame, left_out, direction = trial_samples(study, metric)
    if frame.empty:
        raise SweepError(f"study {study.study_name!r} has no complete trial yet; run `sweep run` first")
    c = compare_samples(frame, baseline, metric, direction, confidence)
    return dataclasses.replace(c, study=study.study_name, left_out=left_out)


def compare(study: str, storage: str | None = None, metric: str = "test_accuracy", baseline: str | None = None,
            confidence: float = 0.95) -> Comparison:
    """Per configuration: n, mean ± std and CI of `metric`; difference vs `baseline` with CI, p, verdict.

    Groups the study's complete trials by configuration (its repeats differ only in seed). The
    baseline defaults to `relu` (else the first configuration).
    `format_comparison(result)` renders it; `result.table` is a DataFrame.
    """
    from sweep.record import load_study

    return compare_study(load_study(study, storage), metric, baseline, confidence)
