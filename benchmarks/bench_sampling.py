"""Sampling throughput through `sagan_cli.sampling.generate` (inference_mode, eval mode, uint8 out).

The generator is built from a ModelConfig (random weights: speed does not depend on them) and
put in eval mode and channels_last, as `load_generator` returns it, after the allocator tuning
the CLI applies at start-up. The other rows change one thing: `-contiguous` (memory format),
`-plain-convs` (upsample-then-conv instead of the transposed-conv rewrite), `-default-malloc`.

    python benchmarks/bench_sampling.py --batch 64
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import _common as common
import torch

from sagan_cli.model import Generator, ModelConfig, count_parameters
from sagan_cli.runtime import tune_cpu_allocator
from sagan_cli.sampling import generate, sample_latents

SCRIPT = Path(__file__).resolve()
# name -> (image size, channels, width, variant)
CONFIGS: dict[str, tuple[int, int, int, str]] = {
    "64px-w32": (64, 3, 32, "default"),
    "64px-w32-contiguous": (64, 3, 32, "contiguous"),
    "64px-w32-plain-convs": (64, 3, 32, "plain-convs"),
    "64px-w32-default-malloc": (64, 3, 32, "default-malloc"),
    "64px-w64": (64, 3, 64, "default"),
    "28px-mnist-w32": (28, 1, 32, "default"),
    "28px-mnist-w32-contiguous": (28, 1, 32, "contiguous"),
}


def run_config(name: str, batch: int, batches: int, warmup: int, repeats: int) -> dict[str, Any]:
    size, channels, width, variant = CONFIGS[name]
    if variant != "default-malloc":
        tune_cpu_allocator()  # as the CLI does at start-up
    if variant == "plain-convs":
        common.use_plain_convs()
    torch.manual_seed(0)
    generator = Generator(ModelConfig(image_size=size, channels=channels, g_width=width)).eval()
    memory_format = "contiguous" if variant == "contiguous" else "channels_last"
    if memory_format == "channels_last":
        generator = generator.to(memory_format=torch.channels_last)
    latents = sample_latents(batch * batches, generator.config.z_dim, seed=0)
    seconds, times = common.median_time(lambda: generate(generator, latents, batch_size=batch), warmup, repeats)
    return {
        "config": name,
        "image_size": size,
        "width": width,
        "variant": variant,
        "memory_format": memory_format,
        "batch": batch,
        "params_g": count_parameters(generator),
        "images": batch * batches,
        "seconds": seconds,
        "times": times,
        "images_per_s": batch * batches / seconds,
        "machine": common.machine(),
    }


COLUMNS = [
    ("config", "config"),
    ("params_g", "G params"),
    ("batch", "batch"),
    ("images", "images"),
    ("seconds", "seconds"),
    ("images_per_s", "img/s"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, from: {', '.join(CONFIGS)}")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=8, help="batches per timed call")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    names = [n for n in args.configs.split(",") if n]
    bad = [n for n in names if n not in CONFIGS]
    if bad:
        parser.error(f"unknown config(s) {bad}")
    if args.child:
        print(json.dumps(run_config(names[0], args.batch, args.batches, args.warmup, args.repeats)))
        return
    rows = []
    for name in names:
        row = common.run_child(
            SCRIPT,
            [
                "--configs",
                name,
                "--batch",
                str(args.batch),
                "--batches",
                str(args.batches),
                "--warmup",
                str(args.warmup),
                "--repeats",
                str(args.repeats),
            ],
        )
        row.setdefault("config", name)
        rows.append(row)
        if not args.json:
            print(f"  done {name}: {row.get('images_per_s', row.get('error'))}", file=sys.stderr, flush=True)
    result = {
        "benchmark": "sampling",
        "machine": common.machine(),
        "rows": rows,
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "child")},
    }
    common.emit(result, args.json, common.format_table(rows, COLUMNS))


if __name__ == "__main__":
    main()
