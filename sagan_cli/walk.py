"""Latent walks: slerp / lerp between seeds, class walks at a fixed z, frames for grids and GIFs.

Endpoints are generated exactly as `sagan sample --seed S -n 1` generates them (same latent, same
label, batch of one), so the first and last frame of every row equal those samples bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from .config import check_seed
from .errors import UsageError
from .model import ConditionalBatchNorm2d, Generator, ModelConfig
from .sampling import generate, sample_labels, sample_latents

Interpolation = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def lerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Straight line: a (D,), b (D,), t (T,) -> (T, D)."""
    return a[None] + t[:, None] * (b - a)[None]


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Great-circle path with linearly interpolated norm: a (D,), b (D,), t (T,) -> (T, D).

    Gaussian latents live near a sphere; lerp cuts through its low-density inside, slerp does not.
    Falls back to lerp for (anti)parallel vectors, where the great circle is undefined.
    """
    a64, b64, t64 = a.double(), b.double(), t.double()
    norm_a, norm_b = a64.norm(), b64.norm()
    cos = torch.dot(a64 / norm_a, b64 / norm_b).clamp(-1.0, 1.0)
    omega = torch.arccos(cos)
    if omega.abs() < 1e-6 or (torch.pi - omega).abs() < 1e-6:
        return lerp(a, b, t)
    weight_a = torch.sin((1 - t64) * omega) / torch.sin(omega)  # (T,)
    weight_b = torch.sin(t64 * omega) / torch.sin(omega)
    direction = weight_a[:, None] * (a64 / norm_a)[None] + weight_b[:, None] * (b64 / norm_b)[None]  # (T, D)
    norms = (1 - t64) * norm_a + t64 * norm_b  # (T,)
    return (direction / direction.norm(dim=1, keepdim=True) * norms[:, None]).to(a.dtype)


INTERPOLATIONS: dict[str, Interpolation] = {"slerp": slerp, "lerp": lerp}


@dataclass(frozen=True)
class WalkOptions:
    """Defaults of `sagan interpolate`, read by its CLI options and by `walk`."""

    seeds: tuple[str, ...] = ("0,1",)
    steps: int = 10  # frames per row, both endpoints included
    method: str = "slerp"
    truncation: float = 1.0
    output: str = "walk.png"
    frame_ms: int = 120  # GIF frame duration
    min_frame_ms: int = 10  # GIF viewers clamp shorter frames
    use_ema: bool = True
    device: str = "auto"


WALK_DEFAULTS = WalkOptions()


@dataclass(frozen=True)
class WalkRow:
    """One row of a walk: from (seed, label) to (seed, label)."""

    start_seed: int
    end_seed: int
    start_label: int | None
    end_label: int | None


def parse_seeds(values: list[str]) -> list[int]:
    """`--seeds 3,7 --seeds 1,2` -> [3, 7, 1, 2], each checked like `sagan sample --seed`."""
    seeds: list[int] = []
    for value in values:
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                seeds.append(int(part))
            except ValueError:
                raise UsageError(
                    f"--seeds {value!r}: {part!r} is not an integer seed; write e.g. --seeds 3,7"
                ) from None
            check_seed(seeds[-1], "--seeds")
    if not seeds:
        raise UsageError("--seeds needs at least one seed, e.g. --seeds 3,7")
    return seeds


def parse_classes(text: str | None, model: ModelConfig) -> tuple[int, int] | None:
    """`--classes 1,7` -> (1, 7), checked against the model (in range, and not a cluster no image was in)."""
    if text is None:
        return None
    num_classes = model.num_classes
    if num_classes == 0:
        raise UsageError(f"--classes {text} given, but the checkpoint is unconditional; drop --classes")
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise UsageError(f"--classes {text!r} is not two class numbers, e.g. --classes 1,7") from None
    if len(values) != 2:
        raise UsageError(f"--classes {text!r} needs exactly two classes, e.g. --classes 1,7")
    bad = [c for c in values if not 0 <= c < num_classes]
    if bad:
        raise UsageError(
            f"--classes {text}: class {bad[0]} is out of range; this model has classes 0..{num_classes - 1}"
        )
    drawn = model.drawn_classes()
    empty = [c for c in values if c not in drawn]
    if empty:
        raise UsageError(
            f"--classes {text}: class {empty[0]} is an empty cluster of this model (no training image was in it); "
            "pick clusters with images"
        )
    return values[0], values[1]


def plan_rows(
    seeds: list[int], model: ModelConfig, class_index: int | None, classes: tuple[int, int] | None
) -> list[WalkRow]:
    """Rows of the walk: consecutive seed pairs, or (with --classes) one class walk per seed."""
    if classes is not None:
        if class_index is not None:
            raise UsageError(
                "--class and --classes exclude each other; use --class C to fix the class or --classes A,B to walk"
            )
        return [WalkRow(seed, seed, classes[0], classes[1]) for seed in seeds]
    if len(seeds) % 2:
        raise UsageError(
            f"--seeds {','.join(map(str, seeds))} has an odd number of seeds; give pairs (start,end), "
            "e.g. --seeds 3,7 or --seeds 3,7,1,2 for two rows"
        )

    def label(seed: int) -> int | None:  # the label `sagan sample --seed S` draws for its first image
        labels = sample_labels(1, model, seed, class_index)
        return None if labels is None else int(labels[0])

    return [WalkRow(a, b, label(a), label(b)) for a, b in zip(seeds[::2], seeds[1::2], strict=True)]


@contextmanager
def blended_classes(generator: Generator, start: int, end: int, weights: torch.Tensor) -> Iterator[torch.Tensor]:
    """Temporarily give every conditional BN one virtual class per weight t: (1-t)*class start + t*class end.

    Yields the labels (T,) that select those virtual classes. The model itself is not changed.
    """
    saved: list[tuple[ConditionalBatchNorm2d, nn.Embedding, nn.Embedding]] = []
    try:
        for module in generator.modules():
            if isinstance(module, ConditionalBatchNorm2d) and module.num_classes > 0:
                saved.append((module, module.scale, module.shift))
                for attr in ("scale", "shift"):
                    table = getattr(module, attr).weight  # (num_classes, C), on the generator's device
                    t = weights.to(table)[:, None]  # (T, 1); weights come from the CPU
                    blended = (1 - t) * table[start][None] + t * table[end][None]  # (T, C)
                    setattr(module, attr, nn.Embedding.from_pretrained(blended.detach()))
        yield torch.arange(weights.shape[0])
    finally:
        for module, scale, shift in saved:
            module.scale, module.shift = scale, shift


def walk_row(generator: Generator, row: WalkRow, steps: int, method: str, truncation: float) -> torch.Tensor:
    """uint8 frames (steps, C, S, S) of one row; frame 0 and frame -1 are generated alone, like `sample -n 1`."""
    z_dim = generator.config.z_dim
    z_start = sample_latents(1, z_dim, row.start_seed, truncation)  # (1, z_dim)
    z_end = sample_latents(1, z_dim, row.end_seed, truncation)

    def labels(value: int | None, n: int) -> torch.Tensor | None:
        return None if value is None else torch.full((n,), value, dtype=torch.int64)

    first = generate(generator, z_start, labels(row.start_label, 1))  # (1, C, S, S)
    last = generate(generator, z_end, labels(row.end_label, 1))
    if steps == 2:
        return torch.cat([first, last])
    t = torch.linspace(0, 1, steps)[1:-1]  # (steps - 2,) inner weights
    inner_latents = INTERPOLATIONS[method](z_start[0], z_end[0], t)  # (steps - 2, z_dim)
    if row.start_label is not None and row.end_label is not None and row.start_label != row.end_label:
        with blended_classes(generator, row.start_label, row.end_label, t) as virtual_labels:
            inner = generate(generator, inner_latents, virtual_labels)
    else:
        inner = generate(generator, inner_latents, labels(row.start_label, steps - 2))
    return torch.cat([first, inner, last])  # (steps, C, S, S)


def walk(
    generator: Generator,
    rows: list[WalkRow],
    steps: int = WALK_DEFAULTS.steps,
    method: str = WALK_DEFAULTS.method,
    truncation: float = WALK_DEFAULTS.truncation,
) -> torch.Tensor:
    """uint8 frames (rows, steps, C, S, S) of a latent walk."""
    if steps < 2:
        raise UsageError(f"--steps must be at least 2 (both endpoints), got {steps}")
    if method not in INTERPOLATIONS:
        raise UsageError(f"unknown interpolation {method!r}; use one of {', '.join(INTERPOLATIONS)}")
    return torch.stack([walk_row(generator, row, steps, method, truncation) for row in rows])
