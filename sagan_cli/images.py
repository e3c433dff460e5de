"""Image files: grids, and PNG / JPEG / WebP / GIF encoding that carries the metadata reproducing them."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import torch
from PIL import ExifTags, Image
from PIL.PngImagePlugin import PngInfo

from .atomic import write_atomically
from .errors import SaganError, UsageError

GRID_PADDING = 2
# Suffix -> Pillow format, for formats that can carry the metadata (seed, checkpoint, ...). BMP cannot,
# so it is not offered: every image we write says how to reproduce it.
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
IMAGE_SUFFIXES = tuple(IMAGE_FORMATS)
WALK_SUFFIXES = (*IMAGE_SUFFIXES, ".gif")  # `interpolate` also writes animations
MAX_SIDE = {"JPEG": 65_500, "WEBP": 16_383}  # pixels; Pillow fails with a cryptic encoder error beyond


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
        raise UsageError(
            f"cannot write {path}: unknown image extension {path.suffix!r}; use one of {', '.join(IMAGE_SUFFIXES)}"
        )
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
    options = dict(
        format="GIF", save_all=True, append_images=sequence[1:], duration=duration_ms, loop=0, comment=comment.encode()
    )
    write_atomically(Path(path), _encode(sequence[0], path, **options))
