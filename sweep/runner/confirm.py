"""`sweep confirm`: a search's finalists trained again on fresh seeds, in a study of their own.

A sampled search trains each configuration once, with one seed, so its winner is partly its
luckiest seed and nothing tests it against the runner-up. Ray Tune's `Repeater` and KerasTuner's
`executions_per_trial` average repeats inside every trial (R times the search's cost); Optuna
leaves it to a wrapper the user writes (optuna/optuna#433). Here the search runs as it is, then
its finalists (the top K distinct configurations by its metric, or the best configuration of each
activation) are trained R times each, with seeds that no trial of the search used and the same
for every finalist, so they compare seed by seed (sweep/ranking.py).

The confirmation is a plain `configs` study with `repeats` (named SEARCH-confirm unless told), so
it has everything a study has: `--workers N`, `sweep worker` joining it by name, resume with only
the missing runs, raised repeats adding only the missing seeds, status and report. The two name
each other (Optuna study attributes `sweep.confirms` / `sweep.confirmed_by`, the same tags on
their MLflow parent runs); once the confirmation has complete runs, the search's `sweep best`,
`sweep compare` and `models:/SEARCH@best` answer from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sweep import ranking
from sweep.errors import SweepError
from sweep.record import CONFIG_ATTR, CONFIRMED_BY, CONFIRMS, SEED, name_metrics, state_name

if TYPE_CHECKING:
    import optuna

    from sweep.config import ConfirmConfig, StudyConfig
    from sweep.storage import Stores


@dataclass(frozen=True)
class Finalist:
    """A configuration of the search taken into the confirmation, with the search's best run of it."""

    label: str
    params: dict[str, Any]
    trial: int  # its best trial in the search
    value: float  # that trial's value: what made it a finalist


def finalists(trials: list[Any], direction: str, study: str, top: int | None = None,
              per: str | None = None) -> list[Finalist]:
    """The search's top `top` distinct configurations by their best value, or (`per="activation"`)
    the best configuration of each activation that has a complete trial; best first."""
    sign = -1.0 if direction == "maximize" else 1.0
    found = []
    for c in ranking.configurations(trials):
        value, trial = min(zip(c.values, c.trials), key=lambda vt: (sign * vt[0], vt[1]))
        found.append(Finalist(c.label, c.params, trial, value))
    found.sort(key=lambda f: (sign * f.value, f.trial))
    if not found:
        raise SweepError(f"study {study!r} has no completed trial yet: nothing to confirm")
    if per == "activation":
        seen: set[str] = set()
        return [f for f in found if not (f.params["activation"] in seen or seen.add(f.params["activation"]))]
    assert top is not None
    if top > len(found):
        raise SweepError(f"--top {top}: study {study!r} has {len(found)} distinct complete configuration(s); "
                         f"ask for at most {len(found)}")
    return found[:top]


def fresh_seed(cfg: StudyConfig, trials: list[Any]) -> int:
    """The first of the confirmation's seeds: above every seed a trial of the search used (a sampled
    trial's is `search.seed` + its number unless recorded otherwise)."""
    used = {int(t.user_attrs[SEED]) for t in trials if t.user_attrs.get(SEED) is not None}
    used |= {cfg.search.seed + t.number for t in trials}
    return max(used, default=cfg.search.seed - 1) + 1


def complete(trials: list[Any], cfg: StudyConfig) -> bool:
    """Whether a search has nothing left to run: no trial waiting or running, and a sampled search's
    `n_trials` used up."""
    from sweep import search
    from sweep.runner import worker

    if any(state_name(t) in ("WAITING", "RUNNING") for t in trials):
        return False
    return search.plan(cfg.search) is not None or worker.budget_used(trials) >= (cfg.search.n_trials or 0)


def plan(cfg: StudyConfig, trials: list[Any], confirm: ConfirmConfig) -> tuple[StudyConfig, list[Finalist]]:
    """The confirmation study of the search `cfg` (its `trials`): the same data, model, training and
    tracking; its finalists as `search.configs`, `confirm.repeats` times each, from a fresh seed."""
    from sweep import config as config_mod

    name = cfg.study
    if len(cfg.search.metrics) > 1:
        raise SweepError(f"study {name!r} optimises several metrics ({', '.join(cfg.search.metrics)}): there is no "
                         "single ranking to take finalists from")
    if cfg.search.repeats > 1:
        raise SweepError(f"study {name!r} already runs every configuration over {cfg.search.repeats} seeds: "
                         f"`sweep best {name}` tests them as they are (raise search.repeats for more)")
    if not complete(trials, cfg):
        done = sum(state_name(t) == "COMPLETE" for t in trials)
        raise SweepError(f"study {name!r} is not complete ({done} trial(s) complete, some still to run): its "
                         f"finalists are known once it is; run `sweep run {name}` first")
    finals = finalists(trials, cfg.search.direction, name, confirm.top, confirm.per)
    data = cfg.model_dump(mode="json")
    data.pop("confirm", None)
    data["study"] = confirm.study or f"{name}-confirm"
    data["search"] = {"metric": cfg.search.metric, "seed": fresh_seed(cfg, trials), "repeats": confirm.repeats,
                      "pruner": "none", "configs": [f.params for f in finals]}
    return config_mod.parse(data, f"confirmation of study {name!r}"), finals


