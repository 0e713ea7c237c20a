"""Long sweeps stay bounded: what a study leaves on disk with and without `tracking.keep_models`,
and how long the read commands take on a study of 10,000 trials.

    python benchmarks/long_sweeps.py [--parts disk,reads] [--trials 20] [--keep 3] [--big 10000]

The study is the issue's: scikit-learn's digits at 28x28 (no download), the seed CNN, 1 epoch a
trial, random search over five activations, `sweep run` on the embedded stores (SQLite, artifacts
in ./sweep-artifacts). It runs twice in fresh folders, once with `keep_models: all` and once with
`keep_models: K`, and reports the artifact bytes each left, split into logged models and the
rest (plots, diagnostics, configs), and how many models are left.

reads: a real 2-trial sweep on tiny synthetic images, then `--big` copies of its first trial added
to the Optuna study (`Study.add_trials`, the same params and attributes, random values), and each
read command timed as a fresh process (median of 3) beside `sweep --help`. Not a test.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "SWEEP_PROGRESS": "plain"}


def study(folder: Path, trials: int, keep: str | int) -> Path:
    import yaml

    d = {"study": "bounded", "dataset": {"name": "digits", "validation_split": 0.2}, "model": "seed_cnn",
         "training": {"epochs": 1, "batch_size": 32},
         "search": {"sampler": "random", "n_trials": trials, "metric": "val_accuracy", "pruner": "none", "seed": 0,
                    "space": {"activation": ["relu", "leaky_relu", "prelu", "elu", "gelu"],
                              "leaky_alpha": {"low": 0.01, "high": 0.5, "log": True}}},
         "tracking": {"keep_models": keep}}
    path = folder / "bounded.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


def bytes_under(folder: Path) -> tuple[int, int, int]:
    """(model bytes, other artifact bytes, models with files) under an MLflow artifact root."""
    models = other = n = 0
    for d in folder.rglob("models/m-*"):
        size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
        models += size
        n += size > 0
    total = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    other = total - models
    return models, other, n


def reads(big: int) -> None:
    import random
    import statistics

    import numpy as np
    import optuna
    import yaml

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="sweep-reads-") as tmp:
        folder = Path(tmp)
        rng = np.random.default_rng(0)
        y = rng.integers(0, 10, 400).astype(np.uint8)
        x = rng.integers(0, 40, (400, 28, 28)).astype(np.uint8)
        np.savez(folder / "tiny.npz", x_train=x[:300], y_train=y[:300], x_test=x[300:], y_test=y[300:])
        d = {"study": "big", "dataset": {"name": "npz", "path": str(folder / "tiny.npz"), "validation_split": 0.2},
             "model": "seed_cnn", "training": {"epochs": 1, "batch_size": 100},
             "search": {"metric": "val_accuracy", "seed": 0, "configs": [{"activation": "relu"}, {"activation": "elu"}]}}
        (folder / "big.yaml").write_text(yaml.safe_dump(d, sort_keys=False))
        r = subprocess.run([sys.executable, "-m", "sweep", "run", "big.yaml"], cwd=folder, env=ENV,
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"sweep run failed ({r.returncode}):\n{r.stderr[-3000:]}")
        study = optuna.load_study(study_name="big", storage=f"sqlite:///{folder / 'sweep-optuna.db'}")
        first = study.trials[0]
        draw = random.Random(0)
        t0 = time.perf_counter()
        study.add_trials([optuna.trial.create_trial(params=dict(first.params), distributions=first.distributions,
                                                    value=0.9 + 0.1 * draw.random(), user_attrs=dict(first.user_attrs))
                          for _ in range(big)])
        print(f"study of {len(study.trials)} trials built in {time.perf_counter() - t0:.0f} s")
        rows = []
        for cmd in (["--help"], ["best", "big"], ["status", "big"], ["trials", "big"], ["compare", "big"]):
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                r = subprocess.run([sys.executable, "-m", "sweep", *cmd], cwd=folder, env=ENV, capture_output=True,
                                   text=True)
                times.append(time.perf_counter() - t0)
                if r.returncode != 0:
                    raise SystemExit(f"sweep {' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-2000:]}")
            rows.append((" ".join(cmd), statistics.median(times)))
        help_s = rows[0][1]
        print(f"{'command':<14}  {'median s':>8}  {'vs --help':>9}")
        for name, t in rows:
            print(f"{name:<14}  {t:>8.2f}  {t / help_s:>9.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--keep", type=int, default=3)
    ap.add_argument("--big", type=int, default=10000, help="trials in the reads study")
    ap.add_argument("--parts", default="disk,reads")
    args = ap.parse_args()
    if "reads" in args.parts:
        reads(args.big)
    if "disk" not in args.parts:
        return
    print(f"{'keep_models':>11}  {'trials':>6}  {'models left':>11}  {'model MB':>8}  {'other MB':>8}  "
          f"{'MB/trial':>8}  {'wall s':>6}")
    for keep in ("all", args.keep):
        with tempfile.TemporaryDirectory(prefix="sweep-bounded-") as tmp:
            folder = Path(tmp)
            t0 = time.perf_counter()
            r = subprocess.run([sys.executable, "-m", "sweep", "run", str(study(folder, args.trials, keep))],
                               cwd=folder, env=ENV, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if r.returncode != 0:
                raise SystemExit(f"sweep run failed ({r.returncode}):\n{r.stderr[-3000:]}")
            models, other, n = bytes_under(folder / "sweep-artifacts")
            print(f"{keep!s:>11}  {args.trials:>6}  {n:>11}  {models / 1e6:>8.1f}  {other / 1e6:>8.1f}  "
                  f"{(models + other) / 1e6 / args.trials:>8.2f}  {wall:>6.0f}", flush=True)


if __name__ == "__main__":
    main()
