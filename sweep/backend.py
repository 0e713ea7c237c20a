"""Which Keras backend a trial process trains on, chosen before Keras is imported.

Keras reads its backend once, from `KERAS_BACKEND`, when it is first imported. sweep chooses it:
- `KERAS_BACKEND` set by the user wins (tensorflow, jax or torch, if installed);
- else JAX where an NVIDIA GPU is visible and JAX is installed (`pip install -e '.[cuda]'`):
  sweep's seed CNN trained 100k samples/s on an H200 there (benchmarks/README.md, "Trials per GPU");
- else TensorFlow, on the CPU: `pip install -e .` brings `tensorflow-cpu` only, and Keras on JAX
  was 2.5x slower than TensorFlow on these CPUs.
Only this module sets `KERAS_BACKEND`, and only in the process that trains; `describe` then names
the backend and the device it runs on, for the first line of `sweep run` and each trial's run.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from sweep.errors import ConfigError
from sweep.lifecycle import export

log = logging.getLogger(__name__)

ENV = "KERAS_BACKEND"
BACKENDS = ("tensorflow", "jax", "torch")
# the package that provides each backend: `tensorflow-cpu` installs the module `tensorflow`
INSTALL = {"tensorflow": "pip install -e .", "jax": "pip install -e '.[cuda]' (GPU) or pip install jax (CPU)",
           "torch": "pip install torch"}
_NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")  # one folder per GPU the NVIDIA driver sees


@dataclass(frozen=True)
class Choice:
    name: str  # the Keras backend
    why: str  # how it was chosen, for the first line


def gpu_visible(env: dict[str, str] | os._Environ = os.environ) -> bool:
    """An NVIDIA GPU this process may use, without importing CUDA: the driver lists one, and
    `CUDA_VISIBLE_DEVICES` does not hide them all."""
    hidden = env.get("CUDA_VISIBLE_DEVICES")
    if hidden is not None and hidden.strip() in ("", "-1"):
        return False
    try:
        return any(_NVIDIA_GPUS.iterdir())
    except OSError:
        return False


def installed(backend: str) -> bool:
    return importlib.util.find_spec(backend) is not None


def choose(env: dict[str, str] | os._Environ = os.environ) -> Choice:
    """The backend to train on; a `KERAS_BACKEND` that is not one, or not installed, is a ConfigError."""
    forced = env.get(ENV)
    if forced:
        if forced not in BACKENDS:
            raise ConfigError(ENV, [f"expected one of {', '.join(BACKENDS)}, got {forced!r}"])
        if not installed(forced):
            raise ConfigError(ENV, [f"{forced} is not installed in this environment ({INSTALL[forced]}), "
                                    f"or unset {ENV} to let sweep choose"])
        return Choice(forced, f"{ENV}={forced}")
    if gpu_visible(env):
        if installed("jax"):
            return Choice("jax", "auto: a GPU is visible")
        return Choice("tensorflow", "auto: a GPU is visible, but JAX is not installed "
                                    "(pip install -e '.[cuda]' trains on it)")
    return Choice("tensorflow", "auto: no GPU visible")


@functools.lru_cache(maxsize=None)
def use() -> Choice:
    """Choose, and set it for Keras to read at its import. Once per process: Keras keeps the
    backend it was imported with, and a second study in the same process (a search's
    confirmation) says why it was chosen as the first did, not `KERAS_BACKEND` set here."""
    import sys

    choice = choose()
    if "keras" in sys.modules:
        import keras

        current = keras.backend.backend()
        if current != choice.name:
            raise ConfigError(ENV, [f"Keras already runs on {current} in this process, not {choice.name}"])
        return choice
    export(ENV, choice.name)
    return choice


@functools.lru_cache(maxsize=None)
def describe() -> tuple[str, str]:
    """(backend and its version, device) of the Keras imported here: ("tensorflow 2.21.0", "CPU"),
    ("jax 0.10.2", "GPU NVIDIA H200"). Imports the backend."""
    import keras

    name = keras.backend.backend()
    module = importlib.import_module(name)
    version = getattr(module, "__version__", "?")
    return f"{name} {version}", _device(name)


def _device(name: str) -> str:
    try:
        if name == "jax":
            import jax

            d = jax.devices()[0]
            return "CPU" if d.platform == "cpu" else f"{d.platform.upper()} {d.device_kind}" + (
                f" (x{len(jax.devices())})" if len(jax.devices()) > 1 else "")
        if name == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            if not gpus:
                return "CPU"
            details = tf.config.experimental.get_device_details(gpus[0])
            return f"GPU {details.get('device_name', gpus[0].name)}" + (f" (x{len(gpus)})" if len(gpus) > 1 else "")
        if name == "torch":
            import torch

            return f"GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "CPU"
    except Exception as e:  # noqa: BLE001 - naming the device never stops a sweep
        log.debug("cannot name the device of %s: %s", name, e)
    return "?"


def params() -> dict[str, str]:
    """What each trial's MLflow run records of where it trained."""
    backend, device = describe()
    return {"keras_backend": backend, "device": device}
