"""The `sweep` command line: a thin layer, each command parses arguments and calls one function."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
from typing import Any, Callable, Iterator, Optional

import typer

from sweep.errors import SweepError
from sweep.console import setup_logging
from sweep.lifecycle import (TF_THREADS, TRIAL_PROCESS_OPTION, become_trial_process, leave, leave_quickly,
                             stop_on_signals)
from sweep.runner.handover import HANDOVER_EXIT, HandOver
from sweep.storage import (DEFAULT_CONFIG, DEFAULT_MLFLOW_DB, DEFAULT_OPTUNA_DB, ENV_BACKEND, ENV_CONFIG, ENV_OPTUNA,
                           ENV_TRACKING, close_all, resolve)

# plain help (rich_markup_mode=None): rich markup would eat every "[env ...; default ...]" as a style tag
app = typer.Typer(help="Hyperparameter sweeps over activations: Optuna studies, Keras models, MLflow tracking.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False, rich_markup_mode=None)
log = logging.getLogger("sweep")

StorageOpt = typer.Option(None, "--storage",
                          help=f"Optuna storage URL [env {ENV_OPTUNA}; default sqlite:///{DEFAULT_OPTUNA_DB}]")
TrackingOpt = typer.Option(None, "--tracking-uri",
                           help=f"MLflow tracking URI [env {ENV_TRACKING}; default sqlite:///{DEFAULT_MLFLOW_DB}]")
VerboseOpt = typer.Option(False, "--verbose", "-v",
                          help="more detail: where each store URL came from, every epoch metric, the "
                               "libraries' own logs (TensorFlow, MLflow, Optuna)")
ThreadsOpt = typer.Option(None, "--threads-per-worker", min=1,
                          help=f"TensorFlow threads per worker process [env {TF_THREADS[0]}; default: "
                               "the cores shared out between workers; one worker: TensorFlow's own]")
ConfigOpt = typer.Option(None, "--config",
                         help=f"settings file [env {ENV_CONFIG}; default ./{DEFAULT_CONFIG}]")


_debug = False  # `sweep --debug COMMAND`: the traceback behind each one-line error


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", help="print the full traceback (with the library "
                                        "error it began as) above an error's one line, for a bug report"),
             trial_process: Optional[str] = typer.Option(None, TRIAL_PROCESS_OPTION, hidden=True)) -> None:
    global _debug
    _debug = debug
    if trial_process is not None:  # started by a supervisor (the route: sweep/lifecycle.py)
        become_trial_process(trial_process)


def _traceback(e: BaseException) -> None:
    """The whole chain, including what `raise ... from None` hides from users: the library's own
    error that the one line was made from."""
    import traceback

    from sweep.urls import mask

    suppressed, e.__suppress_context__ = e.__suppress_context__, False
    try:
        typer.echo(mask("".join(traceback.format_exception(e))).rstrip("\n"), err=True)  # a driver's message may hold a URL
    finally:
        e.__suppress_context__ = suppressed


@contextlib.contextmanager
def _guard() -> Iterator[None]:
    """User and service errors: one clean message and exit code, no traceback (but with --debug)."""
    try:
        yield
    except SweepError as e:
        if _debug:
            _traceback(e)
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt as e:
        typer.echo("interrupted: finished trials are saved; run the same command again to resume", err=True)
        raise typer.Exit(128 + getattr(e, "signum", 2)) from None
    except HandOver:
        raise typer.Exit(HANDOVER_EXIT) from None  # its supervisor starts a fresh process


def _command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A command that reads or serves (no trials): its logging set up from `verbose`, then its
    body inside the one error boundary (`_guard`)."""

    @functools.wraps(fn)  # typer reads the parameters through __wrapped__
    def command(*args: Any, **kwargs: Any) -> Any:
        setup_logging(kwargs.get("verbose", False))
        with _guard():
            return fn(*args, **kwargs)

    return app.command()(command)


