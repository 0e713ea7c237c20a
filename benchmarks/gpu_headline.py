"""The seeds' whole comparison on one GPU: `sweep run --workers N` against the tutorials' scripts.

    python benchmarks/gpu_headline.py --npz mnist.npz [--workers 16] [--repeats 5] [--epochs 25]
        [--script-seeds 1] [--samples 60000] [--out DIR]

The study is studies/seed-comparison.yaml as the tutorials ran it (4 variants x `--repeats` seeds x
`--epochs` epochs, all 60,000 training images, batch 250, validation split 0.2), end to end with
every callback, plot and model, Optuna and MLflow on the embedded default (two SQLite files in a
fresh folder). The scripts are `tutorial_script.py`, one fresh process after another, for
`--script-seeds` seeds of each variant; their time for the whole comparison is that x repeats /
script-seeds (said so in the output), since running all 20 would not fit one device call.
Prints one JSON line and a summary: wall clocks, samples/s, the peak GPU memory (nvidia-smi polled
every 0.5 s), and the first line `sweep run` printed (the backend and device). Run by
benchmarks/gpu_headline.sh on the GPU machine; on a CPU it runs too (small sizes), to check it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT_VARIANTS = [["--activation", "relu"], ["--activation", "leaky_relu", "--alpha", "0.1"],
                   ["--activation", "prelu", "--alpha-init", "zeros"],
                   ["--activation", "prelu", "--alpha-init", "0.25"]]


def gpu_memory_peak(stop: threading.Event, peak: list[int]) -> None:
    if shutil.which("nvidia-smi") is None:
        return
    while not stop.is_set():
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True).stdout.split()
        if out:
            peak[0] = max(peak[0], sum(int(v) for v in out))
        stop.wait(0.5)


def timed(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> tuple[float, int]:
    stop, peak = threading.Event(), [0]
    watcher = threading.Thread(target=gpu_memory_peak, args=(stop, peak), daemon=True)
    watcher.start()
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        code = subprocess.run(cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    stop.set()
    watcher.join()
    if code != 0:
        sys.exit(f"{' '.join(cmd[:4])} ... exited {code}; its log:\n{log.read_text()[-4000:]}")
    return wall, peak[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--npz", required=True)
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--script-seeds", type=int, default=1)
    ap.add_argument("--samples", type=int, default=60000, help="training images (60000: all)")
    ap.add_argument("--out", default=None, help="a folder for the logs and the JSON line")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="sweep-gpu-"))
    out = Path(args.out) if args.out else work
    out.mkdir(parents=True, exist_ok=True)
    npz = Path(args.npz).resolve()
    if args.samples < 60000:  # a check on a CPU: the first images only
        import numpy as np

        with np.load(npz) as f:
            np.savez(work / "subset.npz", x_train=f["x_train"][:args.samples], y_train=f["y_train"][:args.samples],
                     x_test=f["x_test"][:args.samples // 6], y_test=f["y_test"][:args.samples // 6])
        npz = work / "subset.npz"
    study = yaml.safe_load((ROOT / "studies" / "seed-comparison.yaml").read_text())
    study["study"] = "seed-comparison-gpu"
    study["dataset"] = {"name": "npz", "path": str(npz), "validation_split": 0.2}
    study["training"]["epochs"] = args.epochs
    study["search"]["repeats"] = args.repeats
    (work / "study.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k not in ("SWEEP_OPTUNA_STORAGE", "MLFLOW_TRACKING_URI")}
    env["XDG_CACHE_HOME"] = str(work / "cache")

    sweep_wall, sweep_peak = timed([sys.executable, "-m", "sweep", "run", "study.yaml", "--workers",
                                    str(args.workers)], work, env, out / "sweep-run.log")
    first = next((line for line in (out / "sweep-run.log").read_text().splitlines() if " on " in line
                  and "keras" in line), "?")
    best = subprocess.run([sys.executable, "-m", "sweep", "best", "seed-comparison-gpu"], cwd=work, env=env,
                          capture_output=True, text=True).stdout
    scripts_wall, script_peak, runs = 0.0, 0, []
    for seed in range(args.script_seeds):
        for variant in SCRIPT_VARIANTS:
            wall, peak = timed([sys.executable, str(ROOT / "benchmarks" / "tutorial_script.py"), *variant,
                                "--seed", str(seed), "--epochs", str(args.epochs), "--npz", str(npz)],
                               work, env, out / "script.log")
            scripts_wall += wall
            script_peak = max(script_peak, peak)
            runs.append(json.loads((out / "script.log").read_text().strip().splitlines()[-1]))
    scripts_all = scripts_wall * args.repeats / args.script_seeds
    fitted = int(args.samples * 0.8) * args.epochs * 4 * args.repeats
    result = {
        "day": time.strftime("%Y-%m-%d"), "first_line": first, "workers": args.workers, "repeats": args.repeats,
        "epochs": args.epochs, "samples": args.samples, "sweep_wall_s": round(sweep_wall, 1),
        "sweep_samples_per_s": round(fitted / sweep_wall), "sweep_gpu_peak_mib": sweep_peak,
        "scripts_run": len(runs), "scripts_wall_s": round(scripts_wall, 1),
        "scripts_all_estimated_s": round(scripts_all, 1), "script_gpu_peak_mib": script_peak,
        "ratio": round(sweep_wall / scripts_all, 3),
        "script_test_accuracy": [r.get("test_accuracy") for r in runs],
    }
    (out / "headline.json").write_text(json.dumps(result) + "\n")
    print(json.dumps(result))
    print(f"sweep run --workers {args.workers}: {sweep_wall:.1f} s for {4 * args.repeats} trials x {args.epochs} "
          f"epochs ({fitted / sweep_wall:,.0f} samples/s, GPU peak {sweep_peak} MiB); the scripts one after "
          f"another: {scripts_wall:.1f} s for {len(runs)}, so {scripts_all:.1f} s for all {4 * args.repeats} "
          f"(x{args.repeats / args.script_seeds:g}); ratio {sweep_wall / scripts_all:.2f}x")
    print(first)
    print(best)


if __name__ == "__main__":
    main()
