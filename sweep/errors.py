"""The two failure classes of `sweep`: user/service errors that stop a command, and trial failures."""

from __future__ import annotations


class SweepError(Exception):
    """A problem the user can fix: stops the command with a clean message and exit code 2."""

    exit_code = 2


class ConfigError(SweepError):
    """A study file (or stored study config) is invalid; carries every problem found, one per line."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"{source}: {p}" for p in problems)
        super().__init__(lines)


class ServiceError(SweepError):
    """A database or tracking server cannot be reached or refused us; exit code 3."""

    exit_code = 3


def first_line(e: BaseException, limit: int = 300) -> str:
    """What a one-line error says of its cause: the first non-blank line of the exception's message
    (at most `limit` characters; the database driver's where SQLAlchemy wraps one), else the
    exception's type name, for a message that is empty, such as TimeoutError()'s, has no first line."""
    e = getattr(e, "orig", None) or e  # SQLAlchemy wraps the driver's own message, without its SQL
    text = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
    return text[:limit] if text else type(e).__name__


class TrialFailed(Exception):
    """A trial failed for a reason recorded on the trial (NaN loss, OOM, ...); the sweep goes on."""
