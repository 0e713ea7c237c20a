"""A chaos run: a real study under faults injected together, on a seeded schedule, and its history
checked afterwards from the stores alone.

    python tests/chaos.py [--seed 1] [--minutes 3] [--workers 2] [--repeats 2] [--epochs 3]

What runs, all real and all on this machine: a PostgreSQL cluster of its own (initdb/pg_ctl, a
free loopback port), a real `sweep server` on it, and `sweep run STUDY --workers N` training a
plan of three activations x `--repeats` on tiny images, each trial process handing over to a
fresh one after every trial (`workers.trials_per_process: 1`). Every few seconds (drawn from the
seed) one fault of FAULTS strikes while the study runs:

- kill_worker / term_worker: SIGKILL or SIGTERM to one training worker; a new `sweep worker` joins;
- pg_blip: PostgreSQL stopped for 2-5 s; pg_outage: for longer than `workers.storage_outage`
  (the workers stop, exit 3, and `sweep run` is started again);
- server_kill: SIGKILL of `sweep server`; server_int_term: SIGINT then SIGTERM at once; either
  way a new `sweep server` starts on the same port once the old one's port is free;
- ctrl_c_run: SIGINT to the whole `sweep run --workers N`, then the same command again.

After `--minutes` no new fault strikes; whatever is down is brought back, and the study is left to
finish. Then `check` reads Optuna's tables, the MLflow server and `sweep sync` and lists every way
the history is wrong (nothing lost, nothing doubled). The schedule is printed as it runs and is the
same for the same seed; what the faults meet (which trial, which epoch) is not. Exit code 0: the
history is whole; 1: it is not (each problem on a line).

`tests/test_chaos.py` runs a short schedule in the suite; a long run is in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

from helpers import (PostgresCluster, descendants, free_port, stop_group, study_dict, wait_health,  # noqa: E402
                     watch_study, write_study, write_tiny_npz)

from sweep.errors import ServiceError  # noqa: E402

FAULTS = ("kill_worker", "term_worker", "pg_blip", "pg_outage", "server_kill", "server_int_term", "ctrl_c_run")
ACTIVATIONS = ("relu", "elu", "tanh")
STUDY = "chaos"
STORAGE_OUTAGE = 12  # seconds a worker waits for PostgreSQL before it stops (exit 3)
OUTAGE_EXIT = ServiceError.exit_code  # a service stayed unreachable
# how a fault may end `sweep run --workers N` before the study is complete: an outage longer than
# storage_outage, or its own workers all killed or stopped (it exits with the first one's signal)
FAULT_EXITS = {OUTAGE_EXIT, 128 + signal.SIGINT, 128 + signal.SIGKILL, 128 + signal.SIGTERM}


def schedule(seed: int, minutes: float) -> list[tuple[float, str]]:
    """(seconds from the start, fault) for the whole run, from the seed alone; every kind of fault
    at least once where the time allows (the first ones in a shuffled order, then random)."""
    rng = random.Random(seed)
    kinds = list(FAULTS)
    rng.shuffle(kinds)
    out, t = [], 10.0
    while t < minutes * 60:
        out.append((round(t, 1), kinds.pop() if kinds else rng.choice(FAULTS)))
        t += rng.uniform(6, 14)
    return out


class Chaos:
    """The stack of one chaos run, in `folder`, and the faults it can suffer."""

    def __init__(self, folder: Path, workers: int, repeats: int, epochs: int, say: Callable[[str], None]) -> None:
        self.folder, self.workers, self.say = folder, workers, say
        self.pg = PostgresCluster()
        self.optuna_url = self.pg.create_database("optuna")
        mlflow_url = self.pg.create_database("mlflow")
        self.port = free_port()
        self.tracking = f"http://127.0.0.1:{self.port}"
        (folder / "mlflow.yaml").write_text(
            f"optuna_storage: '{self.optuna_url}'\n"
            f"tracking_uri: '{self.tracking}'\n"
            f"server: {{port: {self.port}, backend_store_uri: '{mlflow_url}', "
            f"artifacts_destination: '{folder / 'artifacts'}'}}\n"
            f"workers: {{heartbeat_interval: 1, grace_period: 4, max_retry: 20, storage_outage: {STORAGE_OUTAGE}, "
            "trials_per_process: 1}\n")
        d = study_dict(write_tiny_npz(folder / "tiny.npz"), configs=[{"activation": a} for a in ACTIVATIONS],
                       repeats=repeats)
        d["study"] = STUDY
        d["training"].update(epochs=epochs, batch_size=100)
        self.study_file = write_study(folder, d)
        self.target = len(ACTIVATIONS) * repeats
        self.epochs = epochs
        self.env = {**os.environ, "SWEEP_CONFIG": str(folder / "mlflow.yaml"), "TF_CPP_MIN_LOG_LEVEL": "3",
                    "PYTHONUNBUFFERED": "1"}
        self.server: subprocess.Popen | None = None
        self.runs: list[subprocess.Popen] = []  # `sweep run --workers N`, then each one started again
        self.joiners: list[subprocess.Popen] = []
        self.codes: list[tuple[str, int]] = []  # (what, exit code) of every process that ended
        self.log = open(folder / "processes.log", "a")

    # --- processes ---

    def _start(self, what: str, *args: str) -> subprocess.Popen:
        self.log.write(f"--- {what}\n")
        self.log.flush()
        return subprocess.Popen([sys.executable, "-m", "sweep", *args], cwd=self.folder, env=self.env,
                                stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def start_server(self) -> None:
        deadline = time.monotonic() + 60
        while not _port_free(self.port):  # the old one's guard stops its group within its grace
            if time.monotonic() > deadline:
                raise AssertionError(f"port {self.port} still taken 60 s after the old sweep server ended")
            time.sleep(0.5)
        self.server = self._start("sweep server", "server")
        wait_health(self.tracking, self.server, self.folder / "processes.log")

    def start_run(self) -> None:
        self.runs.append(self._start("sweep run", "run", str(self.study_file), "--workers", str(self.workers)))

    def join(self) -> None:
        self.joiners.append(self._start("sweep worker", "worker", str(self.study_file)))

    def reap(self) -> None:
        """Record the exit codes of the processes that ended since the last look."""
        for what, procs in (("sweep run", self.runs), ("sweep worker", self.joiners)):
            for p in procs:
                if p.poll() is not None and not getattr(p, "reaped", False):
                    p.reaped = True  # type: ignore[attr-defined]
                    self.codes.append((what, p.returncode))

    def live(self) -> list[subprocess.Popen]:
        return [p for p in [*self.runs, *self.joiners] if p.poll() is None]

    def training_workers(self) -> list[int]:
        """Pids of the `sweep worker` processes now running, wherever they were started."""
        out = []
        for p in self.live():
            for pid in [p.pid, *descendants(p.pid)]:
                try:
                    args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\x00")
                    if b"sweep" in args and b"worker" in args:  # a supervisor's, or its trial process's
                        out.append(pid)
                except OSError:
                    pass
        return out

    def ensure_workers(self) -> None:
        """Something is working on the study: a `sweep run` is started again when nothing is."""
        self.reap()
        if not self.live() and not self.complete():
            self.say("no worker left: sweep run again")
            self.start_run()

    def complete(self) -> bool:
        from sweep.record import stored_config
        from sweep.runner.worker import has_all

        try:
            # one storage without a pool, as every test that polls a study: a new pool each second
            # (sweep's load_study) left 110 idle connections in this process once, and the
            # cluster then refused the workers ("too many clients") until the test timed out
            s = watch_study(self.optuna_url, STUDY)
            return has_all(s, stored_config(s))
        except Exception:  # noqa: BLE001 - the database is down, or the study not made yet
            return False

    # --- faults ---

    def fault(self, kind: str, rng: random.Random) -> str:
        if kind in ("kill_worker", "term_worker"):
            pids = self.training_workers()
            if not pids:
                return "no worker running"
            pid = rng.choice(sorted(pids))
            os.kill(pid, signal.SIGKILL if kind == "kill_worker" else signal.SIGTERM)
            self.join()
            return f"worker {pid}; a sweep worker joins"
        if kind in ("pg_blip", "pg_outage"):
            down = rng.uniform(2, 5) if kind == "pg_blip" else STORAGE_OUTAGE + rng.uniform(3, 8)
            self.pg.stop()
            time.sleep(down)
            self.pg.start()
            return f"PostgreSQL down {down:.1f} s"
        if kind in ("server_kill", "server_int_term"):
            assert self.server is not None
            if kind == "server_kill":
                self.server.kill()
            else:
                self.server.send_signal(signal.SIGINT)
                self.server.send_signal(signal.SIGTERM)
            code = self.server.wait(60)
            t0 = time.monotonic()
            self.start_server()
            return f"sweep server ended ({code}); a new one answers after {time.monotonic() - t0:.1f} s"
        if kind == "ctrl_c_run":
            runs = [p for p in self.runs if p.poll() is None]
            if not runs:
                return "no sweep run running"
            os.killpg(runs[-1].pid, signal.SIGINT)
            try:
                code = runs[-1].wait(90)
            except subprocess.TimeoutExpired:
                raise AssertionError("sweep run --workers did not stop within 90 s of Ctrl-C") from None
            self.start_run()
            return f"sweep run stopped ({code}); the same command again"
        raise ValueError(kind)

    def close(self) -> None:
        for p in [*self.runs, *self.joiners, *([self.server] if self.server else [])]:
            stop_group(p)
        self.log.close()
        self.pg.close()


def run(folder: Path, seed: int, minutes: float, workers: int, repeats: int, epochs: int,
        finish_timeout: float = 900, say: Callable[[str], None] = print) -> tuple[list[str], dict[str, int]]:
    """One chaos run; returns the problems `check` found (none: the history is whole) and how
    often each kind of fault struck."""
    rng = random.Random(seed + 1)  # what each fault picks; the schedule has its own
    plan = schedule(seed, minutes)
    say(f"chaos seed {seed}: {len(plan)} faults in {minutes:g} min: " + ", ".join(f"{t:g}s {k}" for t, k in plan))
    chaos = Chaos(folder, workers, repeats, epochs, say)
    counts: dict[str, int] = {}
    try:
        chaos.start_server()
        chaos.start_run()
        t0 = time.monotonic()
        for at, kind in plan:
            while time.monotonic() - t0 < at:
                chaos.ensure_workers()
                time.sleep(1)
            if chaos.complete():
                say(f"{time.monotonic() - t0:6.1f}s study complete before {kind}")
                break
            said = chaos.fault(kind, rng)
            counts[kind] = counts.get(kind, 0) + 1
            say(f"{time.monotonic() - t0:6.1f}s {kind}: {said}")
            chaos.ensure_workers()
        deadline = time.monotonic() + finish_timeout
        while not chaos.complete():
            if time.monotonic() > deadline:
                break
            chaos.ensure_workers()
            time.sleep(1)
        for p in chaos.live():  # each exits 0 by itself once the study has what it needs
            try:
                p.wait(120)
            except subprocess.TimeoutExpired:
                pass
        chaos.reap()
        if chaos.runs[-1].returncode in FAULT_EXITS and chaos.complete():
            # a fault ended the last `sweep run`, as it should (an outage longer than
            # storage_outage, or its workers killed: exit 137 once, its first worker's SIGKILL),
            # while a joined `sweep worker` outlived it and finished the study (which of them
            # outlives a fault is timing): its user runs the same command again, which must find
            # the study complete and exit 0 (checked below); any other code stays a failure
            say(f"{time.monotonic() - t0:6.1f}s the last sweep run ended at a fault "
                f"({chaos.runs[-1].returncode}); sweep run again")
            chaos.start_run()
            with contextlib.suppress(subprocess.TimeoutExpired):
                chaos.runs[-1].wait(300)
            chaos.reap()
        say(f"{time.monotonic() - t0:6.1f}s done; faults {counts}; exit codes {chaos.codes}")
        problems = check(chaos.optuna_url, chaos.tracking, chaos.target, chaos.epochs, chaos.env)
        say(f"trials: {tally(chaos.optuna_url)}")
        if chaos.runs[-1].returncode != 0:
            problems.append(f"the last sweep run exited {chaos.runs[-1].returncode}, not 0, on a complete study")
        return problems, counts
    finally:
        chaos.close()


def tally(optuna_url: str) -> str:
    """The study's trials by outcome: what the faults cost."""
    import optuna

    trials = optuna.load_study(study_name=STUDY, storage=optuna_url).get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    fail = [t for t in trials if t.state.name == "FAIL"]
    return (f"{sum(t.state.name == 'COMPLETE' for t in trials)} COMPLETE, {len(fail)} FAIL "
            f"({sum(t.number in retried for t in fail)} of a killed worker, retried; "
            f"{sum(bool(t.user_attrs.get('interrupted')) for t in fail)} interrupted by a stop, run again), "
            f"{len(trials)} in all")


