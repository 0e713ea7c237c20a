"""Running a study: validate, load data, open both stores, enqueue the plan, optimize.

The validated config and the MLflow parent run id live with the Optuna study (user attributes),
so a study can be resumed, or joined by another worker, from its name and storage URL alone.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweep import config as config_mod
from sweep import data as data_mod
from sweep.runner import objective as obj
from sweep import search
from sweep.errors import ConfigError, SweepError, TrialFailed
from sweep.storage import Stores, check_tracking, mask, optuna_storage, resolve, study_lock
from sweep.tracking.runs import Tracker

if TYPE_CHECKING:
    import optuna

    from sweep.config import StudyConfig

log = logging.getLogger(__name__)

CONFIG_ATTR = "sweep.config"
PARENT_ATTR = "sweep.mlflow_parent_run_id"
# config fields a resumed study may change: they extend the budget, not what a trial means
RESUMABLE_CHANGES = {"search.n_trials"}


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def load_study(name: str, storage: str | None = None) -> optuna.Study:
    """An existing study by name, or a SweepError naming the studies that do exist."""
    import optuna

    stores = resolve(storage=storage)
    sqlite_file = stores.optuna.removeprefix("sqlite:///")
    if stores.optuna.startswith("sqlite:///") and not Path(sqlite_file).is_file():
        # opening it would create an empty database: a typo must not leave files behind
        raise SweepError(
            f"no Optuna storage at {sqlite_file} (so no study {name!r}); run `sweep run STUDY_FILE` "
            "here first, or pass --storage (or set SWEEP_OPTUNA_STORAGE) to where the study lives."
        )
    rdb = optuna_storage(stores.optuna)
    try:
        return optuna.load_study(study_name=name, storage=rdb)
    except KeyError:
        names = sorted(s.study_name for s in optuna.get_all_study_summaries(rdb))
        raise SweepError(
            f"no study named {name!r} in {mask(stores.optuna)}; studies there: "
            f"{', '.join(names) or 'none'}. Pass --storage to look elsewhere."
        ) from None


def stored_config(study: optuna.Study) -> StudyConfig:
    raw = study.user_attrs.get(CONFIG_ATTR)
    if raw is None:
        raise SweepError(f"study {study.study_name!r} was not created by sweep (no stored config)")
    return config_mod.parse(raw, f"study {study.study_name!r} (stored config)")


def _open(cfg: StudyConfig, stores: Stores, rdb: optuna.storages.BaseStorage) -> optuna.Study:
    import optuna

    new = cfg.model_dump(mode="json")
    try:
        study = optuna.load_study(study_name=cfg.study, storage=rdb)
    except KeyError:
        study = optuna.create_study(
            study_name=cfg.study, storage=rdb, direction=cfg.search.direction, load_if_exists=True
        )
    old = study.user_attrs.get(CONFIG_ATTR)
    if old is not None:
        # validated again so sections added to sweep since (with defaults) are not "changes"
        old = config_mod.parse(old, f"study {cfg.study!r} (stored config)").model_dump(mode="json")
        changed = [f for f in _diff(old, new) if f not in RESUMABLE_CHANGES]
        if changed:
            raise ConfigError(
                cfg.study,
                [f"study already exists in {mask(stores.optuna)} with a different {f}: stored "
                 f"{_lookup(old, f)!r}, file has {_lookup(new, f)!r}" for f in changed]
                + ["resume with the stored config (sweep run STUDY_NAME), or give this file a new `study` name"],
            )
    study.set_user_attr(CONFIG_ATTR, new)
    return study


def _lookup(d: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


def _counts_against_budget(t: optuna.trial.FrozenTrial) -> bool:
    from optuna.trial import TrialState

    if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    # failed trials consumed budget; interrupted ones (Ctrl-C) are re-run on resume
    return t.state == TrialState.FAIL and not t.user_attrs.get(obj.INTERRUPTED)


def _enqueue_plan(study: optuna.Study, configs: list[dict[str, Any]], cfg: StudyConfig) -> int:
    """Enqueue each (config, repeat) not yet finished, waiting or running. Returns how many wait."""
    from optuna.trial import TrialState

    have = set()
    waiting = 0
    for t in study.get_trials(deepcopy=False):
        key = (t.user_attrs.get(obj.CONFIG_INDEX), t.user_attrs.get(obj.REPEAT))
        if t.state == TrialState.WAITING:
            waiting += 1
            have.add(key)
        elif t.state == TrialState.RUNNING or _counts_against_budget(t):
            have.add(key)
    for i, params in enumerate(configs):
        for r in range(cfg.search.repeats):
            if (i, r) in have:
                continue
            study.enqueue_trial(
                params,
                user_attrs={obj.CONFIG_INDEX: i, obj.REPEAT: r, obj.SEED: cfg.search.seed + r},
            )
            waiting += 1
    return waiting


def _stop_when_done(cfg: StudyConfig, explicit_plan: bool) -> Any:
    """Stop this worker once the study's budget is used by all workers together.

    Optuna's MaxTrialsCallback counts states only; interrupted trials (FAIL) must not count, and
    a plan is done when its queue is empty.
    """
    from optuna.trial import TrialState

    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        trials = study.get_trials(deepcopy=False)
        if explicit_plan:
            done = not any(t.state == TrialState.WAITING for t in trials)
        else:
            busy = sum(_counts_against_budget(t) or t.state == TrialState.RUNNING for t in trials)
            done = busy >= (cfg.search.n_trials or 0)
        if done:
            study.stop()

    return callback


def _trial_line(metric: str) -> Any:
    started = time.monotonic()

    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        params = ", ".join(f"{k}={v}" for k, v in trial.params.items())
        if trial.value is not None:
            outcome = f"{metric}={trial.value:.4f}"
        elif trial.user_attrs.get(obj.FAIL_REASON):
            outcome = f"reason: {trial.user_attrs[obj.FAIL_REASON]}"
        else:
            last = trial.last_step
            outcome = f"at epoch {last}" if last is not None else ""
        secs = trial.duration.total_seconds() if trial.duration else 0.0
        try:
            best = f"best: trial {study.best_trial.number} {study.best_value:.4f}"
        except ValueError:
            best = "best: none yet"
        log.info("trial %d %s %s [%s] %.1fs | %s | elapsed %.0fs", trial.number, trial.state.name,
                 outcome, params, secs, best, time.monotonic() - started)

    return callback


def run(
    study: str | Path | StudyConfig,
    storage: str | None = None,
    tracking_uri: str | None = None,
    n_trials: int | None = None,
    dataset: data_mod.Dataset | None = None,
    extra_callbacks: Any = None,
    config: str | Path | None = None,
    progress_bar: bool = False,
) -> optuna.Study:
    """Run (or resume, or join) a study.

    `study` is a study file path, a validated `StudyConfig`, or the name of a study already in
    `storage` (its stored config is used). `n_trials` caps the trials this call runs. `config`
    is an mlflow.yaml settings file (see `sweep.storage.resolve` for the precedence).
    Everything is validated and the data loaded before either store is written.
    """
    stores = resolve(storage=storage, tracking_uri=tracking_uri, config=config)
    cfg = _config_for(study, stores)
    data = dataset if dataset is not None else data_mod.load(cfg.dataset, cfg.source)

    check_tracking(stores.tracking)
    rdb = optuna_storage(stores.optuna)
    # workers joining at once must not each create a parent run or enqueue the plan again
    with study_lock(stores.optuna, cfg.study):
        opt_study = _open(cfg, stores, rdb)
        tracker = Tracker(stores.tracking, cfg.study)
        parent = tracker.parent_run(opt_study.user_attrs.get(PARENT_ATTR), cfg.model_dump(mode="json"))
        opt_study.set_user_attr(PARENT_ATTR, parent)
        configs = search.plan(cfg.search)
        if configs is not None:
            space = search.space_of(configs)
            todo = _enqueue_plan(opt_study, configs, cfg)
        else:
            assert cfg.search.space is not None and cfg.search.n_trials is not None
            space = cfg.search.space
            done = sum(_counts_against_budget(t) for t in opt_study.get_trials(deepcopy=False))
            todo = cfg.search.n_trials - done
    if n_trials is not None:
        todo = min(todo, n_trials)
    if todo <= 0:
        log.info("study %s is complete (%d trials); nothing to run", cfg.study, len(opt_study.trials))
        return opt_study

    opt_study.sampler = search.make_sampler(cfg.search, offset=len(opt_study.trials))
    opt_study.pruner = search.make_pruner(cfg.search)
    log.info("study %s: %d trial(s) to run; %s; MLflow parent run %s", cfg.study, todo, stores, parent)
    objective = obj.make_objective(cfg, data, tracker, parent, space, extra_callbacks,
                                   explicit_plan=configs is not None)
    opt_study.optimize(
        objective,
        n_trials=todo,
        catch=(TrialFailed,),
        callbacks=[_trial_line(cfg.search.metric), _stop_when_done(cfg, configs is not None)],
        gc_after_trial=True,
        show_progress_bar=progress_bar,
    )
    return opt_study


def _config_for(study: str | Path | StudyConfig, stores: Stores) -> StudyConfig:
    from sweep.config import StudyConfig

    if isinstance(study, StudyConfig):
        return study
    path = Path(study)
    if path.suffix in (".yaml", ".yml") or path.exists() or "/" in str(study):
        return config_mod.load(path)
    # a bare name: join the study stored under that name
    return stored_config(load_study(str(study), stores.optuna))
