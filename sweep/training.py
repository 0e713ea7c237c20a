"""Training one model: compile, fit with callbacks, evaluate. Plain parameters, no Optuna."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sweep.errors import TrialFailed

if TYPE_CHECKING:
    import keras

    from sweep.config import TrainingConfig
    from sweep.data import Dataset



def numeric(logs: dict[str, Any] | None) -> dict[str, float]:
    """The numbers among an epoch's Keras logs, as plain floats computed now (on the caller's
    thread, not later on a sender's): what every epoch callback records, shows or logs."""
    out = {}
    for k, v in (logs or {}).items():
        try:
            out[k] = float(v)
        except (TypeError, ValueError):
            continue
    return out

@dataclass
class Result:
    history: dict[str, list[float]]
    test: dict[str, float]
    epoch_seconds: list[float] = field(default_factory=list)

    @property
    def mean_epoch_seconds(self) -> float | None:
        return sum(self.epoch_seconds) / len(self.epoch_seconds) if self.epoch_seconds else None


def _optimizer(training: TrainingConfig) -> keras.optimizers.Optimizer:
    import keras

    cls = {
        "adam": keras.optimizers.Adam,
        "adamw": keras.optimizers.AdamW,
        "sgd": keras.optimizers.SGD,
        "rmsprop": keras.optimizers.RMSprop,
    }[training.optimizer]
    return cls(learning_rate=training.learning_rate)


def compile_model(model: keras.Model, training: TrainingConfig) -> None:
    """The loss that fits the model's output: one sigmoid unit (a 2-class target) -> binary
    cross-entropy; one unit per class -> categorical cross-entropy on class indices. Either way
    `evaluate` returns (loss, accuracy), so test_loss and test_accuracy mean the same for both."""
    import keras

    if model.output_shape[-1] == 1:
        # labels 0/1; explicit, rather than Keras guessing "accuracy" from the shapes
        loss, accuracy = keras.losses.BinaryCrossentropy(), keras.metrics.BinaryAccuracy(name="accuracy")
    else:
        # sparse labels: the same loss as the tutorials' one-hot categorical_crossentropy
        loss, accuracy = "sparse_categorical_crossentropy", "accuracy"
    model.compile(optimizer=_optimizer(training), loss=loss, metrics=[accuracy])


def _callback_base() -> type:
    import keras

    return keras.callbacks.Callback


def make_epoch_timer() -> Any:
    """A callback that measures wall-clock seconds per training epoch into `logs['epoch_seconds']`.

    It must run first so later callbacks (tracking) see the value.
    """

    class EpochTimer(_callback_base()):
        def __init__(self) -> None:
            super().__init__()
            self.seconds: list[float] = []
            self._t0 = 0.0

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self._t0 = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            # validation is inside the epoch in Keras; it is counted, as users see it in fit()
            dt = time.perf_counter() - self._t0
            self.seconds.append(dt)
            if logs is not None:
                logs["epoch_seconds"] = dt

    return EpochTimer()


def make_nan_guard() -> Any:
    """Stop a diverging trial at once with the reason, rather than training on NaNs."""

    class NanGuard(_callback_base()):
        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(float(loss)):
                raise TrialFailed(f"loss became {float(loss)} at batch {batch}")

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            for k, v in (logs or {}).items():
                if k.endswith("loss") and not math.isfinite(float(v)):
                    raise TrialFailed(f"{k} became {float(v)} at epoch {epoch}")

    return NanGuard()


def train(
    model: keras.Model,
    data: Dataset,
    training: TrainingConfig,
    seed: int,
    callbacks: list[Any] | None = None,
) -> Result:
    """Compile and fit `model`, then evaluate it on the test set.

    `callbacks` run after the epoch timer and before the NaN guard, in the order given.
    """
    from sweep.data import pipelines

    compile_model(model, training)
    train_ds, val_ds, test_ds = pipelines(data, training.batch_size, seed)
    timer = make_epoch_timer()
    hist = model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=training.epochs,
        callbacks=[timer, *(callbacks or []), make_nan_guard()],
        shuffle=False,  # the tf.data pipeline shuffles, with the trial's seed
        verbose=0,
    )
    test_loss, test_acc = model.evaluate(test_ds, verbose=0)
    if not math.isfinite(test_loss):
        raise TrialFailed(f"test_loss is {test_loss}")
    history = {k: [float(v) for v in vs] for k, vs in hist.history.items()}
    return Result(history, {"test_loss": float(test_loss), "test_accuracy": float(test_acc)},
                  timer.seconds)
