"""Which trials keep their logged model (`tracking.keep_models`), and deleting the others' through MLflow.

Every complete trial logs its Keras model (5.2 MB for the seed CNN on 28x28 inputs): a study of
10,000 trials would write 50 GB, nearly all of it models of trials that lost. MLflow has no
retention rule for logged models (what Ray Tune calls `CheckpointConfig(num_to_keep=...)`), so
sweep owns this one: after each finished trial, the K best complete trials by the study's metric
(with several metrics, the whole Pareto front; with configurations repeated over seeds, the
representative repeat of each of the K best configurations by mean) keep their model, and every other finished trial's
model is deleted through MLflow's own API: its files through the artifact repository MLflow gives
for the model's location (a local folder, or the tracking server's proxied store under `sweep
server`), then the LoggedModel itself (`MlflowClient.delete_logged_model`). Params, metrics,
curves and plots stay, and the run is tagged with why its model went. A model that a version in
the Model Registry was registered from stays: the version reads its files.

A trial outside the K best can never re-enter them (a finished trial's value is fixed and trials
are only added), so a pass that saw fewer finished trials never deletes a model that should stay;
models of running trials are never touched. Deletions go through the tracker's sender, after the
model uploads queued before them, and are retried like any MLflow call.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from sweep.config import SearchConfig, StudyConfig
    from sweep.tracking.runs import Tracker

log = logging.getLogger(__name__)

DELETED_TAG = "sweep.model_deleted"  # on a trial's run: why its model is gone


def kept(study: optuna.Study, trials: Iterable[FrozenTrial], keep: int | str,
         search: SearchConfig | None = None) -> set[int]:
    """The numbers of the trials whose model stays: the `keep` best complete ones (ties: the
    earlier trial), or for several metrics the Pareto front; every complete one for `all`. Where
    configurations are repeated over seeds (`search.repeats` > 1), the representative repeat of
    each of the `keep` best configurations by mean, every model of a configuration still running
    its repeats (sweep/ranking.py). `trials`: every trial of the study, running ones included."""
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    from sweep import ranking

    trials = list(trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None]
    if keep == "all":
        return {t.number for t in complete}
    if len(study.directions) > 1:
        return {t.number for t in study.best_trials}
    if search is not None and ranking.repeated(search):
        return ranking.kept_models(trials, search.direction, search.repeats, int(keep))
    sign = -1.0 if study.direction == StudyDirection.MAXIMIZE else 1.0
    ranked = sorted(complete, key=lambda t: (sign * t.value, t.number))
    return {t.number for t in ranked[: int(keep)]}


class Keeper:
    """An Optuna-style callback `(study, trial)` that a worker runs after each finished trial."""

    def __init__(self, cfg: StudyConfig, tracker: Tracker, run_id_attr: str) -> None:
        self.keep = cfg.tracking.keep_models
        self.search = cfg.search
        self.tracker = tracker
        self.run_id_attr = run_id_attr
        # run id -> trial number (None: not a trial's run). Optuna names most runs; a run made after
        # its trial ended (MLflow away for the whole trial, or a replay) is named only by its own
        # tag, and its model was never deleted (tests/chaos.py: 12 such models over 30 minutes)
        self._numbers: dict[str, int | None] = {}

    def __call__(self, study: optuna.Study, trial: FrozenTrial | None = None) -> None:
        from optuna.trial import TrialState

        every = study.get_trials(deepcopy=False)
        finished = [t for t in every if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)]
        stay = kept(study, every, self.keep, self.search)
        drop = {t.number for t in finished if t.number not in stay}
        self._numbers.update({t.user_attrs[self.run_id_attr]: t.number for t in finished
                              if t.user_attrs.get(self.run_id_attr)})
        if drop:
            self.tracker.sender.submit(lambda: self._delete(drop), "deleting models that fell out")

    def _delete(self, drop: set[int]) -> None:
        """Delete the models of the trials numbered in `drop`; safe to repeat."""
        from mlflow.exceptions import MlflowException
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        from sweep.tracking.registry import registered_model_ids

        client = self.tracker.client
        # a model version registered from a logged model reads its files: a model once promoted
        # to `models:/STUDY@best` (sweep.tracking.registry) keeps them
        registered = registered_model_ids(client, self.tracker.study_name)
        for model in self._models():
            if model.model_id in registered:
                continue
            number = self._trial_of(model.source_run_id)
            if number is None or number not in drop:
                continue
            # the files first: a model whose entity is gone would no longer be listed here, and its
            # files would stay behind for good
            get_artifact_repository(model.artifact_location, tracking_uri=self.tracker.uri).delete_artifacts()
            try:
                client.delete_logged_model(model.model_id)
            except MlflowException as e:
                if e.error_code != "RESOURCE_DOES_NOT_EXIST":  # another worker was first
                    raise
            client.set_tag(model.source_run_id, DELETED_TAG,
                           f"{model.model_id}: not kept (tracking.keep_models: {self.keep})")
            log.info("deleted the model of trial %d (%s): tracking.keep_models is %s",
                     number, model.model_id, self.keep)

    def _trial_of(self, run_id: str | None) -> int | None:
        """The trial number of a model's source run, from Optuna or else the run's own tag."""
        from mlflow.exceptions import MlflowException

        if not run_id:
            return None
        if run_id not in self._numbers:
            try:
                tags = self.tracker.client.get_run(run_id).data.tags
                self._numbers[run_id] = int(tags["optuna.trial_number"])
            except (MlflowException, KeyError, ValueError):
                self._numbers[run_id] = None
        return self._numbers[run_id]

    def _models(self) -> list[Any]:
        """Every logged model of the study's experiment: the K kept, the registered ones and those
        not judged yet, so a short list however long the study."""
        out, token = [], None
        while True:
            page = self.tracker.client.search_logged_models(experiment_ids=[self.tracker.experiment_id],
                                                            max_results=500, page_token=token)
            out.extend(page)
            token = page.token
            if not token:
                return out
