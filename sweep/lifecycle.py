"""Processes and signals: the one route from the command the user started to the trials, and the
one policy for Ctrl-C and SIGTERM. Every signal handler of sweep is installed here.

The route of `sweep run STUDY` (and `sweep worker`), with the default hand-over bound:

    sweep run STUDY                      the supervisor: the process the user started (sweep.cli)
      └ sweep --trial-process PID:STATE run STUDY
                                         a trial process: sets the study up, runs the trial loop
                                         (sweep.runner.study -> sweep.runner.worker); at its memory
                                         bound it exits HANDOVER_EXIT and the supervisor starts the
                                         same command again (sweep.runner.handover)

and of `sweep run STUDY --workers N`: the command starts N trial processes `sweep --trial-process
PID:STATE worker STUDY` (sweep.runner.pool), which import their libraries and wait at their start
gate while it sets the study up itself; then they join it, and it supervises them. The hidden
`--trial-process` option is what makes a process a trial process: its supervisor's pid and the
file through which one process of a chain hands over to the next. It is on the command line, where
`ps` shows the route; store URLs, which may hold a password, go in the environment instead.
`sweep server` runs `mlflow server` under a guard of its own (sweep.server); the route's processes end with `leave`.

The policy, for one signal, SIGINT (Ctrl-C) or SIGTERM (`docker compose stop`, Kubernetes):
- A trial process stops its running trial: the trial ends FAIL and marked interrupted in Optuna
  (run again on resume, or by a worker still running), its MLflow run KILLED; the process exits
  130 (SIGINT) or 143 (SIGTERM). While a trial is being taken or told, the stop waits those few
  milliseconds (`hold_stop`), so that no trial is ever left RUNNING by a stop.
- A supervisor forwards the signal to its trial processes, waits up to STOP_GRACE_SECONDS for
  them, kills what is left (its trial then goes stale and is retried), and exits 128 + signal.
  A trial process dies with its supervisor, SIGKILL included (`die_with_supervisor`).
- A second signal is ignored: the first one's clean-up (telling Optuna, closing the MLflow run)
  must not be broken. Ctrl-C reaches the terminal's whole process group and the supervisor
  forwards it once more, so every trial process sees the same signal twice; that echo is dropped
  silently (ECHO_SECONDS), any other repeat with a warning.
- `sweep server` stops its server, whose guard stops the server's whole process group.
Optuna installs no handler: `study.optimize` catches KeyboardInterrupt and fails the trial. Ours
are needed for SIGTERM, for the echo, and for the windows around `ask` and `tell`.

The process's environment is written here only. Some libraries read a setting from nowhere else,
once, as they start: Keras its backend, TensorFlow its log level and thread pools, MLflow its own
logging and its HTTP retries. A command sets them (`quiet_libraries`, `mlflow_http_retries`,
`export`) before it imports those libraries, never over the user's own; a trial process is
given them, and the store URLs, in the environment it starts with (`child_environment`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, MutableMapping

log = logging.getLogger(__name__)

TRIAL_PROCESS_OPTION = "--trial-process"  # sweep.cli's hidden global option
# a worker's name on its trials and log lines: a supervisor's trial processes are w0, w1, ...;
# a user may name a `sweep worker` (a container's replica) the same way
ENV_WORKER_NAME = "SWEEP_WORKER_NAME"
# a pool's worker started while its supervisor sets the study up: it imports its libraries, then
# waits for one line on its stdin before it joins the study (`await_go`)
ENV_START_GATE = "SWEEP_START_GATE"
STOP_GRACE_SECONDS = 30.0  # a supervisor's wait for its trial processes to close their trials
ECHO_SECONDS = 5.0  # the same signal again this soon is the one stop, not a second request
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
TF_LOG_LEVEL = "TF_CPP_MIN_LOG_LEVEL"  # TensorFlow's C++ log: 0 everything .. 3 errors only
TF_THREADS = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")
# MLflow retries each HTTP request itself, 7 times with backoff growing to 2 min (about 4 min in
# all) before it raises: the sender would sit inside one request long after the server is back.
# Short per-request retries, unless the user set their own; the sender retries as long as needed.
MLFLOW_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                        "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}

_stopping_installed = False  # stop_on_signals' handler is in place (it nests)
_held: list[int] | None = None  # while not None, a stop is kept here rather than raised (hold_stop)
_quickly = False  # this process ends with `leave` (a command that trains)
_at_gate = False  # a pool's worker waiting for the word to go: a stop ends it silently (hold_at_gate)


# -- the route -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrialProcess:
    """What makes this process a trial process: given by its supervisor on its command line."""

    supervisor: int  # the supervisor's pid: one name for the whole chain (sweep status)
    state: Path  # the hand-over state file (sweep.runner.handover)


_trial_process: TrialProcess | None = None


def trial_process_command(argv: list[str], state: str | Path) -> list[str]:
    """The command line of a trial process this process supervises: the same `sweep` command."""
    return [sys.executable, "-m", "sweep", TRIAL_PROCESS_OPTION, f"{os.getpid()}:{state}", *argv]


def become_trial_process(spec: str) -> None:
    """Called by the CLI with `--trial-process PID:STATE`, before the command runs."""
    global _trial_process
    pid, _, state = spec.partition(":")
    if not pid.isdigit() or not state:
        raise ValueError(f"{TRIAL_PROCESS_OPTION}: expected PID:STATE_FILE, got {spec!r}")
    _trial_process = TrialProcess(int(pid), Path(state))
    die_with_supervisor(_trial_process.supervisor)


def trial_process() -> TrialProcess | None:
    """This process's place on the route, or None when the user started it (a supervisor, or a
    command that runs its trials itself)."""
    return _trial_process


def die_with_supervisor(supervisor: int) -> None:
    """A trial process dies with its supervisor, SIGKILL included (Linux's PR_SET_PDEATHSIG):
    killing the process the user started must stop the trial, which then goes stale and is
    retried, exactly as when that process ran the trial itself."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != supervisor:  # the supervisor died before the line above
        os._exit(128 + signal.SIGKILL)


# -- a trial process, and any command that runs trials ------------------------------------------

class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM: the running trial is marked interrupted and run again on resume."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise `Interrupted` once; a second signal is ignored (see the policy)."""
    global _stopping_installed
    if threading.current_thread() is not threading.main_thread() or _stopping_installed:
        # signals are delivered to the main thread only, where its owner handles them; nested, the
        # outermost handler stays, so an echo that lands while an inner block unwinds is still one stop
        yield
        return
    stopping: tuple[int, float] | None = None

    def handler(signum: int, frame: Any) -> None:
        nonlocal stopping
        if _at_gate:
            _leave_at_gate(signum, frame)
        if stopping is not None:
            (log.debug if _echo(stopping, signum) else log.warning)(
                "already stopping (%s ignored)", signal.Signals(signum).name)
            return
        stopping = (signum, time.monotonic())
        if _held is not None:
            _held.append(signum)  # raised by release_stop(), once the trial is in a state to be told
            return
        raise Interrupted(signum)

    def unraisable(u: Any) -> None:
        # a signal that lands while a finalizer or weakref callback runs (SQLAlchemy has them) raises
        # there, where Python swallows it ("Exception ignored in ..."), and the trial would train on
        # till the supervisor's grace ran out: deliver it again, outside that callback
        nonlocal stopping
        if isinstance(u.exc_value, Interrupted):
            stopping = None
            # from another thread: the handler then runs in this one once the callback has returned
            threading.Timer(0.01, os.kill, (os.getpid(), u.exc_value.signum)).start()
            return
        old_hook(u)

    old = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    old_hook, sys.unraisablehook = sys.unraisablehook, unraisable
    _stopping_installed = True
    try:
        yield
    finally:
        _stopping_installed = False
        sys.unraisablehook = old_hook
        for s, h in old.items():
            # once stopped, the echo may still be on its way while the process unwinds and exits
            signal.signal(s, h if stopping is None else _echo_then(stopping, h))


def hold_stop() -> None:
    """From here until `release_stop()`, a stop is kept rather than raised. A trial is RUNNING from
    the moment `study.ask()` commits it, but only the code that runs it can tell it FAIL+interrupted:
    a stop raised in between (the study lock being released, the heartbeat starting) would leave it
    RUNNING until its heartbeat went stale, and a stop raised inside `study.tell` could do the same
    to a trial that had finished training. Both windows are a few milliseconds, found under load."""
    global _held
    _held = []


def release_stop() -> None:
    """Raise the stop kept since `hold_stop()`, if one came."""
    global _held
    held, _held = _held, None
    if held:
        raise Interrupted(held[0])


def _echo(stopping: tuple[int, float], signum: int) -> bool:
    """Whether `signum` repeats the signal that stopped us: Ctrl-C reaches a whole process group,
    and a supervisor forwards it once more."""
    return signum == stopping[0] and time.monotonic() - stopping[1] < ECHO_SECONDS


def _echo_then(stopping: tuple[int, float], old: Any) -> Callable[[int, Any], None]:
    """A handler that drops the echo of the signal that stopped us, and otherwise acts as `old`."""

    def handler(signum: int, frame: Any) -> None:
        if _echo(stopping, signum):
            log.debug("already stopping (%s ignored)", signal.Signals(signum).name)
        elif callable(old):
            old(signum, frame)
        elif old != signal.SIG_IGN:  # SIG_DFL: what the signal does by default
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    return handler


# -- a supervisor --------------------------------------------------------------------------------

def stop_children(procs: list[subprocess.Popen], signum: int) -> None:
    """Forward the signal (a trial process ignores a second one), wait, then kill what is left."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signum)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("worker %d did not stop within %.0f s; killing it", p.pid, STOP_GRACE_SECONDS)
            p.kill()
            p.wait()


def on_stop_signals(callback: Callable[[], None]) -> None:
    """`callback()` on SIGINT and SIGTERM, for a process that stops in its own loop (sweep.server's
    guard). SIGINT explicitly as well: a process started with SIGINT ignored (`cmd &` in a script,
    nohup) inherits SIG_IGN, and Python then installs no KeyboardInterrupt handler of its own."""
    for s in STOP_SIGNALS:
        signal.signal(s, lambda *_: callback())


# -- the end of a process -----------------------------------------------------------------------

def leave_quickly() -> None:
    """Called by a command that trains (sweep.cli): this process ends with `leave`."""
    global _quickly
    _quickly = True


def leave(code: object, close: Callable[[], None]) -> None:
    """The end of a command that trains (sweep.cli.main): the atexit callbacks (MLflow's queues,
    the console's drain of fd 2), `close()` (every database connection: SQLite folds its -wal back
    as the last one closes), then os._exit, without the teardown that freed TensorFlow's, MLflow's
    and Optuna's objects one by one (0.6 s of each trial process's exit, benchmarks/README.md).
    Returns instead elsewhere, for a `code` that is no exit status, or while a non-daemon thread
    runs (the usual exit waits for it)."""
    if not _quickly or not (code is None or isinstance(code, int)) or any(
            t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        return
    import atexit

    atexit._run_exitfuncs()  # the interpreter's own first step of its exit
    close()
    for stream in {sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__} - {None}:
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code or 0)


# -- the process's environment -------------------------------------------------------------------

def quiet_libraries(verbose: bool) -> None:
    """What a command shows of the libraries' own logs, set before it imports them."""
    # TensorFlow's C++ log: its notices and grappler's "remapper failed" lines are not the user's to
    # act on; a real failure reaches Python as an exception and fails the trial with its reason
    os.environ.setdefault(TF_LOG_LEVEL, "0" if verbose else "3")
    # MLflow prints a "View run" URL per run over HTTP; our trial line already names the run
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    # MLflow's own INFO lines ("Creating initial MLflow database tables...") on every new store;
    # read by MLflow when it is first imported, which is later than this
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "INFO" if verbose else "WARNING")


