"""The Pareto front of a study of several metrics (`search.metric: [val_accuracy, epoch_seconds]`).

Optuna finds the front itself (`study.best_trials`, its non-domination sort over the study's
directions) and draws it (`plot_pareto_front`). What it lacks, and this module adds: each member
as a plain dict that can rebuild its model (resolved activation params, seed, MLflow run and
model), members in an order a person can read along the trade-off, and the table `sweep best`
prints.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

from sweep import record
from sweep.models.activations import resolve_params

if TYPE_CHECKING:
    import optuna


def members(study: optuna.Study, metrics: Sequence[str], directions: Sequence[str]) -> list[dict[str, Any]]:
    """Optuna's Pareto-optimal trials of `study`, best first in the first metric (then by number).

    Each: trial, values ({metric: value}, in `metrics` order), params, seed, test_accuracy,
    mean_epoch_seconds, mlflow_run_id, mlflow_model_uri."""
    sign = -1.0 if directions[0] == "maximize" else 1.0
    front = sorted(study.best_trials, key=lambda t: (sign * t.values[0], t.number))
    return [{
        "trial": t.number,
        "values": dict(zip(metrics, t.values, strict=True)),
        "params": resolve_params(t.params),
        "seed": t.user_attrs.get(record.SEED),
        "test_accuracy": t.user_attrs.get("test_accuracy"),
        "mean_epoch_seconds": t.user_attrs.get("mean_epoch_seconds"),
        "mlflow_run_id": t.user_attrs.get(record.RUN_ID),
        "mlflow_model_uri": t.user_attrs.get(record.MODEL_URI),
    } for t in front]


def _cell(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def format_pareto(front: dict[str, Any]) -> str:
    """`sweep best` for a study of several metrics: one row per Pareto-optimal trial."""
    metrics, rows = front["metrics"], front["pareto"]
    params: list[str] = []
    for m in rows:
        params += [p for p in m["params"] if p not in params]
    head = ["trial", *metrics, *params, "seed", "test_accuracy", "mlflow_run_id"]
    table = [head] + [
        [str(m["trial"]), *(_cell(m["values"][k]) for k in metrics), *(str(m["params"].get(p, "-")) for p in params),
         _cell(m["seed"]), _cell(m["test_accuracy"]), _cell(m["mlflow_run_id"])]
        for m in rows
    ]
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    aims = ", ".join(f"{m} {d}d" for m, d in zip(metrics, front["directions"]))
    lines = [f"study {front['study']}: Pareto front of {len(rows)} trial(s) ({aims}); "
             "no other trial is at least as good in every metric and better in one"]
    lines += ["  ".join(c.rjust(w) if i < 1 + len(metrics) else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
              .rstrip() for r in table]
    lines.append(f"tracking_uri  {front['tracking_uri']}  (model URIs: sweep best {front['study']} --json)")
    return "\n".join(lines)
