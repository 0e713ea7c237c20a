"""Custom activations named by import path: `package.module:Name` or `path/to/file.py:Name`.

The named object is a `keras.layers.Layer` subclass (built with no arguments but its name) or a
function of one tensor; it takes no searched parameters, and its name (the string) is its
identity in Optuna params, MLflow params and `compare` labels.

A relative file path is read from the working directory, as `dataset.path` is, and a module is
imported from `sys.path` with the working directory first, as `python -m` does: the same name
then means the same code to every worker started in the same folder, wherever the study file
sits (a study joined by name has no study file).

Keras 3 loads a saved model's custom class or function only when it is registered in the
loading process: it never imports a module named in a saved file. `load` registers what it
imports as `sweep>NAME` (unless the code registered itself with `register_keras_serializable`),
so a fresh process calls `register(NAME, ...)` before `mlflow.keras.load_model(uri)`. A model
sweep logs carries what it needs instead (`used_by` and `code` say what; sweep/tracking/model_code.py
logs it): it loads anywhere, with no file of the user's at hand.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

from sweep.errors import first_line

PACKAGE = "sweep"  # registered names are `sweep>` + the activation's name
_LOADED: dict[tuple[str, str], Custom] = {}  # (name, working directory) -> what it names
_CHECKED: set[tuple[str, str]] = set()


class CustomActivationError(ValueError):
    """A custom activation that cannot be used; the message is one line naming it."""


@dataclass(frozen=True)
class Custom:
    name: str  # as written: `pkg.mod:Name` or `file.py:Name`
    obj: Any  # the layer class or function
    kind: str  # "layer" or "function"
    file: str  # the source file it was loaded from
    sha256: str  # of that file's bytes


def is_custom(name: Any) -> bool:
    """A custom activation's name has a colon: `pkg.mod:Name` or `path/to/file.py:Name`."""
    return isinstance(name, str) and ":" in name


def _fail(name: str, why: str) -> CustomActivationError:
    return CustomActivationError(f"custom activation {name!r}: {why}")


def _named(e: BaseException) -> str:
    text = first_line(e)
    return text if text == type(e).__name__ else f"{type(e).__name__}: {text}"


def _split(name: str) -> tuple[str, str]:
    where, _, attr = name.rpartition(":")
    if not where or not attr.isidentifier():
        raise _fail(name, "expected package.module:Name or path/to/file.py:Name (a Keras layer class "
                          "or a function of one tensor)")
    return where, attr


def _is_file(where: str) -> bool:
    return where.endswith(".py") or "/" in where or os.sep in where


@contextlib.contextmanager
def _importing() -> Iterator[None]:
    # no __pycache__ left in the user's folders by a check; the working directory first, as
    # `python -m sweep` has it (the `sweep` script does not)
    cwd, old = os.getcwd(), sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        sys.dont_write_bytecode = old
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def _source(name: str, where: str) -> Path:
    path = Path(where).expanduser()
    if not path.is_file():
        raise _fail(name, f"file not found: {where} (relative paths are read from the working directory "
                          f"{Path.cwd()}); expected a Python file defining {name.rpartition(':')[2]}")
    return path.resolve()


def _import_file(name: str, where: str, path: Path) -> ModuleType:
    mod_name = f"_sweep_custom_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:10]}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise _fail(name, f"{where} cannot be imported as a Python module; expected a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module  # classes defined there find their module (dataclasses, pickle)
    try:
        with _importing():
            spec.loader.exec_module(module)
    except (Exception, SystemExit) as e:
        sys.modules.pop(mod_name, None)
        raise _fail(name, f"importing {where} failed: {_named(e)}") from None
    return module