def link(search: optuna.Study, confirmation: StudyConfig, rdb: Any) -> None:
    """Create the confirmation's Optuna study if it is new, and name each study on the other. A
    study of that name that confirms something else, or that is no confirmation, is refused."""
    import optuna

    study = optuna.create_study(study_name=confirmation.study, storage=rdb, direction=confirmation.search.direction,
                                load_if_exists=True)
    name_metrics(study, confirmation.search.metrics)
    confirms = study.user_attrs.get(CONFIRMS)
    if (confirms is None and study.user_attrs.get(CONFIG_ATTR) is not None) or confirms not in (None, search.study_name):
        what = f"confirms study {confirms!r}" if confirms else "is a study of its own, not a confirmation"
        raise SweepError(f"study {confirmation.study!r} already exists and {what}; pass --name with another "
                         f"name for the confirmation of {search.study_name!r}")
    study.set_user_attr(CONFIRMS, search.study_name)
    if search.user_attrs.get(CONFIRMED_BY) != confirmation.study:
        search.set_user_attr(CONFIRMED_BY, confirmation.study)


def prepare(search_name: str, stores: Stores, confirm: ConfirmConfig | None) -> tuple[StudyConfig, list[Finalist]]:
    """The confirmation of the stored search `search_name`, linked to it and ready to run (its config
    is stored by the run that starts it). `confirm`: the command's choice, else the search's own
    `confirm` section, else the defaults."""
    from sweep.config import ConfirmConfig
    from sweep.record import load_study, stored_config
    from sweep.storage import optuna_storage

    search = load_study(search_name, stores)
    cfg = stored_config(search)
    confirm = confirm or cfg.confirm or ConfirmConfig()
    confirmation, finals = plan(cfg, search.get_trials(deepcopy=False), confirm)
    link(search, confirmation, optuna_storage(stores.optuna))
    return confirmation, finals


def confirmation_of(study: str, stores: Stores) -> str | None:
    """The name of the study that confirms `study`, if one does (read straight from Optuna's tables
    where it can be, sweep/peek.py)."""
    from sweep import peek
    from sweep.record import load_study

    found = peek.study_attrs(stores.optuna, study, (CONFIRMED_BY,))
    if found is None:
        found = load_study(study, stores).user_attrs
    return found.get(CONFIRMED_BY)


def finalist_rows(search_trials: list[Any], confirmation_trials: list[Any], direction: str) -> list[dict[str, Any]]:
    """Each finalist's confirmed runs beside its best run in the search, best confirmed mean first:
    config, params, search_trial, search_value, n, mean, std, seeds, values, optimism."""
    sign = 1.0 if direction == "maximize" else -1.0
    in_search = {}
    for c in ranking.configurations(search_trials):
        value, trial = max(zip(c.values, c.trials), key=lambda vt: (sign * vt[0], -vt[1]))
        in_search[repr(sorted(c.params.items()))] = (trial, value)
    rows = []
    for c in ranking.ranked(ranking.configurations(confirmation_trials), direction):
        trial, value = in_search.get(repr(sorted(c.params.items())), (None, math.nan))
        opt = optimism(value, c.mean, direction)
        rows.append({"config": c.label, "params": c.params, "search_trial": trial,
                     "search_value": None if math.isnan(value) else value, "n": c.n, "mean": c.mean,
                     "std": None if math.isnan(c.std) else c.std, "seeds": list(c.seeds), "values": list(c.values),
                     "optimism": None if math.isnan(opt) else opt})
    return rows


def optimism(search_value: float, confirmed_mean: float, direction: str) -> float:
    """How much better the search said the winner was than its confirmed mean (positive: optimistic)."""
    sign = 1.0 if direction == "maximize" else -1.0
    return sign * (search_value - confirmed_mean) if not math.isnan(confirmed_mean) else math.nan
