"""Quality over training time: FID / IS / KID of every checkpoint of one or more runs.

Scores each checkpoint (periodic ones and final) with `sagan evaluate`'s library code against the
run's own training data, and prints a table (or --json); --markdown writes the table into a file
under docs/. Keep checkpoints with `sagan train --keep N` large enough to cover the run.

    python benchmarks/quality.py runs/mnist-attn runs/mnist-noattn --markdown docs/quality-table.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from _common import cpu_model, machine

from sagan_cli.checkpoint import read_checkpoint_info
from sagan_cli.evaluation import EvalOptions, evaluate_checkpoint
from sagan_cli.metrics import cache_root
from sagan_cli.rundir import RunDir

KEYS = (
    ("frechet_inception_distance", "FID"),
    ("inception_score_mean", "IS"),
    ("kernel_inception_distance_mean", "KID"),
)


def run_checkpoints(run: Path) -> list[Path]:
    """Periodic checkpoints and final, ordered by step."""
    paths = RunDir(run).step_checkpoints()
    final = run / "checkpoints" / "final.safetensors"
    if final.exists():
        paths.append(final)
    return sorted(paths, key=lambda p: read_checkpoint_info(p).step)


def score_runs(
    runs: list[Path], num_samples: int, extractor: str, seed: int, final_only: bool = False, stride: int = 1
) -> list[dict[str, object]]:
    """One row per checkpoint (every `stride`-th and the last, or the last alone): run, step, training seconds, metrics."""
    rows = []
    options = EvalOptions(num_samples=num_samples, extractor=extractor, seed=seed)
    with cache_root(True) as cache_folder:
        for run in runs:
            paths = run_checkpoints(run)
            chosen = (
                paths[-1:]
                if final_only
                else [p for i, p in enumerate(paths) if (i + 1) % stride == 0 or i == len(paths) - 1]
            )
            for checkpoint in chosen:
                result = evaluate_checkpoint(checkpoint, options, cache_folder, lambda m: print(m, file=sys.stderr))
                rows.append(
                    {
                        "run": run.name,
                        "step": result.info.step,
                        "train_minutes": round(result.info.train_seconds / 60, 2),
                        "extractor": result.extractor.name,
                        "num_samples": num_samples,
                        **{title: result.metrics.get(key) for key, title in KEYS},
                    }
                )
    return rows


def markdown(rows: list[dict[str, object]]) -> str:
    """The rows as a Markdown table."""
    lines = ["| run | step | training minutes | FID | IS | KID |", "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(
            f"| {row['run']} | {row['step']} | {row['train_minutes']:.1f} | {row['FID']:.2f} | {row['IS']:.2f} | {row['KID']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (runs/NAME)")
    parser.add_argument("--num-samples", type=int, default=5000, help="generated images per checkpoint (default 5000)")
    parser.add_argument("--extractor", default="digits", help="digits (default) or inception")
    parser.add_argument("--seed", type=int, default=0, help="latent seed (default 0)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    rows = score_runs(args.runs, args.num_samples, args.extractor, args.seed)
    table = markdown(rows)
    if args.markdown:
        args.markdown.write_text(f"<!-- written by benchmarks/quality.py on {cpu_model()} -->\n" + table)
    if args.json:
        print(json.dumps({"machine": machine(), "rows": rows}, indent=2))
    else:
        print(table)


if __name__ == "__main__":
    main()
