"""Search efficiency: TPE with a pruner over the full space against the exhaustive grid, in epochs.

    python benchmarks/search_efficiency.py [--samples 12000] [--epochs 5] [--tpe-seeds 0,1,2]
        [--pruners median,hyperband] [--trials 16]

The space is the one sweep searches: nine activations, Leaky ReLU's slope, PReLU's alpha
initializer and `shared_axes`. The grid runs all 16 of its configurations (Leaky ReLU at 0.01,
0.1 and 0.3; PReLU at zeros and 0.25 over none, spatial and all; the seven parameter-free
activations once each) for `--epochs` epochs on the first `--samples` images of real MNIST.
TPE then searches the same space (the slope continuous, log scale) with each pruner, `--trials`
trials per run, one run per sampler seed, each with `sweep run` and the defaults a user gets.

Counted, not timed, so the machine's load does not move the figures: the epochs each trial
trained (its per-epoch records; a pruned trial stops early) and the study's best `val_accuracy`
after each trial. The target is the grid's best value less 0.1 accuracy points; reported per run:
the epochs spent when the best so far first reached it, as a share of the grid's epochs (the grid
has to run to the end to know its best). Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from sweep_vs_scripts import subset  # the first N images of MNIST, a sixth as many test images

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "SWEEP_PROGRESS": "plain"}
FREE = ["relu", "elu", "gelu", "selu", "silu", "mish", "tanh"]  # swish is silu
TOLERANCE = 0.001  # 0.1 accuracy points


def study_file(folder: Path, name: str, npz: Path, epochs: int, search: dict[str, Any]) -> Path:
    import yaml

    d = {"study": name, "dataset": {"name": "npz", "path": str(npz), "validation_split": 0.2},
         "model": "seed_cnn", "training": {"epochs": epochs, "batch_size": 250},
         "search": {"metric": "val_accuracy", **search}}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


def run(folder: Path, path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "sweep", "run", str(path)], cwd=folder, env=ENV,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"sweep run {path.name} failed ({r.returncode}):\n{r.stderr[-3000:]}")


def trace(folder: Path, name: str) -> list[dict[str, Any]]:
    """Per trial in the order they ran: epochs trained, state, value, the best so far."""
    import optuna

    from sweep.runner.objective import EPOCH_METRICS

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{folder / 'sweep-optuna.db'}")
    rows, best, spent = [], None, 0
    for t in sorted(study.trials, key=lambda t: t.number):
        epochs = len(t.user_attrs.get(EPOCH_METRICS) or [])
        spent += epochs
        if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None:
            best = t.value if best is None else max(best, t.value)
        rows.append({"number": t.number, "state": t.state.name, "epochs": epochs, "spent": spent,
                     "value": t.value, "best": best, "params": t.params})
    return rows


def reached(rows: list[dict[str, Any]], target: float) -> int | None:
    return next((r["spent"] for r in rows if r["best"] is not None and r["best"] >= target), None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "mnist.npz"))
    ap.add_argument("--samples", type=int, default=12000)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--trials", type=int, default=16, help="TPE trials per run (the grid has 16)")
    ap.add_argument("--tpe-seeds", default="0,1,2")
    ap.add_argument("--pruners", default="median,hyperband")
    ap.add_argument("--json", default=None, help="also write every trace here")
    args = ap.parse_args()

    space = {"activation": ["relu", "leaky_relu", "prelu", *FREE[1:]],
             "prelu_alpha_init": ["zeros", 0.25], "prelu_shared_axes": ["none", "spatial", "all"]}
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="sweep-search-") as tmp:
        folder = Path(tmp)
        npz = folder / "mnist-subset.npz"
        subset(Path(args.data), npz, args.samples)
        grid = study_file(folder, "grid", npz, args.epochs, {
            "sampler": "grid", "seed": 0, "space": {**space, "leaky_alpha": [0.01, 0.1, 0.3]}})
        run(folder, grid)
        out["grid"] = trace(folder, "grid")
        for pruner in args.pruners.split(","):
            for seed in (int(s) for s in args.tpe_seeds.split(",")):
                name = f"tpe-{pruner}-{seed}"
                path = study_file(folder, name, npz, args.epochs, {
                    "sampler": "tpe", "n_trials": args.trials, "seed": seed, "pruner": pruner,
                    "space": {**space, "leaky_alpha": {"low": 0.01, "high": 0.5, "log": True}}})
                run(folder, path)
                out[name] = trace(folder, name)

    grid_rows = out["grid"]
    grid_epochs = grid_rows[-1]["spent"]
    best = grid_rows[-1]["best"]
    target = best - TOLERANCE
    top = max(grid_rows, key=lambda r: r["value"] if r["value"] is not None else -1)
    print(f"grid: {len(grid_rows)} trials, {grid_epochs} epochs, best val_accuracy {best:.4f} "
          f"({top['params']}); target {target:.4f}")
    print(f"{'run':<18} {'trials':>6} {'pruned':>6} {'epochs':>6} {'best':>7} {'epochs to target':>16} "
          f"{'share of grid':>13}")
    shares: dict[str, list[float]] = {}
    for name, rows in out.items():
        got = reached(rows, target)
        pruned = sum(r["state"] == "PRUNED" for r in rows)
        share = got / grid_epochs if got is not None else None
        if name != "grid":
            shares.setdefault(name.rsplit("-", 1)[0], []).append(share if share is not None else float("inf"))
        print(f"{name:<18} {len(rows):>6} {pruned:>6} {rows[-1]['spent']:>6} {rows[-1]['best']:>7.4f} "
              f"{got if got is not None else 'never':>16} {f'{share:.2f}' if share is not None else '-':>13}")
    for name, s in shares.items():
        print(f"{name}: median share of the grid's epochs to reach the target: {statistics.median(s):.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
