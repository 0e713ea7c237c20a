"""A sweep against the tutorials' scripts on the same machine, side by side in one run.

    python benchmarks/sweep_vs_scripts.py [--samples 12000] [--epochs 3] [--seeds 2] [--rounds 2]
        [--workers 2] [--postgres postgresql://postgres@127.0.0.1:5432/test]
        [--pools postgres:2,sqlite:2,sqlite:1] [--before DIR]

The fixed study is the four tutorial variants (ReLU; Leaky ReLU 0.1; PReLU zeros; PReLU 0.25) x
`--seeds` seeds x `--epochs` epochs on the first `--samples` images of real MNIST
(../shared/data/mnist.npz; a sixth as many test images). Each round, in alternating order:
- scripts: `tutorial_script.py` for every variant and seed, one fresh process after another;
- sweep --workers N: `sweep run study.yaml --workers N` (PostgreSQL for Optuna, a fresh database
  each round; MLflow on SQLite), all callbacks, diagnostics and logging on; `--pools` runs it for
  each STORAGE:N given, `sqlite` being the embedded default (both stores SQLite files);
- one trial, SQLite and HTTP: `sweep run` of the ReLU configuration alone, seed 0, once with both
  stores on SQLite and once logging to a `sweep server` over HTTP, against the ReLU script; with
  `--before DIR` the SQLite one also with the code of DIR, an earlier commit's checkout;
- with `--before DIR`, each pool also runs the code of DIR, alternating with this checkout's.
Reported (medians over rounds): per-epoch seconds of a full sweep trial vs the script's (epoch 1,
which traces the graph, left out); the fixed study's wall clock vs the scripts'; aggregate
samples/s; the non-`fit` share of a trial's own time (Optuna's trial duration less its epochs)
and of a whole `sweep run` process. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
VARIANTS = [
    ("relu", {"activation": "relu"}, ["--activation", "relu"]),
    ("leaky_relu(0.1)", {"activation": "leaky_relu", "leaky_alpha": 0.1},
     ["--activation", "leaky_relu", "--alpha", "0.1"]),
    ("prelu(zeros)", {"activation": "prelu", "prelu_alpha_init": "zeros"},
     ["--activation", "prelu", "--alpha-init", "zeros"]),
    ("prelu(0.25)", {"activation": "prelu", "prelu_alpha_init": 0.25},
     ["--activation", "prelu", "--alpha-init", "0.25"]),
]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def subset(src: Path, dst: Path, n: int) -> None:
    import numpy as np

    with np.load(src) as f:
        np.savez(dst, x_train=f["x_train"][:n], y_train=f["y_train"][:n], x_test=f["x_test"][: max(1, n // 6)],
                 y_test=f["y_test"][: max(1, n // 6)])


def study_file(folder: Path, name: str, npz: Path, epochs: int, seeds: int, configs: list[dict[str, Any]]) -> Path:
    import yaml

    d = {"study": name, "dataset": {"name": "npz", "path": str(npz), "validation_split": 0.2},
         "model": "seed_cnn", "training": {"epochs": epochs, "batch_size": 250},
         "search": {"metric": "val_accuracy", "pruner": "none", "seed": 0, "repeats": seeds, "configs": configs}}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return wall, r.stdout


def scripts(npz: Path, epochs: int, seeds: int, cwd: Path, only: str | None = None) -> dict[str, Any]:
    wall, runs = 0.0, []
    for name, _, flags in VARIANTS:
        if only and name != only:
            continue
        for seed in range(seeds):
            w, out = timed([sys.executable, str(ROOT / "benchmarks" / "tutorial_script.py"), *flags, "--seed",
                            str(seed), "--epochs", str(epochs), "--npz", str(npz)], cwd, ENV)
            wall += w
            runs.append({**json.loads(out.strip().splitlines()[-1]), "wall": w})
    return {"wall": wall, "runs": runs}


def trials_of(storage: str, study: str) -> list[Any]:
    import optuna

    from sweep.record import EPOCH_METRICS

    s = optuna.load_study(study_name=study, storage=storage)
    out = []
    for t in s.get_trials():
        epochs = [e["epoch_seconds"] for e in t.user_attrs.get(EPOCH_METRICS) or []]
        out.append({"duration": t.duration.total_seconds(), "epochs": epochs})
    return out


def sweep_run(study: Path, name: str, cwd: Path, storage: str, tracking: str, workers: int,
              code: str | None = None) -> dict[str, Any]:
    """`sweep run` in a fresh process, on this checkout's package or `code`, another checkout's."""
    env = {**ENV, "SWEEP_OPTUNA_STORAGE": storage, "MLFLOW_TRACKING_URI": tracking, "PYTHONPATH": code or str(ROOT)}
    cmd = [sys.executable, "-m", "sweep", "run", str(study), *(["--workers", str(workers)] if workers > 1 else [])]
    wall, _ = timed(cmd, cwd, env)
    return {"wall": wall, "trials": trials_of(storage, name)}


def later(epochs: list[float]) -> float:
    rest = epochs[1:] or epochs
    return sum(rest) / len(rest)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=12000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--npz", default=str(ROOT.parent / "shared" / "data" / "mnist.npz"))
    ap.add_argument("--pools", default=None, help="STORAGE:WORKERS,... (postgres or sqlite); default "
                                                  "postgres:--workers")
    ap.add_argument("--parts", default="scripts,pool,one", help="which to run (the report needs all three)")
    ap.add_argument("--before", default=None, help="a checkout of an earlier commit (git worktree add DIR REV): "
                                                   "the one-trial SQLite run and each pool also run its code, alternating")
    args = ap.parse_args()
    parts = args.parts.split(",")
    pools = [(kind, int(n)) for kind, n in (p.split(":") for p in (args.pools or f"postgres:{args.workers}").split(","))]

    from helpers import free_port, postgres_database, start_cli_server, wait_health

    tmp = Path(tempfile.mkdtemp(prefix="sweep-bench-"))
    npz = tmp / "mnist-subset.npz"
    subset(Path(args.npz), npz, args.samples)
    configs = [c for _, c, _ in VARIANTS]
    port = free_port()
    server = start_cli_server(["--port", str(port), "--backend-store-uri", f"sqlite:///{tmp / 'server.db'}",
                               "--artifacts-destination", str(tmp / "server-artifacts")], tmp, tmp / "server.log")
    wait_health(f"http://127.0.0.1:{port}", server, tmp / "server.log")
    # the pools run this checkout's code and, with --before, the earlier checkout's too
    codes = [("", None), *([("-before", args.before)] if args.before else [])]
    rows: dict[str, list[Any]] = {k: [] for k in ("scripts", "script1", "sqlite1", "http1", "before1",
                                                  *(f"pool-{kind}-{n}{tag}" for kind, n in pools
                                                    for tag, _ in codes))}
    try:
        for r in range(args.rounds):
            work = tmp / f"round{r}"
            work.mkdir()
            one_http = study_file(work, f"one-http{r}", npz, args.epochs, 1, configs[:1])
            steps = ["scripts", "pool", "one"] if r % 2 == 0 else ["one", "pool", "scripts"]
            for step in [s for s in steps if s in parts]:
                if step == "scripts":
                    rows["scripts"].append(scripts(npz, args.epochs, args.seeds, work))
                elif step == "pool":
                    runs = [(kind, n, code) for kind, n in pools for code in codes]
                    for kind, n, (tag, code) in runs if r % 2 == 0 else runs[::-1]:
                        name = f"fixed{r}-{kind}-{n}{tag}"
                        pool_study = study_file(work, name, npz, args.epochs, args.seeds, configs)
                        url, drop = (postgres_database(args.postgres) if kind == "postgres" else
                                     (f"sqlite:///{work / f'{name}-optuna.db'}", lambda: None))
                        try:
                            rows[f"pool-{kind}-{n}{tag}"].append(sweep_run(pool_study, name, work, url,
                                                                           f"sqlite:///{work / f'{name}-mlflow.db'}",
                                                                           n, code))
                        finally:
                            drop()
                else:
                    rows["script1"].append(scripts(npz, args.epochs, 1, work, only="relu"))
                    ones = [("sqlite1", None), *([("before1", args.before)] if args.before else [])]
                    for key, code in ones if r % 2 == 0 else ones[::-1]:
                        one = study_file(work, f"{key}-{r}", npz, args.epochs, 1, configs[:1])
                        rows[key].append(sweep_run(one, f"{key}-{r}", work, f"sqlite:///{work / f'{key}-optuna.db'}",
                                                   f"sqlite:///{work / f'{key}-mlflow.db'}", 1, code))
                    rows["http1"].append(sweep_run(one_http, f"one-http{r}", work,
                                                   f"sqlite:///{work / 'http-optuna.db'}",
                                                   f"http://127.0.0.1:{port}", 1))
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        os.killpg(server.pid, signal.SIGINT)
        server.wait(60)

    med = statistics.median
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("Model name")), "?")
    n_runs = len(VARIANTS) * args.seeds
    print(f"{time.strftime('%Y-%m-%d')}, {model}, {os.cpu_count()} cores; {args.samples} MNIST images "
          f"({int(args.samples * 0.8)} fitted per epoch), {args.epochs} epochs, batch 250; {args.rounds} "
          f"rounds; fixed study {n_runs} trials with {args.pools or f'--workers {args.workers}'}")
    if "one" in parts:
        script_epoch = med(later(run["epoch_seconds"]) for s in rows["script1"] for run in s["runs"])
        for key, label in (("sqlite1", "SQLite"), ("http1", "HTTP")):
            trial = [t for s in rows[key] for t in s["trials"]]
            epoch = med(later(t["epochs"]) for t in trial)
            share = med((t["duration"] - sum(t["epochs"])) / t["duration"] for t in trial)
            outside = med(t["duration"] - sum(t["epochs"]) for t in trial)
            process = med((s["wall"] - sum(s["trials"][0]["epochs"])) / s["wall"] for s in rows[key])
            script_process = med((s["wall"] - sum(s["runs"][0]["epoch_seconds"])) / s["wall"] for s in rows["script1"])
            print(f"one trial, {label:<6} epoch {epoch:6.2f} s vs script {script_epoch:6.2f} s = "
                  f"{epoch / script_epoch:.2f}x; "
                  f"non-fit share of the trial {share:.1%} ({outside:.2f} s); of the process {process:.1%} (script's process: "
                  f"{script_process:.1%}); process {med(s['wall'] for s in rows[key]):.1f} s vs script "
                  f"{med(s['wall'] for s in rows['script1']):.1f} s")
        for key, label in (("sqlite1", "this code"), *((("before1", f"before ({args.before})"),) if args.before else ())):
            # outside the trial: the whole process less Optuna's duration of its one trial
            print(f"one trial, SQLite, {label}: process {med(s['wall'] for s in rows[key]):.1f} s, of which outside "
                  f"the trial {med(s['wall'] - s['trials'][0]['duration'] for s in rows[key]):.2f} s")
    if "scripts" in parts and "pool" in parts:
        scripts_wall = med(s["wall"] for s in rows["scripts"])
        fitted = int(args.samples * 0.8) * args.epochs * n_runs
        one_script = med(run["fitted"] / run["wall"] for s in rows["scripts"] for run in s["runs"])
        for kind, n, (tag, code) in ((kind, n, c) for kind, n in pools for c in codes):
            pool_wall = med(s["wall"] for s in rows[f"pool-{kind}-{n}{tag}"])
            print(f"fixed study: sweep --workers {n} on {kind:<8}{f' ({code})' if code else ''} {pool_wall:.1f} s vs "
                  f"scripts one after another "
                  f"{scripts_wall:.1f} s = {pool_wall / scripts_wall:.2f}x; samples/s {fitted / pool_wall:.0f} vs one "
                  f"script's {one_script:.0f} = {fitted / pool_wall / one_script:.2f}x")
    print(json.dumps({k: [round(s["wall"], 2) for s in v] for k, v in rows.items()}))


if __name__ == "__main__":
    main()
