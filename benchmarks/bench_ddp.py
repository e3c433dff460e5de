"""Training throughput of `sagan train`: 2 processes x 1 thread (torchrun, gloo) vs 1 process x 2 threads.

Both rows run the real CLI as users do, on the bundled MNIST digits, with the same global batch
and the same model; images/s is what the run itself logs in metrics.jsonl (global images per
second over each logging window, measured on rank 0, which waits for the other rank every step).
The first window (start-up, first allocations) is dropped; the row reports the median of the
rest. `--rounds N` alternates the two rows N times, so drift of a shared VM hits both alike.

    python benchmarks/bench_ddp.py                                  # 2 rounds, 60 steps, the default model
    python benchmarks/bench_ddp.py --steps 8 --log-every 2 --g-width 8 --d-width 8 --rounds 1   # smoke test
    python benchmarks/bench_ddp.py --write-docs                     # also put the table into docs/scaling.md

Writes benchmarks/results/ddp.json. Take numbers only on a quiet machine (`uptime`): the load
average is recorded with them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import _common as common

RESULTS = common.REPO / "benchmarks" / "results" / "ddp.json"
DOCS = common.REPO / "docs" / "scaling.md"
START, END = "<!-- bench_ddp:start -->", "<!-- bench_ddp:end -->"
ROWS = {  # name -> (processes, threads per process)
    "1 process x 2 threads": (1, 2),
    "2 processes x 1 thread": (2, 1),
}


def train_command(processes: int, flags: list[str]) -> list[str]:
    """`sagan train FLAGS`, under torchrun when more than one process."""
    if processes == 1:
        return [sys.executable, "-m", "sagan_cli", "train", *flags]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(processes),
        "-m",
        "sagan_cli",
        "train",
        *flags,
    ]


def run_row(name: str, args: argparse.Namespace, out: Path, round_number: int) -> dict[str, Any]:
    """Train once with this row's processes and threads; images/s from the run's own metrics."""
    processes, threads = ROWS[name]
    run_name = f"r{round_number}-p{processes}"
    flags = [
        "--dataset",
        "mnist",
        "--no-download",
        "--device",
        "cpu",
        "--seed",
        "0",
        "--max-steps",
        str(args.steps),
        "--batch-size",
        str(args.batch_size),
        "--log-every",
        str(args.log_every),
        "--sample-every",
        str(10**9),
        "--save-every",
        str(10**9),
        "--out",
        str(out),
        "--name",
        run_name,
    ]
    flags += ["--g-width", str(args.g_width)] if args.g_width else []
    flags += ["--d-width", str(args.d_width)] if args.d_width else []
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(common.REPO)}
    proc = subprocess.run(train_command(processes, flags), capture_output=True, text=True, env=env, cwd=common.REPO)
    if proc.returncode != 0:
        return {"config": name, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    records = [json.loads(line) for line in (out / run_name / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["images_per_second"] for r in records[1:]]  # the first window holds start-up
    return {"config": name, "processes": processes, "threads": threads, "windows": speeds}


def merge(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per configuration: the median over every window of every round."""
    merged = []
    for name in ROWS:
        mine = [r for r in rows if r["config"] == name]
        errors = [r["error"] for r in mine if "error" in r]
        windows = [w for r in mine for w in r.get("windows", [])]
        row: dict[str, Any] = {"config": name, "processes": ROWS[name][0], "threads": ROWS[name][1]}
        if errors:
            row["error"] = errors[0]
        elif windows:
            row.update(images_per_second=statistics.median(windows), windows=len(windows))
        merged.append(row)
    return merged


def markdown(result: dict[str, Any]) -> str:
    """The table docs/scaling.md shows, with the machine and settings it came from."""
    info, s = result["machine"], result["settings"]
    lines = [
        f"Measured on {info['cpu']} ({info['logical_cpus']} logical CPUs, torch {info['torch']}, load average "
        f"{info['load_average']}); `{s['command']}`.",
        "",
        "| configuration | images/s (median) | windows |",
        "|---|---|---|",
    ]
    for row in result["rows"]:
        value = f"error: {row['error']}" if "error" in row else f"{row.get('images_per_second', 0):.1f}"
        lines.append(f"| {row['config']} | {value} | {row.get('windows', '-')} |")
    return "\n".join(lines)


def write_docs(table: str) -> None:
    text = DOCS.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{DOCS} has no {START} ... {END} block to fill")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    DOCS.write_text(f"{head}{START}\n{table}\n{END}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60, help="training steps per run (default 60)")
    parser.add_argument("--log-every", type=int, default=10, help="steps per timing window (default 10)")
    parser.add_argument("--batch-size", type=int, default=64, help="global batch (default 64)")
    parser.add_argument("--g-width", type=int, default=None, help="G width (default: the model's)")
    parser.add_argument("--d-width", type=int, default=None, help="D width (default: the model's)")
    parser.add_argument("--rounds", type=int, default=2, help="alternate the two rows this many times (default 2)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument(
        "--write-docs", action="store_true", help=f"replace the table between the markers in {DOCS.name}"
    )
    args = parser.parse_args()
    if args.steps < 2 * args.log_every:
        parser.error("--steps must be at least twice --log-every (the first window is dropped)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_ddp_") as tmp:
        for round_number in range(args.rounds):
            for name in ROWS:
                rows.append(run_row(name, args, Path(tmp), round_number))
    command = "python benchmarks/bench_ddp.py " + " ".join(sys.argv[1:])
    result = {
        "machine": common.machine(),
        "settings": {
            **{k: v for k, v in vars(args).items() if k not in ("json", "write_docs")},
            "command": command.strip(),
        },
        "rows": merge(rows),
        "runs": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    if args.write_docs:
        write_docs(table)
    common.emit(
        result,
        args.json,
        common.format_table(
            result["rows"],
            [
                ("config", "configuration"),
                ("images_per_second", "images/s"),
                ("windows", "windows"),
                ("error", "error"),
            ],
        ),
    )


if __name__ == "__main__":
    main()
