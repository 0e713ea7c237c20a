"""Per-epoch training time of the seed CNN on full MNIST, per activation, side by side in one run.

Also times the tutorials' own way (a Sequential model fit on NumPy arrays with
`validation_split=0.2`) against sweep's tf.data pipeline, so the ratio says what sweep costs.

    python benchmarks/epoch_time.py [--epochs 2] [--npz ../shared/data/mnist.npz]

Prints seconds per epoch (the first epoch, which includes tracing, is reported apart) and ratios
against ReLU and against the tutorial script. Never part of the test run.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

VARIANTS = {
    "relu": {"activation": "relu"},
    "leaky_relu(0.1)": {"activation": "leaky_relu", "leaky_alpha": 0.1},
    "prelu(zeros)": {"activation": "prelu", "prelu_alpha_init": "zeros"},
    "prelu(0.25)": {"activation": "prelu", "prelu_alpha_init": 0.25},
}


def tutorial_epochs(x, y, epochs: int) -> list[float]:  # noqa: ANN001
    """The tutorials' script: Sequential, one-hot labels, fit(numpy, validation_split=0.2)."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((28, 28, 1)),
        layers.Conv2D(32, (3, 3)), layers.ReLU(), layers.MaxPooling2D((2, 2)), layers.Dropout(0.25),
        layers.Conv2D(64, (3, 3)), layers.ReLU(), layers.MaxPooling2D((2, 2)), layers.Dropout(0.25),
        layers.Flatten(), layers.Dense(256), layers.ReLU(), layers.Dense(10, activation="softmax"),
    ])
    model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    times: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):  # noqa: ANN001, ANN201
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):  # noqa: ANN001, ANN201
            times.append(time.perf_counter() - self.t)

    model.fit(x, keras.utils.to_categorical(y, 10), batch_size=250, epochs=epochs,
              validation_split=0.2, verbose=0, callbacks=[Timer()])
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--npz", default=str(Path(__file__).resolve().parents[2] / "shared/data/mnist.npz"))
    args = ap.parse_args()

    import keras

    from sweep.config import DatasetConfig, TrainingConfig
    from sweep.data import load
    from sweep.models import build_model
    from sweep.training import train

    data = load(DatasetConfig(name="npz", path=args.npz, validation_split=0.2))
    training = TrainingConfig(epochs=args.epochs, batch_size=250)
    print(f"full MNIST: {len(data.x_train)} train images ({int(len(data.x_train) * 0.8)} fitted per epoch), "
          f"batch 250, {args.epochs} epochs each, {os.cpu_count()} cores")
    rows: dict[str, list[float]] = {}
    rows["tutorial script (relu)"] = tutorial_epochs(data.x_train, data.y_train, args.epochs)
    for name, params in VARIANTS.items():
        keras.backend.clear_session()
        keras.utils.set_random_seed(0)
        result = train(build_model("seed_cnn", data.input_shape, data.num_classes, **params), data, training, 0)
        rows[f"sweep {name}"] = result.epoch_seconds

    def steady(t: list[float]) -> float:
        later = t[1:] or t
        return sum(later) / len(later)

    relu = steady(rows["sweep relu"])
    tut = steady(rows["tutorial script (relu)"])
    print(f"{'variant':<26}{'epoch 1 s':>10}{'later s/epoch':>15}{'vs sweep relu':>15}{'vs tutorial':>13}")
    for name, t in rows.items():
        s = steady(t)
        print(f"{name:<26}{t[0]:>10.2f}{s:>15.2f}{s / relu:>15.2f}{s / tut:>13.2f}")


if __name__ == "__main__":
    main()
