"""Custom activations named by import path (sweep/models/custom.py), end to end over real parts:
a tiny sweep with the shipped examples/my_relu.py and a package's module beside a built-in, its
MLflow runs, its models loaded back and served by MLflow's own tools in fresh processes elsewhere
(sweep/tracking/model_code.py), and every bad name refused by the CLI before anything is written."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
from helpers import TESTS, free_port, predicted_test_metrics, study_dict, write_study, write_tiny_npz
from mlflow import MlflowClient
from optuna.trial import TrialState

import sweep
from sweep import config
from sweep.errors import ConfigError
from sweep.runner import objective as obj

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "my_relu.py"
LAYER, FUNCTION = "examples/my_relu.py:MyReLU", "examples/my_relu.py:my_relu"
PACKAGE = "acts_pkg.half:HalfLeaky"  # a module of a package in the working directory
HALF_LEAKY = """
import keras


class HalfLeaky(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)

    def call(self, x):
        return keras.ops.where(x > 0, x, 0.5 * x)
"""


def _env() -> dict[str, str]:
    # a child process imports this checkout's sweep, whatever `pip install -e` points at
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The shipped example, copied to examples/ of the working directory, beside relu."""
    tmp = tmp_path_factory.mktemp("custom")
    (tmp / "examples").mkdir()
    shutil.copy(EXAMPLE, tmp / "examples" / "my_relu.py")
    (tmp / "acts_pkg").mkdir()
    (tmp / "acts_pkg" / "__init__.py").write_text("")
    (tmp / "acts_pkg" / "half.py").write_text(HALF_LEAKY)
    d = study_dict(write_tiny_npz(tmp / "tiny.npz"), configs=None, sampler="grid",
                   space={"activation": ["relu", LAYER, FUNCTION, PACKAGE]})
    d["study"] = "custom"
    d["training"]["epochs"] = 1
    d["diagnostics"] = {"probe_samples": 40}
    d["tracking"] = {"keep_models": "all"}  # every trial's model is loaded below, not only the best 3
    storage, tracking = f"sqlite:///{tmp / 'optuna.db'}", f"sqlite:///{tmp / 'mlflow.db'}"
    old = os.getcwd()
    os.chdir(tmp)  # the relative names are read from here
    try:
        study = sweep.run(write_study(tmp, d), storage=storage, tracking_uri=tracking)
    finally:
        os.chdir(old)
    trials = {t.params["activation"]: t for t in study.get_trials()}
    return {"tmp": tmp, "trials": trials, "tracking": tracking, "storage": storage}


def test_custom_activations_run_beside_builtins_under_their_names(swept: dict[str, Any]) -> None:
    trials = swept["trials"]
    assert sorted(trials) == sorted(["relu", LAYER, FUNCTION, PACKAGE])
    assert all(t.state == TrialState.COMPLETE for t in trials.values())
    assert all(t.params == {"activation": name} for name, t in trials.items())  # no searched params


def test_mlflow_run_logs_import_path_file_and_source_hash(swept: dict[str, Any]) -> None:
    client = MlflowClient(swept["tracking"])
    copy = swept["tmp"] / "examples" / "my_relu.py"
    for name, kind in ((LAYER, "layer"), (FUNCTION, "function")):
        logged = client.get_run(swept["trials"][name].user_attrs[obj.RUN_ID]).data.params
        assert logged["activation"] == name
        assert logged["activation.file"] == str(copy.resolve())
        assert logged["activation.sha256"] == hashlib.sha256(copy.read_bytes()).hexdigest()
        assert logged["activation.kind"] == kind
    relu = client.get_run(swept["trials"]["relu"].user_attrs[obj.RUN_ID]).data.params
    assert not any(k.startswith("activation.") for k in relu)


# A fresh process that cannot import sweep (PYTHONPATH=no-sweep/): a model must load with only
# what MLflow recorded. `sitecustomize` runs at start-up in every Python process started with it,
# so the scoring server that `mlflow models serve` starts cannot import sweep either.
NO_SWEEP = """
import sys


class _NoSweep:
    def find_spec(self, name, path=None, target=None):
        if name == "sweep" or name.startswith("sweep."):
            raise ImportError(f"{name}: sweep is not importable in this process (the test forbids it)")


sys.meta_path.insert(0, _NoSweep())
"""

