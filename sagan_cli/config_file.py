"""`sagan train --config FILE`: a TOML or JSON file with the keys of a run's config.json (model nested).

The values of the file stand in for flags: flags given on the command line override them, and they
go through the same checks (a --resume treats them as flags too). TOML is read with the standard
library's tomllib on Python 3.11+, with `tomli` (the same parser, a dependency only there) on 3.10.
Relative paths in the file (`dataset` folders, `data_dir`) are taken from the current directory,
as on the command line.
"""

from __future__ import annotations

import json
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from .config import RETIRED_KEYS, TrainConfig, check_field_types
from .errors import UsageError
from .model import ModelConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

SUFFIXES = (".toml", ".json")
MAX_CONFIG_BYTES = 1024 * 1024  # a config is a few hundred bytes; refuse to parse a huge file by mistake


def read_config_file(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(training keys, model keys) of a config file, checked; UsageError naming the file and the key otherwise."""
    data = _parse(Path(path))
    data = {key: value for key, value in data.items() if key not in RETIRED_KEYS}
    train_keys = {f.name for f in fields(TrainConfig)}
    _refuse_unknown(path, data, train_keys, "")
    model = data.pop("model", {})
    if not isinstance(model, dict):
        raise UsageError(
            f"--config {path}: key 'model' must be a table (TOML [model]) or an object (JSON), got {str(model)[:40]!r}"
        )
    _refuse_unknown(path, model, {f.name for f in fields(ModelConfig)}, "model.")
    for cls, values, where in ((TrainConfig, data, ""), (ModelConfig, model, " (in model)")):
        try:
            check_field_types(cls, values)
        except ValueError as exc:  # "config key 'lr_g' has the wrong type: 'fast'"
            raise UsageError(f"--config {path}: {exc}{where}") from None
    if "attn_resolutions" in model:
        model["attn_resolutions"] = tuple(model["attn_resolutions"])
    if data.get("data_dir") is not None:
        data["data_dir"] = str(Path(data["data_dir"]).expanduser().absolute())
    return data, model


def _parse(path: Path) -> dict[str, Any]:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise UsageError(f"--config {path}: use a .toml or .json file (the format of a run's config.json)")
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise UsageError(f"--config {path} is larger than {MAX_CONFIG_BYTES // 1024} KB; it is not a sagan config")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"--config {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--config {path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        data = tomllib.loads(text) if suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, RecursionError) as exc:
        kind = "TOML" if suffix == ".toml" else "JSON"
        raise UsageError(f"--config {path} is not valid {kind}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UsageError(f"--config {path} must hold a JSON object of config keys, like a run's config.json")
    return data


def _refuse_unknown(path: Path, data: dict[str, Any], known: set[str], prefix: str) -> None:
    unknown = sorted(key for key in data if key not in known)
    if unknown:
        raise UsageError(
            f"--config {path}: unknown key {prefix + unknown[0]!r}; the keys are those of a run's config.json "
            "(see `sagan train --print-config`)"
        )


def merge_config_file(
    path: Path, given: dict[str, Any], model_given: dict[str, Any], conditional: bool | None
) -> tuple[dict[str, Any], dict[str, Any], bool | None]:
    """Flags over a config file: (training keys, model keys, conditional) as if the file's keys were flags too.

    The file's `model.num_classes` stands for --conditional (the dataset says how many classes);
    `check_num_classes` compares it with the resolved config.
    """
    file_train, file_model = read_config_file(path)
    file_classes = file_model.pop("num_classes", None)
    file_model.pop("class_weights", None)  # the cluster sizes a --clusters run measured on its data: not a setting
    merged = {**file_train, **given}
    if conditional is None and file_classes is not None and not merged.get("clusters"):
        conditional = file_classes > 0
    return merged, {**file_model, **model_given}, conditional


def check_num_classes(path: Path, config: TrainConfig) -> None:
    """UsageError when the file names a class count other than the one of the dataset the run trains on."""
    file_classes = read_config_file(path)[1].get("num_classes", 0)
    if file_classes and file_classes != config.model.num_classes:
        raise UsageError(
            f"--config {path}: model.num_classes is {file_classes}, but {config.dataset} has "
            f"{config.model.num_classes} classes; fix the file"
        )
