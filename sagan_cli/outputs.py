"""Checks for files the CLI is asked to write: never overwrite without --force, fail before any work."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import UsageError


def wants_folder(path: Path, raw: str) -> bool:
    """`-o DIR/`, an existing directory, or a name without a suffix means a folder of images."""
    return raw.endswith(("/", os.sep)) or path.is_dir() or path.suffix == ""


def check_output_file(path: Path, suffixes: tuple[str, ...], force: bool) -> Path:
    """Validate an output file path before any expensive work."""
    if path.suffix.lower() not in suffixes:
        raise UsageError(f"cannot write {path}: unknown image extension {path.suffix!r}; use one of {', '.join(suffixes)}")
    if path.exists() and not force:
        raise UsageError(f"{path} already exists; pass --force to overwrite it")
    _check_writable_dir(path.parent if str(path.parent) else Path("."), create=True)
    return path


def check_output_folder(folder: Path, names: list[str], force: bool) -> Path:
    """Validate an output folder for `names`; refuse to overwrite any of them without --force."""
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder} exists and is not a folder")
    _check_writable_dir(folder, create=True)
    clashes = [name for name in names if (folder / name).exists()]
    if clashes and not force:
        raise UsageError(f"{folder / clashes[0]} already exists ({len(clashes)} file(s) would be overwritten); pass --force")
    return folder


def _check_writable_dir(folder: Path, create: bool) -> None:
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create output folder {folder}: {exc.strerror}") from None
    if not os.access(folder, os.W_OK):
        raise UsageError(f"output folder {folder} is not writable; choose another -o")
