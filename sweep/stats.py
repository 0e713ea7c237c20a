"""The statistics behind `sweep compare`, as pure functions of arrays: no study, no table.

Two designs, one test each (SciPy does every test and distribution; this module chooses and
combines them):
- seed-paired repeats (every configuration of an explicit plan is trained with seeds
  seed, seed+1, ...): the paired t-test on per-seed differences, `scipy.stats.ttest_rel`;
  effect size Cohen's d_z (mean difference / std of the differences);
- unpaired samples (sampled searches draw a fresh seed per trial): Welch's t-test,
  `scipy.stats.ttest_ind(equal_var=False)`; effect size Cohen's d (difference / pooled std).
Effect-size intervals invert the noncentral t distribution (`scipy.stats.nct`), the exact method
for a standardized mean difference under normality. Power, the minimum detectable difference and
the repeats a named difference needs come from the same noncentral t (two-sided test).
Multiple comparisons: Holm's step-down, written here because SciPy has no Holm (its
`false_discovery_control` is Benjamini-Hochberg, offered as the alternative).
Beside the difference: the probability of improvement, P(X > Y) over every pair of runs with
ties counted half, as rliable reports it (Agarwal et al. 2021: the Mann-Whitney U statistic over
n·m), with a percentile bootstrap interval (`scipy.stats.bootstrap`; seeds resampled together
when the runs are paired).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

PAIRED = "paired t-test (scipy.stats.ttest_rel), two-sided"
WELCH = "Welch's t-test (scipy.stats.ttest_ind, equal_var=False), two-sided"
D_Z = "Cohen's d_z: mean of the per-seed differences / their std"
D_POOLED = "Cohen's d: difference of means / pooled std"
CORRECTIONS = ("holm", "bh")
CORRECTION_NAMES = {"holm": "Holm", "bh": "Benjamini-Hochberg"}
POWER = 0.8
MAX_REPEATS = 100_000  # repeats_needed stops looking here (a difference that small is noise)


@dataclass(frozen=True)
class TestResult:
    """One configuration against the baseline. `n` is the number of pairs (paired) or the size of
    this configuration's sample (Welch, baseline size `n_base`). NaN where it cannot be computed."""

    test: str
    n: int
    n_base: int
    diff: float
    diff_ci: tuple[float, float]
    p_value: float
    effect_measure: str
    effect_size: float
    effect_ci: tuple[float, float]
    sd: tuple[float, ...]  # std of the differences (paired), or of (this, baseline) (Welch)


NAN2 = (math.nan, math.nan)


def mean_ci(x: np.ndarray, confidence: float) -> tuple[float, float]:
    """Student t interval of the mean; NaN below two values, a point when they are all equal."""
    from scipy import stats

    x = np.asarray(x, float)
    if len(x) < 2:
        return NAN2
    sem = stats.sem(x)
    if sem == 0:  # every repeat gave the same value; scipy's interval is NaN for a zero scale
        return float(x.mean()), float(x.mean())
    lo, hi = stats.t.interval(confidence, len(x) - 1, loc=x.mean(), scale=sem)
    return float(lo), float(hi)


def pair_by_seed(x: dict[int, float], base: dict[int, float]) -> tuple[np.ndarray, np.ndarray]:
    """The values of the seeds both samples have, in seed order (this, baseline)."""
    common = sorted(set(x) & set(base))
    return np.array([x[s] for s in common], float), np.array([base[s] for s in common], float)


def paired_test(x: np.ndarray, base: np.ndarray, confidence: float) -> TestResult:
    """`x[i]` and `base[i]` were trained with the same seed."""
    from scipy import stats

    d = x - base
    n = len(d)
    sd = float(d.std(ddof=1)) if n >= 2 else math.nan
    diff, ci, p = float(d.mean()) if n else math.nan, NAN2, math.nan
    if n >= 2 and sd > 0:
        res = stats.ttest_rel(x, base)
        c = res.confidence_interval(confidence_level=confidence)
        ci, p = (float(c.low), float(c.high)), float(res.pvalue)
    eff, eff_ci = math.nan, NAN2
    if n >= 2 and sd > 0:
        eff = diff / sd
        eff_ci = _d_interval(eff * math.sqrt(n), n - 1, math.sqrt(n), confidence)
    return TestResult(PAIRED, n, n, diff, ci, p, D_Z, eff, eff_ci, (sd,))