def gated(env: dict[str, str]) -> dict[str, str]:
    """The environment of a trial process that waits at its start gate (`await_go`)."""
    env[ENV_START_GATE] = "stdin"
    return env


def at_start_gate() -> bool:
    """Whether this process was started before its study was set up, and must `await_go` (once:
    a confirmation it goes on to afterwards is joined at once)."""
    return _at_gate


def hold_at_gate() -> None:
    """First thing in a process started at its start gate (sweep/__main__.py): until the word to
    go, a stop ends it at once and silently. It has opened nothing, and its supervisor, which had
    the same Ctrl-C (the terminal's process group), says the one line and ends it anyway."""
    global _at_gate
    if os.environ.get(ENV_START_GATE) == "stdin":
        _at_gate = True
        for s in STOP_SIGNALS:
            signal.signal(s, _leave_at_gate)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # held since its start (`stops_held`)


@contextlib.contextmanager
def stops_held() -> Iterator[None]:
    """While the block starts gated trial processes, a stop is kept (`hold_stop`) and raised as
    the block ends, so the caller knows every process it started. They start with the signals
    blocked, until `hold_at_gate` has its handler in place: a Ctrl-C while their Python started
    killed them with a traceback ("Fatal Python error"). Blocking them here alone was not enough:
    another thread of this process can take the signal, and Python then runs its handler in the
    main thread all the same (a worker was left running once, in CI)."""
    hold_stop()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        release_stop()


