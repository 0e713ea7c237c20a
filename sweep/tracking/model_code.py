"""A logged model's own code: the custom activation it uses travels with it.

Keras loads a saved model's custom class or function only when it is registered in the loading
process, and MLflow's Keras flavor takes no code paths: a model trained on `my_acts.py:MyReLU`
would load only beside `my_acts.py`, with sweep at hand. MLflow's mechanism for a model with code
of its own is the pyfunc flavor's `loader_module` with `code`, so `add` gives a model saved by
`mlflow.keras.save_model` that:

- `code/`: the activation's file (or its package's Python files), `sweep_activations.json` (what
  to import and the name Keras knows it by) and `sweep_keras_loader.py`;
- in `MLmodel`, `python_function`'s `loader_module: sweep_keras_loader` and `code: code`.

`mlflow.pyfunc.load_model` and `mlflow models serve` then load it in any process, in any folder,
without sweep; the Keras flavor stays as it was (plain `mlflow.keras.load_model` needs the
activation registered first: `.get_raw_model()` of the pyfunc model is the Keras model). A model
with built-in activations only is left exactly as the Keras flavor saved it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from sweep.tracking import sweep_keras_loader

if TYPE_CHECKING:
    import keras

LOADER = Path(sweep_keras_loader.__file__)
CODE = sweep_keras_loader.CODE  # the model folder's code directory, as mlflow.pyfunc.save_model names it


def _python_only(folder: str, names: list[str]) -> list[str]:
    return [n for n in names if n == "__pycache__" or (not n.endswith(".py") and not (Path(folder) / n).is_dir())]


def add(model: keras.Model, path: Path) -> list[str]:
    """Put the custom activations `model` uses, and their loader, into the MLflow model saved at
    `path`. Returns their names (none: nothing changed)."""
    from mlflow import pyfunc
    from mlflow.models import Model

    from sweep.models import custom

    used = custom.used_by(model)
    if not used:
        return []
    code_dir = path / CODE
    code_dir.mkdir()
    entries = []
    for c in used:
        source, entry = custom.code(c)
        if source is not None and source.is_dir():
            shutil.copytree(source, code_dir / source.name, ignore=_python_only, dirs_exist_ok=True)
        elif source is not None:
            shutil.copy2(source, code_dir / source.name)
        entries.append(entry)
    shutil.copy2(LOADER, code_dir / LOADER.name)
    (code_dir / sweep_keras_loader.MANIFEST).write_text(json.dumps(entries, indent=2) + "\n")
    saved = Model.load(str(path))
    conf = saved.flavors[pyfunc.FLAVOR_NAME]
    conf[pyfunc.MAIN], conf[pyfunc.CODE] = LOADER.stem, CODE
    saved.save(str(path / "MLmodel"))
    return [c.name for c in used]