def compare_runs(x: dict[int, float] | None, base: dict[int, float] | None, x_values: np.ndarray,
                 base_values: np.ndarray, confidence: float) -> TestResult:
    """The test that fits the design: paired by seed when both samples give each seed once and share
    at least two (explicit plans run every configuration with seeds seed, seed+1, ...); Welch's
    otherwise (sampled searches). `x`, `base`: value by seed, or None when seeds are missing or
    repeated."""
    if x is not None and base is not None and len(set(x) & set(base)) >= 2:
        return paired_test(*pair_by_seed(x, base), confidence)
    return welch_test(x_values, base_values, confidence)


def _superiority(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """P(X > Y) + P(X = Y) / 2 over every pair (x_i, y_j), along `axis` (batched for the bootstrap)."""
    x = np.moveaxis(np.asarray(x, float), axis, -1)[..., :, None]
    y = np.moveaxis(np.asarray(y, float), axis, -1)[..., None, :]
    return ((x > y) + 0.5 * (x == y)).mean(axis=(-2, -1))


def prob_improvement(x: np.ndarray, y: np.ndarray, confidence: float, paired: bool = False,
                     resamples: int = 2000) -> tuple[float, tuple[float, float]]:
    """P(a run of X beats a run of Y): the share of the n·m pairs of runs in which X is higher, a tie
    counting half (rliable's `probability_of_improvement`), with its percentile bootstrap interval.
    `paired`: x[i] and y[i] share a seed, and a resample keeps the pairs together. The bootstrap is
    seeded, so the same runs give the same interval. NaN below two runs on either side."""
    from scipy import stats

    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) == 0 or len(y) == 0:
        return math.nan, NAN2
    p = float(_superiority(x, y))
    if len(x) < 2 or len(y) < 2:
        return p, NAN2
    with warnings.catch_warnings():  # every resample equal (one side always higher): a point interval
        warnings.simplefilter("ignore")
        res = stats.bootstrap((x, y), _superiority, paired=paired, vectorized=True, n_resamples=resamples,
                              confidence_level=confidence, method="percentile", rng=np.random.default_rng(0))
    ci = res.confidence_interval
    return p, (float(ci.low), float(ci.high))


def welch_test(x: np.ndarray, base: np.ndarray, confidence: float) -> TestResult:
    """Independent samples: Welch's test for the difference; Cohen's d (pooled std) for its size."""
    from scipy import stats

    n1, n2 = len(x), len(base)
    s1 = float(x.std(ddof=1)) if n1 >= 2 else math.nan
    s2 = float(base.std(ddof=1)) if n2 >= 2 else math.nan
    diff = float(x.mean() - base.mean())
    ci, p, eff, eff_ci = NAN2, math.nan, math.nan, NAN2
    if n1 >= 2 and n2 >= 2 and (s1 > 0 or s2 > 0):
        with warnings.catch_warnings():  # near-identical samples: a precision note, not an error
            warnings.simplefilter("ignore", RuntimeWarning)
            res = stats.ttest_ind(x, base, equal_var=False)
            c = res.confidence_interval(confidence_level=confidence)
        ci, p = (float(c.low), float(c.high)), float(res.pvalue)
        pooled = math.sqrt(((n1 - 1) * s1**2 + (n2 - 1) * s2**2) / (n1 + n2 - 2))
        eff = diff / pooled
        scale = math.sqrt(n1 * n2 / (n1 + n2))  # t = d * scale for the pooled-variance t
        eff_ci = _d_interval(eff * scale, n1 + n2 - 2, scale, confidence)
    return TestResult(WELCH, n1, n2, diff, ci, p, D_POOLED, eff, eff_ci, (s1, s2))


def nct_cdf(x: float, df: float, nc: float) -> float:
    """`scipy.stats.nct.cdf`, which returns NaN far in a tail (e.g. x=-7.6, df=2, nc=15.5 in
    SciPy 1.17); there the defining integral is evaluated instead:
    P(T <= x) = E over V ~ chi2(df) of Phi(x * sqrt(V / df) - nc)."""
    from scipy import integrate, stats

    v = float(stats.nct.cdf(x, df, nc))
    if not math.isnan(v):
        return v
    f = lambda u: stats.chi2.pdf(u, df) * stats.norm.cdf(x * math.sqrt(u / df) - nc)  # noqa: E731
    return float(integrate.quad(f, 0, math.inf, limit=200)[0])


