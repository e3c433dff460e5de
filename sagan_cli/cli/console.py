"""What commands print: error and progress lines on stderr, strict JSON on stdout."""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any


def error(message: str) -> None:
    """Print one human line `error: MESSAGE` to stderr (naming the rank on torchrun's other processes)."""
    rank = os.environ.get("RANK", "0")
    where = f"(rank {rank}) " if rank != "0" and os.environ.get("WORLD_SIZE", "1") != "1" else ""
    print(f"error: {where}{message}", file=sys.stderr, flush=True)


def log(message: str) -> None:
    """Print one human line to stderr (stdout carries data only)."""
    print(message, file=sys.stderr, flush=True)


def _finite(value: Any) -> Any:
    """NaN / inf -> null, so stdout is always strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def print_json(payload: dict[str, Any]) -> None:
    """One indented JSON object on stdout, non-finite numbers as null."""
    print(json.dumps(_finite(payload), indent=2, allow_nan=False), flush=True)
