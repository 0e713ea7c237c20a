"""sweep/console.py: one writer for stderr, a footer only on a terminal, C++ notices filtered."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from sweep.console import Console, NativeFilter

ROOT = Path(__file__).resolve().parents[1]

ONEDNN = ("I0000 00:00:1795542611.363584   13858 port.cc:153] oneDNN custom operations are on. You may see "
          "slightly different numerical results")
BANNER = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
CPU = ("I0000 00:00:1795542400.560175    9346 cpu_feature_guard.cc:227] This TensorFlow binary is optimized "
       "to use available CPU instructions in performance-critical operations.")
CPU_MORE = "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow."
GRAPPLER = ("E0000 00:00:1795542611.363584   13858 meta_optimizer.cc:967] remapper failed: INVALID_ARGUMENT: "
            "Mutation::Apply error")
WARN = "W1124 17:46:05.123456   8540 op_kernel.cc:1857] Allocation of 1 bytes exceeds 10% of free memory."
FATAL = "F1124 17:46:05.123456   8540 check.cc:10] Check failed: x"


def _kept(level: int, lines: list[str]) -> list[str]:
    f = NativeFilter(level)
    return [line for line in lines if f.keep(line)]


def test_native_filter_drops_below_the_level_and_keeps_the_rest() -> None:
    lines = [BANNER, ONEDNN, CPU, CPU_MORE, WARN, GRAPPLER, "an ordinary line", FATAL]
    assert _kept(0, lines) == lines  # -v: everything
    assert _kept(2, lines) == [GRAPPLER, "an ordinary line", FATAL]
    assert _kept(3, lines) == ["an ordinary line", FATAL]  # a fatal check always shows
    # the CPU notice's second line goes with its first, and only then
    assert _kept(2, [CPU_MORE]) == [CPU_MORE]


def test_footer_is_erased_before_each_line_and_drawn_after() -> None:
    out = io.StringIO()
    c = Console(out, live=True)
    c.footer(["trial 0 · epoch 1/2", "study s: 0/2 done"])
    c.line("17:00:00 trial 0 COMPLETE")
    c.close()
    text = out.getvalue()
    assert text == ("trial 0 · epoch 1/2\nstudy s: 0/2 done"  # drawn, cursor on its last line
                    "\r\x1b[K\x1b[1A\x1b[K"  # erased: this line, then up one and erase
                    "17:00:00 trial 0 COMPLETE\n"
                    "trial 0 · epoch 1/2\nstudy s: 0/2 done"
                    "\r\x1b[K\x1b[1A\x1b[K")


def test_not_live_writes_whole_lines_only() -> None:
    out = io.StringIO()
    c = Console(out, live=False)
    c.footer(["trial 0 · epoch 1/2"])
    c.line("a line")
    c.close()
    assert out.getvalue() == "a line\n"


def test_installed_console_filters_fd2_and_keeps_python_output(tmp_path: Path) -> None:
    """A real process: C++-style writes to fd 2 and Python's own stderr, through a pipe."""
    script = tmp_path / "p.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        from sweep.console import install
        install()
        os.write(2, ({BANNER!r} + "\\n" + {ONEDNN!r} + "\\n" + {GRAPPLER!r} + "\\n").encode())
        os.write(2, b"partial line from C with no newline")
        print("python says hello", file=sys.stderr)
        raise SystemExit(3)
    """))
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = str(ROOT)
    for level, grappler in (("2", True), ("3", False)):
        r = subprocess.run([sys.executable, str(script)], env={**env, "TF_CPP_MIN_LOG_LEVEL": level},
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 3
        lines = r.stderr.splitlines()
        assert "python says hello" in lines
        assert "partial line from C with no newline" in lines  # drained at exit
        assert (GRAPPLER in lines) is grappler
        assert not any("oneDNN" in line or "absl::InitializeLog" in line for line in lines), r.stderr
        assert "\x1b" not in r.stderr and "\r" not in r.stderr
