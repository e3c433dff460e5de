"""Atomic file writes: a crash leaves the old file or the new one, never a part."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from .errors import SaganError


def write_atomically(path: Path, data: bytes, durable: bool = False) -> None:
    """Write `data` to a hidden temp file beside `path` (.NAME.XXXXXXXX.tmp), then rename it into place.

    A crash or failure at any instant leaves the previous file or the new one, never a part, and no
    temp file. Creates the folder if needed; an OSError (disk full, file too large, folder gone)
    becomes SaganError("cannot write PATH: reason"). `durable` (checkpoints, run files) syncs the
    bytes and the folder to disk; otherwise the bytes are synced only when they replace a file, so a
    power cut cannot swap a good image for an empty one while 10,000 new images need no syncs.
    Callers encode in memory first: Pillow's encoders drop the rest of a short write to a file without an error.
    """
    path = Path(path)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temp, "xb") as handle:  # "x": never reuse a file; mode from the umask, unlike mkstemp's 0600
            handle.write(data)
            if durable or path.exists():
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(temp, path)
        if durable and hasattr(os, "O_DIRECTORY"):  # the rename itself survives a power cut (POSIX)
            folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
    except OSError as exc:
        _discard(temp)
        raise SaganError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        _discard(temp)
        raise


def _discard(temp: Path) -> None:
    with contextlib.suppress(OSError):
        temp.unlink(missing_ok=True)
