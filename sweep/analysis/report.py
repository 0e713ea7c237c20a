"""`sweep report`: a self-contained folder (report.md + PNGs + CSV) for one study.

Curves are read back from MLflow (`MlflowClient.get_metric_history`), trials and Optuna's own
plots from the study; the same files are then logged as artifacts of the study's parent run.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from sweep import diagnostics
from sweep.analysis.compare import compare_study, format_comparison, trial_samples
from sweep.errors import SweepError, first_line
from sweep.lifecycle import environment
from sweep.models import activation_layers
from sweep.plots import pyplot, save_with_legend_below
from sweep.storage import Stores, resolve
from sweep.urls import mask
from sweep.record import CONFIRMED_BY, PARENT_ATTR, load_study, stored_config

if TYPE_CHECKING:
    import optuna
    import pandas as pd
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

ARTIFACT_DIR = "report"
REPORT = "report.md"
TABLE = "comparison.csv"
FIGURES = {
    "accuracy.png": "Accuracy per epoch, training and validation",
    "loss.png": "Loss per epoch, training and validation",
    "dead_fraction.png": "Units never positive on the probe batch, per activation layer",
    "prelu_alphas.png": "Learned PReLU alphas, pooled over repeats",
    "optuna_history.png": "Optuna: optimization history",
    "optuna_importances.png": "Optuna: parameter importances",
    "optuna_parallel_coordinate.png": "Optuna: parallel coordinates",
    "optuna_slice.png": "Optuna: slice plot of the activation parameters",
}
# a study of several metrics: Optuna's history and slice plots take one objective (they raise
# without `target`); the Pareto front shows every trial in all of them instead
PARETO_FIGURES = {
    **{k: v for k, v in FIGURES.items() if not k.startswith("optuna_")},
    "optuna_pareto_front.png": "Optuna: Pareto front (its trials highlighted)",
    "optuna_importances.png": "Optuna: parameter importances, per metric",
    "optuna_parallel_coordinate.png": FIGURES["optuna_parallel_coordinate.png"],
}
CURVES = ("accuracy", "loss")
# line style and marker per configuration, so configurations with equal curves stay visible
STYLES = (("-", "o"), ("--", "s"), ("-.", "^"), (":", "D"))


def _histories(client: MlflowClient, frame: pd.DataFrame, run_ids: dict[int, str],
               keys: list[str]) -> dict[str, dict[str, list[np.ndarray]]]:
    """{config: {metric key: [per-epoch values of each repeat]}} from MLflow, ordered by step."""
    out: dict[str, dict[str, list[np.ndarray]]] = {}
    for row in frame.itertuples(index=False):
        per_key = out.setdefault(row.config, {})
        for key in keys:
            hist = sorted(client.get_metric_history(run_ids[row.trial], key), key=lambda m: m.step)
            if hist:
                per_key.setdefault(key, []).append(np.array([m.value for m in hist]))
    return out


def _band(ax: Any, runs: list[np.ndarray], label: str, color: Any, style: tuple[str, str]) -> None:
    """Mean over repeats with a ±1 std band (repeats of different length are NaN-padded)."""
    width = max(len(r) for r in runs)
    grid = np.full((len(runs), width), np.nan)
    for i, r in enumerate(runs):
        grid[i, : len(r)] = r
    epochs = np.arange(1, width + 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a column with one repeat: std is NaN
        mean, std = np.nanmean(grid, axis=0), np.nanstd(grid, axis=0, ddof=1)
    ax.plot(epochs, mean, linestyle=style[0], marker=style[1], markersize=4, color=color,
            label=f"{label} (n={len(runs)})")
    if len(runs) > 1:
        ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)


def _panels(hist: dict[str, dict[str, list[np.ndarray]]], colors: dict[str, Any],
            panels: list[tuple[str, str]], ylabel: str, title: str, path: Path,
            ylim: tuple[float, float] | None = None) -> Path | None:
    """One panel per (metric key, panel title), one band per configuration. None if no data."""
    if not any(key in h for h in hist.values() for key, _ in panels):
        return None
    from matplotlib.ticker import MaxNLocator

    fig, axes = pyplot().subplots(1, len(panels), figsize=(5.2 * len(panels), 4.6), dpi=100,
                             squeeze=False, sharey=True, layout="constrained")
    for ax, (key, name) in zip(axes[0], panels):
        for config, h in hist.items():
            if key in h:
                _band(ax, h[key], config, colors[config], STYLES[list(hist).index(config) % len(STYLES)])
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ylim:
            ax.set_ylim(*ylim)
    axes[0][0].set_ylabel(ylabel)
    return save_with_legend_below(fig, axes[0][0], title, path)


def _alphas(client: MlflowClient, frame: pd.DataFrame, run_ids: dict[int, str]) -> dict[str, dict[str, np.ndarray]]:
    """PReLU alphas logged by each trial, pooled per configuration and layer."""
    name = diagnostics.ALPHA_FILES[0]
    pooled: dict[str, dict[str, list[np.ndarray]]] = {}
    # one progress bar per small download is noise on the terminal; respect an explicit setting
    from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR as bar

    quiet = {bar.name: os.environ.get(bar.name, "false")}
    with tempfile.TemporaryDirectory() as tmp, environment(quiet):
        for row in frame.itertuples(index=False):
            rid = run_ids[row.trial]
            if f"diagnostics/{name}" not in {a.path for a in client.list_artifacts(rid, "diagnostics")}:
                continue
            local = client.download_artifacts(rid, f"diagnostics/{name}", tmp)
            with np.load(local) as f:
                for layer in f.files:
                    pooled.setdefault(row.config, {}).setdefault(layer, []).append(f[layer])
    return {c: {layer: np.concatenate(v) for layer, v in layers.items()} for c, layers in pooled.items()}


def _optuna_plot(plt: Any, draw: Callable[[], Any], study: str, path: Path) -> Path:
    from optuna.exceptions import ExperimentalWarning

    with warnings.catch_warnings():
        # experimental API, and degenerate-data notes (equal values, one trial) a report can live with
        warnings.simplefilter("ignore", ExperimentalWarning)
        warnings.simplefilter("ignore", UserWarning)
        ax = draw()
        first = np.ravel(ax)[0] if isinstance(ax, np.ndarray) else ax
        fig = first.figure
        if fig.get_suptitle():
            fig.suptitle(f"{study}: {fig.get_suptitle()}")
        else:  # Optuna titles some plots on the left, others in the centre
            loc = next((x for x in ("left", "center", "right") if first.get_title(loc=x)), "center")
            first.set_title(f"{study}: {first.get_title(loc=loc)}", loc=loc)
        fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def _optuna_figures(plt: Any, study: optuna.Study, metrics: tuple[str, ...], folder: Path
                    ) -> tuple[list[Path], list[str]]:
    import optuna.visualization.matplotlib as ov
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    common = sorted(set.intersection(*(set(t.params) for t in done))) if done else []
    target = metrics[0]
    jobs = {
        "optuna_history.png": lambda: ov.plot_optimization_history(study, target_name=target),
        "optuna_importances.png": lambda: ov.plot_param_importances(study, target_name=target),
        # conditional parameters exist only in some trials; parallel coordinates need all of them
        "optuna_parallel_coordinate.png": lambda: ov.plot_parallel_coordinate(study, params=common,
                                                                               target_name=target),
        "optuna_slice.png": lambda: ov.plot_slice(study, target_name=target),
    }
    if len(metrics) > 1:  # importances and parallel coordinates draw every objective themselves
        jobs = {
            "optuna_pareto_front.png": lambda: ov.plot_pareto_front(study, target_names=list(metrics)),
            "optuna_importances.png": lambda: ov.plot_param_importances(study),
            "optuna_parallel_coordinate.png": lambda: ov.plot_parallel_coordinate(study, params=common),
        }
    made, missing = [], []
    for name, draw in jobs.items():
        try:
            made.append(_optuna_plot(plt, draw, study.study_name, folder / name))
        except Exception as e:  # noqa: BLE001 - e.g. importances need two trials that differ
            plt.close("all")
            missing.append(f"{name}: Optuna could not draw it ({type(e).__name__}: {e})")
    return made, missing


def _front_line(study: optuna.Study, metrics: tuple[str, ...], directions: list[str]) -> str:
    from sweep.analysis.pareto import members

    front = members(study, metrics, directions)
    each = "; ".join(f"trial {m['trial']} " + ", ".join(f"{k} {v:.4f}" for k, v in m["values"].items())
                     + f" ({', '.join(f'{p}={v}' for p, v in m['params'].items())})" for m in front)
    aims = ", ".join(f"{m} {d}d" for m, d in zip(metrics, directions))
    return f"Pareto front ({aims}), {len(front)} trial(s), `sweep best` lists them: {each}."


def _confirmation(search: optuna.Study, name: str, stores: Stores, metric: str, direction: str) -> list[str]:
    """The search's finalists as its confirmation trained them (sweep confirm): per seed, beside
    the value that made each a finalist."""
    from sweep import ranking
    from sweep.runner.confirm import finalist_rows

    trials = load_study(name, stores).get_trials(deepcopy=False)
    rows = finalist_rows(search.get_trials(deepcopy=False), trials, direction)
    head = ["", "## Confirmation", ""]
    if not rows:
        return head + [f"Study `{name}` confirms this search's finalists on fresh seeds; it has no complete run yet."]
    verdict = ranking.judge(ranking.configurations(trials), metric, direction).verdict
    seeds = rows[0]["seeds"]
    out = head + [f"Study `{name}` trained this search's finalists again on seeds {', '.join(map(str, seeds))}, "
                  f"none of them used by the search, the same for each. {metric}, best confirmed mean first; "
                  f"the winner, `{rows[0]['config']}`, is {verdict}.", "",
                  "| finalist | search trial | search value | confirmed mean ± std (n) | per seed | search − confirmed |",
                  "|---|--:|--:|--:|---|--:|"]
    for r in rows:
        per_seed = ", ".join(f"{s}: {v:.4f}" for s, v in zip(r["seeds"], r["values"]))
        std = "n/a" if r["std"] is None else f"{r['std']:.4f}"
        search_value = "n/a" if r["search_value"] is None else f"{r['search_value']:.4f}"
        opt = "n/a" if r["optimism"] is None else f"{r['optimism']:+.4f}"
        out.append(f"| {r['config']} | {r['search_trial']} | {search_value} | {r['mean']:.4f} ± {std} ({r['n']}) | "
                   f"{per_seed} | {opt} |")
    return out


def _dead_table(hist: dict[str, dict[str, list[np.ndarray]]], layers: tuple[str, ...]) -> str:
    rows = ["| configuration | " + " | ".join(layers) + " |", "|---|" + "--:|" * len(layers)]
    for config, h in hist.items():
        cells = []
        for layer in layers:
            runs = h.get(f"{diagnostics.DEAD_PREFIX}{layer}", [])
            cells.append(f"{np.mean([r[-1] for r in runs]):.3f}" if runs else "n/a")
        rows.append(f"| {config} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _alpha_table(alphas: dict[str, dict[str, np.ndarray]]) -> str:
    rows = ["| configuration | layer | alphas (all repeats) | mean | min | max |", "|---|---|--:|--:|--:|--:|"]
    for config, layers in alphas.items():
        for layer, a in layers.items():
            rows.append(f"| {config} | {layer} | {a.size} | {a.mean():.4f} | {a.min():.4f} | {a.max():.4f} |")
    return "\n".join(rows)


def report(study: str, out: str | Path | None = None, storage: str | Stores | None = None,
           tracking_uri: str | None = None, metric: str = "test_accuracy",
           baseline: str | None = None) -> Path:
    """Write the study's report folder (default `reports/<study>`) and log it to its parent run.

    Returns the folder; `report.md` in it links every figure.
    """
    from mlflow import MlflowClient

    from sweep.plots import pyplot

    stores = resolve(storage, tracking_uri)
    s = load_study(study, stores)
    cfg = stored_config(s)
    parent = s.user_attrs.get(PARENT_ATTR)
    if not parent:
        raise SweepError(f"study {study!r} has no MLflow parent run recorded; run it with `sweep run` first")
    comparison = compare_study(s, metric, baseline)
    frame, _, _ = trial_samples(s, metric)
    run_ids = {t.number: t.user_attrs["mlflow_run_id"] for t in s.get_trials(deepcopy=False)
               if "mlflow_run_id" in t.user_attrs}
    folder = Path(out) if out is not None else Path("reports") / study
    folder.mkdir(parents=True, exist_ok=True)

    client = MlflowClient(stores.tracking)
    layers = activation_layers(cfg.model.spec())
    dead_keys = [f"{diagnostics.DEAD_PREFIX}{layer}" for layer in layers]
    try:
        hist = _histories(client, frame, run_ids, [*CURVES, *(f"val_{k}" for k in CURVES), *dead_keys])
        alphas = _alphas(client, frame, run_ids)
    except Exception as e:  # mlflow raises MlflowException, requests and SQLAlchemy errors
        raise SweepError(f"reading study {study!r}'s runs from MLflow at {mask(stores.tracking)} failed: "
                         f"{mask(first_line(e))}. Pass the --tracking-uri the study was run with.") from None
    plt = pyplot()
    colors = {c: plt.get_cmap("tab10")(i % 10) for i, c in enumerate(hist)}
    band = "mean over repeats, band ± 1 std"
    made: list[Path | None] = [
        _panels(hist, colors, [(k, "training"), (f"val_{k}", "validation")], k,
                f"{cfg.study}: {k} per epoch ({band})", folder / f"{k}.png") for k in CURVES
    ]
    made.append(_panels(hist, colors, [(k, k.removeprefix(diagnostics.DEAD_PREFIX)) for k in dead_keys],
                        "fraction of units never positive", f"{cfg.study}: dying units per epoch ({band})",
                        folder / "dead_fraction.png", ylim=(-0.02, 1.02)))
    if alphas:
        made.append(diagnostics.alpha_histogram(alphas, f"{cfg.study}: learned PReLU alphas (pooled over repeats)",
                                                folder / "prelu_alphas.png", colors))
    optuna_made, missing = _optuna_figures(plt, s, cfg.search.metrics, folder)
    files = [p for p in made if p is not None] + optuna_made
    names = {p.name for p in files}
    missing = [f"{n}: no data (dead-unit diagnostics off, or no PReLU configuration)"
               for n in ("dead_fraction.png", "prelu_alphas.png") if n not in names] + missing

    comparison.table.to_csv(folder / TABLE, index=False)
    text = [
        f"# Study `{cfg.study}`", "",
        f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by `sweep report`. "
        f"{len(frame)} complete trial(s) of {len(s.trials)}; dataset `{cfg.dataset.name}`"
        f"{f' (train_samples={cfg.dataset.train_samples})' if cfg.dataset.train_samples else ''}, "
        f"{cfg.training.epochs} epochs, batch {cfg.training.batch_size}, {cfg.training.optimizer} "
        f"lr={cfg.training.learning_rate}, {cfg.search.repeats} repeat(s) per configuration.",
        "", f"Optuna storage `{mask(stores.optuna)}`; MLflow `{mask(stores.tracking)}`, parent run `{parent}`.",
        "", "## Comparison", "", format_comparison(comparison, markdown=True), f"Table as CSV: [{TABLE}]({TABLE})",
    ]
    if s.user_attrs.get(CONFIRMED_BY):
        text += _confirmation(s, s.user_attrs[CONFIRMED_BY], stores, cfg.search.metric, cfg.search.direction)
    sections = {"accuracy.png": "## Training curves", "dead_fraction.png": "## Dying units",
                "prelu_alphas.png": "## PReLU alphas", "optuna_history.png": "## Optuna",
                "optuna_pareto_front.png": "## Optuna"}
    several = len(cfg.search.metrics) > 1
    for name, caption in (PARETO_FIGURES if several else FIGURES).items():
        if name in sections:
            text += ["", sections[name]]
        if name == "optuna_pareto_front.png":
            text += ["", _front_line(s, cfg.search.metrics, cfg.search.directions)]
        if name == "dead_fraction.png" and name in names:
            text += ["", f"Final-epoch fraction of units (channels for convolutions) never positive on "
                         f"{cfg.diagnostics.probe_samples} probe images, mean over repeats:", "",
                     _dead_table(hist, layers)]
        if name == "prelu_alphas.png" and alphas:
            text += ["", _alpha_table(alphas)]
        if name in names:
            text += ["", f"![{caption}]({name})"]
    if missing:
        text += ["", "## Not produced", "", *(f"- {m}" for m in missing)]
    (folder / REPORT).write_text("\n".join(text) + "\n")

    for p in [folder / REPORT, folder / TABLE, *files]:
        client.log_artifact(parent, str(p), ARTIFACT_DIR)
    log.info("report for %s: %s (%d files), logged to MLflow run %s under %s/", study, folder,
             len(files) + 2, parent, ARTIFACT_DIR)
    return folder