FRESH = """
import json, sys
import mlflow, numpy as np
sys.path.insert(0, sys.argv[4])
from helpers import predicted_test_metrics
mlflow.set_tracking_uri(sys.argv[1])
uris, x = json.loads(sys.argv[2]), np.load(sys.argv[3])
out = {}
try:
    import sweep
    out["sweep"] = "imported"
except ImportError:
    out["sweep"] = "not importable"
try:
    mlflow.keras.load_model(uris[1][1])  # a custom activation's, before anything registered it
    out["unregistered"] = "loaded"
except Exception as e:
    out["unregistered"] = type(e).__name__
probe = np.linspace(-2, 2, 9, dtype="float32").reshape(1, 9)
for name, uri in uris:
    m = mlflow.pyfunc.load_model(uri)
    act = m.get_raw_model().get_layer("act_conv1")
    pred = np.asarray(m.predict(x))
    out[name] = {"layer": type(act).__name__, "act": np.asarray(act(probe)).tolist(),
                 "metrics": predicted_test_metrics(pred, sys.argv[5])}
print(json.dumps(out))
"""


def _no_sweep_env(tmp: Path) -> dict[str, str]:
    (tmp / "no-sweep").mkdir(exist_ok=True)
    (tmp / "no-sweep" / "sitecustomize.py").write_text(NO_SWEEP)
    return {**os.environ, "PYTHONPATH": str(tmp / "no-sweep")}


def _elsewhere(tmp: Path) -> Path:
    """An empty folder: no activation file, no package, no study file."""
    (tmp / "elsewhere").mkdir(exist_ok=True)
    return tmp / "elsewhere"


def _test_images(tmp: Path) -> Path:
    with np.load(tmp / "tiny.npz") as f:
        x = f["x_test"].astype("float32")[..., None] / 255.0  # scaled as sweep scales them
    np.save(tmp / "x.npy", x)
    return tmp / "x.npy"


def _assert_recorded(trial: Any, metrics: Any, what: str) -> None:
    """Predictions of the trial's own model give the test metrics the trial recorded."""
    loss, acc = metrics
    assert acc == pytest.approx(trial.user_attrs["test_accuracy"], abs=1e-6), what
    assert loss == pytest.approx(trial.user_attrs["test_loss"], rel=1e-4), what


def test_every_model_loads_through_pyfunc_elsewhere_without_sweep(swept: dict[str, Any]) -> None:
    """A built-in activation, a custom layer class, a custom function and a custom module of a
    package: each trial's model loads with `mlflow.pyfunc.load_model` in one fresh process, in an
    empty folder, where sweep cannot be imported, and predicts what the trial recorded."""
    tmp, trials = swept["tmp"], swept["trials"]
    names = ["relu", LAYER, FUNCTION, PACKAGE]
    uris = [[name, trials[name].user_attrs[obj.MODEL_URI]] for name in names]
    r = subprocess.run([sys.executable, "-c", FRESH, swept["tracking"], json.dumps(uris), str(_test_images(tmp)),
                        str(TESTS), str(tmp / "tiny.npz")], cwd=_elsewhere(tmp), env=_no_sweep_env(tmp),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["sweep"] == "not importable"
    # Keras 3 never imports a saved file's module: unregistered, the class is unknown to plain
    # mlflow.keras.load_model (the README says what it needs)
    assert out["unregistered"] == "TypeError"
    probe = np.linspace(-2, 2, 9).reshape(1, 9)
    for name, layer, act in (("relu", "ReLU", np.maximum(probe, 0.0)),
                             (LAYER, "MyReLU", np.maximum(probe, 0.0)),
                             (FUNCTION, "Activation", np.maximum(probe, 0.0)),
                             (PACKAGE, "HalfLeaky", np.where(probe > 0, probe, 0.5 * probe))):
        assert out[name]["layer"] == layer, name
        np.testing.assert_allclose(out[name]["act"], act, atol=1e-6)
        _assert_recorded(trials[name], out[name]["metrics"], name)


def _serve(uri: str, port: int, tmp: Path, tracking: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port)], cwd=_elsewhere(tmp), stdout=log.open("w"), stderr=subprocess.STDOUT,
        env={**_no_sweep_env(tmp), "MLFLOW_TRACKING_URI": tracking}, start_new_session=True)


