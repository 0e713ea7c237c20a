"""What every part of a study file shares: the strict base model, the metrics and their direction."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

METRICS = ("val_accuracy", "val_loss", "accuracy", "loss", "test_accuracy", "test_loss", "epoch_seconds")
MetricName = Literal["val_accuracy", "val_loss", "accuracy", "loss", "test_accuracy", "test_loss", "epoch_seconds"]


def direction_of(metric: str) -> str:
    """Losses and seconds are minimized, everything else (accuracies) maximized."""
    return "minimize" if metric.endswith(("loss", "seconds")) else "maximize"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
