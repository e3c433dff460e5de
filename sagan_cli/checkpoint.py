"""Checkpoints: safetensors files with the configs in their metadata, written atomically.

A checkpoint holds the generator (raw and EMA) and, for resuming, the
discriminator and both optimizers. Only safetensors is ever read: no pickle.
Tensor names are prefixed by part: `generator.`, `generator_ema.`,
`discriminator.`, `optimizer_g.`, `optimizer_d.`.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

from . import __version__
from .config import TrainConfig
from .errors import CheckpointError
from .model import Generator, ModelConfig

FORMAT_NAME = "sagan"
FORMAT_VERSION = 1
MAX_HEADER_BYTES = 16 * 1024 * 1024  # a SAGAN header is a few hundred KB at most
MAX_METADATA_VALUE = 1024 * 1024
PARTS = ("generator", "generator_ema", "discriminator", "optimizer_g", "optimizer_d")


@dataclass
class CheckpointInfo:
    """What a checkpoint's metadata says, parsed and type-checked."""

    path: Path
    model: ModelConfig
    train: TrainConfig | None
    step: int
    seed: int
    dataset: str
    train_seconds: float
    has_ema: bool
    has_training_state: bool
    metadata: dict[str, str]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a crash leaves the old file or the new one, never a part."""
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _flatten_optimizer(prefix: str, state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], str]:
    tensors = {}
    for index, param_state in state["state"].items():
        for key, value in param_state.items():
            value = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"{prefix}.{index}.{key}"] = value
    return tensors, json.dumps(state["param_groups"])


def _unflatten_optimizer(prefix: str, tensors: dict[str, torch.Tensor], groups_json: str) -> dict[str, Any]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        index, key = name[len(prefix) + 1 :].split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": json.loads(groups_json)}


def save_checkpoint(
    path: Path,
    *,
    train_config: TrainConfig,
    step: int,
    train_seconds: float,
    generator: torch.nn.Module,
    generator_ema: torch.nn.Module | None = None,
    discriminator: torch.nn.Module | None = None,
    optimizer_g: torch.optim.Optimizer | None = None,
    optimizer_d: torch.optim.Optimizer | None = None,
    extra_metadata: dict[str, str] | None = None,
) -> Path:
    """Write a checkpoint atomically; training state is included when D and optimizers are given."""
    tensors: dict[str, torch.Tensor] = {}
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "model_config": train_config.model.to_json(),
        "train_config": json.dumps(train_config.to_dict(), sort_keys=True),
        "dataset": train_config.dataset,
        "step": str(step),
        "seed": str(train_config.seed),
        "train_seconds": f"{train_seconds:.3f}",
        "versions": json.dumps({"sagan": __version__, "torch": torch.__version__}),
    }
    modules = {"generator": generator, "generator_ema": generator_ema, "discriminator": discriminator}
    for part, module in modules.items():
        if module is not None:
            for name, value in module.state_dict().items():
                tensors[f"{part}.{name}"] = value.detach().to("cpu").contiguous()
    for part, optimizer in (("optimizer_g", optimizer_g), ("optimizer_d", optimizer_d)):
        if optimizer is not None:
            flat, groups = _flatten_optimizer(part, optimizer.state_dict())
            tensors.update({k: v.detach().to("cpu").contiguous() for k, v in flat.items()})
            metadata[f"{part}_groups"] = groups
    metadata.update(extra_metadata or {})
    atomic_write_bytes(Path(path), safetensors_bytes(tensors, metadata=metadata))
    return Path(path)


def _read_header(path: Path) -> dict[str, Any]:
    """Read and sanity-check the safetensors JSON header without trusting its sizes."""
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory; pass a .safetensors file inside it (e.g. {path}/final.safetensors)")
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path} is empty or truncated ({size} bytes); it is not a sagan checkpoint")
        if head[:1] == b"\x80" or head[:2] == b"PK":
            raise CheckpointError(
                f"{path} looks like a pickle/torch.save file; sagan only loads .safetensors checkpoints "
                "(pickles can run code and are never loaded)"
            )
        (header_len,) = struct.unpack("<Q", head)
        if header_len > MAX_HEADER_BYTES or header_len > size - 8:
            raise CheckpointError(f"{path} is truncated or not a safetensors file (bad header length)")
        try:
            header = json.loads(handle.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{path} is not a safetensors file (unreadable header: {exc.__class__.__name__})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is not a safetensors file (header is not an object)")
    return header


def _metadata_field(info_path: Path, metadata: dict[str, str], key: str) -> str:
    value = metadata.get(key)
    if not isinstance(value, str) or len(value) > MAX_METADATA_VALUE:
        raise CheckpointError(f"{info_path} has no valid '{key}' in its sagan metadata; the file is damaged")
    return value


def read_checkpoint_info(path: Path) -> CheckpointInfo:
    """Parse and validate a checkpoint's metadata (raises CheckpointError with the reason)."""
    path = Path(path)
    header = _read_header(path)
    metadata = header.get("__metadata__")
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path} is a safetensors file but not a sagan checkpoint (no sagan metadata)")
    version_text = _metadata_field(path, metadata, "format_version")
    if not version_text.isdigit():
        raise CheckpointError(f"{path} has an invalid format_version {version_text!r}")
    if int(version_text) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by a newer sagan (checkpoint format {version_text}, this sagan reads up to "
            f"{FORMAT_VERSION}); upgrade sagan"
        )
    try:
        model = ModelConfig.from_json(_metadata_field(path, metadata, "model_config"))
        train = TrainConfig.from_dict(json.loads(metadata["train_config"])) if "train_config" in metadata else None
        step = int(_metadata_field(path, metadata, "step"))
        seed = int(metadata.get("seed", "0"))
        train_seconds = float(metadata.get("train_seconds", "0"))
    except (ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"{path} has invalid sagan metadata: {exc}") from None
    names = [k for k in header if k != "__metadata__"]
    has = {part: any(n.startswith(part + ".") for n in names) for part in PARTS}
    if not has["generator"]:
        raise CheckpointError(f"{path} has sagan metadata but no generator weights; the file is damaged")
    return CheckpointInfo(
        path=path,
        model=model,
        train=train,
        step=step,
        seed=seed,
        dataset=metadata.get("dataset", "unknown"),
        train_seconds=train_seconds,
        has_ema=has["generator_ema"],
        has_training_state=all(has[p] for p in ("discriminator", "optimizer_g", "optimizer_d")),
        metadata=metadata,
    )