def await_go() -> None:
    """Wait for the supervisor's word (a line on stdin) that the study is set up; from then on the
    policy's stop holds. End of file: the set-up failed or found nothing to run, and this process,
    which has opened nothing, leaves."""
    global _at_gate
    if not sys.stdin.readline():
        raise SystemExit(0)
    _at_gate = False
    os.environ.pop(ENV_START_GATE, None)  # not for a process this one starts


def _leave_at_gate(signum: int, frame: Any) -> None:
    os._exit(128 + signum)


def given_worker_name() -> str | None:
    """The name this process's supervisor, or the user, gave it as a worker (ENV_WORKER_NAME)."""
    return os.environ.get(ENV_WORKER_NAME) or None


def tf_log_level() -> int:
    """TensorFlow's C++ log level in this process (sweep.console filters its notices by it)."""
    try:
        return int(os.environ.get(TF_LOG_LEVEL, "0"))
    except ValueError:
        return 0


def mlflow_http_retries() -> None:
    """MLFLOW_HTTP_DEFAULTS, for a process that logs to a tracking server while it trains."""
    for var, value in MLFLOW_HTTP_DEFAULTS.items():
        os.environ.setdefault(var, value)


def export(name: str, value: str) -> None:
    """`name=value` in this process's environment, for a library that reads it there only, when it
    starts (Keras: KERAS_BACKEND, sweep.backend), and for every process this one starts."""
    os.environ[name] = value


