"""Data modes: images/s delivered to the training loop, preloaded vs streamed with 0, 1, 2 workers.

Measures `sagan_cli.streaming.real_batches`, the iterator the trainer reads, on a folder of
64 px images (`--folder`, or a generated folder of noise PNGs, which compress about as badly as
photos): the same (seed, epoch) batches in every row. `memory` also reports the one-off preload
time; streamed rows report the first batch (worker start-up) apart from the steady rate. No model
runs: this is the ceiling the data path puts on training speed, to set beside
`bench_train.py`'s images/s.

    python benchmarks/bench_data.py                      # 2,048 generated PNGs, workers 0,1,2
    python benchmarks/bench_data.py --folder ~/emoji/64  # a real folder
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as common
import torch
from PIL import Image

from sagan_cli.config import TrainConfig
from sagan_cli.data import ImageData, find_images, load_image_paths
from sagan_cli.streaming import StreamedData, real_batches
from sagan_cli.train import index_function

RESULTS = common.REPO / "benchmarks" / "results" / "data.json"
DOC = common.REPO / "docs" / "data-modes.md"
MARK_BEGIN, MARK_END = "<!-- bench_data:begin -->", "<!-- bench_data:end -->"
COLUMNS = [
    ("mode", "mode"),
    ("workers", "workers"),
    ("images", "images"),
    ("first_batch_s", "first batch s"),
    ("preload_s", "preload s"),
    ("images_per_s", "img/s"),
]


def write_noise_pngs(folder: Path, count: int, size: int) -> None:
    """`count` RGB noise PNGs of size x size, seeded."""
    rng = torch.Generator().manual_seed(0)
    for i in range(count):
        pixels = torch.randint(0, 256, (size, size, 3), dtype=torch.uint8, generator=rng)  # (H, W, C)
        Image.fromarray(pixels.numpy(), "RGB").save(folder / f"{i:06d}.png")


def measure(paths: list[Path], mode: str, workers: int, image_size: int, batch: int, batches: int) -> dict[str, Any]:
    """Time `batches` batches (after the first) through the trainer's iterator in one mode."""
    config = TrainConfig(batch_size=batch, seed=0)
    index_of = index_function(len(paths), config)
    preload_s = None
    if mode == "memory":
        start = time.perf_counter()
        data: Any = ImageData(
            load_image_paths(paths, 3, image_size, lambda m: None, "bench"), None, 0, "bench", "bench"
        )
        preload_s = time.perf_counter() - start
    else:
        data = StreamedData(paths, 3, image_size, "bench", "bench")
    iterator = real_batches(data, index_of, 0, batches + 1, torch.device("cpu"), workers, lambda m: None)
    start = time.perf_counter()
    next(iterator)
    first = time.perf_counter() - start
    start = time.perf_counter()
    count = sum(batch_.images.shape[0] for batch_ in iterator)
    seconds = time.perf_counter() - start
    return {
        "mode": mode,
        "workers": workers if mode == "stream" else None,
        "images": count,
        "seconds": seconds,
        "first_batch_s": first,
        "preload_s": preload_s,
        "images_per_s": count / seconds,
    }


def write_doc_table(table: str, machine: str) -> None:
    """Replace the table between the markers in docs/data-modes.md."""
    text = DOC.read_text()
    begin, end = text.index(MARK_BEGIN) + len(MARK_BEGIN), text.index(MARK_END)
    DOC.write_text(text[:begin] + f"\n{machine}\n\n```\n{table}\n```\n" + text[end:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--folder", type=Path, help="a folder of images (default: generate noise PNGs in a temporary folder)"
    )
    parser.add_argument("--images", type=int, default=2048, help="images to generate without --folder")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=20, help="timed batches per row (after one untimed)")
    parser.add_argument("--workers", default="0,1,2", help="streamed rows: comma-separated worker counts")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--results", type=Path, default=RESULTS, help="JSON written here")
    parser.add_argument("--doc", action="store_true", help=f"also write the table into {DOC.relative_to(common.REPO)}")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.folder
        if folder is None:
            folder = Path(scratch)
            write_noise_pngs(folder, args.images, args.image_size)
        paths = find_images(folder)
        if len(paths) < args.batch:
            parser.error(f"{folder} has {len(paths)} images, fewer than --batch {args.batch}")
        rows = [measure(paths, "memory", 0, args.image_size, args.batch, args.batches)]
        for workers in (int(w) for w in args.workers.split(",") if w):
            rows.append(measure(paths, "stream", workers, args.image_size, args.batch, args.batches))
    machine = common.machine()
    result = {
        "benchmark": "data",
        "machine": machine,
        "rows": rows,
        "settings": {
            **{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in ("json", "doc")},
            "images_found": len(paths),
        },
    }
    table = common.format_table(rows, COLUMNS)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2) + "\n")
    if args.doc:
        write_doc_table(table, common.describe_machine(machine))
    common.emit(result, args.json, table)


if __name__ == "__main__":
    main()
