"""Custom activations named by import path (sweep/models/custom.py), end to end over real parts:
a tiny sweep with the shipped examples/my_relu.py beside a built-in, its MLflow runs, its models
loaded back in a fresh process, and every bad name refused by the CLI before anything is written."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
from helpers import study_dict, write_study, write_tiny_npz
from mlflow import MlflowClient
from optuna.trial import TrialState

import sweep
from sweep import config
from sweep.errors import ConfigError
from sweep.runner import objective as obj

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "my_relu.py"
LAYER, FUNCTION = "examples/my_relu.py:MyReLU", "examples/my_relu.py:my_relu"


def _env() -> dict[str, str]:
    # a child process imports this checkout's sweep, whatever `pip install -e` points at
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The shipped example, copied to examples/ of the working directory, beside relu."""
    tmp = tmp_path_factory.mktemp("custom")
    (tmp / "examples").mkdir()
    shutil.copy(EXAMPLE, tmp / "examples" / "my_relu.py")
    d = study_dict(write_tiny_npz(tmp / "tiny.npz"), configs=None, sampler="grid",
                   space={"activation": ["relu", LAYER, FUNCTION]})
    d["study"] = "custom"
    d["training"]["epochs"] = 1
    d["diagnostics"] = {"probe_samples": 40}
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
    assert sorted(trials) == sorted(["relu", LAYER, FUNCTION])
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


FRESH = """
import json, sys
import mlflow, numpy as np
mlflow.set_tracking_uri(sys.argv[1])
uris, x = json.loads(sys.argv[2]), np.load(sys.argv[3])
out = {}
try:
    mlflow.keras.load_model(uris[0][1])
    out["unregistered"] = "loaded"
except Exception as e:
    out["unregistered"] = type(e).__name__
from sweep.models import custom
custom.register(*[name for name, _ in uris])
probe = np.linspace(-2, 2, 9, dtype="float32").reshape(1, 9)
for name, uri in uris:
    m = mlflow.keras.load_model(uri)
    act = m.get_layer("act_conv1")
    out[name] = {"layer": type(act).__name__, "act": np.asarray(act(probe)).tolist(),
                 "pred": m.predict(x, verbose=0).tolist()}
print(json.dumps(out))
"""


def test_models_load_back_through_mlflow_in_a_fresh_process(swept: dict[str, Any]) -> None:
    tmp = swept["tmp"]
    with np.load(tmp / "tiny.npz") as f:
        x = (f["x_test"][:16].astype("float32") / 255.0)[..., None]
    np.save(tmp / "x.npy", x)
    uris = [[name, swept["trials"][name].user_attrs[obj.MODEL_URI]] for name in (LAYER, FUNCTION)]
    r = subprocess.run([sys.executable, "-c", FRESH, swept["tracking"], json.dumps(uris), str(tmp / "x.npy")],
                       cwd=tmp, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    # Keras 3 never imports a saved file's module: unregistered, the class is unknown there
    assert out["unregistered"] == "TypeError"
    mlflow.set_tracking_uri(swept["tracking"])
    probe = np.linspace(-2, 2, 9).reshape(1, 9)
    for (name, uri), layer in zip(uris, ("MyReLU", "Activation")):
        assert out[name]["layer"] == layer
        np.testing.assert_allclose(out[name]["act"], np.maximum(probe, 0.0), atol=1e-7)
        here = mlflow.keras.load_model(uri).predict(x, verbose=0)
        np.testing.assert_allclose(out[name]["pred"], here, rtol=1e-5, atol=1e-6)


def test_sweep_load_model_registers_the_custom_activation_in_a_fresh_process(swept: dict[str, Any]) -> None:
    """`sweep.load_model` needs nothing but the study: it registers what the trial used."""
    tmp, number = swept["tmp"], swept["trials"][LAYER].number
    code = ("import sys, sweep\n"
            "m = sweep.load_model('custom', trial=int(sys.argv[3]), storage=sys.argv[1], tracking_uri=sys.argv[2])\n"
            "print('LAYERS', sorted({type(l).__name__ for l in m.layers}))\n")
    r = subprocess.run([sys.executable, "-c", code, swept["storage"], swept["tracking"], str(number)], cwd=tmp,
                       env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "'MyReLU'" in r.stdout.splitlines()[-1]


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