def load_tensors(path: Path, prefix: str, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Tensors of one part (prefix stripped), read with safetensors only."""
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as handle:
            return {
                name[len(prefix) + 1 :]: handle.get_tensor(name)
                for name in handle.keys()
                if name.startswith(prefix + ".")
            }
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{path} is damaged: cannot read its '{prefix}' tensors ({exc})") from None


def load_module_state(module: torch.nn.Module, path: Path, prefix: str) -> None:
    """Load one part of a checkpoint into a module, strictly."""
    tensors = load_tensors(path, prefix)
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first_line = str(exc).splitlines()[0]
        raise CheckpointError(f"{path}: '{prefix}' weights do not match the model config ({first_line})") from None


def load_optimizer_state(optimizer: torch.optim.Optimizer, path: Path, info: CheckpointInfo, prefix: str) -> None:
    """Restore an optimizer's state from a checkpoint."""
    tensors = load_tensors(path, prefix)
    groups = _metadata_field(path, info.metadata, f"{prefix}_groups")
    try:
        optimizer.load_state_dict(_unflatten_optimizer(prefix, tensors, groups))
    except (ValueError, KeyError, RuntimeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: optimizer state '{prefix}' cannot be restored ({exc})") from None


def load_generator(path: Path, use_ema: bool = True, device: str | torch.device = "cpu") -> tuple[Generator, CheckpointInfo]:
    """Rebuild a generator from the file alone, in eval mode; EMA weights when present and asked for."""
    info = read_checkpoint_info(path)
    generator = Generator(info.model)
    load_module_state(generator, info.path, "generator_ema" if use_ema and info.has_ema else "generator")
    return generator.to(device).eval(), info
