"""The terminal: log lines scroll above a live footer (on a terminal only), in one writer.

Everything a command writes to stderr goes through one `Console`: our log records, Python's own
writes to `sys.stderr` (warnings, tracebacks) and the C++ libraries' writes to file descriptor 2.
On a terminal the footer (the running trial, its epoch, ETA) is cleared before each line and
drawn again after it, so nothing is torn; elsewhere (a pipe, CI, a log file) there is no footer,
no carriage return and no escape sequence: every line is whole.

Why file descriptor 2 is read through a pipe: TensorFlow 2.21 logs through Abseil, which writes
every message issued before `absl::InitializeLog()` to stderr whatever its level (abseil-cpp
PR #1957 is open): `TF_CPP_MIN_LOG_LEVEL` cannot hide the oneDNN notice, the CPU-feature notice
or the "All log messages before absl::InitializeLog()" banner. Those lines are dropped here
below the level TF_CPP_MIN_LOG_LEVEL asks for; `-v` shows them all.

Why not rich's `Live` with a `RichHandler` (rich comes with typer): Live redraws its footer from a
thread of its own and redirects Python's `sys.stdout`/`sys.stderr` only. A C++ write to file
descriptor 2 bypasses it: under a pseudo-terminal, a libc `write(2, ...)` during a Live display
(rich 15.0.0, 2026-12-05) left "FOOTER epoch 1/3native line 0 from fd 2" in the scrollback, the
footer torn. The pipe below would be needed anyway, and its lines would then pass through rich's
markup, which reads every "[...]" as a style tag. What remains hand-written here is the footer's
clear and redraw, about 20 lines.
"""

from __future__ import annotations

import atexit
import io
import logging
import os
import re
import shutil
import sys
import threading
from typing import Any, TextIO

from sweep.lifecycle import given_worker_name, mlflow_http_retries, quiet_libraries, tf_log_level

# Abseil/glog line: severity letter, MMDD, time, thread id, file:line]
_ABSL_LINE = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [^\]\s]+:\d+\] ")
_ABSL_BANNER = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
# TensorFlow's CPU-feature notice goes on over a second line without the Abseil prefix
_CONTINUATION = ("To enable the following instructions:",)
_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}


class NativeFilter:
    """Which lines C++ code writes to fd 2 are shown: Abseil lines at or above `min_level`."""

    def __init__(self, min_level: int) -> None:
        self.min_level = min_level
        self._dropping = False

    def keep(self, line: str) -> bool:
        if self.min_level <= 0:
            return True
        if line.startswith(_ABSL_BANNER):
            return False
        m = _ABSL_LINE.match(line)
        if m:
            # a fatal message always shows
            self._dropping = _SEVERITY[m.group(1)] < min(self.min_level, 3)
            return not self._dropping
        if self._dropping and line.startswith(_CONTINUATION):
            return False
        self._dropping = False
        return True


class Console:
    """One writer for the terminal: `line()` prints above the footer, `footer()` replaces it."""

    def __init__(self, stream: TextIO, live: bool) -> None:
        self.stream = stream
        self.live = live
        self._footer: list[str] = []
        self._drawn = 0
        self._lock = threading.RLock()

    def line(self, text: str) -> None:
        with self._lock:
            self._clear()
            self.stream.write(text if text.endswith("\n") else text + "\n")
            self._draw()
            self.stream.flush()

    def raw(self, text: str) -> None:
        """Write as is (progress events for a parent process to read)."""
        with self._lock:
            self.stream.write(text)
            self.stream.flush()

    def footer(self, lines: list[str]) -> None:
        if not self.live:
            return
        with self._lock:
            if lines == self._footer and self._drawn:
                return
            self._clear()
            self._footer = list(lines)
            self._draw()
            self.stream.flush()

    def close(self) -> None:
        """Take the footer away (the command's last lines then end the output)."""
        with self._lock:
            self._clear()
            self._footer = []
            self.stream.flush()

    def _clear(self) -> None:
        if self._drawn:
            # to the start of the footer's first line, erasing each line on the way
            self.stream.write("\r\x1b[K" + "\x1b[1A\x1b[K" * (self._drawn - 1))
            self._drawn = 0

    def _draw(self) -> None:
        if not (self.live and self._footer):
            return
        # one screen line per footer line: a wrapped line would break the erase above
        width = max(20, shutil.get_terminal_size((100, 20)).columns - 1)
        self.stream.write("\n".join(s if len(s) <= width else s[: width - 1] + "…" for s in self._footer))
        self._drawn = len(self._footer)


