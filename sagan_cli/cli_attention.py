"""`sagan attention`, registered on the main app: parsing and output only; the work is in attention_maps.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from .cli import app
from .errors import UsageError


@app.command(
    epilog="Examples: sagan attention CKPT --seed 3 -o attn.png                 (G's attention, a spread of query points)\n\n"
    "          sagan attention CKPT --seed 3 --query 14,7 --query 6,20 -o attn.png\n\n"
    "          sagan attention CKPT --image digit.png -o d-attn.png             (D's attention on a given image)\n\n"
    "          sagan attention CKPT --seed 3 --query 14,7 --json > maps.json"
)
def attention(
    checkpoint: Path = typer.Argument(..., help="A .safetensors checkpoint written by sagan train"),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the generated image, as in sagan sample -n 1 (default: 0)"),
    class_index: Optional[int] = typer.Option(None, "--class", help="Class of the generated image (conditional models)"),
    queries: List[str] = typer.Option([], "--query", help="Query point X,Y in image pixels (0,0 = top left); repeat for more (default: a spread over the image)"),
    image: Optional[Path] = typer.Option(None, "--image", help="Show D's attention on this image (real or generated) instead of G's"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="The figure, a .png (default: attention.png; with --json only if given)"),
    json_output: bool = typer.Option(False, "--json", help="Print the raw maps as JSON on stdout"),
    ema: bool = typer.Option(True, "--ema/--no-ema", help="Use the EMA generator when the checkpoint has one"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or mps"),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output file"),
) -> None:
    """Show where self-attention looks: per attention layer and query point, its weights over the image."""
    from .attention_maps import (
        attention_figure,
        check_has_attention,
        default_queries,
        discriminator_attention,
        generator_attention,
        map_records,
        parse_queries,
    )
    from .checkpoint import load_discriminator, load_generator, read_checkpoint_info
    from .config import check_seed
    from .outputs import check_output_file, write_atomically
    from .runtime import resolve_device
    from .sampling import check_class

    if image is not None and seed is not None:
        raise UsageError("--seed picks a generated image, but --image gives the image; drop one of them")
    if image is not None and class_index is not None:
        raise UsageError("--class has no effect on D's attention (the label enters only D's last layer); drop --class")
    seed = 0 if seed is None else seed
    check_seed(seed)
    info = read_checkpoint_info(checkpoint)
    check_has_attention(info.model, str(checkpoint))
    check_class(class_index, info.model.num_classes)
    query_list = parse_queries(queries, info.model.image_size)
    if output is None and not json_output:
        output = Path("attention.png")
    if output is not None:
        check_output_file(output, (".png",), force)
    torch_device = resolve_device(device)
    if image is None:
        generator, _ = load_generator(checkpoint, use_ema=ema, device=torch_device)
        result = generator_attention(generator, seed, class_index)
        source = {"seed": str(seed), "weights": "ema" if ema and info.has_ema else "raw"}
        if class_index is not None:
            source["class"] = str(class_index)
        title = f"G's attention · {checkpoint.name} (step {info.step}) · seed {seed}"
    else:
        picture = _load_image(image, info.model.channels, info.model.image_size)
        discriminator, _ = load_discriminator(checkpoint, device=torch_device)
        result = discriminator_attention(discriminator, picture)
        source = {"image": str(image)}
        title = f"D's attention on {image.name} · {checkpoint.name} (step {info.step})"
    query_list = query_list or default_queries(result.image)
    metadata = {"checkpoint": str(checkpoint), "step": str(info.step), **source,
                "queries": ";".join(f"{q.x},{q.y}" for q in query_list)}
    if output is not None:
        write_atomically(output, attention_figure(result, query_list, title, metadata))
    if json_output:
        payload = {
            "checkpoint": str(checkpoint), "step": info.step, "network": result.network,
            "image_size": info.model.image_size, "image": None if image is None else str(image),
            "seed": None if image is not None else seed, "class": class_index, "maps": map_records(result, query_list),
        }
        print(json.dumps(payload), flush=True)
        if output is not None:
            print(output, file=sys.stderr)
    elif output is not None:
        print(output)


def _load_image(path: Path, channels: int, image_size: int):  # -> torch.Tensor (C, S, S) uint8
    """One image file converted as training data is (channels, shorter side to S, centre crop)."""
    from .data import load_image_paths

    if not path.is_file():
        raise UsageError(f"--image {path} is not a file; give an image such as a PNG")
    images = load_image_paths([path], channels, image_size, lambda message: None, f"--image {path}")
    return images[0]
