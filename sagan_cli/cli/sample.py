"""`sagan sample`: images from a checkpoint, as one grid or a folder of PNGs. Defaults: sampling.SampleOptions."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ..config import check_seed
from ..errors import UsageError
from ..sampling import SAMPLE_DEFAULTS as DEFAULTS
from . import options

EPILOG = (
    "Examples: sagan sample runs/mnist-attn/checkpoints/final.safetensors -n 64 -o grid.png\n\n"
    "          sagan sample CKPT -n 16 -o digits/ --seed 3"
)


def sample(
    checkpoint: options.CheckpointArg,
    num: Annotated[int, typer.Option("-n", "--num", help="How many images")] = DEFAULTS.num,
    output: Annotated[
        str, typer.Option("-o", "--output", help="A grid image (.png/.jpg/.webp) or a folder DIR/ of single PNGs")
    ] = DEFAULTS.output,
    nrow: Annotated[int | None, typer.Option("--nrow", help="Images per grid row (default: about sqrt(n))")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the latents: same seed, same images")] = DEFAULTS.seed,
    truncation: options.Truncation = DEFAULTS.truncation,
    class_index: options.ClassIndex = None,
    ema: options.Ema = DEFAULTS.use_ema,
    device: options.Device = DEFAULTS.device,
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Images generated per forward pass")
    ] = DEFAULTS.batch_size,
    force: options.Force = False,
) -> None:
    """Draw images from a checkpoint; prints the written path(s) on stdout."""
    from ..checkpoint import read_checkpoint_info
    from ..images import IMAGE_SUFFIXES, make_grid, save_image
    from ..outputs import (
        check_output_file,
        check_output_folder,
        remove_earlier_samples,
        sample_file_names,
        wants_folder,
    )
    from ..sampling import check_sample_count, sample_from_checkpoint

    if num < 1:
        raise UsageError(f"-n must be at least 1, got {num}")
    if nrow is not None and nrow < 1:
        raise UsageError(f"--nrow must be at least 1, got {nrow}")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    check_seed(seed)
    path = Path(output)
    folder = wants_folder(path, output)
    if folder and nrow is not None:
        raise UsageError(f"--nrow only applies to a grid, and -o {output} is a folder of single images; drop --nrow")
    check_sample_count(num, read_checkpoint_info(checkpoint).model, grid=not folder)
    names = sample_file_names(num)
    if folder:
        check_output_folder(path, names, force)
    else:
        check_output_file(path, IMAGE_SUFFIXES, force)
    images, info, metadata = sample_from_checkpoint(
        checkpoint,
        num,
        seed=seed,
        truncation=truncation,
        class_index=class_index,
        use_ema=ema,
        device=device,
        batch_size=batch_size,
    )
    if folder:  # each write is atomic and reports its own failure as one line
        for i, file_name in enumerate(names):
            save_image(images[i], path / file_name, {**metadata, "index": str(i)})
        removed = remove_earlier_samples(path, names)  # only with --force: check_output_folder refuses otherwise
        if removed:
            print(f"removed {len(removed)} sample file(s) of an earlier run from {path}", file=sys.stderr)
    else:
        save_image(make_grid(images, nrow), path, metadata)
    print(path)


def register(app: typer.Typer) -> None:
    """Add `sagan sample` to the app."""
    app.command(epilog=EPILOG)(sample)
