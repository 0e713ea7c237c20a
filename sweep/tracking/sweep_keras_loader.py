"""The `python_function` loader of a Keras model whose activation is the user's own code.

sweep copies this file, unchanged, into the `code/` folder of every logged model that uses a
custom activation, with that activation's source and `sweep_activations.json`. It imports
nothing of sweep: such a model loads wherever MLflow and Keras are installed.

Why it exists: Keras loads a saved model's custom class or function only when it is registered
in the loading process (it never imports a module a saved file names), and MLflow's Keras flavor
takes no code paths. MLflow's own answer for a model with code of its own is a pyfunc
`loader_module` with `code`: `mlflow.pyfunc.load_model` (and so `mlflow models serve`) puts
`code/` on `sys.path` and calls `_load_pyfunc` below, which imports and registers each activation
under the name the model was saved with, then hands over to the Keras flavor's own loader.

`register` repeats, on purpose, what `sweep.models.custom` does when a study imports a
`file.py:Name` activation (a module from a file's path, registered under its saved name): this
file travels inside models, to machines without sweep, so it must not import sweep.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

MANIFEST = "sweep_activations.json"  # [{"registered", "module", "attr", "file"}], written by sweep
CODE = "code"  # the model folder's code directory (the MLmodel's `code`)


def register(code: Path | str) -> dict[str, Any]:
    """Import a model's custom activations from its code directory `code` and register each with
    Keras as the sweep did. Returns `{registered name: object}`, what `mlflow.keras.load_model(uri,
    custom_objects=...)` takes.

    A file's module is named after the file and its SHA-256, so two models of two versions of
    one file each get their own; a package's module is imported by its name from `code` (on
    `sys.path`, put there by MLflow), once per process, as Python imports any module.
    """
    import keras

    code = Path(code)
    out = {}
    for entry in json.loads((code / MANIFEST).read_text()):
        if entry["file"]:  # a file.py:Name activation: imported by path, as sweep imported it
            if entry["module"] not in sys.modules:
                spec = importlib.util.spec_from_file_location(entry["module"], code / entry["file"])
                module = importlib.util.module_from_spec(spec)
                sys.modules[entry["module"]] = module
                spec.loader.exec_module(module)
            module = sys.modules[entry["module"]]
        else:  # package.module:Name: copied into `code`, or an installed package
            module = importlib.import_module(entry["module"])
        obj = getattr(module, entry["attr"])
        if keras.saving.get_registered_name(obj) != entry["registered"]:
            package, _, name = entry["registered"].partition(">")
            keras.saving.register_keras_serializable(package=package, name=name)(obj)
        out[entry["registered"]] = obj
    return out


def _load_pyfunc(path: str) -> Any:
    """MLflow's pyfunc entry point (the MLmodel's `loader_module`); `path` is the model's folder.
    This module is imported once per process, from the first such model's code: everything it
    reads comes from `path`, never from where this file lies."""
    register(Path(path) / CODE)
    from mlflow import keras as keras_flavor

    return keras_flavor._load_pyfunc(path)