def check(optuna_url: str, tracking: str, target: int, epochs: int, env: dict[str, str]) -> list[str]:
    """Every way the study's history is wrong, read from the stores alone."""
    import optuna
    from mlflow import MlflowClient
    from optuna.trial import TrialState

    problems: list[str] = []
    trials = optuna.load_study(study_name=STUDY, storage=optuna_url).get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if len(complete) != target:
        problems.append(f"{len(complete)} COMPLETE trials, expected {target}")
    for t in trials:
        if t.state in (TrialState.RUNNING, TrialState.WAITING):
            problems.append(f"trial {t.number} left {t.state.name}")
    superseded = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    for t in trials:
        if t.state == TrialState.FAIL and t.number not in superseded and not t.user_attrs.get("interrupted"):
            problems.append(f"trial {t.number} FAIL, neither retried nor interrupted: {t.user_attrs.get('fail_reason')}")
    pairs = [(t.user_attrs.get("config_index"), t.user_attrs.get("repeat")) for t in complete]
    for pair in sorted({p for p in pairs if pairs.count(p) > 1}):
        problems.append(f"configuration {pair[0]} repeat {pair[1]} completed {pairs.count(pair)} times")
    seeds = [(t.user_attrs.get("config_index"), t.user_attrs.get("seed")) for t in complete]
    for pair in sorted({p for p in seeds if seeds.count(p) > 1}):
        problems.append(f"seed {pair[1]} used {seeds.count(pair)} times by configuration {pair[0]}")

    client = MlflowClient(tracking)
    experiment = client.get_experiment_by_name(STUDY)
    if experiment is None:
        return [*problems, f"no MLflow experiment {STUDY!r}"]
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    if len(parents) != 1 or parents[0].info.status != "FINISHED":
        problems.append(f"parent runs: {[(r.info.run_id, r.info.status) for r in parents]}, expected one FINISHED")
    by_trial: dict[int, list[Any]] = {}
    for r in runs:
        if r.data.tags.get("sweep.role") == "trial":
            by_trial.setdefault(int(r.data.tags["optuna.trial_number"]), []).append(r)
    for t in complete:
        found = by_trial.get(t.number, [])
        if len(found) != 1 or found[0].info.status != "FINISHED":
            problems.append(f"trial {t.number}: MLflow runs {[(r.info.run_id, r.info.status) for r in found]}, "
                            "expected one FINISHED")
            continue
        run = found[0]
        # the run's id is in Optuna unless MLflow was away for the whole trial (the run made later)
        if t.user_attrs.get("mlflow_run_id") not in (None, run.info.run_id):
            problems.append(f"trial {t.number}: Optuna names run {t.user_attrs['mlflow_run_id']}, MLflow has "
                            f"{run.info.run_id}")
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        if sorted(m.step for m in history) != list(range(epochs)):
            problems.append(f"trial {t.number}: val_accuracy logged at steps {sorted(m.step for m in history)}")
    problems += _models_kept(client, experiment.experiment_id, optuna_url, trials, by_trial)
    finished = [r for r in runs if r.data.tags.get("sweep.role") == "trial" and r.info.status == "FINISHED"]
    if len(finished) != target:
        problems.append(f"{len(finished)} FINISHED trial runs in MLflow, expected {target}")
    try:
        best = client.get_model_version_by_alias(STUDY, "best")
        want = json.loads(subprocess.run([sys.executable, "-m", "sweep", "best", STUDY, "--json"], env=env,
                                         capture_output=True, text=True, timeout=120).stdout)["trial"]
        if best.tags.get("sweep.trial") != str(want):
            problems.append(f"@best is trial {best.tags.get('sweep.trial')}, sweep best says {want}")
    except Exception as e:  # noqa: BLE001 - no alias, or no answer
        problems.append(f"@best: {type(e).__name__}: {e}")
    r = subprocess.run([sys.executable, "-m", "sweep", "sync", STUDY], env=env, capture_output=True, text=True,
                       timeout=300)
    if r.returncode != 0 or " 0 run(s) created, 0 metric value(s), 0 param(s)" not in r.stdout \
            or " 0 run(s) ended, 0 model(s) uploaded" not in r.stdout:
        problems.append(f"sweep sync had something left to replay: {r.stdout.strip() or r.stderr.strip()[-500:]}")
    return problems


