"""What "best" means in a study: a configuration judged over its seeds wherever it was repeated, the
single best trial only where every configuration ran once.

In a study that repeats each configuration over seeds, the single best trial is mostly the luckiest
seed: in the README's 5-seed MNIST comparison no two configurations' means differ by more than
0.0002 while one configuration's seeds spread 0.0030. So where repeats exist (`search.configs` or
the grid with `search.repeats` > 1) the best is the configuration with the best mean over its
complete repeats. `judge` compares it with every other configuration by the test that fits the
design (`sweep.stats`: paired by seed), Holm-adjusted, with the probability of improvement, and
says whether it is distinguishable. Its model is a representative repeat's, the one closest to its
mean, not its luckiest one. `sweep best`, `sweep.best_config`, the parent run's summary,
`models:/STUDY@best` and `tracking.keep_models` all take their answer from here.

Trials are Optuna's `FrozenTrial`s or `sweep.peek.Brief`s (the same attribute names); nothing here
reads a store.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

from sweep.models.activations import PARAM_DEFAULTS, resolve_params
from sweep.record import CONFIG_INDEX, SEED, state_name

if TYPE_CHECKING:
    from sweep.config import SearchConfig

REPRESENTATIVE = "the repeat closest to the configuration's mean (ties: the earlier trial)"


def repeated(search: SearchConfig) -> bool:
    """Whether `sweep best` judges configurations over their seeds: a study of one metric whose
    configurations are each run several times (a sampled search never repeats: its config refuses
    `repeats`)."""
    return search.repeats > 1 and len(search.metrics) == 1


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


@dataclass(frozen=True)
class Configuration:
    """One configuration's complete repeats, in trial order."""

    label: str
    params: dict[str, Any]
    trials: tuple[int, ...]
    seeds: tuple[Any, ...]
    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return math.fsum(self.values) / self.n

    @property
    def std(self) -> float:
        if self.n < 2:
            return math.nan
        m = self.mean
        return math.sqrt(math.fsum((v - m) ** 2 for v in self.values) / (self.n - 1))

    @property
    def representative(self) -> int:
        """The trial number of the repeat closest to the mean (ties: the earlier trial): its model
        stands for the configuration, rather than its luckiest seed's."""
        m = self.mean
        return min(zip(self.trials, self.values), key=lambda tv: (abs(tv[1] - m), tv[0]))[0]

    def by_seed(self) -> dict[int, float] | None:
        """Value by seed; None when a seed is missing or repeated (nothing can be paired then)."""
        if any(s is None for s in self.seeds) or len(set(self.seeds)) < len(self.seeds):
            return None
        return {int(s): v for s, v in zip(self.seeds, self.values)}


def configurations(trials: Iterable[Any], objective: int = 0) -> list[Configuration]:
    """The complete trials grouped by configuration (their resolved params), in the plan's order."""
    done = [t for t in trials if state_name(t) == "COMPLETE" and t.values]
    done.sort(key=lambda t: (t.user_attrs.get(CONFIG_INDEX, math.inf), t.number))
    resolved = [resolve_params(t.params) for t in done]
    groups: dict[str, tuple[dict[str, Any], list[Any]]] = {}
    for t, label, params in zip(done, config_labels(resolved), resolved):
        groups.setdefault(label, (params, []))[1].append(t)
    return [Configuration(label, params, tuple(t.number for t in ts), tuple(t.user_attrs.get(SEED) for t in ts),
                          tuple(float(t.values[objective]) for t in ts))
            for label, (params, ts) in groups.items()]


def ranked(configs: list[Configuration], direction: str) -> list[Configuration]:
    """Best mean first; equal means keep the plan's order."""
    sign = -1.0 if direction == "maximize" else 1.0
    return sorted(configs, key=lambda c: sign * c.mean)


def kept_models(trials: list[Any], direction: str, repeats: int, keep: int) -> set[int]:
    """`tracking.keep_models` in a repeated study: the numbers of the trials whose model stays.

    A configuration is settled once it has all its repeats, or when nothing is left to run. Until
    then its mean, rank and representative may still change, so every model of it stays. Of the
    settled ones, the `keep` best by mean keep their representative's model. A settled
    configuration's values never change and new ones only push it down, so a model deleted here is
    never wanted back (unless `search.repeats` is raised later: see the README)."""
    pending = any(state_name(t) in ("WAITING", "RUNNING") for t in trials)
    configs = configurations(trials)
    settled = [c for c in configs if c.n >= repeats or not pending]
    stay = {n for c in configs if c not in settled for n in c.trials}
    return stay | {c.representative for c in ranked(settled, direction)[:keep]}


def best_configuration(trials: Iterable[Any], direction: str) -> Configuration | None:
    """The configuration with the best mean over its complete repeats (None: nothing complete)."""
    configs = ranked(configurations(trials), direction)
    return configs[0] if configs else None


