"""The tutorials' MNIST CNN as the tutorials run it: one fresh process, NumPy arrays, one-hot labels,
`model.fit(x, y, batch_size=250, validation_split=0.2)`, then `evaluate` on the test set.

    python benchmarks/tutorial_script.py --activation prelu --alpha-init 0.25 --seed 1 --epochs 3 \
        --npz data.npz

Prints one JSON line: seconds per epoch, the fit and the whole process, samples fitted, test
accuracy. Used by `sweep_vs_scripts.py` as the baseline; no sweep code is imported.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--activation", choices=["relu", "leaky_relu", "prelu"], default="relu")
    ap.add_argument("--alpha", type=float, default=0.1, help="Leaky ReLU's slope")
    ap.add_argument("--alpha-init", default="zeros", help="PReLU's alpha initializer: zeros or a number")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--npz", required=True)
    args = ap.parse_args()

    import keras
    import numpy as np
    from keras import layers

    with np.load(args.npz) as f:
        x_train, y_train, x_test, y_test = f["x_train"], f["y_train"], f["x_test"], f["y_test"]
    x_train = (x_train.astype("float32") / 255.0)[..., None]
    x_test = (x_test.astype("float32") / 255.0)[..., None]

    def act() -> keras.layers.Layer:
        if args.activation == "leaky_relu":
            return layers.LeakyReLU(negative_slope=args.alpha)
        if args.activation == "prelu":
            init = "zeros" if args.alpha_init == "zeros" else keras.initializers.Constant(float(args.alpha_init))
            return layers.PReLU(alpha_initializer=init)
        return layers.ReLU()

    keras.utils.set_random_seed(args.seed)
    model = keras.Sequential([
        keras.Input((28, 28, 1)),
        layers.Conv2D(32, (3, 3)), act(), layers.MaxPooling2D((2, 2)), layers.Dropout(0.25),
        layers.Conv2D(64, (3, 3)), act(), layers.MaxPooling2D((2, 2)), layers.Dropout(0.25),
        layers.Flatten(), layers.Dense(256), act(), layers.Dense(10, activation="softmax"),
    ])
    model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    epochs: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):  # noqa: ANN001, ANN201
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):  # noqa: ANN001, ANN201
            epochs.append(time.perf_counter() - self.t)

    t0 = time.perf_counter()
    model.fit(x_train, keras.utils.to_categorical(y_train, 10), batch_size=250, epochs=args.epochs,
              validation_split=0.2, verbose=0, callbacks=[Timer()])
    fit = time.perf_counter() - t0
    _, acc = model.evaluate(x_test, keras.utils.to_categorical(y_test, 10), verbose=0)
    print(json.dumps({"epoch_seconds": epochs, "fit_seconds": fit, "process_seconds": time.perf_counter() - STARTED,
                      "fitted": int(len(x_train) * 0.8) * args.epochs, "test_accuracy": float(acc)}))


if __name__ == "__main__":
    main()
