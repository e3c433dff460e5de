"""Evaluation speed: 10,000 samples scored in the digits classifier's feature space.

Mode `proxy` (always available) times what `sagan evaluate` has to do at least: generate n
28x28 samples through `sagan_cli.sampling.generate` (inference_mode, eval mode, uint8) and run
the shipped digits classifier (`sagan_cli.digits`) over them in inference_mode. Mode `cli`
times `python -m sagan_cli evaluate CHECKPOINT --extractor digits --json` end to end (process start,
loading, generation, features, metrics); without --checkpoint it writes a random-weight default
MNIST checkpoint first. The first call fills the reference-feature cache and is not timed.

    python benchmarks/bench_evaluate.py --n 10000
    python benchmarks/bench_evaluate.py --mode cli
    python benchmarks/bench_evaluate.py --mode cli --checkpoint runs/x/checkpoints/final.safetensors
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from typing import Any

import _common as common
import torch

from sagan_cli.digits import load_digits_classifier, uint8_to_model_input
from sagan_cli.model import Generator, ModelConfig
from sagan_cli.runtime import tune_cpu_allocator
from sagan_cli.sampling import generate, sample_latents


def proxy(n: int, batch: int, classifier_batch: int, memory_format: str) -> dict[str, Any]:
    """Generate n digits and extract classifier features + logits; seconds for each part."""
    tune_cpu_allocator()  # as the CLI does at start-up
    torch.manual_seed(0)
    generator = Generator(ModelConfig()).eval()  # the default MNIST architecture (28x28, width 32)
    classifier = load_digits_classifier()
    if memory_format == "channels_last":
        generator = generator.to(memory_format=torch.channels_last)
        classifier = classifier.to(memory_format=torch.channels_last)
    latents = sample_latents(n, generator.config.z_dim, seed=0)
    start = time.perf_counter()
    images = generate(generator, latents, batch_size=batch)
    generated = time.perf_counter()
    with torch.inference_mode():
        features = [classifier(uint8_to_model_input(chunk))[0] for chunk in images.split(classifier_batch)]
    done = time.perf_counter()
    assert torch.cat(features).shape == (n, 128)
    return {
        "mode": "proxy",
        "memory_format": memory_format,
        "n": n,
        "batch": batch,
        "generate_seconds": generated - start,
        "classify_seconds": done - generated,
        "seconds": done - start,
        "samples_per_s": n / (done - start),
    }


def make_checkpoint() -> str:
    """A random-weight default MNIST checkpoint in a temporary folder (speed does not depend on weights)."""
    import tempfile
    from pathlib import Path

    from sagan_cli.checkpoint import save_checkpoint
    from sagan_cli.config import TrainConfig
    from sagan_cli.train import build_state

    config = TrainConfig(dataset="mnist", download=False)
    state = build_state(config, torch.device("cpu"))
    path = Path(tempfile.mkdtemp(prefix="sagan-bench-")) / "random.safetensors"
    save_checkpoint(
        path,
        train_config=config,
        step=0,
        train_seconds=0.0,
        generator=state.generator,
        generator_ema=state.generator_ema,
        discriminator=state.discriminator,
        optimizer_g=state.optimizer_g,
        optimizer_d=state.optimizer_d,
        extra_metadata={"data_source": "bundled MNIST test digits", "data_id": "mnist"},
    )
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("proxy", "cli"), default="proxy")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=500, help="generation batch size (sagan evaluate's default)")
    parser.add_argument("--classifier-batch", type=int, default=1000)
    parser.add_argument("--memory-formats", default="channels_last,contiguous")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("extra", nargs="*", help="extra arguments for `sagan evaluate` (cli mode)")
    args = parser.parse_args()
    rows = []
    if args.mode == "cli":
        checkpoint = args.checkpoint or make_checkpoint()
        command = [
            sys.executable,
            "-m",
            "sagan_cli",
            "evaluate",
            checkpoint,
            "-n",
            str(args.n),
            *(args.extra or ["--extractor", "digits", "--json"]),
        ]
        times = []
        for _ in range(args.repeats + 1):
            start = time.perf_counter()
            proc = subprocess.run(command, capture_output=True, text=True, cwd=common.REPO)
            times.append(time.perf_counter() - start)
            if proc.returncode != 0:
                parser.exit(1, f"`{' '.join(command)}` failed: {proc.stderr.strip()[-500:]}\n")
        times = times[1:]  # the first call builds the reference-feature cache
        seconds = sorted(times)[len(times) // 2]
        rows.append(
            {
                "mode": "cli",
                "n": args.n,
                "seconds": seconds,
                "times": times,
                "samples_per_s": args.n / seconds,
                "command": " ".join(command[1:]),
            }
        )
    else:
        for memory_format in [m for m in args.memory_formats.split(",") if m]:
            proxy(min(args.n, 1024), args.batch, args.classifier_batch, memory_format)  # warm-up
            runs = [proxy(args.n, args.batch, args.classifier_batch, memory_format) for _ in range(args.repeats)]
            row = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]
            row["times"] = [r["seconds"] for r in runs]
            rows.append(row)
    result = {
        "benchmark": "evaluate",
        "machine": common.machine(),
        "rows": rows,
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
    }
    columns = [
        ("mode", "mode"),
        ("memory_format", "memory format"),
        ("n", "samples"),
        ("generate_seconds", "generate s"),
        ("classify_seconds", "classify s"),
        ("seconds", "total s"),
        ("samples_per_s", "samples/s"),
    ]
    common.emit(result, args.json, common.format_table(rows, columns))


if __name__ == "__main__":
    main()