class _ConsoleWriter(io.TextIOBase):
    """`sys.stderr` while a console is installed: Python's own writes, a line at a time."""

    def __init__(self, console: Console, fileno: int) -> None:
        self._console = console
        self._fileno = fileno
        self._buf = ""

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        self._buf += s
        if "\n" in self._buf:
            done, self._buf = self._buf.rsplit("\n", 1)
            for line in done.split("\n"):
                self._console.line(line)
        return len(s)

    def flush(self) -> None:
        if self._buf:
            self._console.line(self._buf)
            self._buf = ""

    def isatty(self) -> bool:
        return self._console.live

    def fileno(self) -> int:
        return self._fileno

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"


_current: Console | None = None


def current() -> Console | None:
    return _current


def install(live: bool | None = None, native_level: int | None = None) -> Console:
    """Route this process's stderr (Python's and fd 2's) through one console and return it.

    `live`: draw a footer; by default when stderr is a terminal. `native_level`: hide C++ lines
    below this Abseil severity (0 shows all; default TF_CPP_MIN_LOG_LEVEL).
    """
    global _current
    if _current is not None:
        return _current
    sys.stderr.flush()
    real_fd = os.dup(2)
    stream = io.TextIOWrapper(io.FileIO(real_fd, "w", closefd=True), encoding="utf-8", errors="replace",
                              write_through=True)
    if live is None:
        live = os.isatty(real_fd) and os.environ.get("TERM", "") != "dumb"
    console = Console(stream, live)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    keep = NativeFilter(tf_log_level() if native_level is None else native_level)
    reader = threading.Thread(target=_pump, args=(read_fd, console, keep), name="sweep-stderr", daemon=True)
    reader.start()
    sys.stderr = _ConsoleWriter(console, real_fd)  # type: ignore[assignment]
    _current = console

    def restore() -> None:
        # hand fd 2 back and let the pump drain what C++ wrote last, then drop the footer
        try:
            sys.stderr.flush()
            os.dup2(real_fd, 2)
        except OSError:
            pass
        reader.join(timeout=2)
        console.close()

    atexit.register(restore)
    return console


def _pump(fd: int, console: Console, keep: NativeFilter) -> None:
    with open(fd, "rb", buffering=0) as pipe:
        pending = b""
        while True:
            chunk = pipe.read(65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                line = raw.decode("utf-8", "replace").rstrip("\r")
                if keep.keep(line):
                    console.line(line)
        if pending:
            line = pending.decode("utf-8", "replace")
            if keep.keep(line):
                console.line(line)


class _DropTraceback(logging.Filter):
    """Optuna logs a traceback for every caught trial failure; our trial line gives the reason."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info = None
        record.exc_text = None
        return True


class _ConsoleHandler(logging.Handler):
    def __init__(self, console: Any) -> None:
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.console.line(self.format(record))
        except Exception:  # noqa: BLE001 - logging must never break the command
            self.handleError(record)


def setup_logging(verbose: bool, console: bool = False) -> None:
    """Where a command's log lines go, set as it starts. `verbose`: debug lines from sweep and the
    libraries' own logs. `console`: for the commands that train, stderr goes through one console
    (a live footer on a terminal; TensorFlow's C++ notices filtered, above)."""
    quiet_libraries(verbose)
    mlflow_http_retries()
    if console:
        handler: logging.Handler = _ConsoleHandler(install())
    else:
        handler = logging.StreamHandler(sys.stderr)
    # workers started by `sweep run --workers N` share one terminal: say whose line it is
    who = given_worker_name()
    handler.setFormatter(logging.Formatter(f"%(asctime)s {'[' + who + '] ' if who else ''}%(message)s",
                                           "%H:%M:%S"))
    root = logging.getLogger("sweep")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
    if not (console or verbose):
        # the read commands: Optuna (0.3 s to import) logs nothing of its own at INFO when reading
        # a study, and `sweep best` often needs no Optuna at all (sweep/peek.py)
        return
    import optuna

    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.WARNING)
    optuna.logging.get_logger("optuna").addFilter(_DropTraceback())
    if not verbose:
        # "5 out of the last 11 calls ... triggered tf.function retracing": every trial builds a new
        # model, so every trial traces its own functions; by design, not the user's to act on
        logging.getLogger("tensorflow").addFilter(
            lambda r: "triggered tf.function retracing" not in r.getMessage())