def _models_kept(client: Any, experiment_id: str, optuna_url: str, trials: list[Any],
                 by_trial: dict[int, list[Any]]) -> list[str]:
    """`tracking.keep_models` honoured: each trial it keeps has its model in MLflow, and no other
    trial has one, except a model the registry holds (a version once @best reads its files)."""
    import optuna

    from sweep.record import stored_config
    from sweep.tracking.models import kept
    from sweep.tracking.registry import registered_model_ids

    study = optuna.load_study(study_name=STUDY, storage=optuna_url)
    cfg = stored_config(study)
    stay = kept(study, trials, cfg.tracking.keep_models, cfg.search)
    models = client.search_logged_models(experiment_ids=[experiment_id], max_results=1000)
    registered = registered_model_ids(client, STUDY)
    out = []
    for t in trials:
        if t.state.name != "COMPLETE" or len(by_trial.get(t.number, [])) != 1:
            continue  # no run, or several: said already
        rid = by_trial[t.number][0].info.run_id
        have = [m for m in models if m.source_run_id == rid]
        if t.number in stay and not have:
            out.append(f"trial {t.number}: kept by keep_models {cfg.tracking.keep_models} but has no model in MLflow")
        extra = [m.model_id for m in have if m.model_id not in registered]
        if t.number not in stay and extra:
            out.append(f"trial {t.number}: not kept by keep_models {cfg.tracking.keep_models}, yet its model "
                       f"{', '.join(extra)} is still in MLflow")
    return out


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--minutes", type=float, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="each of the three activations this many times")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--keep", help="run in this folder and keep it (default: a temp folder, removed)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="sweep-chaos-") as tmp:
        folder = Path(args.keep or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        problems, _ = run(folder, args.seed, args.minutes, args.workers, args.repeats, args.epochs,
                       say=lambda line: print(line, flush=True))
        print(f"chaos seed {args.seed}: {'history whole' if not problems else f'{len(problems)} problem(s)'} "
              f"in {time.monotonic() - t0:.0f} s (processes' output: {folder / 'processes.log'})")
        for p in problems:
            print(f"  {p}")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
