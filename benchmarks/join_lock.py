"""How long a worker joining a set-up study holds the study lock, which every worker of a pool
takes in turn as it joins (sweep/runner/setup.py `prepare`).

    python benchmarks/join_lock.py STUDY.yaml [--runs 3] [--before DIR]

Sets STUDY up once in a fresh folder, then joins it from fresh processes (this checkout's
package, and DIR's, a `git worktree add DIR REV`, in turn), each printing how long its `prepare`
took, waited for the lock and held it."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

JOIN = """
import contextlib, json, sys, time
from sweep.runner import setup
from sweep.storage import resolve

stores = resolve(None, None, None)
real, spans = setup.study_lock, []

@contextlib.contextmanager
def lock(*args, **kwargs):
    t0 = time.perf_counter()
    with real(*args, **kwargs):
        t1 = time.perf_counter()
        yield
        spans.append((t1 - t0, time.perf_counter() - t1))

setup.study_lock = lock
t = time.perf_counter()
setup.prepare(setup.config_for(sys.argv[1], stores), stores, stores.service.workers)
print(json.dumps({"prepare": time.perf_counter() - t, "wait": spans[0][0], "held": spans[0][1]}))
"""


def join(study: Path, folder: Path, code: Path) -> dict[str, float]:
    r = subprocess.run([sys.executable, "-c", JOIN, str(study)], cwd=folder, capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(code), "TF_CPP_MIN_LOG_LEVEL": "3"})
    if r.returncode != 0:
        raise SystemExit(f"join failed ({r.returncode}):\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("study", type=Path)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--before", type=Path, default=None, help="an earlier checkout, joined in turn")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="sweep-join-"))
    study = args.study.resolve()
    join(study, folder, ROOT)  # sets it up: creates both stores, the parent run, the plan
    codes = [("this code", ROOT), *([(f"before ({args.before})", args.before.resolve())] if args.before else [])]
    rows: dict[str, list[dict[str, float]]] = {label: [] for label, _ in codes}
    for _ in range(args.runs):
        for label, code in codes:
            rows[label].append(join(study, folder, code))
    for label, runs in rows.items():
        med = {k: statistics.median(r[k] for r in runs) for k in ("prepare", "wait", "held")}
        held = ", ".join(f"{r['held']:.3f}" for r in runs)
        print(f"{label}: joining prepare {med['prepare']:.2f} s, study lock held {med['held']:.3f} s ({held})")


if __name__ == "__main__":
    main()
