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


class TrialFailed(Exception):
    """A trial failed for a reason recorded on the trial (NaN loss, OOM, ...); the sweep goes on."""