def _import_module(name: str, where: str) -> ModuleType:
    try:
        with _importing():
            return importlib.import_module(where)
    except ModuleNotFoundError as e:
        if e.name and (where == e.name or where.startswith(e.name + ".")):
            raise _fail(name, f"no module named {e.name!r} (looked in the working directory {Path.cwd()} and "
                              "sys.path); expected an importable module, or a path/to/file.py") from None
        raise _fail(name, f"importing {where} failed: {_named(e)}") from None
    except (Exception, SystemExit) as e:
        raise _fail(name, f"importing {where} failed: {_named(e)}") from None


def _candidates(module: ModuleType) -> list[str]:
    import keras

    return [k for k, v in vars(module).items() if not k.startswith("_")
            and getattr(v, "__module__", None) == module.__name__
            and ((inspect.isclass(v) and issubclass(v, keras.layers.Layer)) or inspect.isfunction(v))]


def _kind(name: str, obj: Any) -> str:
    import keras

    if inspect.isclass(obj):
        if issubclass(obj, keras.layers.Layer):
            return "layer"
        raise _fail(name, f"{obj.__name__} is a class but not a keras.layers.Layer subclass; expected a "
                          "Keras layer class or a function of one tensor")
    if isinstance(obj, keras.layers.Layer):
        raise _fail(name, f"is a {type(obj).__name__} instance; name its class instead, so each linear "
                          "layer gets an activation of its own")
    if inspect.isroutine(obj):
        return "function"
    raise _fail(name, f"expected a Keras layer class or a function of one tensor, got {type(obj).__name__} "
                      f"{repr(obj)[:60]}")


def _sha256(module: ModuleType, obj: Any) -> tuple[str, str]:
    file = getattr(module, "__file__", None)
    if file and Path(file).is_file():
        return str(Path(file).resolve()), hashlib.sha256(Path(file).read_bytes()).hexdigest()
    try:
        return str(file or module.__name__), hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()
    except (OSError, TypeError):
        return str(file or module.__name__), ""


def _quiet_keras() -> None:
    """Import Keras (TensorFlow) with its C++ start-up lines kept off stderr.

    TensorFlow's absl logging prints INFO lines (oneDNN, CUDA drivers) before it reads
    TF_CPP_MIN_LOG_LEVEL; when a study file is checked they would bury its one error line.
    """
    if "keras" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            import keras

            keras.ops.convert_to_numpy(keras.ops.zeros((1,)))  # the first op probes the devices
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def load(name: str) -> Custom:
    """Import the object `name` names, register it with Keras, and say what it is and where from."""
    key = (name, os.getcwd())
    if key in _LOADED:
        return _LOADED[key]
    where, attr = _split(name)
    path = _source(name, where) if _is_file(where) else None  # before TensorFlow: a typo fails fast
    _quiet_keras()
    import keras

    module = _import_file(name, where, path) if path else _import_module(name, where)
    if not hasattr(module, attr):
        found = _candidates(module)
        close = difflib.get_close_matches(attr, found, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise _fail(name, f"{where} has no {attr!r}; {hint}it defines "
                          f"{', '.join(found) if found else 'no Keras layer class or function'}")
    obj = getattr(module, attr)
    kind = _kind(name, obj)
    if keras.saving.get_registered_name(obj) == obj.__name__:  # its code did not register it
        keras.saving.register_keras_serializable(package=PACKAGE, name=name)(obj)
    file, sha = _sha256(module, obj)
    _LOADED[key] = Custom(name, obj, kind, file, sha)
    return _LOADED[key]


def layer(name: str, layer_name: str) -> Any:
    """The activation as a layer of its own, named `layer_name` (placement: layer)."""
    import keras

    c = load(name)
    if c.kind == "layer":
        return c.obj(name=layer_name)
    return keras.layers.Activation(c.obj, name=layer_name)


def inline(name: str, layer_name: str) -> Any:
    """What a linear layer takes as `activation=` (placement: inline): the layer, or the function."""
    c = load(name)
    return c.obj(name=layer_name) if c.kind == "layer" else c.obj


def check(name: str) -> Custom:
    """`load`, then try the activation as a model would use it: created with only a name, called on
    a rank-2 and a rank-4 tensor (after a Dense, after a Conv2D), the shape kept, and saved and
    loaded back by Keras. Raises CustomActivationError, one line, naming what failed."""
    import numpy as np

    c = load(name)
    key = (name, os.getcwd())
    if key in _CHECKED:
        return c
    import keras

    for shape in ((2, 4), (2, 3, 3, 2)):
        x = np.linspace(-2.0, 2.0, int(np.prod(shape)), dtype="float32").reshape(shape)
        try:
            act = layer(name, "probe")
        except Exception as e:  # noqa: BLE001 - the user's constructor may raise anything
            raise _fail(name, f"{c.obj.__name__}(name='probe') failed: {_named(e)}; a custom activation "
                              "takes no parameters, and Keras passes name=, trainable=, dtype= when it loads "
                              "a model: give __init__ **kwargs and pass them to super().__init__(**kwargs)") from None
        try:
            out = keras.ops.convert_to_numpy(act(x))
        except Exception as e:  # noqa: BLE001
            raise _fail(name, f"calling it on a tensor of shape {shape} failed: {_named(e)}") from None
        if tuple(out.shape) != shape:
            raise _fail(name, f"an activation keeps its input's shape; on a tensor of shape {shape} it "
                              f"returned shape {tuple(out.shape)}")
        try:
            again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(act))
            again(x)
        except Exception as e:  # noqa: BLE001
            fix = (" (give __init__ **kwargs and pass them to super().__init__(**kwargs); override get_config "
                   "for arguments of your own)" if c.kind == "layer" else "")
            raise _fail(name, f"Keras cannot save and load it back: {_named(e)}{fix}") from None
    _CHECKED.add(key)
    return c