@dataclass(frozen=True)
class Versus:
    """The best configuration against one other: `diff` is best − other in the metric's units."""

    label: str
    n: int
    mean: float
    at: str  # the sample sizes the test saw: "n=4", "3 seed pairs", "n=4 vs 3"
    test: str | None  # None: too few runs, or no spread, to test
    diff: float
    diff_ci: tuple[float, float]
    p_value: float
    p_adjusted: float
    distinguishable: bool  # p_adjusted < 1 - confidence, the best one better
    prob_improvement: float  # P(a run of the best beats a run of this one), ties half
    prob_ci: tuple[float, float]
    effect_size: float
    effect_ci: tuple[float, float]


@dataclass(frozen=True)
class Judgement:
    """A repeated study's best configuration and how it stands against each other configuration."""

    metric: str
    direction: str
    confidence: float
    correction: str
    ranked: tuple[Configuration, ...]
    versus: tuple[Versus, ...] = field(default_factory=tuple)  # the others, best mean first

    @property
    def best(self) -> Configuration:
        return self.ranked[0]

    @property
    def runner_up(self) -> Versus | None:
        return self.versus[0] if self.versus else None

    @property
    def tied_with(self) -> list[str]:
        return [v.label for v in self.versus if not v.distinguishable]

    @property
    def better_than(self) -> list[str]:
        return [v.label for v in self.versus if v.distinguishable]

    @property
    def verdict(self) -> str:
        if not self.versus:
            return "the only configuration with a complete run"
        sizes = {v.at for v in self.versus}
        at = f" at {sizes.pop()}" if len(sizes) == 1 else ""
        untested = [v.label for v in self.versus if v.test is None]
        if not self.tied_with:
            return f"better than {', '.join(self.better_than)}{at}"
        out = f"not distinguishable from {', '.join(self.tied_with)}{at}"
        if untested:
            out += f" (too few runs to test {', '.join(untested)})"
        if self.better_than:
            out += f"; better than {', '.join(self.better_than)}"
        return out

    def to_dict(self) -> dict[str, Any]:
        def num(v: float) -> float | None:
            return None if v is None or math.isnan(v) else float(v)

        def pair(p: tuple[float, float]) -> list[float] | None:
            return None if any(math.isnan(x) for x in p) else [float(p[0]), float(p[1])]

        return {
            "metric": self.metric, "direction": self.direction, "confidence": self.confidence,
            "correction": self.correction, "verdict": self.verdict, "distinguishable": not self.tied_with,
            "tied_with": self.tied_with, "better_than": self.better_than,
            "configurations": [{"config": c.label, "params": c.params, "n": c.n, "mean": c.mean, "std": num(c.std),
                                "trials": list(c.trials), "seeds": list(c.seeds), "values": list(c.values),
                                "representative_trial": c.representative} for c in self.ranked],
            "versus": [{"config": v.label, "n": v.n, "mean": v.mean, "test": v.test, "diff": num(v.diff),
                        "diff_ci": pair(v.diff_ci), "p_value": num(v.p_value), "p_adjusted": num(v.p_adjusted),
                        "distinguishable": v.distinguishable, "prob_improvement": num(v.prob_improvement),
                        "prob_ci": pair(v.prob_ci), "effect_size": num(v.effect_size),
                        "effect_ci": pair(v.effect_ci)} for v in self.versus],
        }


def judge(configs: list[Configuration], metric: str, direction: str, confidence: float = 0.95,
          correction: str = "holm") -> Judgement:
    """The configuration with the best mean, tested against every other one: the test that fits the
    design (paired by seed where they share seeds, else Welch), p adjusted over the comparisons
    (`correction`: holm | bh), and the probability that a run of it beats a run of the other."""
    import numpy as np

    from sweep import stats

    order = ranked(configs, direction)
    if not order:
        raise ValueError("no configuration has a complete run")
    best, others = order[0], order[1:]
    alpha = 1 - confidence
    sign = 1.0 if direction == "maximize" else -1.0
    tests = [stats.compare_runs(best.by_seed(), o.by_seed(), np.array(best.values), np.array(o.values), confidence)
             for o in others]
    adjusted = stats.adjust([r.p_value for r in tests], correction)
    versus = []
    for o, r, p_adj in zip(others, tests, adjusted):
        paired = r.test == stats.PAIRED
        x, y = (stats.pair_by_seed(best.by_seed(), o.by_seed()) if paired  # type: ignore[arg-type]
                else (np.array(best.values), np.array(o.values)))
        prob, prob_ci = stats.prob_improvement(sign * x, sign * y, confidence, paired=paired)
        tested = r.n >= 2 and r.n_base >= 2 and not math.isnan(r.p_value)
        at = (f"{r.n} seed pairs" if paired and not best.n == o.n == r.n
              else f"n={r.n}" if r.n == r.n_base else f"n={r.n} vs {r.n_base}")
        versus.append(Versus(o.label, o.n, o.mean, at, r.test if tested else None, r.diff, r.diff_ci, r.p_value,
                             p_adj, bool(tested and p_adj < alpha and sign * r.diff > 0), prob, prob_ci,
                             r.effect_size, r.effect_ci))
    return Judgement(metric, direction, confidence, correction, tuple(order), tuple(versus))
