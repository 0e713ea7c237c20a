from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def study_dict(data_path: Path | str, **search: Any) -> dict[str, Any]:
    """A small study over a local .npz, with the search section overridable."""
    base_search: dict[str, Any] = {
        "metric": "val_accuracy",
        "pruner": "none",
        "seed": 0,
        "configs": [
            {"activation": "relu"},
            {"activation": "leaky_relu", "leaky_alpha": 0.1},
            {"activation": "prelu", "prelu_alpha_init": 0.25, "prelu_shared_axes": "spatial"},
        ],
    }
    base_search.update(search)
    return {
        "study": "tiny",
        "dataset": {"name": "npz", "path": str(data_path), "validation_split": 0.2},
        "model": "seed_cnn",
        "training": {"epochs": 2, "batch_size": 64, "optimizer": "adam", "learning_rate": 0.003},
        "search": base_search,
    }


def write_study(folder: Path, data: dict[str, Any], name: str = "study.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
