"""Run every benchmark with --json, save the results under benchmarks/results/, and draw the plots.

python benchmarks/run_all.py                # everything (about 30-40 minutes on 2 cores)
python benchmarks/run_all.py --quick        # fewer repeats and configurations (smoke test)
python benchmarks/run_all.py --only train,attention
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import _common as common

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def suites(quick: bool, naive_full: bool) -> dict[str, list[str]]:
    """name -> command line (script and arguments) of each benchmark."""
    repeats = ["--repeats", "2" if quick else "3"]
    naive_budget = str(4096 * (64 if naive_full else 16))
    return {
        "train": ["bench_train.py", *repeats, "--rounds", "1" if quick else "2"]
        + (["--configs", "ours-w32,ours-w16,ref-w32"] if quick else []),
        "train128": [
            "bench_train.py",
            "--configs",
            "ours-w32",
            "--image-size",
            "128",
            "--attn",
            "64",
            "--batch",
            "32",
            "--warmup",
            "1",
            "--repeats",
            "2",
        ],
        "attention": [
            "bench_attention.py",
            "--repeats",
            "2" if quick else "3",
            "--naive-max-tokens-batch",
            naive_budget,
        ]
        + (["--sizes", "8,16,32"] if quick else []),
        "attention_kernels": ["bench_attention.py", "--kernels", "--sizes", "8,14,16,32,64"],
        "sampling": ["bench_sampling.py", *repeats],
        "evaluate": ["bench_evaluate.py", "--repeats", "3"],
        "evaluate_cli": ["bench_evaluate.py", "--mode", "cli", "--repeats", "3"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--only",
        default=None,
        help="comma-separated subset of: train, train128, attention, attention_kernels, sampling, evaluate, evaluate_cli",
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--naive-full", action="store_true", help="run naive attention at the 64x64 map at full batch (~16 GB)"
    )
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    chosen = suites(args.quick, args.naive_full)
    if args.only:
        chosen = {k: v for k, v in chosen.items() if k in args.only.split(",")}
    for name, command in chosen.items():
        start = time.perf_counter()
        print(f"== {name}: python benchmarks/{' '.join(command)}", flush=True)
        proc = subprocess.run(
            [sys.executable, str(HERE / command[0]), *command[1:], "--json"], capture_output=True, text=True
        )
        if proc.returncode != 0:
            print(f"   failed: {proc.stderr.strip()[-800:]}", flush=True)
            continue
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result["command"] = "python benchmarks/" + " ".join(command)
        result["wall_seconds"] = time.perf_counter() - start
        (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1))
        print(
            f"   {len(result['rows'])} rows in {result['wall_seconds']:.0f} s, load average {result['machine']['load_average']}",
            flush=True,
        )
    if not args.no_plot:
        subprocess.run([sys.executable, str(HERE / "plot.py")], check=False)
    print(common.describe_machine(common.machine()))


if __name__ == "__main__":
    main()
