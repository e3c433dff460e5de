"""The one-line progress callback the library takes instead of printing: the CLI passes its own."""

from __future__ import annotations

from collections.abc import Callable

Log = Callable[[str], None]  # receives one human line, e.g. "resizing 60,000 images"


def no_log(message: str) -> None:
    """A Log that drops every line (library calls without a caller listening)."""