def tf_threads(threads: int, env: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """TensorFlow's own settings for its thread pools, read when it starts (before any op)."""
    env[TF_THREADS[0]] = str(threads)
    env[TF_THREADS[1]] = "1" if threads == 1 else "2"
    return env


def threads_chosen() -> bool:
    """Whether this process's TensorFlow threads were set (by the user, or a flag) already."""
    return TF_THREADS[0] in os.environ


def share_gpu(env: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """Several trial processes on one GPU. By default TensorFlow maps nearly all of a GPU's memory
    when it starts and JAX preallocates 75 % of it, so a second worker fails for want of memory;
    each worker here takes memory as its trial needs it (TensorFlow's memory growth, JAX without
    preallocation). A user's own setting wins: JAX's XLA_PYTHON_CLIENT_MEM_FRACTION caps each
    process instead, and needs preallocation on. Nothing changes on a machine without a GPU."""
    env.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
    if "XLA_PYTHON_CLIENT_MEM_FRACTION" not in env:
        env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    return env


def child_environment(values: Mapping[str, str], threads: int | None) -> dict[str, str]:
    """The environment of a trial process: this one's, with `values` (the store URLs, which may
    hold a password and so never go on a command line, and its worker name), the GPU shared, and
    `threads` TensorFlow threads where given."""
    env = share_gpu({**os.environ, **values})
    return dict(tf_threads(threads, env) if threads is not None else env)


@contextlib.contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """`values` in this process's environment for the block only (a library setting for one call)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


_MLFLOW_URI = threading.RLock()


@contextlib.contextmanager
def mlflow_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's global tracking URI, `uri` for the block only, then as it was.

    MLflow's model APIs take no URI of their own: `Model.log` (a trial's model, sweep/tracking/trial.py)
    and `mlflow.keras.load_model` or `get_model_info` of a `models:/` URI read the global one
    (`_resolve_tracking_uri()` in mlflow/models/model.py), and `mlflow.set_tracking_uri` writes
    $MLFLOW_TRACKING_URI as well. Set for good, it outlived the study: a user's later
    `mlflow.start_run()` in the same process went to the study's store. MLflow's own scoped form
    (`_use_tracking_uri`) is private and clears a $MLFLOW_TRACKING_URI the user had set, so this puts
    both back as found. The lock keeps two threads' blocks apart (the sender's upload, a load)."""
    import mlflow
    from mlflow.environment_variables import MLFLOW_TRACKING_URI

    with _MLFLOW_URI:
        before = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None  # the global, or the variable's
        with environment({MLFLOW_TRACKING_URI.name: uri}):  # the variable as found, after set_tracking_uri wrote it
            mlflow.set_tracking_uri(uri)
            try:
                yield
            finally:
                mlflow.set_tracking_uri(before)