def _invoke(port: int, x: np.ndarray, proc: subprocess.Popen, log: Path, deadline: float) -> np.ndarray:
    body = json.dumps({"inputs": x.tolist()}).encode()
    while True:
        try:
            req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=60) as resp:
                return np.asarray(json.loads(resp.read())["predictions"])
        except (urllib.error.URLError, ConnectionError):
            assert proc.poll() is None, f"mlflow models serve exited {proc.returncode}: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"mlflow models serve never answered: {log.read_text()[-3000:]}"
            time.sleep(0.5)


def test_mlflow_models_serve_answers_with_each_models_own_predictions(swept: dict[str, Any]) -> None:
    """`mlflow models serve --env-manager local` of a built-in's, a custom class's and a custom
    function's model, and of models:/STUDY@best, each started in an empty folder where sweep
    cannot be imported: /invocations answers with that model's own predictions."""
    tmp, trials = swept["tmp"], swept["trials"]
    x = np.load(_test_images(tmp))
    best = MlflowClient(swept["tracking"]).get_model_version_by_alias("custom", "best")
    best_trial = next(n for n, t in trials.items() if t.number == int(best.tags["sweep.trial"]))
    served = {name: trials[name].user_attrs[obj.MODEL_URI] for name in ("relu", LAYER, FUNCTION)}
    served["@best"] = "models:/custom@best"
    procs: dict[str, tuple[subprocess.Popen, int, Path]] = {}
    try:
        for name, uri in served.items():
            port, log = free_port(), tmp / f"serve-{len(procs)}.log"
            procs[name] = (_serve(uri, port, tmp, swept["tracking"], log), port, log)
        deadline = time.monotonic() + 240
        answers = {name: _invoke(port, x, proc, log, deadline) for name, (proc, port, log) in procs.items()}
    finally:
        for proc, _, _ in procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc, _, _ in procs.values():
            proc.wait(timeout=60)
    for name, answer in answers.items():
        _assert_recorded(trials[best_trial if name == "@best" else name], predicted_test_metrics(answer, tmp / "tiny.npz"),
                         name)


