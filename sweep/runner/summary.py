"""A study's MLflow parent run as the study stands: trials by state, the best configuration (or
trial, or Pareto front) and its verdict, FINISHED once complete, and its best model registered as
models:/STUDY@best (sweep/tracking/registry.py). Every worker writes it as it stops."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sweep import ranking
from sweep.errors import first_line
from sweep.record import CONFIRMED_BY, CONFIRMS, PARENT_ATTR, load_study, stored_config
from sweep.runner import worker
from sweep.storage import study_lock
from sweep.urls import mask
from sweep.tracking import sync

if TYPE_CHECKING:
    import optuna

    from sweep.runner.setup import Prepared

log = logging.getLogger(__name__)

def summarize(p: Prepared) -> None:
    """The study so far on its MLflow parent run: trials by state, the best value and params (or
    the Pareto front's size), FINISHED when nothing is left to run. Every worker writes it as it
    stops; the last one sees the study complete."""
    from collections import Counter

    from optuna.trial import TrialState

    trials = p.study.get_trials(deepcopy=False)
    search_cfg = p.cfg.search
    pending = any(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in trials)
    complete = not pending and (p.configs is not None or worker.budget_used(trials) >= (search_cfg.n_trials or 0))
    metrics: dict[str, float] = {f"trials_{s.name.lower()}": 0 for s in
                                 (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)}
    metrics.update({f"trials_{s.lower()}": n for s, n in Counter(t.state.name for t in trials).items()})
    tags: dict[str, str] = {}
    if any(t.state == TrialState.COMPLETE for t in trials):
        if ranking.repeated(search_cfg):
            more_metrics, tags = _best_configuration(trials, search_cfg.metric, search_cfg.direction)
            metrics.update(more_metrics)
        elif len(search_cfg.metrics) == 1:
            best = p.study.best_trial
            metrics[f"best_{search_cfg.metric}"] = float(best.value)
            tags = {"sweep.best.trial": str(best.number),
                    **{f"sweep.best.{k}": str(v) for k, v in best.params.items()}}
        else:
            front = sorted(t.number for t in p.study.best_trials)
            metrics["pareto_size"] = len(front)
            tags = {"sweep.pareto.trials": ",".join(map(str, front))}
    if complete:  # a peer that died with the last logging of a finished trial still queued
        sync.replay_unfinished(p.tracker, trials, older_than=sync.LIVE_BACKLOG_SECONDS)
    if complete and "sweep.best.trial" in tags:
        tags.update(_promote(p))
    if p.study.user_attrs.get(CONFIRMS):
        tags[CONFIRMS] = p.study.user_attrs[CONFIRMS]
        _tag_search(p)
    p.tracker.summarize_parent(p.parent, metrics, tags, finished=complete)


def _tag_search(p: Prepared) -> None:
    """A confirmation names itself on its search's MLflow parent run (the Optuna studies name each
    other already, sweep/runner/confirm.py), so the UI leads from one to the other."""
    search = p.study.user_attrs[CONFIRMS]
    try:
        parent = load_study(search, p.stores).user_attrs.get(PARENT_ATTR)
        if parent:
            p.tracker.client.set_tag(parent, CONFIRMED_BY, p.cfg.study)
    except Exception as e:  # noqa: BLE001 - MlflowException, SweepError: a tag, the next run writes it again
        log.warning("could not tag study %s's parent run with its confirmation %s: %s", search, p.cfg.study,
                    mask(first_line(e)))


def _best_configuration(trials: list[optuna.trial.FrozenTrial], metric: str, direction: str
                        ) -> tuple[dict[str, float], dict[str, str]]:
    """A repeated study's summary: the configuration with the best mean over its seeds, its verdict
    against the others and its representative repeat (sweep/ranking.py); the single best trial
    beside it, under its own name."""
    import math

    from sweep import stats

    j = ranking.judge(ranking.configurations(trials), metric, direction)
    best = j.best
    lo, hi = stats.mean_ci(best.values, j.confidence)
    sign = 1.0 if direction == "maximize" else -1.0
    single = max((t for t in trials if t.state.name == "COMPLETE" and t.values), key=lambda t: sign * t.values[0])
    rep = next(t for t in trials if t.number == best.representative)
    metrics = {f"best_{metric}": best.mean, "best_n": float(best.n), f"best_trial_{metric}": float(single.values[0])}
    metrics.update({k: v for k, v in ((f"best_{metric}_std", best.std), (f"best_{metric}_ci_low", lo),
                                      (f"best_{metric}_ci_high", hi)) if not math.isnan(v)})
    tags = {"sweep.best.trial": str(rep.number), "sweep.best.configuration": best.label,
            "sweep.best.judged_by": f"mean {metric} over {best.n} seed(s); model: {ranking.REPRESENTATIVE}",
            "sweep.best.verdict": j.verdict[:5000], "sweep.best_trial.trial": str(single.number),
            **{f"sweep.best.{k}": str(v) for k, v in rep.params.items()}}
    return metrics, tags


def _promote(p: Prepared) -> dict[str, str]:
    """A complete study's best model becomes `models:/STUDY@best` (sweep/tracking/registry.py);
    every worker of a pool tries as it stops, under the study's lock, and the first one does it.
    Returns tags for the parent run. Trouble is a warning: `sweep promote STUDY` tries again."""
    from sweep.tracking import registry

    try:
        with study_lock(p.stores.optuna, p.cfg.study):
            version, changed, trial = registry.promote_best(p.study, p.cfg.search, p.tracker.client)
        search = p.study.user_attrs.get(CONFIRMS)
        if search:  # a confirmation: its winner is its search's @best too
            with study_lock(p.stores.optuna, search):
                s = load_study(search, p.stores)
                registry.promote_best(s, stored_config(s).search, p.tracker.client)
            log.info("best model of study %s: models:/%s@%s, the confirmed winner", search, search, registry.ALIAS)
    except Exception as e:  # noqa: BLE001 - MlflowException, SweepError, requests errors
        log.warning("could not register the best model as %s@%s: %s; `sweep promote %s` tries again",
                    p.cfg.study, registry.ALIAS, mask(first_line(e)),
                    p.cfg.study)
        return {}
    if changed:
        log.info("best model: models:/%s@%s (registered model %s, version %s: trial %d)", p.cfg.study,
                 registry.ALIAS, p.cfg.study, version.version, trial.number)
    return {"sweep.best.registered": f"models:/{p.cfg.study}@{registry.ALIAS} (version {version.version})"}
