"""A study resumed, or set up anew: what its file may change against the stored config, and the
explicit plan (configs or grid, times repeats) queued, or queued again where a stopped worker
left an interrupted trial."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from sweep import config as config_mod
from sweep.errors import ConfigError
from sweep.record import CONFIG_ATTR
from sweep.runner import objective as obj
from sweep.runner import worker
from sweep.storage import Stores
from sweep.urls import mask

if TYPE_CHECKING:
    import optuna

    from sweep.config import StudyConfig

log = logging.getLogger(__name__)

# config fields a resumed study may change: they extend the budget, not what a trial means.
# More repeats add the missing (configuration, repeat) pairs with seeds seed + repeat, the same
# for every configuration, so comparisons stay seed-paired; fewer would disown recorded trials.
RESUMABLE_CHANGES = {"search.n_trials", "search.repeats"}


ONLY_RAISED = {"search.repeats"}


# the pruner decides which trials still to come are cut short, not what a recorded one means; a
# study file that names none (since 2026-11 `none` for configs and the grid, `median` before)
# resumes with the new one rather than being refused
# which trials keep their model (tracking.keep_models) is the file's to say on every run: the
# models of trials that fall out are deleted from then on, the recorded trials do not change
# `confirm` says what happens once the search is done, not what a trial of it means
RESUMABLE_PREFIXES = ("search.pruner", "tracking.", "confirm")


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def open_study(cfg: StudyConfig, stores: Stores, rdb: optuna.storages.BaseStorage
          ) -> tuple[optuna.Study, dict[str, tuple[Any, Any]], StudyConfig]:
    """The study, created or loaded, the resumable fields the file changes ({field: (stored,
    new)}) and the config to run with. The caller stores that config (a new study's is stored
    here at once)."""
    import optuna

    new = cfg.model_dump(mode="json")
    try:
        study = optuna.load_study(study_name=cfg.study, storage=rdb)
    except KeyError:
        study = _create(cfg, rdb)
    old = study.user_attrs.get(CONFIG_ATTR)
    if old is None:
        study.set_user_attr(CONFIG_ATTR, new)
        return study, {}, cfg
    if "tracking" not in old and "tracking" not in cfg.model_fields_set:
        # stored before keep_models existed, resumed from a file that does not set it: every
        # model stays, as before (config.StudyConfig._models_kept_as_they_were)
        cfg = cfg.model_copy(update={"tracking": config_mod.TrackingConfig(keep_models="all")})
        new = cfg.model_dump(mode="json")
    # validated again so sections added to sweep since (with defaults) are not "changes"
    old = config_mod.parse(old, f"study {cfg.study!r} (stored config)", stored=True).model_dump(mode="json")
    fields = _diff(old, new)
    problems = []
    for f in fields:
        stored, given = _lookup(old, f), _lookup(new, f)
        if f not in RESUMABLE_CHANGES and not f.startswith(RESUMABLE_PREFIXES):
            problems.append(f"study already exists in {mask(stores.optuna)} with a different {f}: "
                            f"stored {stored!r}, file has {given!r}")
        elif f in ONLY_RAISED and given < stored:
            problems.append(f"{f}: stored {stored}, file has {given}; {f.rsplit('.', 1)[-1]} can only be "
                            f"raised (every recorded trial stays in the study): set it to {stored} or more")
    if problems:
        raise ConfigError(
            cfg.study,
            problems + ["resume with the stored config (sweep run STUDY_NAME), or give this file a new `study` name"],
        )
    return study, {f: (_lookup(old, f), _lookup(new, f)) for f in fields}, cfg


def _create(cfg: StudyConfig, rdb: optuna.storages.BaseStorage) -> optuna.Study:
    import optuna

    study = optuna.create_study(study_name=cfg.study, storage=rdb, directions=cfg.search.directions,
                                load_if_exists=True)
    return study


def _lookup(d: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


def enqueue_plan(study: optuna.Study, configs: list[dict[str, Any]], cfg: StudyConfig) -> int:
    """Enqueue each (config, repeat) not yet done, waiting or running. Returns how many wait."""
    from optuna.trial import TrialState

    _enqueue(study, _missing(study.get_trials(deepcopy=False), configs, cfg), configs, cfg)
    return sum(t.state == TrialState.WAITING for t in study.get_trials(deepcopy=False))


def requeue_interrupted(study: optuna.Study, configs: list[dict[str, Any]], cfg: StudyConfig) -> None:
    """Between trials, under the study lock: a trial of the plan whose worker was stopped
    (SIGTERM: a replica stopped, a Job's parallelism patched down) is queued again by a worker
    still running, so the plan is finished without waiting for a worker to start. Optuna's retry
    callback covers only trials that go stale; an interrupted one was told FAIL by its worker."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    if not any(t.state == TrialState.FAIL and t.user_attrs.get(obj.INTERRUPTED) for t in trials):
        return  # the usual case: nothing to read further
    missing = _missing(trials, configs, cfg)
    for t in trials:
        if t.state == TrialState.FAIL and t.user_attrs.get(obj.INTERRUPTED) and _plan_key(t) in missing:
            log.info("trial %d was interrupted (its worker stopped); its config is queued again", t.number)
            missing.remove(_plan_key(t))
            _enqueue(study, [_plan_key(t)], configs, cfg)


def _missing(trials: list[optuna.trial.FrozenTrial], configs: list[dict[str, Any]], cfg: StudyConfig
             ) -> list[tuple[int, int]]:
    """(config, repeat) pairs of the plan with no trial done, waiting or running."""
    from optuna.trial import TrialState

    have = {_plan_key(t) for t in worker.done(trials)}
    have |= {_plan_key(t) for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)}
    return [(i, r) for i in range(len(configs)) for r in range(cfg.search.repeats) if (i, r) not in have]


def _enqueue(study: optuna.Study, keys: list[tuple[int, int]], configs: list[dict[str, Any]],
             cfg: StudyConfig) -> None:
    for i, r in keys:
        study.enqueue_trial(configs[i], user_attrs={obj.CONFIG_INDEX: i, obj.REPEAT: r, obj.SEED: cfg.search.seed + r})


def _plan_key(t: optuna.trial.FrozenTrial) -> tuple[Any, Any]:
    return t.user_attrs.get(obj.CONFIG_INDEX), t.user_attrs.get(obj.REPEAT)
