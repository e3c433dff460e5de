"""Errors that reach the user as one clear line and an exit code."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1  # runtime failure (divergence, I/O error, ...)
EXIT_USAGE = 2  # bad flag value, missing or unreadable input file
EXIT_GATE = 3  # a quality gate of `sagan evaluate` failed
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class SaganError(Exception):
    """An expected failure: the CLI prints `error: <message>` and exits with `exit_code`."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(SaganError):
    """The user asked for something that cannot work as given (exit code 2)."""

    exit_code = EXIT_USAGE


class CheckpointError(UsageError):
    """A file given as a checkpoint is not a readable sagan checkpoint."""


class DatasetError(UsageError):
    """A dataset cannot be found, read or downloaded."""


class DivergenceError(SaganError):
    """Training produced a non-finite loss or weight."""


class Interrupted(SaganError):
    """Training stopped by a signal after saving a checkpoint."""
