"""Device choice and process rank: the few facts about where we run."""

from __future__ import annotations

import os

import torch

from .errors import UsageError

DEVICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str) -> torch.device:
    """Map --device to a torch.device; `auto` prefers CUDA, then MPS, then CPU."""
    if name not in DEVICES and not name.startswith("cuda:"):
        raise UsageError(f"unknown device {name!r}; use one of {', '.join(DEVICES)}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name} was asked for but CUDA is not available here; use --device cpu or auto")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps was asked for but MPS is not available here; use --device cpu or auto")
    return torch.device(name)


def process_rank() -> int:
    """This process's global rank under torchrun (0 when not distributed)."""
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """Only rank 0 writes files; every rank computes."""
    return process_rank() == 0


def preferred_memory_format(device: torch.device) -> torch.memory_format:
    """channels_last is faster for oneDNN (CPU) and cuDNN convolutions; MPS keeps the default."""
    return torch.contiguous_format if device.type == "mps" else torch.channels_last
