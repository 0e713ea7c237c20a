"""What do the dying-unit diagnostics cost? Trains the seed CNN with and without them, side by side.

    python benchmarks/diagnostics_cost.py [--data ../shared/data/mnist.npz] [--train-samples 6000]
        [--epochs 3] [--rounds 3] [--probe-samples 256] [--activation relu]

Each round trains the same model (same seed) once without and once with the callbacks, in
alternating order so drift in machine load hits both sides; a warm-up run goes first. Prints the
wall-clock time of every fit, the callbacks' own time, and the ratio of medians. Not a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "mnist.npz"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a .npz in keras load_data() layout")
    ap.add_argument("--train-samples", type=int, default=6000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--probe-samples", type=int, default=256)
    ap.add_argument("--activation", default="relu")
    args = ap.parse_args()

    import keras

    from sweep import data as data_mod
    from sweep import diagnostics
    from sweep.config import DatasetConfig, DiagnosticsConfig, TrainingConfig
    from sweep.models import activation_layers, build_model
    from sweep.training import train

    if not args.data.is_file():
        sys.exit(f"no dataset at {args.data}; pass --data PATH.npz")
    data = data_mod.load(DatasetConfig(name="npz", path=args.data, train_samples=args.train_samples,
                                       test_samples=1000))
    training = TrainingConfig(epochs=args.epochs, batch_size=250)
    diag = DiagnosticsConfig(probe_samples=args.probe_samples)
    layers = activation_layers("seed_cnn")

    def fit(with_diagnostics: bool, epochs: int | None = None) -> tuple[float, float]:
        keras.backend.clear_session()
        keras.utils.set_random_seed(0)
        model = build_model("seed_cnn", data.input_shape, data.num_classes, activation=args.activation)
        cbs = diagnostics.callbacks(diag, data, layers) if with_diagnostics else []
        cfg = training if epochs is None else training.model_copy(update={"epochs": epochs})
        t0 = time.perf_counter()
        train(model, data, cfg, seed=0, callbacks=cbs)
        return time.perf_counter() - t0, sum(cbs[0].seconds) if cbs else 0.0

    print(f"seed_cnn/{args.activation}: {len(data.x_train)} images ({data.validation_split:.0%} validation), "
          f"{args.epochs} epochs, batch {training.batch_size}, probe {args.probe_samples}; "
          f"{args.rounds} round(s); {os.cpu_count()} CPU(s)")
    fit(True, epochs=1)  # warm-up: first graph traces and thread pools
    plain, with_diag, own = [], [], []
    for r in range(args.rounds):
        order = (False, True) if r % 2 == 0 else (True, False)
        for flag in order:
            secs, cb = fit(flag)
            (with_diag if flag else plain).append(secs)
            if flag:
                own.append(cb)
            print(f"round {r + 1}: {'with   ' if flag else 'without'} diagnostics  {secs:7.2f} s"
                  + (f"  (callbacks' own time {cb:.3f} s)" if flag else ""), flush=True)
    a, b = statistics.median(plain), statistics.median(with_diag)
    print(f"median without {a:.2f} s, with {b:.2f} s: ratio with/without = {b / a:.3f}")
    print(f"callbacks' own time: median {statistics.median(own):.3f} s per fit = "
          f"{statistics.median(own) / b:.1%} of a fit, {statistics.median(own) / args.epochs * 1000:.0f} ms per epoch")


if __name__ == "__main__":
    main()
