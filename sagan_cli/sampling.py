"""Latents, generation and image files: what `sample` and `interpolate` are built from."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import torch
from PIL import ExifTags, Image
from PIL.PngImagePlugin import PngInfo

from .checkpoint import CheckpointInfo, load_generator
from .data import to_uint8
from .errors import SaganError, UsageError
from .model import Generator, ModelConfig
from .outputs import write_atomically
from .runtime import available_memory_bytes

GRID_PADDING = 2
# Suffix -> Pillow format, for formats that can carry the metadata (seed, checkpoint, ...). BMP cannot,
# so it is not offered: every image we write says how to reproduce it.
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
IMAGE_SUFFIXES = tuple(IMAGE_FORMATS)
WALK_SUFFIXES = (*IMAGE_SUFFIXES, ".gif")  # `interpolate` also writes animations
MAX_SIDE = {"JPEG": 65_500, "WEBP": 16_383}  # pixels; Pillow fails with a cryptic encoder error beyond


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


def sample_labels(n: int, num_classes: int, seed: int, class_index: int | None = None) -> torch.Tensor | None:
    """Class labels (n,) for a conditional model: all `class_index`, or uniform from their own seed stream."""
    if num_classes == 0:
        return None
    if class_index is not None:
        return torch.full((n,), class_index, dtype=torch.int64)
    generator = torch.Generator().manual_seed(seed + 1_000_003)  # a stream apart from the latents'
    return torch.randint(num_classes, (n,), generator=generator)


@torch.inference_mode()
def generate(
    generator: Generator,
    latents: torch.Tensor,
    labels: torch.Tensor | None = None,
    batch_size: int = 256,
) -> torch.Tensor:
    """Images as uint8 (n, C, S, S) on the CPU; the generator must be in eval mode."""
    device = next(generator.parameters()).device
    chunks = []
    for start in range(0, latents.shape[0], batch_size):
        z = latents[start : start + batch_size].to(device)
        y = None if labels is None else labels[start : start + batch_size].to(device)
        chunks.append(to_uint8(generator(z, y)).cpu())
    return torch.cat(chunks)


def make_grid(images: torch.Tensor, nrow: int | None = None, padding: int = GRID_PADDING) -> torch.Tensor:
    """uint8 (N, C, H, W) -> one uint8 (C, H', W') grid with `nrow` images per row, on black."""
    n, c, h, w = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    grid = torch.zeros(c, rows * (h + padding) + padding, nrow * (w + padding) + padding, dtype=torch.uint8)
    for i in range(n):
        top, left = padding + (i // nrow) * (h + padding), padding + (i % nrow) * (w + padding)
        grid[:, top : top + h, left : left + w] = images[i]
    return grid


def to_pil(image: torch.Tensor) -> Image.Image:
    """uint8 (C, H, W) with C in {1, 3} -> PIL image."""
    array = image.permute(1, 2, 0).contiguous().numpy()
    return Image.fromarray(array[:, :, 0] if image.shape[0] == 1 else array, mode="L" if image.shape[0] == 1 else "RGB")


def save_image(image: torch.Tensor, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write one uint8 (C, H, W) image atomically in the format of its suffix, carrying `metadata`.

    PNG: one text chunk per key (`Image.open(p).text`). JPEG and WebP: the JSON of the dict as EXIF
    ImageDescription (`json.loads(Image.open(p).getexif()[0x010E])`).
    """
    path = Path(path)
    image_format = IMAGE_FORMATS.get(path.suffix.lower())
    if image_format is None:
        raise UsageError(f"cannot write {path}: unknown image extension {path.suffix!r}; use one of {', '.join(IMAGE_SUFFIXES)}")
    height, width = image.shape[1:]
    limit = MAX_SIDE.get(image_format)
    if limit is not None and max(height, width) > limit:
        raise SaganError(
            f"cannot write {path}: {width}x{height} px is beyond the {limit} px {image_format} allows; "
            "use .png, or a smaller grid"
        )
    options = _metadata_options(image_format, {key: str(value) for key, value in (metadata or {}).items()})
    write_atomically(path, _encode(to_pil(image), path, format=image_format, **options))


def _encode(picture: Image.Image, path: Path, **options: Any) -> bytes:
    """The bytes of `picture` saved with Pillow `options`, encoded in memory before any file is touched."""
    buffer = io.BytesIO()
    try:
        picture.save(buffer, **options)
    except OSError as exc:  # an encoder's own failure, e.g. a size it cannot store
        raise SaganError(f"cannot write {path}: {exc}") from None
    return buffer.getvalue()


def _metadata_options(image_format: str, metadata: dict[str, str]) -> dict[str, Any]:
    """Pillow save options that store `metadata` in an image of `image_format`."""
    if not metadata:
        return {}
    if image_format == "PNG":
        info = PngInfo()
        for key, value in metadata.items():
            info.add_text(key, value)
        return {"pnginfo": info}
    exif = Image.Exif()
    exif[ExifTags.Base.ImageDescription] = json.dumps(metadata)  # ASCII (EXIF's charset): others as \uXXXX
    return {"exif": exif}


def save_gif(frames: list[torch.Tensor], path: Path, duration_ms: int = 120, comment: str = "") -> None:
    """Write uint8 (C, H, W) frames atomically as a looping GIF that plays forward and back; `comment` is kept."""
    pictures = [to_pil(frame) for frame in frames]
    sequence = pictures + pictures[-2:0:-1]
    options = dict(format="GIF", save_all=True, append_images=sequence[1:], duration=duration_ms, loop=0, comment=comment.encode())
    write_atomically(Path(path), _encode(sequence[0], path, **options))


def check_class(class_index: int | None, num_classes: int) -> None:
    """--class must name a class of a conditional model."""
    if class_index is None:
        return
    if num_classes == 0:
        raise UsageError(f"--class {class_index} given, but the checkpoint is unconditional; drop --class")
    if not 0 <= class_index < num_classes:
        raise UsageError(f"--class {class_index} is out of range; this model has classes 0..{num_classes - 1}")


def check_truncation(truncation: float) -> None:
    """Truncation scales latents and must lie in (0, 1]."""
    if not 0 < truncation <= 1:
        raise UsageError(f"--truncation {truncation} is outside (0, 1]; use e.g. 0.7, or 1 for none")


def sample_from_checkpoint(
    path: Path,
    n: int,
    *,
    seed: int = 0,
    truncation: float = 1.0,
    class_index: int | None = None,
    use_ema: bool = True,
    device: str = "auto",
    batch_size: int = 256,
) -> tuple[torch.Tensor, CheckpointInfo, dict[str, str]]:
    """n images (uint8, CPU) from a checkpoint, with the metadata that reproduces them."""
    from .runtime import resolve_device

    check_truncation(truncation)
    torch_device = resolve_device(device)
    generator, info = load_generator(Path(path), use_ema=use_ema, device=torch_device)
    check_class(class_index, info.model.num_classes)
    check_sample_count(n, info.model)
    latents = sample_latents(n, info.model.z_dim, seed, truncation)
    labels = sample_labels(n, info.model.num_classes, seed, class_index)
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
