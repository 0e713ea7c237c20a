"""A custom activation for tests that need trials of two workers training at the same moment.

`Rendezvous` is a ReLU. The first time a process trains through it, it waits until
`SWEEP_TEST_RENDEZVOUS_N` processes (default 2) have done the same, each leaving its pid in the
folder `SWEEP_TEST_RENDEZVOUS`. Tests then line two workers up by an event (each one's trial has
started training), not by the clock: a worker whose TensorFlow import lags cannot find the other's
trials already over. Without the variable it is a plain ReLU. It waits only in training (Keras
passes `training=True`), so sweep's check of a custom activation and prediction never wait.

Used as `rendezvous.py:Rendezvous`, copied into the study's working directory.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import keras

FOLDER, COUNT = "SWEEP_TEST_RENDEZVOUS", "SWEEP_TEST_RENDEZVOUS_N"
DEADLINE = 300  # a safety net only: the test fails on its own deadline first


def meet() -> None:
    folder = os.environ.get(FOLDER)
    if not folder:
        return
    Path(folder, str(os.getpid())).touch()
    n = int(os.environ.get(COUNT, "2"))
    deadline = time.monotonic() + DEADLINE
    while len(os.listdir(folder)) < n and time.monotonic() < deadline:
        time.sleep(0.05)


class Rendezvous(keras.layers.Layer):
    def call(self, x: object, training: bool | None = None) -> object:
        if training:
            meet()
        return keras.ops.relu(x)
