"""`sagan attention`: parsing and output only; the work is in attention_maps.py. Defaults: AttentionOptions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ..attention_maps import ATTENTION_DEFAULTS as DEFAULTS
from ..errors import UsageError
from . import options
from .console import log

EPILOG = (
    "Examples: sagan attention CKPT --seed 3 -o attn.png                 (G's attention, a spread of query points)\n\n"
    "          sagan attention CKPT --seed 3 --query 14,7 --query 6,20 -o attn.png\n\n"
    "          sagan attention CKPT --image digit.png -o d-attn.png             (D's attention on a given image)\n\n"
    "          sagan attention CKPT --seed 3 --query 14,7 --json > maps.json"
)


def attention(
    checkpoint: options.CheckpointArg,
    seed: Annotated[
        int | None,
        typer.Option("--seed", help=f"Seed of the generated image, as in sagan sample -n 1 (default: {DEFAULTS.seed})"),
    ] = None,
    class_index: Annotated[
        int | None, typer.Option("--class", help="Class of the generated image (conditional models)")
    ] = None,
    queries: Annotated[
        list[str] | None,
        typer.Option(
            "--query",
            help="Query point X,Y in image pixels (0,0 = top left); repeat for more (default: a spread over the image)",
        ),
    ] = None,
    image: Annotated[
        Path | None, typer.Option("--image", help="Show D's attention on this image (real or generated) instead of G's")
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "-o", "--output", help=f"The figure, a .png (default: {DEFAULTS.output}; with --json only if given)"
        ),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the raw maps as JSON on stdout")] = False,
    ema: options.Ema = DEFAULTS.use_ema,
    device: options.Device = DEFAULTS.device,
    force: options.Force = False,
) -> None:
    """Show where self-attention looks: per attention layer and query point, its weights over the image."""
    from ..atomic import write_atomically
    from ..attention_maps import (
        FIGURE_SUFFIXES,
        attention_figure,
        attention_from_checkpoint,
        check_has_attention,
        default_queries,
        map_records,
        parse_queries,
    )
    from ..checkpoint import read_checkpoint_info
    from ..config import check_seed

    if image is not None and seed is not None:
        raise UsageError("--seed picks a generated image, but --image gives the image; drop one of them")
    if image is not None and class_index is not None:
        raise UsageError("--class has no effect on D's attention (the label enters only D's last layer); drop --class")
    seed = DEFAULTS.seed if seed is None else seed
    check_seed(seed)
    model = read_checkpoint_info(checkpoint).model
    check_has_attention(
        model, str(checkpoint), "g" if image is None else "d"
    )  # before any other check: nothing else matters without attention
    query_list = parse_queries(queries or [], model.image_size)
    if output is None and not json_output:
        output = Path(DEFAULTS.output)
    if output is not None:
        from ..outputs import check_output_file

        check_output_file(output, FIGURE_SUFFIXES, force)
    result, info, metadata = attention_from_checkpoint(
        checkpoint, seed=seed, class_index=class_index, image=image, use_ema=ema, device=device
    )
    query_list = query_list or default_queries(result.image)
    metadata["queries"] = ";".join(f"{q.x},{q.y}" for q in query_list)
    if output is not None:
        shown = f"seed {seed}" if image is None else f"on {image.name}"
        title = f"{'G' if image is None else 'D'}'s attention · {checkpoint.name} (step {info.step}) · {shown}"
        write_atomically(output, attention_figure(result, query_list, title, metadata))
    if json_output:
        payload = {
            "checkpoint": str(checkpoint),
            "step": info.step,
            "network": result.network,
            "image_size": info.model.image_size,
            "image": None if image is None else str(image),
            "seed": None if image is not None else seed,
            "class": class_index,
            "maps": map_records(result, query_list),
        }
        print(json.dumps(payload), flush=True)  # compact: the maps are large
        if output is not None:
            log(str(output))
    elif output is not None:
        print(output)


def register(app: typer.Typer) -> None:
    """Add `sagan attention` to the app."""
    app.command(epilog=EPILOG)(attention)
