"""Files a command is asked to write: checks that fail before any work and create nothing.

The writing itself is atomic.write_atomically."""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import SaganError, UsageError

SAMPLE_NAME = re.compile(r"^sample_\d{5,}\.png$")  # what sample_file_names writes, at any width
NO_METADATA_SUFFIXES = (".bmp",)  # formats that cannot record the seed, refused by name


def wants_folder(path: Path, raw: str) -> bool:
    """`-o DIR/`, an existing directory, or a name without a suffix means a folder of images."""
    return raw.endswith(("/", os.sep)) or path.is_dir() or path.suffix == ""


def sample_file_names(n: int) -> list[str]:
    """sample_00000.png ... for `-o DIR/`: zero-padded to the width of n - 1 (at least 5), so they sort in order."""
    width = max(5, len(str(n - 1)))
    return [f"sample_{i:0{width}d}.png" for i in range(n)]


def check_output_file(path: Path, suffixes: tuple[str, ...], force: bool) -> Path:
    """Validate an output file path before any expensive work; creates nothing."""
    if path.suffix.lower() not in suffixes:
        why = " (it cannot record the seed)" if path.suffix.lower() in NO_METADATA_SUFFIXES else ""
        raise UsageError(
            f"cannot write {path}: unknown image extension {path.suffix!r}{why}; use one of {', '.join(suffixes)}"
        )
    if path.is_dir():
        raise UsageError(f"{path} is a folder; give a file name such as {path / ('grid' + path.suffix)}")
    if path.exists() and not force:
        raise UsageError(f"{path} already exists; pass --force to overwrite it")
    _check_writable_dir(path.parent if str(path.parent) else Path("."))
    return path


def check_output_folder(folder: Path, names: list[str], force: bool) -> Path:
    """Validate an output folder for `names`; creates nothing.

    Without --force, refuses to overwrite any of `names` or to mix them with the sample files of an earlier run.
    """
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder} exists and is not a folder")
    _check_writable_dir(folder)
    try:
        existing = set(os.listdir(folder)) if folder.is_dir() else set()
    except OSError as exc:
        raise UsageError(f"cannot read output folder {folder}: {exc.strerror}") from None
    clashes = [name for name in names if name in existing]
    if clashes and not force:
        raise UsageError(
            f"{folder / clashes[0]} already exists ({len(clashes)} file(s) would be overwritten); pass --force"
        )
    earlier = earlier_samples(folder, names)
    if earlier and not force:
        raise UsageError(
            f"{folder} holds {len(earlier)} sample file(s) of an earlier run (e.g. {earlier[0].name}); "
            "pass --force to replace them, or choose another -o"
        )
    return folder


def earlier_samples(folder: Path, names: list[str]) -> list[Path]:
    """Files in `folder` named like our samples (sample_NNNNN.png) but not among `names`: left by an earlier run."""
    if not folder.is_dir():
        return []
    keep = set(names)
    return sorted(
        folder / name
        for name in os.listdir(folder)
        if SAMPLE_NAME.match(name) and name not in keep and (folder / name).is_file()
    )


def remove_earlier_samples(folder: Path, names: list[str]) -> list[Path]:
    """Delete earlier_samples(folder, names), so the folder holds one run only; returns what was deleted."""
    stale = earlier_samples(folder, names)
    for path in stale:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise SaganError(f"cannot remove {path}: {exc.strerror or exc}") from None
    return stale


def _check_writable_dir(folder: Path) -> None:
    """The nearest existing ancestor of `folder` must be a writable folder; nothing is created here."""
    ancestor = folder
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"cannot create output folder {folder}: {ancestor} is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"output folder {ancestor} is not writable; choose another -o")