def test_sweep_load_model_needs_no_activation_file_in_the_working_directory(swept: dict[str, Any]) -> None:
    """`sweep.load_model` in a fresh process, in an empty folder: the class and the function come
    with the model, not from examples/ of the folder the study ran in."""
    tmp = swept["tmp"]
    numbers = [swept["trials"][name].number for name in (LAYER, FUNCTION)]
    code = ("import json, sys, sweep\n"
            "sys.path.insert(0, sys.argv[4])\n"
            "from helpers import recorded_test_metrics\n"
            "out = []\n"
            "for n in json.loads(sys.argv[3]):\n"
            "    m = sweep.load_model('custom', trial=n, storage=sys.argv[1], tracking_uri=sys.argv[2])\n"
            "    out.append([type(m.get_layer('act_conv1')).__name__, recorded_test_metrics(m, sys.argv[5])])\n"
            "print(json.dumps(out))\n")
    r = subprocess.run([sys.executable, "-c", code, swept["storage"], swept["tracking"], json.dumps(numbers),
                        str(TESTS), str(tmp / "tiny.npz")], cwd=_elsewhere(tmp), env=_env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert [layer for layer, _ in out] == ["MyReLU", "Activation"]
    for name, (_, metrics) in zip((LAYER, FUNCTION), out):
        _assert_recorded(swept["trials"][name], metrics, name)


def test_only_a_custom_activations_model_gets_code_and_a_loader(swept: dict[str, Any]) -> None:
    """A model of built-in activations stays as MLflow's Keras flavor saved it (plain
    `mlflow.keras.load_model` loads it); a custom activation's gets sweep's loader and its code."""
    from mlflow.models import get_model_info

    mlflow.set_tracking_uri(swept["tracking"])
    try:
        conf = {name: get_model_info(t.user_attrs[obj.MODEL_URI]).flavors["python_function"]
                for name, t in swept["trials"].items()}
    finally:
        mlflow.set_tracking_uri(None)
    assert conf["relu"]["loader_module"] == "mlflow.keras" and "code" not in conf["relu"]
    for name in (LAYER, FUNCTION, PACKAGE):
        assert (conf[name]["loader_module"], conf[name]["code"]) == ("sweep_keras_loader", "code"), name


def test_relative_file_paths_are_read_from_the_working_directory(tmp_path: Path, tiny_npz: Path) -> None:
    (tmp_path / "studies" / "acts").mkdir(parents=True)
    study = write_study(tmp_path / "studies", study_dict(tiny_npz, configs=[{"activation": "acts/mine.py:MyReLU"}]))
    shutil.copy(EXAMPLE, tmp_path / "studies" / "acts" / "mine.py")  # beside the study file: not read
    with pytest.raises(ConfigError) as e:
        config.load(study)
    assert e.value.problems == [
        f"search.configs.0.activation: custom activation 'acts/mine.py:MyReLU': file not found: acts/mine.py "
        f"(relative paths are read from the working directory {Path.cwd()}); expected a Python file defining MyReLU"]
    (tmp_path / "acts").mkdir()
    shutil.copy(EXAMPLE, tmp_path / "acts" / "mine.py")
    assert config.load(study).search.configs[0].params() == {"activation": "acts/mine.py:MyReLU"}


def test_shipped_study_uses_the_shipped_example(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # as the README runs it
    cfg = config.load(ROOT / "studies" / "custom-activation.yaml")
    assert cfg.search.space.activation == ["relu", LAYER, FUNCTION]
    assert (cfg.dataset.name, cfg.model.placement) == ("digits", "layer")


BAD_ACTS = '''
import keras

THRESHOLD = 3


class Plain:
    def __call__(self, x):
        return x


class TutorialReLU(keras.layers.Layer):  # as the tutorials write it: no **kwargs
    def __init__(self):
        super().__init__()

    def call(self, x):
        return keras.ops.maximum(0.0, x)


def pool(x):
    return keras.ops.mean(x, axis=-1)
'''

# name -> what its one line says after "custom activation NAME: "
BAD = {
    "nope/acts.py:MyReLU": "file not found: nope/acts.py (relative paths are read from the working directory",
    "nopkg_for_sweep.acts:MyReLU": "no module named 'nopkg_for_sweep'",
    "bad_acts.py:": "expected package.module:Name or path/to/file.py:Name",
    "broken.py:MyReLU": "importing broken.py failed: SyntaxError",
    "examples/my_relu.py:MyRelu": "examples/my_relu.py has no 'MyRelu'; did you mean 'MyReLU'? it defines MyReLU, my_relu",
    "bad_acts.py:THRESHOLD": "expected a Keras layer class or a function of one tensor, got int 3",
    "bad_acts.py:Plain": "Plain is a class but not a keras.layers.Layer subclass",
    "bad_acts.py:pool": "an activation keeps its input's shape; on a tensor of shape (2, 4) it returned shape (2,)",
    "bad_acts.py:TutorialReLU": "give __init__ **kwargs and pass them to super().__init__(**kwargs)",
}


@pytest.mark.parametrize("name", list(BAD))
def test_cli_refuses_a_bad_custom_activation(name: str, tmp_path: Path, tiny_npz: Path) -> None:
    (tmp_path / "examples").mkdir()
    shutil.copy(EXAMPLE, tmp_path / "examples" / "my_relu.py")
    (tmp_path / "bad_acts.py").write_text(BAD_ACTS)
    (tmp_path / "broken.py").write_text("def f(:\n    pass\n")
    # in the space, beside built-ins
    d = study_dict(tiny_npz, configs=None, sampler="grid", space={"activation": ["relu", name]})
    write_study(tmp_path, d, "bad.yaml")
    before = {p.relative_to(tmp_path) for p in tmp_path.rglob("*")}
    r = subprocess.run([sys.executable, "-m", "sweep", "run", "bad.yaml"], cwd=tmp_path, env=_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr[-3000:]
    assert lines[0].startswith(f"error: bad.yaml: search.space.activation.1: custom activation {name!r}: "), lines[0]
    assert BAD[name] in lines[0], lines[0]
    written = {p.relative_to(tmp_path) for p in tmp_path.rglob("*")} - before
    assert written == set(), f"written on bad input: {written}"
