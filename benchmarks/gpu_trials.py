"""Trials per GPU: N trial processes at once on one GPU, and the training samples/s they make together.

Each process trains one trial as a sweep worker does: sweep's own seed CNN (the four tutorial
variants in turn: ReLU; Leaky ReLU 0.1; PReLU zeros; PReLU 0.25), sweep's `train()` (epoch timer,
NaN guard, the per-trial pipelines, evaluation) with the tutorial's batch 250 and validation split
0.2, in the environment `sweep run --workers N` gives its workers (`sweep.runner.pool.share_gpu`:
memory taken as needed, not all at start). Optuna and MLflow are left out: the machine this ran on
has neither, and their cost per trial is measured on the CPU by sweep_vs_scripts.py.

Keras' backend is KERAS_BACKEND's: the GPU machine lent here has JAX and no TensorFlow, so the
pipelines are `sweep.data.numpy_pipelines` there.

    KERAS_BACKEND=jax python benchmarks/gpu_trials.py --data mnist.npz --processes 1,2,4,8,16 --epochs 4

Per N it prints: the steady rate (each process's training samples / its median epoch time after
the first, summed), the group's rate over its wall clock from the first process start to the last
exit (imports, compilation and evaluation included), both as ratios to one process, and the
GPU memory in use at its highest (nvidia-smi, polled every 0.5 s).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = [
    {"activation": "relu"},
    {"activation": "leaky_relu", "leaky_alpha": 0.1},
    {"activation": "prelu", "prelu_alpha_init": "zeros"},
    {"activation": "prelu", "prelu_alpha_init": 0.25},
]


def child(data_path: str, index: int, epochs: int, train_samples: int | None) -> None:
    t_start = time.time()
    import keras

    from sweep.config import TrainingConfig
    from sweep.data import Dataset, prepare, read_npz
    from sweep.models import build_model
    from sweep.training import train

    xtr, ytr, xte, yte = read_npz(Path(data_path), "benchmark")
    if train_samples:
        xtr, ytr = xtr[:train_samples], ytr[:train_samples]
    xtr, ytr = prepare(xtr, ytr, 255.0)
    xte, yte = prepare(xte, yte, 255.0)
    data = Dataset("mnist", xtr, ytr, xte, yte, 10, 0.2)
    params = VARIANTS[index % len(VARIANTS)]
    keras.utils.set_random_seed(index)
    model = build_model("seed_cnn", data.input_shape, data.num_classes, **params)
    t_fit = time.time()
    result = train(model, data, TrainingConfig(epochs=epochs, batch_size=250), seed=index)
    print(json.dumps({
        "index": index, "params": params, "backend": keras.backend.backend(),
        "train_samples": len(data.split()[0]), "epoch_seconds": result.epoch_seconds,
        "test_accuracy": result.test["test_accuracy"], "t_start": t_start, "t_fit": t_fit,
        "t_end": time.time(),
    }), flush=True)


def _gpu_memory_mib() -> int | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout
        return sum(int(v) for v in out.split())
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


def group(n: int, args: argparse.Namespace) -> dict:
    from sweep.lifecycle import share_gpu

    env = share_gpu(dict(os.environ))
    peak: list[int] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            m = _gpu_memory_mib()
            if m is not None:
                peak.append(m)
            done.wait(0.5)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    t0 = time.time()
    procs = [subprocess.Popen([sys.executable, __file__, "--child", str(i), "--data", args.data,
                               "--epochs", str(args.epochs),
                               *(["--train-samples", str(args.train_samples)] if args.train_samples else [])],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(n)]
    rows = []
    for p in procs:
        out, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"trial process failed ({p.returncode}):\n{err[-3000:]}")
        rows.append(json.loads(out.strip().splitlines()[-1]))
    wall = time.time() - t0
    done.set()
    poller.join()
    steady = sum(r["train_samples"] / statistics.median(r["epoch_seconds"][1:] or r["epoch_seconds"])
                 for r in rows)
    total = sum(r["train_samples"] * len(r["epoch_seconds"]) for r in rows)
    return {"processes": n, "steady_samples_per_s": steady, "wall_samples_per_s": total / wall,
            "wall_s": wall, "peak_gpu_mib": max(peak) if peak else None,
            "backend": rows[0]["backend"],
            "test_accuracy": [round(r["test_accuracy"], 4) for r in rows],
            "median_epoch_s": statistics.median(s for r in rows for s in r["epoch_seconds"][1:])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="MNIST .npz in keras load_data() layout")
    ap.add_argument("--processes", default="1,2,4,8,16")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--train-samples", type=int, default=None, help="cap (default: all 60,000)")
    ap.add_argument("--json", default=None, help="also write the rows here")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        child(args.data, args.child, args.epochs, args.train_samples)
        return
    rows = [group(int(n), args) for n in args.processes.split(",")]
    one = rows[0]
    print(f"{'processes':>9}  {'steady samples/s':>16}  {'vs 1':>5}  {'wall samples/s':>14}  {'vs 1':>5}  "
          f"{'epoch s':>7}  {'peak GPU MiB':>12}  backend")
    for r in rows:
        print(f"{r['processes']:>9}  {r['steady_samples_per_s']:>16,.0f}  "
              f"{r['steady_samples_per_s'] / one['steady_samples_per_s']:>5.2f}  "
              f"{r['wall_samples_per_s']:>14,.0f}  {r['wall_samples_per_s'] / one['wall_samples_per_s']:>5.2f}  "
              f"{r['median_epoch_s']:>7.2f}  {r['peak_gpu_mib'] if r['peak_gpu_mib'] is not None else '-':>12}  "
              f"{r['backend']}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