def _trains(child: Callable[[dict[str, Any]], Optional[list[str]]]) -> Callable[[Callable[..., Any]], Any]:
    """A command that trains (run, worker, confirm): its trials go to a supervised trial process,
    `sweep CHILD...` with `child(options)` as CHILD (None: none, as for a pool's parent), which this
    process only restarts (the route, and how each process ends: sweep/lifecycle.py). In that
    process, or with the memory bound off, the body runs: on the live console, in `_guard`."""

    def decorate(fn: Callable[..., Any]) -> Any:
        @functools.wraps(fn)  # typer reads the parameters through __wrapped__
        def command(**options: Any) -> Any:
            leave_quickly()
            with _guard():
                code = None if (argv := child(options)) is None else _in_child(argv, options)
            if code is not None:
                raise typer.Exit(code)
            with _guard(), stop_on_signals():  # from the start: sweep/lifecycle.py
                setup_logging(options["verbose"], console=True)
                return fn(**options)

        return app.command()(command)

    return decorate


@_trains(lambda o: ["run", o["study"]] if o["workers"] == 1 else None)
def run(
    study: str = typer.Argument(..., help="study file (studies/x.yaml), or the name of a stored study to join"),
    storage: Optional[str] = StorageOpt,
    tracking_uri: Optional[str] = TrackingOpt,
    n_trials: Optional[int] = typer.Option(None, "--n-trials", min=1, help="run at most this many trials now"),
    workers: int = typer.Option(1, "--workers", "-w", min=1,
                                help="local worker processes on this study (on this machine; SQLite or PostgreSQL)"),
    threads_per_worker: Optional[int] = ThreadsOpt,
    config: Optional[str] = ConfigOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Run, resume or join a study, showing its trials as they train.

    On a terminal: a live view of the running trial(s) (epoch, batch, loss, metric, ETA) under one
    line per finished trial. In a pipe or a log file: one whole line per epoch and per trial."""
    stores = resolve(storage, tracking_uri, config)  # once: the study and its confirmation
    if workers > 1:
        raise typer.Exit(_run_pool(study, stores, n_trials, workers, config, verbose, threads_per_worker))
    from sweep.runner import launch
    from sweep.runner.study import run as run_study

    launch.use_threads(threads_per_worker)
    s = run_study(study, storage=stores, n_trials=n_trials)
    launch.done(s)
    s = launch.then_confirm(s, stores)
    if s is not None:
        launch.done(s)


def _in_child(command: list[str], options: dict[str, Any]) -> Optional[int]:
    """`command`'s trials in a supervised trial process (sweep.runner.launch.supervised), with the
    command's own `options`: its exit code, or None when this process runs them itself."""
    from sweep.runner import launch

    n_trials, threads = options.get("n_trials"), options["threads_per_worker"]
    return launch.supervised(_child_argv([*command, *(["--n-trials", str(n_trials)] if n_trials else []),
                                          *(["--threads-per-worker", str(threads)] if threads else [])],
                                         options["config"], options["verbose"]),
                             options["storage"], options["tracking_uri"], options["config"])


def _child_argv(command: list[str], config: Optional[str], verbose: bool) -> list[str]:
    """The command line, after `sweep`, of a trial process this command starts: `command` with
    the flags of this one that it repeats (store URLs go in its environment instead)."""
    return [*(["--debug"] if _debug else []), *command, *(["--config", os.path.abspath(config)] if config else []),
            *(["-v"] if verbose else [])]


def _run_pool(study: Any, stores: Any, n_trials: Optional[int], workers: int, config: Optional[str], verbose: bool,
              threads: Optional[int]) -> int:
    from sweep.runner import launch

    return launch.pool(study, stores, workers, n_trials, threads, lambda n: _child_argv(["worker", n], config, verbose))


@_trains(lambda o: ["worker", o["study"]])
def worker(
    study: str = typer.Argument(..., help="name of a study in the Optuna storage, or a study file (the first "
                                          "worker creates the study; the others join it)"),
    storage: Optional[str] = StorageOpt,
    tracking_uri: Optional[str] = TrackingOpt,
    n_trials: Optional[int] = typer.Option(None, "--n-trials", min=1, help="run at most this many trials"),
    threads_per_worker: Optional[int] = ThreadsOpt,
    config: Optional[str] = ConfigOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Join a running study from any machine; exits 0 once the study has what it needs."""
    from sweep.runner import launch
    from sweep.runner.study import join

    launch.use_threads(threads_per_worker)
    stores = resolve(storage, tracking_uri, config)  # once: the study and its confirmation
    launch.then_confirm(join(study, stores, n_trials), stores, join=True)


def _confirm_argv(o: dict[str, Any]) -> Optional[list[str]]:
    return None if o["workers"] > 1 else ["confirm", o["study"], *(["--top", str(o["top"])] if o["top"] else []),
                                          *(["--per", o["per"]] if o["per"] else []), "--repeats", str(o["repeats"]),
                                          *(["--name", o["name"]] if o["name"] else [])]


@_trains(_confirm_argv)
def confirm(
    study: str = typer.Argument(..., help="name of a completed search study"),
    top: Optional[int] = typer.Option(None, "--top", min=1, help="finalists: the top K distinct configurations "
                                      "by the study's metric [default 3]"),
    per: Optional[str] = typer.Option(None, "--per", help="finalists: `activation`, the best configuration of "
                                      "each activation searched (instead of --top)"),
    repeats: int = typer.Option(5, "--repeats", "-r", min=2, help="fresh seeds per finalist"),
    name: Optional[str] = typer.Option(None, "--name", help="the confirmation study's name [default STUDY-confirm]"),
    storage: Optional[str] = StorageOpt,
    tracking_uri: Optional[str] = TrackingOpt,
    workers: int = typer.Option(1, "--workers", "-w", min=1,
                                help="local worker processes on the confirmation (on this machine; SQLite or PostgreSQL)"),
    threads_per_worker: Optional[int] = ThreadsOpt,
    config: Optional[str] = ConfigOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Train a search's finalists again on fresh seeds, the same seeds for each, in a study of its
    own (STUDY-confirm); then `sweep best STUDY` names the confirmed winner, tested against the
    other finalists, and how much the search flattered it. Run again to resume, or with more
    --repeats to add only the missing seeds."""
    from sweep.config import confirm_options
    from sweep.runner import confirm as confirm_mod
    from sweep.runner import launch

    options = confirm_options({"top": top, "per": per, "repeats": repeats, "study": name})
    stores = resolve(storage=storage, tracking_uri=tracking_uri, config=config)
    confirmation, finals = confirm_mod.prepare(study, stores, options)
    launch.say_finalists(study, confirmation, finals)
    if workers > 1:
        raise typer.Exit(_run_pool(confirmation, stores, None, workers, config, verbose, threads_per_worker))
    from sweep.runner.study import run as run_study

    launch.use_threads(threads_per_worker)
    launch.done(run_study(confirmation, storage=stores))


@_command
def status(
    study: str = typer.Argument(..., help="study name"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    storage: Optional[str] = StorageOpt,
    config: Optional[str] = ConfigOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Trials by state and by worker, running trials and their times, ETA."""
    from sweep.runner.status import format_status, status as study_status

    st = study_status(study, storage=resolve(storage, config=config))
    typer.echo(json.dumps(st.to_dict()) if as_json else format_status(st))


@_command
def best(
    study: str = typer.Argument(..., help="study name"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    storage: Optional[str] = StorageOpt,
    config: Optional[str] = ConfigOpt,
    tracking_uri: Optional[str] = TrackingOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """The best configuration: with repeats, the best mean over seeds, tested against the others;
    otherwise the best trial. Value, activation params, MLflow run id; for a study of several
    metrics, its Pareto front (one row per trial; JSON: {"pareto": [...], ...})."""
    from sweep.results import best_config

    cfg = best_config(study, storage=resolve(storage, tracking_uri, config))
    if as_json:
        typer.echo(json.dumps(cfg))
        return
    if "pareto" in cfg:
        from sweep.analysis.pareto import format_pareto

        typer.echo(format_pareto(cfg))
        return
    from sweep.analysis.best import format_best

    typer.echo(format_best(cfg))


@_command
def promote(
    study: str = typer.Argument(..., help="study name"),
    trial: Optional[int] = typer.Option(None, "--trial", min=0,
                                        help="promote this trial instead of the best (a study of several metrics needs it)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    storage: Optional[str] = StorageOpt,
    config: Optional[str] = ConfigOpt,
    tracking_uri: Optional[str] = TrackingOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Register the best trial's model in the MLflow Model Registry under the study's name with the
    alias `best` (a study does it itself when it completes): load it with
    mlflow.pyfunc.load_model("models:/STUDY@best") or sweep.load_model(STUDY)."""
    from sweep.results import promote as promote_model

    out = promote_model(study, trial=trial, storage=resolve(storage, tracking_uri, config))
    if as_json:
        typer.echo(json.dumps(out))
        return
    what = "is now" if out["changed"] else "already was"
    value = out["value"]
    shown = (", ".join(f"{m} {v:.4f}" for m, v in value.items()) if isinstance(value, dict)
             else f"value {value:.4f}")
    of = f" of {out['configuration']}, the best configuration by mean" if out.get("configuration") else ""
    typer.echo(f"trial {out['trial']} ({shown}{of}) {what} {out['model_uri']}: registered model "
               f"{out['name']}, version {out['version']}, from {out['source']}")


@_command
def trials(
    study: str = typer.Argument(..., help="study name"),
    storage: Optional[str] = StorageOpt,
    config: Optional[str] = ConfigOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """All trials of a study as a table (state, value, params, seed, MLflow run id)."""
    from sweep.results import trials_table

    df = trials_table(study, storage=resolve(storage, config=config))
    typer.echo(df.to_string(index=False))


MetricOpt = typer.Option("test_accuracy", "--metric", help="test_accuracy, test_loss, or the study's own metric")
BaselineOpt = typer.Option(None, "--baseline", help="configuration to compare against [default: relu, else the first]")


@_command
def compare(
    study: str = typer.Argument(..., help="study name"),
    metric: str = MetricOpt,
    baseline: Optional[str] = BaselineOpt,
    effect: Optional[float] = typer.Option(
        None, "--effect", help="a difference that matters to you, in the metric's units (e.g. 0.001): "
        "adds the repeats needed to detect it with 80% power"),
    correction: str = typer.Option("holm", "--correction", help="multiple-comparison correction: holm or bh "
                                   "(Benjamini-Hochberg)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    storage: Optional[str] = StorageOpt,
    config: Optional[str] = ConfigOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Per configuration over repeats: mean, CI; vs baseline: difference, paired or Welch test, p raw and
    adjusted, effect size, minimum detectable difference."""
    from sweep.analysis.compare import compare as compare_configs, format_comparison

    result = compare_configs(study, storage=resolve(storage, config=config), metric=metric, baseline=baseline,
                             correction=correction, effect=effect)
    typer.echo(json.dumps(result.to_dict()) if as_json else format_comparison(result))


@_command
def report(
    study: str = typer.Argument(..., help="study name"),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="folder to write [default: reports/STUDY]"),
    metric: str = MetricOpt,
    baseline: Optional[str] = BaselineOpt,
    storage: Optional[str] = StorageOpt,
    config: Optional[str] = ConfigOpt,
    tracking_uri: Optional[str] = TrackingOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Write a report folder (Markdown + PNGs) and log it to the study's MLflow parent run."""
    from sweep.analysis.report import report as write_report

    folder = write_report(study, out=out, storage=resolve(storage, tracking_uri, config), metric=metric,
                          baseline=baseline)
    typer.echo(str(folder / "report.md"))


@_command
def server(
    config: Optional[str] = typer.Option(None, "--config", help="settings file [default ./mlflow.yaml]"),
    host: Optional[str] = typer.Option(None, "--host", help="interface to bind [server.host; default 127.0.0.1]"),
    port: Optional[int] = typer.Option(None, "--port", min=1, max=65535,
                                       help="port to serve the UI and API on [server.port; default 5000]"),
    backend_store_uri: Optional[str] = typer.Option(
        None, "--backend-store-uri", help="database for MLflow's runs and metrics [server.backend_store_uri; "
        "default sqlite:///sweep-mlflow.db]; keep passwords off the command line: use mlflow.yaml with ${VAR}"),
    artifacts_destination: Optional[str] = typer.Option(
        None, "--artifacts-destination", help="where the server stores artifacts (models, plots) it proxies "
        "[server.artifacts_destination; default ./sweep-artifacts]"),
    workers: Optional[int] = typer.Option(None, "--workers", min=1,
                                          help="server worker processes [server.workers; default 1: 0.4 GB]"),
    verbose: bool = VerboseOpt,
) -> None:
    """Start the MLflow tracking server from mlflow.yaml (flags override it); Ctrl-C stops it."""
    from sweep.server import serve

    stores = resolve(config=config)  # mlflow.yaml read once: the server's settings and the Optuna storage
    flags = {"host": host, "port": port, "backend_store_uri": backend_store_uri,
             "artifacts_destination": artifacts_destination, "workers": workers}
    server_settings = stores.service.server.model_copy(update={k: v for k, v in flags.items() if v is not None})
    raise typer.Exit(serve(server_settings, optuna_storage=stores.optuna))


@_command
def schema(
    storage: Optional[str] = StorageOpt,
    backend_store_uri: Optional[str] = typer.Option(
        None, "--backend-store-uri", help=f"MLflow's database [env {ENV_BACKEND}; server.backend_store_uri; "
        f"default sqlite:///{DEFAULT_MLFLOW_DB}]; keep passwords off the command line: use mlflow.yaml with ${{VAR}}"),
    config: Optional[str] = ConfigOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Create or upgrade the schemas of MLflow's backend store and Optuna's storage, then exit.

    Run it once before workers start (the Kubernetes schema Job does): they then never race to
    create tables. `sweep server` does the same each time it starts."""
    from sweep.server import upgrade_schemas
    from sweep.urls import mask

    stores = resolve(storage=storage, config=config)  # mlflow.yaml read once
    backend = (backend_store_uri or os.environ.get(ENV_BACKEND)  # what `mlflow server` reads too
               or stores.service.server.backend_store_uri)
    upgrade_schemas(backend, stores.optuna)
    log.info("schemas up to date: MLflow %s, Optuna %s", mask(backend), mask(stores.optuna))


@_command
def sync(
    study: str = typer.Argument(..., help="study name"),
    storage: Optional[str] = StorageOpt,
    tracking_uri: Optional[str] = TrackingOpt,
    config: Optional[str] = ConfigOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Replay a study from Optuna into MLflow: runs, params, every epoch's metrics, final metrics, state,
    and the models dead workers left waiting on this machine."""
    from sweep.tracking.sync import sync as sync_study

    c = sync_study(study, storage=resolve(storage, tracking_uri, config))
    typer.echo(f"synced {c['trials']} finished trial(s) of {study}: {c['runs_created']} run(s) created, "
               f"{c['metrics_logged']} metric value(s), {c['params_logged']} param(s) and {c['tags_set']} tag(s) "
               f"logged, {c['runs_ended']} run(s) ended, {c['models_logged']} model(s) uploaded that dead workers "
               f"left; {c['running']} running trial(s) left to their worker")


def main() -> None:
    try:
        app(prog_name="sweep")
    except SystemExit as end:  # a command that trained leaves here, its stores closed (sweep/lifecycle.py)
        leave(end.code, close_all)
        raise


if __name__ == "__main__":
    main()
