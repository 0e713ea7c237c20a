"""Long sweeps stay bounded: the memory of a long study with and without the hand-over to fresh
processes, what a study leaves on disk with and without `tracking.keep_models`, and how long the
read commands take on a study of 10,000 trials.

    python benchmarks/long_sweeps.py [--parts memory,disk,reads] [--memory-trials 500] [--trials 20]
                                     [--keep 3] [--big 10000] [--rounds 5]

memory: the study below with `--memory-trials` trials, run twice (the default hand-over; none),
the resident memory of `sweep run`'s processes read after each trial's line.

The study is the issue's: scikit-learn's digits at 28x28 (no download), the seed CNN, 1 epoch a
trial, random search over five activations, `sweep run` on the embedded stores (SQLite, artifacts
in ./sweep-artifacts). It runs twice in fresh folders, once with `keep_models: all` and once with
`keep_models: K`, and reports the artifact bytes each left, split into logged models and the
rest (plots, diagnostics, configs), and how many models are left.

reads: a real 2-trial sweep on tiny synthetic images, then `--big` copies of its first trial added
to the Optuna study (`Study.add_trials`, the same params and attributes, random values), and each
read command timed as a fresh process beside `sweep --help`, all in turn, `--rounds` times (the
medians are compared). Not a test.
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


def reads(big: int, rounds: int) -> None:
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
        # each command a fresh process, in turn (--help, best, status, trials, compare, --help, ...),
        # so every ratio to --help is measured side by side under the same load; medians of `rounds`
        (folder / "settings.yaml").write_text(f"optuna_storage: sqlite:///{folder / 'sweep-optuna.db'}\n")
        commands = {"--help": (["--help"], ENV), "best big": (["best", "big"], ENV),
                    "status big": (["status", "big"], ENV), "trials big": (["trials", "big"], ENV),
                    "compare big": (["compare", "big"], ENV),
                    # where a settings file is read (validated with pydantic), as in the repository
                    "best big, mlflow.yaml": (["best", "big"], {**ENV, "SWEEP_CONFIG": str(folder / "settings.yaml")})}
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(rounds):
            for name, (cmd, env) in commands.items():
                t0 = time.perf_counter()
                r = subprocess.run([sys.executable, "-m", "sweep", *cmd], cwd=folder, env=env, capture_output=True,
                                   text=True)
                times[name].append(time.perf_counter() - t0)
                if r.returncode != 0:
                    raise SystemExit(f"sweep {' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-2000:]}")
        help_s = statistics.median(times["--help"])
        print(f"{'command':<22}  {'median s':>8}  {'vs --help':>9}  (medians of {rounds}, in turn)")
        for name, ts in times.items():
            print(f"{name:<22}  {statistics.median(ts):>8.2f}  {statistics.median(ts) / help_s:>9.1f}")
        # a run of the complete study: nothing to train; it rewrites the parent run's summary
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "sweep", "run", "big"], cwd=folder, env=ENV, capture_output=True,
                           text=True)
        if r.returncode != 0:
            raise SystemExit(f"sweep run big failed ({r.returncode}):\n{r.stderr[-2000:]}")
        print(f"{'run big (complete)':<22}  {time.perf_counter() - t0:>8.2f}  (one run)")
        from mlflow import MlflowClient

        client = MlflowClient(f"sqlite:///{folder / 'sweep-mlflow.db'}")
        parent = client.get_run(study.user_attrs["sweep.mlflow_parent_run_id"])
        print(f"parent run: {parent.info.status}; " + ", ".join(
            f"{k} {v:g}" for k, v in sorted(parent.data.metrics.items()) if k.startswith(("trials_", "best_")))
            + f"; sweep.best.trial {parent.data.tags.get('sweep.best.trial')}")


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and its descendants (the supervisor and its trial process),
    walked through Linux's /proc/PID/task/TID/children."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
            rss = next(line for line in Path(f"/proc/{p}/status").read_text().splitlines() if line.startswith("VmRSS:"))
            total += int(rss.split()[1]) / 1024
        except (OSError, StopIteration):
            pass
    return total


def memory(trials: int, marks: list[int]) -> None:
    """`sweep run` of `trials` 1-epoch digits trials with the default hand-over and with it off
    (`workers: {trials_per_process: null, max_memory_growth_mb: null}`, all trials in one process):
    the resident memory of the command's processes right after each trial's line."""
    import re

    runs = {}
    for label, settings in (("default hand-over", None),
                            ("no hand-over", "workers: {trials_per_process: null, max_memory_growth_mb: null}\n")):
        with tempfile.TemporaryDirectory(prefix="sweep-memory-") as tmp:
            folder = Path(tmp)
            if settings:
                (folder / "mlflow.yaml").write_text(settings)
            t0 = time.perf_counter()
            proc = subprocess.Popen([sys.executable, "-m", "sweep", "run", str(study(folder, trials, 3))], cwd=folder,
                                    env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            after: dict[int, float] = {}
            for line in proc.stdout:
                if re.search(r"trial \d+ (COMPLETE|PRUNED|FAIL)", line):
                    after[len(after) + 1] = tree_rss_mb(proc.pid)
                    if len(after) in marks:
                        print(f"  {label}: after trial {len(after)}: {after[len(after)]:.0f} MB", flush=True)
            if proc.wait() != 0:
                raise SystemExit(f"sweep run failed ({proc.returncode})")
            runs[label] = (after, time.perf_counter() - t0)
    print(f"{'':<18}" + "".join(f"{'after ' + str(m):>11}" for m in marks) + f"{'max':>8}{'wall s':>8}")
    for label, (after, wall) in runs.items():
        print(f"{label:<18}" + "".join(f"{after.get(m, float('nan')):>9.0f}MB" for m in marks)
              + f"{max(after.values()):>6.0f}MB{wall:>8.0f}")
        if 5 in after and trials in after:
            print(f"{'':<18}after trial {trials} - after trial 5: {after[trials] - after[5]:+.0f} MB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--keep", type=int, default=3)
    ap.add_argument("--big", type=int, default=10000, help="trials in the reads study")
    ap.add_argument("--rounds", type=int, default=5, help="reads: each command this many times, in turn")
    ap.add_argument("--parts", default="disk,reads", help="any of memory, disk, reads")
    ap.add_argument("--memory-trials", type=int, default=500)
    args = ap.parse_args()
    if "memory" in args.parts:
        marks = sorted({m for m in (5, 50, 100, 200, 300, 400, 500, args.memory_trials) if m <= args.memory_trials})
        memory(args.memory_trials, marks)
    if "reads" in args.parts:
        reads(args.big, args.rounds)
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
