"""What a trial's MLflow run holds, said once for the two paths that write it: live, as the trial
trains (sweep/tracking/trial.py), and as a replay from what Optuna recorded (sweep/tracking/sync.py).

A trial's run is a child of its study's parent run, found by its tags (`child_tags`) and named
`trial-N-<params>`; it holds the trial's params (`param_value`), its dataset inputs
(`dataset_inputs`), every epoch's metrics at their step, the final test metrics at the last
epoch's step, the objective value(s) at step 0 (`objective_metrics`), the Optuna state and any
failure reason as tags (`end_tags`), a link to its model (MODEL_URI_TAG), and the MLflow status
that matches its Optuna state (RUN_STATUS).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from mlflow.data.dataset_source import DatasetSource
    from mlflow.entities import DatasetInput

    from sweep.data import Dataset

PARENT_TAG = "sweep.role"


MODEL_URI_TAG = "sweep.model_uri"  # on a trial's run: its logged model, once uploaded


# Optuna trial state -> MLflow run status
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED", "INTERRUPTED": "KILLED"}


def param_value(v: Any) -> str:
    return json.dumps(v) if isinstance(v, (list, tuple, dict)) else str(v)


def chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def objective_metrics(values: Sequence[float], metrics: Sequence[str]) -> dict[str, float]:
    """A trial's objective value(s) as MLflow metrics: `objective_value`, or for a study of several
    metrics `objective_value/<metric>` each (Optuna's `trial.values`, in `search.metric` order)."""
    if len(values) == 1:
        return {"objective_value": float(values[0])}
    return {f"objective_value/{m}": float(v) for m, v in zip(metrics, values, strict=True)}


def filter_value(s: str) -> str:
    # MLflow's filter grammar has no escape for a quote inside a quoted value
    if "'" in s:
        raise ValueError(f"cannot search MLflow for a value containing a quote: {s!r}")
    return f"'{s}'"


def child_tags(parent_id: str, study: str, trial_number: int) -> dict[str, str]:
    """The tags that make a run the child run of one trial (what `sync` looks runs up by)."""
    return {"mlflow.parentRunId": parent_id, PARENT_TAG: "trial", "optuna.study_name": study,
            "optuna.trial_number": str(trial_number)}


def short(value: Any) -> str:
    """A param as people read it in run names and plot titles: floats to 4 significant digits
    (`0.06082`, not `0.060819044671794366`); the exact value stays in the run's params."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def run_label(params: dict[str, Any]) -> str:
    """`leaky_relu-0.06082`: the part of a trial's run name after `trial-N-`."""
    return "-".join(short(v) for v in params.values())


def run_name(trial_number: int, label: str) -> str:
    return f"trial-{trial_number}-{label}"[:250]


def end_tags(state: str, reason: str | None) -> dict[str, str]:
    """How a trial ended: its Optuna state (INTERRUPTED for a stop), and why it failed or stopped."""
    tags = {"optuna.state": state}
    if reason:
        tags["sweep.fail_reason"] = str(reason)[:5000]
    return tags


def _dataset_source(origin: str | None) -> DatasetSource:
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import get_dataset_source_from_json
    from mlflow.data.http_dataset_source import HTTPDatasetSource

    if origin is None:  # arrays handed to sweep.run(dataset=...): the code that made them
        return CodeDatasetSource(tags={})
    if origin.startswith(("http://", "https://")):
        return HTTPDatasetSource(origin)
    # MLflow registers its local file source twice (paths and file:// URIs), so resolving a path
    # by its string warns that it is ambiguous; by its type it is the one source
    return get_dataset_source_from_json(json.dumps({"uri": origin}), "local")


def dataset_inputs(data: Dataset) -> list[DatasetInput]:
    """The parts a trial trains, validates and tests on as MLflow dataset inputs (the runs
    table's Dataset column): the dataset's name, its file (or URL) as a source, a digest of all
    the part's arrays, its sizes as a profile, the part as the context. Hashes every array: call
    it once per dataset, not per trial."""
    from mlflow.data.numpy_dataset import from_numpy
    from mlflow.entities import Dataset as DatasetEntity
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    from sweep.data.images import digest

    source = _dataset_source(data.origin)
    out = []
    for context, (x, y) in data.parts().items():
        # MLflow's numpy dataset gives the schema and the array sizes; the digest is ours (above)
        entity = from_numpy(x, source=source, targets=y, name=data.title, digest=digest(x, y))._to_mlflow_entity()
        profile = json.dumps({"num_rows": len(x), "num_classes": data.num_classes, **json.loads(entity.profile)})
        entity = DatasetEntity(entity.name, entity.digest, entity.source_type, entity.source, entity.schema, profile)
        out.append(DatasetInput(entity, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)]))
    return out
