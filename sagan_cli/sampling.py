"""Latents, labels and generation: what `sample`, `interpolate` and the metrics draw images with.

Image files (grids, PNG/JPEG/WebP/GIF encoding) are in images.py."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import CheckpointInfo, load_generator
from .data import to_uint8
from .errors import UsageError
from .images import GRID_PADDING
from .model import Generator, ModelConfig
from .runtime import available_memory_bytes


@dataclass(frozen=True)
class SampleOptions:
    """Defaults of `sagan sample`, read by its CLI options and by sample_from_checkpoint."""

    num: int = 64
    output: str = "samples.png"
    seed: int = 0
    truncation: float = 1.0
    use_ema: bool = True
    device: str = "auto"
    batch_size: int = 256  # images per forward pass


SAMPLE_DEFAULTS = SampleOptions()


def sample_latents(n: int, z_dim: int, seed: int, truncation: float = 1.0) -> torch.Tensor:
    """n latents (n, z_dim) from N(0, I), drawn on the CPU from `seed`, scaled by `truncation`.

    Latent i depends only on (seed, i) and n: the first k rows of a larger draw equal a draw of k.
    Truncation in (0, 1] shrinks latents towards the mean, trading variety for fidelity.
    """
    generator = torch.Generator().manual_seed(seed)
    # The CPU sampler fills blocks of 16 values: rows padded to a multiple of 16 keep every
    # latent independent of n, so `sample -n 1` and `sample -n 64` agree on the first image.
    padded = -(-z_dim // 16) * 16
    return torch.randn(n, padded, generator=generator)[:, :z_dim] * truncation


def check_sample_count(n: int, model: ModelConfig, grid: bool = False) -> None:
    """Refuse, before any work, an -n whose latents and images cannot fit in memory."""
    padded = -(-model.z_dim // 16) * 16
    per_image = padded * 4 + model.channels * model.image_size**2  # float32 latent + uint8 image
    if grid:
        per_image += model.channels * (model.image_size + GRID_PADDING) ** 2
    need, have = n * per_image, available_memory_bytes()
    if need > have:
        raise UsageError(
            f"-n {n} needs about {need / 2**30:,.1f} GiB of memory for latents and images, "
            f"more than the {have / 2**30:,.1f} GiB available; ask for fewer images"
        )


def draw_classes(model: ModelConfig, n: int, generator: torch.Generator) -> torch.Tensor:
    """Classes (n,) of a conditional model: uniform, or by its class_weights (a --clusters model's cluster sizes).
    Training draws its fakes' classes here too, so samples follow the mix the model trained on."""
    if model.class_weights:
        weights = torch.tensor(model.class_weights, dtype=torch.float64)
        return torch.multinomial(weights, n, replacement=True, generator=generator)
    return torch.randint(model.num_classes, (n,), generator=generator)


def sample_labels(n: int, model: ModelConfig, seed: int, class_index: int | None = None) -> torch.Tensor | None:
    """Class labels (n,) for a conditional model: all `class_index`, or drawn from their own seed stream."""
    if model.num_classes == 0:
        return None
    if class_index is not None:
        return torch.full((n,), class_index, dtype=torch.int64)
    return draw_classes(model, n, torch.Generator().manual_seed(seed + 1_000_003))  # apart from the latents' stream


@torch.inference_mode()
def generate(
    generator: Generator,
    latents: torch.Tensor,
    labels: torch.Tensor | None = None,
    batch_size: int = SAMPLE_DEFAULTS.batch_size,
) -> torch.Tensor:
    """Images as uint8 (n, C, S, S) on the CPU; the generator must be in eval mode."""
    device = next(generator.parameters()).device
    chunks = []
    for start in range(0, latents.shape[0], batch_size):
        z = latents[start : start + batch_size].to(device)
        y = None if labels is None else labels[start : start + batch_size].to(device)
        chunks.append(to_uint8(generator(z, y)).cpu())
    return torch.cat(chunks)


def check_class(class_index: int | None, model: ModelConfig) -> None:
    """--class must name a class of a conditional model, and not a cluster no training image was in."""
    if class_index is None:
        return
    num_classes = model.num_classes
    if num_classes == 0:
        raise UsageError(f"--class {class_index} given, but the checkpoint is unconditional; drop --class")
    if not 0 <= class_index < num_classes:
        raise UsageError(f"--class {class_index} is out of range; this model has classes 0..{num_classes - 1}")
    if class_index not in model.drawn_classes():
        raise UsageError(
            f"--class {class_index} is an empty cluster of this model (no training image was in it); "
            "pick a cluster with images"
        )


def check_truncation(truncation: float) -> None:
    """Truncation scales latents and must lie in (0, 1]."""
    if not 0 < truncation <= 1:
        raise UsageError(f"--truncation {truncation} is outside (0, 1]; use e.g. 0.7, or 1 for none")


def sample_from_checkpoint(
    path: Path,
    n: int = SAMPLE_DEFAULTS.num,
    *,
    seed: int = SAMPLE_DEFAULTS.seed,
    truncation: float = SAMPLE_DEFAULTS.truncation,
    class_index: int | None = None,
    use_ema: bool = SAMPLE_DEFAULTS.use_ema,
    device: str = SAMPLE_DEFAULTS.device,
    batch_size: int = SAMPLE_DEFAULTS.batch_size,
) -> tuple[torch.Tensor, CheckpointInfo, dict[str, str]]:
    """n images (uint8, CPU) from a checkpoint, with the metadata that reproduces them."""
    from .runtime import resolve_device

    check_truncation(truncation)
    torch_device = resolve_device(device)
    generator, info = load_generator(Path(path), use_ema=use_ema, device=torch_device)
    check_class(class_index, info.model)
    check_sample_count(n, info.model)
    latents = sample_latents(n, info.model.z_dim, seed, truncation)
    labels = sample_labels(n, info.model, seed, class_index)
    images = generate(generator, latents, labels, batch_size)
    metadata = {
        "checkpoint": str(path),
        "step": str(info.step),
        "seed": str(seed),
        "truncation": str(truncation),
        "weights": "ema" if use_ema and info.has_ema else "raw",
    }
    if class_index is not None:
        metadata["class"] = str(class_index)
    return images, info, metadata