def _d_interval(t_obs: float, df: int, scale: float, confidence: float) -> tuple[float, float]:
    """CI of a standardized difference d = t / scale: the noncentralities under which the observed
    t sits at the upper and lower (1 - confidence)/2 tails of the noncentral t."""
    from scipy import optimize

    tail = (1 - confidence) / 2

    def solve(q: float) -> float:
        f = lambda nc: nct_cdf(t_obs, df, nc) - q  # noqa: E731 - decreasing in nc
        lo, hi, step = t_obs - 1.0, t_obs + 1.0, 2.0
        while f(lo) < 0:
            lo, step = lo - step, step * 2
        while f(hi) > 0:
            hi, step = hi + step, step * 2
        return float(optimize.brentq(f, lo, hi, xtol=1e-10))

    try:
        return solve(1 - tail) / scale, solve(tail) / scale
    except (ValueError, RuntimeError, OverflowError):  # a t so extreme nct cannot place it
        return NAN2


def adjust(p: list[float], method: str = "holm") -> list[float]:
    """Adjusted p-values for a family of comparisons; NaN entries (untestable) are not counted."""
    from scipy import stats

    if method not in CORRECTIONS:
        raise ValueError(f"unknown correction {method!r}; expected one of {', '.join(CORRECTIONS)}")
    idx = [i for i, v in enumerate(p) if not math.isnan(v)]
    out = [math.nan] * len(p)
    if not idx:
        return out
    vals = np.array([p[i] for i in idx])
    if method == "bh":
        adj = stats.false_discovery_control(vals, method="bh")
    else:  # Holm: the k-th smallest p times (m - k), made monotone, capped at 1
        m = len(vals)
        order = np.argsort(vals, kind="stable")
        steps = np.maximum.accumulate(vals[order] * (m - np.arange(m)))
        adj = np.empty(m)
        adj[order] = np.minimum(steps, 1.0)
    for i, v in zip(idx, adj):
        out[i] = float(v)
    return out


def _se_df(r: TestResult, n: int | None = None) -> tuple[float, float]:
    """Standard error of the difference and its degrees of freedom, at the sample sizes of `r`
    or, with `n`, at n repeats per configuration (n pairs)."""
    if r.test == PAIRED:
        k = n if n is not None else r.n
        return r.sd[0] / math.sqrt(k), k - 1
    s1, s2 = r.sd
    n1, n2 = (n, n) if n is not None else (r.n, r.n_base)
    v1, v2 = s1**2 / n1, s2**2 / n2
    df = (v1 + v2) ** 2 / (v1**2 / (n1 - 1) + v2**2 / (n2 - 1))  # Welch-Satterthwaite
    return math.sqrt(v1 + v2), df


def power(nc: float, df: float, alpha: float) -> float:
    """Power of a two-sided t-test at level `alpha` when the true t has noncentrality `nc`."""
    from scipy import stats

    crit = stats.t.ppf(1 - alpha / 2, df)
    return (1 - nct_cdf(crit, df, nc)) + nct_cdf(-crit, df, nc)


def _usable(r: TestResult) -> bool:
    return r.n >= 2 and r.n_base >= 2 and all(not math.isnan(s) for s in r.sd) and max(r.sd) > 0


def mde(r: TestResult, alpha: float, target: float = POWER) -> float:
    """The smallest true difference this test detects with probability `target` at its n."""
    from scipy import optimize

    if not _usable(r):
        return math.nan
    se, df = _se_df(r)
    hi = 1.0
    while power(hi, df, alpha) < target:  # power grows with the noncentrality
        hi *= 2
    nc = optimize.brentq(lambda c: power(c, df, alpha) - target, 0.0, hi, xtol=1e-10)
    return float(nc * se)


def repeats_needed(r: TestResult, effect: float, alpha: float, target: float = POWER) -> int | None:
    """Repeats per configuration (pairs, for a paired design) that detect a true difference of
    `effect` with probability `target`, assuming the spread seen so far. None: no spread seen,
    or more than MAX_REPEATS."""
    if not _usable(r) or effect == 0:
        return None

    def enough(n: int) -> bool:
        se, df = _se_df(r, n)
        return power(abs(effect) / se, df, alpha) >= target

    hi = 2
    while not enough(hi):
        if hi >= MAX_REPEATS:
            return None
        hi = min(hi * 2, MAX_REPEATS)
    lo = max(2, hi // 2)
    while lo < hi:  # the smallest n that is enough; power grows with n
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if enough(mid) else (mid + 1, hi)
    return lo