def register(*names: str) -> dict[str, Any]:
    """Make models using these custom activations loadable in this process (a fresh one): import
    and register each, exactly as the sweep did. Returns `{registered name: object}`, which
    `mlflow.keras.load_model(uri, custom_objects=...)` also takes."""
    import keras

    out = {}
    for name in names:
        c = load(name)
        out[keras.saving.get_registered_name(c.obj)] = c.obj
    return out


def params(name: str) -> dict[str, str]:
    """What a trial's MLflow run logs about a custom activation besides its name: the file its code
    came from, the SHA-256 of that file, and whether it is a layer class or a function."""
    c = load(name)
    return {"activation.file": c.file, "activation.sha256": c.sha256, "activation.kind": c.kind}


def used_by(model: Any) -> list[Custom]:
    """The custom activations a Keras model uses: those loaded here whose registered name its
    config holds (as a layer's class, or as the function an Activation or a linear layer calls)."""
    import json

    import keras

    config = json.dumps(model.get_config(), default=str)
    cwd = os.getcwd()
    return [c for (_, where), c in _LOADED.items()
            if where == cwd and json.dumps(keras.saving.get_registered_name(c.obj)) in config]


def _installed(file: Path) -> bool:
    return any(part in ("site-packages", "dist-packages") for part in file.parts)


def code(c: Custom) -> tuple[Path | None, dict[str, str]]:
    """What a model using `c` carries to load without this working directory: the file or package
    folder to copy beside its loader (None for a module of an installed package: a requirement,
    not code), and how that loader imports and registers it: {"registered": Keras' name,
    "module": the module to import, "attr": the name in it, "file": the copied file to import by
    path (a file.py:Name activation), else ""}."""
    import keras

    where, attr = _split(c.name)
    entry = {"registered": keras.saving.get_registered_name(c.obj), "attr": attr, "file": ""}
    file = Path(c.file)
    if _is_file(where):
        return file, {**entry, "module": f"_sweep_custom_{file.stem}_{c.sha256[:10]}", "file": file.name}
    entry["module"] = where
    if not file.is_file() or _installed(file):
        return None, entry
    depth = where.count(".") + (file.name == "__init__.py")  # folders up to the top-level package
    return (file if depth == 0 else file.parents[depth - 1]), entry
