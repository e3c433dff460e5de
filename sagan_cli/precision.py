"""Mixed precision: which dtype the forward passes run in, and loss scaling for fp16.

Weights, optimizer moments, the EMA generator and checkpoints stay fp32 whatever is chosen:
autocast only changes the dtype that convolutions and matrix products compute in. The model
keeps its spectral-norm power iteration and attention softmax in fp32 under autocast
(model.py). fp16 needs a GradScaler (its range is too small for raw gradients); bf16 has fp32's
range and needs none.
"""

from __future__ import annotations

import contextlib
import json
import math
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch

from .config import PRECISIONS
from .errors import CheckpointError, UsageError

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
SCALER_KEYS = {
    "scale": float,
    "growth_factor": float,
    "backoff_factor": float,
    "growth_interval": int,
    "_growth_tracker": int,
}


def resolve_precision(name: str, device: torch.device) -> str:
    """Map --precision to fp32/bf16/fp16 for a device; `auto` is bf16 on CUDA GPUs that have it, else fp32.

    auto never picks fp16: GAN training in fp16 depends on loss scaling and was not measured here
    (no GPU on the machines sagan is developed on); bf16 keeps fp32's exponent range.
    """
    if name not in PRECISIONS:
        raise UsageError(f"--precision {name!r} is not one of {', '.join(PRECISIONS)}")
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if name == "auto":
        return "bf16" if cuda_bf16 else "fp32"
    if name != "fp32" and device.type not in ("cpu", "cuda"):
        raise UsageError(
            f"--precision {name} is supported on CPU and CUDA only (not tested on {device.type}); use fp32"
        )
    if name == "bf16" and device.type == "cuda" and not cuda_bf16:
        raise UsageError("--precision bf16: this GPU has no bf16 support; use fp16 or fp32")
    return name


@dataclass(frozen=True)
class Precision:
    """A resolved precision on a device type: the autocast context and whether losses are scaled."""

    name: str = "fp32"
    device_type: str = "cpu"

    def autocast(self) -> AbstractContextManager[Any]:
        """The context G and D forwards run in (nothing for fp32)."""
        dtype = DTYPES[self.name]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=dtype)

    def scaler(self) -> torch.amp.GradScaler | None:
        """A loss scaler for fp16, None otherwise (one per network, so an overflow in D does not shrink G's scale)."""
        return torch.amp.GradScaler(self.device_type) if self.name == "fp16" else None


def backward_and_step(
    loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None
) -> None:
    """loss.backward() and optimizer.step(), through the scaler when there is one.

    With the fused Adam the scaler hands its scale and inf flag to the kernel: no host sync per step.
    """
    if scaler is None:
        loss.backward()
        optimizer.step()
        return
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def scaler_metadata(scaler: torch.amp.GradScaler | None) -> str | None:
    """A scaler's state as JSON for checkpoint metadata (None without a scaler)."""
    if scaler is None:
        return None
    state = scaler.state_dict()
    return json.dumps({key: state[key] for key in SCALER_KEYS if key in state}, sort_keys=True)


def load_scaler_metadata(scaler: torch.amp.GradScaler, text: str, where: str) -> None:
    """Restore a scaler from checkpoint metadata, refusing anything but the expected numbers."""
    try:
        state = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        state = None
    valid = (
        isinstance(state, dict)
        and set(state) == set(SCALER_KEYS)
        and all(
            isinstance(state[key], (int, float))
            and not isinstance(state[key], bool)
            and math.isfinite(state[key])
            and state[key] >= 0
            for key in SCALER_KEYS
        )
    )
    if not valid:
        raise CheckpointError(f"{where}: the fp16 loss-scaler state in its metadata is damaged")
    scaler.load_state_dict({key: kind(state[key]) for key, kind in SCALER_KEYS.items()})
