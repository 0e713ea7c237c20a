"""Trials per minute with 1, 2 and 4 worker processes on PostgreSQL: direct, and via Optuna's gRPC proxy.

    python benchmarks/workers.py [--trials 150] [--workers 1,2,4] [--rounds 1]
        [--postgres postgresql://postgres@127.0.0.1:5432/test | --sqlite wal|delete]
        [--modes memory,optimize,sweep,grpc]

The objective is trivial (suggest a float, report 3 intermediate values, return), so what is
measured is the storage and the worker loop around it. Modes:
- memory: one process, `study.optimize` on InMemoryStorage: the baseline for a trial without storage;
- optimize: `study.optimize` on a plain RDBStorage, each worker opening the database itself;
- sweep: our own loop, `sweep.runner.worker.work`, as `sweep worker` runs it: a ResilientRDBStorage
  from `open_storage`, the study lock around every ask, a heartbeat thread per trial;
- grpc: one `run_grpc_proxy_server` process in front of the database (Optuna's cached storage),
  workers on `GrpcStorageProxy` running `study.optimize`.
`optimize` and `grpc` workers stop with Optuna's `MaxTrialsCallback` once the study has `--trials`
complete trials (a few more may finish); `sweep` workers stop at exactly `--trials`.

Each mode first runs one untimed warm-up study. Worker processes are spawned and import
everything first; the clock starts when all of them pass
a barrier and stops when the study's last trial has finished (each worker records when each of
its trials ended). "exit s" is what the slowest worker took after that to return: `work` polls
every heartbeat interval for running trials of other workers before it gives up.
"storage s/trial" is not measured directly: it is worker-seconds per trial (workers × seconds /
trials) less the in-memory seconds per trial, so it holds storage calls, lock waits and, with more
workers than cores, waiting for a CPU. A fresh throwaway database is created on the server and
dropped at the end. Not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import queue
import signal
import socket
import statistics
import subprocess
import sys
import time
import traceback
import uuid
import warnings
from pathlib import Path
from typing import Any, Iterator

DEFAULT_POSTGRES = os.environ.get("SWEEP_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
MODES = ("memory", "optimize", "sweep", "grpc")
START_TIMEOUT = 120.0  # seconds for spawned workers to import and reach the barrier


def objective(trial: Any) -> float:
    x = trial.suggest_float("x", -10.0, 10.0)
    for step in range(3):
        trial.report(x * x + step, step)
    return x * x


def _quiet() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)


def study_config(name: str, trials: int) -> Any:
    from sweep.config import parse

    return parse({
        "study": name,
        "dataset": {"name": "digits"},  # never loaded: the objective trains nothing
        "search": {"sampler": "random", "n_trials": trials, "pruner": "none",
                   "space": {"activation": ["relu"]}},
    }, "bench")


def _worker(mode: str, url: str, port: int, study_name: str, trials: int, index: int,
            barrier: Any, results: Any) -> None:
    """One worker process: set up, wait at the barrier, run, report (index, ran, last trial end)."""
    try:
        _quiet()
        import optuna

        ended: list[float] = []

        def mark(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            ended.append(time.monotonic())

        until = optuna.study.MaxTrialsCallback(trials)
        sampler = optuna.samplers.RandomSampler(seed=index)
        if mode == "memory":
            study = optuna.create_study(sampler=sampler, pruner=optuna.pruners.NopPruner())
        elif mode == "optimize":
            study = optuna.load_study(study_name=study_name, storage=optuna.storages.RDBStorage(url),
                                      sampler=sampler, pruner=optuna.pruners.NopPruner())
        elif mode == "grpc":
            proxy = optuna.storages.GrpcStorageProxy(host="127.0.0.1", port=port)
            proxy.wait_server_ready(timeout=30)
            study = optuna.load_study(study_name=study_name, storage=proxy, sampler=sampler,
                                      pruner=optuna.pruners.NopPruner())
        else:
            run = _sweep_worker(url, study_name, trials, index, mark)
        barrier.wait(timeout=START_TIMEOUT)
        if mode == "sweep":
            ran = run()
        else:
            study.optimize(objective, callbacks=[until, mark])
            ran = len(ended)
        results.put((index, ran, ended[-1] if ended else None, None))
    except BaseException:  # noqa: BLE001 - reported to the parent, which stops the run
        results.put((index, 0, None, traceback.format_exc()))
        with contextlib.suppress(Exception):
            barrier.abort()


def _sweep_worker(url: str, study_name: str, trials: int, index: int, mark: Any) -> Any:
    """What `sweep worker STUDY` sets up (sweep.runner.study.join), less MLflow and the data: a
    stale trial is queued again by Optuna's own callback, where sweep's also closes its MLflow run."""
    import functools
    import warnings

    import optuna

    from sweep import search
    from sweep.lifecycle import stop_on_signals
    from sweep.runner import worker
    from sweep.runner.liveness import Heartbeat
    from sweep.runner.setup import open_storage
    from sweep.settings import WorkerSettings
    from sweep.storage import study_lock

    cfg = study_config(study_name, trials)
    ws = WorkerSettings()
    rdb = open_storage(url, ws)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        rdb.heartbeat_stale_trial_callback = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=ws.max_retry)
    study = optuna.load_study(study_name=study_name, storage=rdb)
    study.sampler = search.make_sampler(cfg.search, offset=len(study.trials), worker=f"w{index}")
    study.pruner = search.make_pruner(cfg.search)
    hooks = worker.Hooks(heartbeat=lambda trial_id: Heartbeat(rdb, trial_id, ws.heartbeat_interval),
                         trial_end=[mark])
    lock = functools.partial(study_lock, url, study_name, wait=ws.storage_outage)

    def run() -> int:
        with stop_on_signals():
            return worker.work(study, objective, cfg, hooks, lock, poll_seconds=ws.heartbeat_interval)

    return run


def _proxy(url: str, port: int) -> None:
    _quiet()
    import optuna

    # get_storage wraps the RDBStorage in Optuna's cache, as run_grpc_proxy_server's docs ask
    optuna.storages.run_grpc_proxy_server(optuna.storages.get_storage(url), host="127.0.0.1", port=port)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def throwaway_database(server_url: str) -> Iterator[str]:
    import sqlalchemy as sa

    from sweep.storage import db_url

    server_url = db_url(server_url)
    name = f"sweep_bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextlib.contextmanager
def throwaway_sqlite(journal: str) -> Iterator[str]:
    """A fresh SQLite file in a temporary folder, in `journal` mode (which the file keeps)."""
    import sqlite3
    import tempfile

    with tempfile.TemporaryDirectory(prefix="sweep-bench-") as folder:
        path = Path(folder) / "optuna.db"
        with contextlib.closing(sqlite3.connect(path)) as conn:
            conn.execute(f"PRAGMA journal_mode={journal}")
        yield f"sqlite:///{path}"


def stop(procs: list[Any]) -> None:
    """Terminate (SIGTERM, by pid) what is still running, then kill what did not stop."""
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=10)
        if p.is_alive():
            p.kill()
            p.join(timeout=5)


def run_once(ctx: Any, mode: str, workers: int, url: str, rdb: Any, port: int, trials: int,
             procs: list[Any]) -> dict[str, Any]:
    """Start `workers` processes on a fresh study; returns trials, seconds, exit lag."""
    import optuna

    name = f"bench-{mode}-{workers}-{uuid.uuid4().hex[:6]}"
    if mode != "memory":
        optuna.create_study(study_name=name, storage=rdb, direction="maximize")
    barrier = ctx.Barrier(workers + 1)
    results = ctx.Queue()
    mine = [ctx.Process(target=_worker, args=(mode, url, port, name, trials, i, barrier, results),
                        daemon=True) for i in range(workers)]
    procs += mine
    for p in mine:
        p.start()
    try:
        barrier.wait(timeout=START_TIMEOUT)
    except Exception:  # noqa: BLE001 - a worker failed to start: its traceback is in the queue
        pass
    t0 = time.monotonic()
    got = []
    while len(got) < workers:
        try:
            got.append(results.get(timeout=1.0))
        except queue.Empty:
            if not any(p.is_alive() for p in mine):
                break
            continue
        if got[-1][3] is not None:
            raise RuntimeError(f"{mode} worker {got[-1][0]} failed:\n{got[-1][3]}")
    t_exit = time.monotonic()
    if len(got) < workers:
        raise RuntimeError(f"{mode}: {workers - len(got)} worker(s) died without a word "
                           f"(exit codes {[p.exitcode for p in mine]})")
    for p in mine:
        p.join(timeout=30)
    ends = [g[2] for g in got if g[2] is not None]
    last = max(ends) if ends else t0
    if mode == "memory":
        done = sum(g[1] for g in got)
    else:
        states = (optuna.trial.TrialState.COMPLETE,)
        done = len(optuna.load_study(study_name=name, storage=rdb).get_trials(states=states))
    return {"trials": done, "seconds": last - t0, "exit": t_exit - last}


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def cpu_model() -> str:
    with contextlib.suppress(Exception):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    return "unknown (no lscpu)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=150, help="trials in each study")
    ap.add_argument("--workers", default="1,2,4", help="comma-separated worker counts")
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    ap.add_argument("--rounds", type=int, default=1, help="repeat everything; medians are printed")
    ap.add_argument("--postgres", default=DEFAULT_POSTGRES,
                    help="a PostgreSQL server URL; a throwaway database is created there and dropped")
    ap.add_argument("--sqlite", choices=("wal", "delete"), default=None,
                    help="a fresh SQLite file in this journal mode instead (sweep's is wal), as on one box")
    args = ap.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    modes = [m for m in args.modes.split(",") if m]
    if unknown := set(modes) - set(MODES):
        sys.exit(f"--modes: unknown {', '.join(sorted(unknown))}; expected some of {', '.join(MODES)}")

    import multiprocessing as mp

    import grpc
    import optuna
    import sqlalchemy

    _quiet()
    # SIGTERM cleans up as Ctrl-C does: workers and proxy stopped, the database dropped
    signal.signal(signal.SIGTERM, _interrupt)
    ctx = mp.get_context("spawn")
    print(f"{datetime.datetime.now():%Y-%m-%d %H:%M}, {cpu_model()}, {os.cpu_count()} CPU(s); "
          f"optuna {optuna.__version__}, sqlalchemy {sqlalchemy.__version__}, grpcio {grpc.__version__}")
    print(f"{args.trials} trials per study, workers {counts}, {args.rounds} round(s)", flush=True)
    procs: list[Any] = []
    rows: dict[tuple[str, int], list[dict[str, Any]]] = {}
    try:
        store = throwaway_sqlite(args.sqlite) if args.sqlite else throwaway_database(args.postgres)
        with store as url:
            print(f"storage: {url.split('@')[-1]}", flush=True)
            rdb = optuna.storages.RDBStorage(url)  # the parent's: creates the studies, counts trials
            port = 0
            if "grpc" in modes:
                port = free_port()
                proxy = ctx.Process(target=_proxy, args=(url, port), daemon=True)
                procs.append(proxy)
                proxy.start()
                optuna.storages.GrpcStorageProxy(host="127.0.0.1", port=port).wait_server_ready(timeout=60)
                print(f"gRPC proxy: pid {proxy.pid}, 127.0.0.1:{port}", flush=True)
            # untimed: the first study of each mode pays for cold caches (server, proxy, disk)
            for mode in modes:
                run_once(ctx, mode, 1, url, rdb, port, min(args.trials, 20), procs)
            print("warm-up done", flush=True)
            for r in range(args.rounds):
                for mode in modes:
                    for n in ([1] if mode == "memory" else counts):
                        res = run_once(ctx, mode, n, url, rdb, port, args.trials, procs)
                        rows.setdefault((mode, n), []).append(res)
                        print(f"round {r + 1}: {mode:<8} {n} worker(s): {res['trials']} trials in "
                              f"{res['seconds']:.3f} s (+{res['exit']:.2f} s to exit)", flush=True)
            stop(procs)
            rdb.engine.dispose()
    finally:
        stop(procs)  # also on Ctrl-C and errors; the database is dropped by its context manager

    def med(key: tuple[str, int], field: str) -> float:
        return statistics.median(r[field] for r in rows[key])

    base = None
    if ("memory", 1) in rows:
        base = med(("memory", 1), "seconds") / med(("memory", 1), "trials")
    print()
    print(f"{'mode':<10}{'workers':>8}{'trials':>8}{'seconds':>9}{'trials/min':>12}"
          f"{'storage s/trial':>17}{'exit s':>8}")
    for (mode, n), _ in rows.items():
        trials, secs = med((mode, n), "trials"), med((mode, n), "seconds")
        if mode == "memory":
            storage = "(base)"
        elif base is None:
            storage = "-"
        else:
            storage = f"{n * secs / trials - base:.4f}"
        print(f"{mode:<10}{n:>8}{trials:>8.0f}{secs:>9.3f}{trials / secs * 60:>12.0f}"
              f"{storage:>17}{med((mode, n), 'exit'):>8.2f}")
    if base is not None:
        print(f"\nin-memory baseline: {base * 1000:.2f} ms per trial. storage s/trial = workers x seconds"
              " / trials - baseline (worker-seconds; includes lock waits and CPU contention)")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted: workers and proxy stopped, the benchmark database dropped")
