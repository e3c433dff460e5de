"""`sagan interpolate`: latent walks as a grid or a GIF. Defaults: walk.WalkOptions."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import typer

from ..errors import UsageError
from ..walk import WALK_DEFAULTS as DEFAULTS
from . import options

EPILOG = (
    "Examples: sagan interpolate CKPT --seeds 3,7 --steps 10 -o walk.png\n\n"
    "          sagan interpolate CKPT --seeds 3,7,1,2 -o walk.gif      (two rows: 3->7 and 1->2)\n\n"
    "          sagan interpolate CKPT --seeds 5 --classes 1,7 -o morph.png   (conditional: class 1 -> 7 at z of seed 5)"
)


def interpolate(
    checkpoint: options.CheckpointArg,
    seeds: Annotated[
        list[str] | None,
        typer.Option(
            "--seeds",
            help="Seed pairs start,end; more pairs = more rows (3,7,1,2 or repeat --seeds) "
            f"(default: {' '.join(DEFAULTS.seeds)})",
        ),
    ] = None,
    steps: Annotated[int, typer.Option("--steps", help="Frames per row, both endpoints included")] = DEFAULTS.steps,
    lerp: Annotated[bool, typer.Option("--lerp", help="Straight-line interpolation instead of slerp")] = False,
    class_index: options.ClassIndex = None,
    classes: Annotated[
        str | None, typer.Option("--classes", help="Walk from class A to class B at each seed's fixed z, e.g. 1,7")
    ] = None,
    truncation: options.Truncation = DEFAULTS.truncation,
    output: Annotated[
        Path, typer.Option("-o", "--output", help="A grid image (.png/.jpg/.webp) or an animation (.gif)")
    ] = Path(DEFAULTS.output),
    duration_ms: Annotated[
        int | None,
        typer.Option("--frame-ms", help=f"GIF frame duration in milliseconds (default: {DEFAULTS.frame_ms})"),
    ] = None,
    ema: options.Ema = DEFAULTS.use_ema,
    device: options.Device = DEFAULTS.device,
    force: options.Force = False,
) -> None:
    """Walk the latent space between seeds: rows of a grid, or a GIF; prints the written path on stdout."""
    from ..checkpoint import load_generator
    from ..images import WALK_SUFFIXES, make_grid, save_gif, save_image
    from ..outputs import check_output_file
    from ..runtime import resolve_device
    from ..sampling import check_class, check_truncation
    from ..walk import parse_classes, parse_seeds, plan_rows, walk

    if steps < 2:
        raise UsageError(f"--steps must be at least 2 (both endpoints), got {steps}")
    if duration_ms is not None and output.suffix.lower() != ".gif":
        raise UsageError(f"--frame-ms only applies to a GIF, and -o {output} is a still grid; drop it or write a .gif")
    duration_ms = DEFAULTS.frame_ms if duration_ms is None else duration_ms
    if duration_ms < DEFAULTS.min_frame_ms:
        raise UsageError(f"--frame-ms must be at least {DEFAULTS.min_frame_ms}, got {duration_ms}")
    check_truncation(truncation)
    seed_list = parse_seeds(list(DEFAULTS.seeds) if seeds is None else seeds)
    check_output_file(output, WALK_SUFFIXES, force)
    generator, info = load_generator(checkpoint, use_ema=ema, device=resolve_device(device))
    check_class(class_index, info.model)
    class_pair = parse_classes(classes, info.model)
    rows = plan_rows(seed_list, info.model, class_index, class_pair)
    method = "lerp" if lerp else "slerp"
    frames = walk(generator, rows, steps, method, truncation)  # (R, T, C, S, S)
    metadata = {
        "checkpoint": str(checkpoint),
        "step": str(info.step),
        "seeds": ";".join(f"{r.start_seed},{r.end_seed}" for r in rows),
        "labels": ";".join(f"{r.start_label},{r.end_label}" for r in rows),
        "steps": str(steps),
        "interpolation": method,
        "truncation": str(truncation),
        "weights": "ema" if ema and info.has_ema else "raw",
    }
    if output.suffix.lower() == ".gif":
        per_frame = [make_grid(frames[:, t], nrow=max(1, math.ceil(math.sqrt(len(rows))))) for t in range(steps)]
        save_gif(per_frame, output, duration_ms, comment=json.dumps(metadata))
    else:
        save_image(make_grid(frames.flatten(0, 1), nrow=steps), output, metadata)
    print(output)


def register(app: typer.Typer) -> None:
    """Add `sagan interpolate` to the app."""
    app.command(epilog=EPILOG)(interpolate)
