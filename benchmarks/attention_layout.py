"""Training throughput of the attention layouts at 28 px: both networks, G only, D only (14x14 or 7x7), none.

Each layout is a real `sagan train --dataset mnist` run of --steps steps (default 400), in a fresh
process, its progress log (stderr, one line per 50 steps, each with that window's images/s) kept in
--logs. The first window is dropped (warm-up); a layout's speed is the median of its windows over
all rounds. Layouts are interleaved round by round, so a drift of the machine's speed hits all.
A log that already holds the last step is reused, so an interrupted benchmark resumes.

Run it alone on a quiet machine (two runs at once on 2 cores make both numbers wrong):

    python benchmarks/attention_layout.py --rounds 2 --logs runs/attention-layout
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

from _common import machine

LAYOUTS: dict[str, list[str]] = {
    "both": ["--attention"],  # the paper's layout, the default: G and D at 14x14
    "g": ["--attention", "--attention-in", "g"],  # G's 14x14 map only
    "d14": ["--attention", "--attention-in", "d"],  # D's 14x14 map only
    "d7": ["--attention", "--attention-in", "d", "--attn-res", "7"],  # D's 7x7 map only
    "none": ["--no-attention"],
}
WINDOW = re.compile(r"^step (\d+)/(\d+) .* (\d+) img/s")


def windows(log: Path) -> list[tuple[int, int]]:
    """(step, images/s of the 50 steps before it) for every progress line of a finished log, else []."""
    rows = []
    total = 0
    for line in log.read_text().splitlines() if log.exists() else []:
        match = WINDOW.match(line)
        if match:
            rows.append((int(match[1]), int(match[3])))
            total = int(match[2])
    return rows if rows and rows[-1][0] == total else []


def run_layout(name: str, steps: int, logs: Path, round_: int) -> list[tuple[int, int]]:
    """Train one layout once (unless its log is already complete); return its windows."""
    log = logs / f"{name}-r{round_}.err"
    if windows(log):
        return windows(log)
    out = logs / "runs"
    command = [
        "sagan", "train", "--dataset", "mnist", "--no-download", *LAYOUTS[name], "--seed", "0",
        "--max-steps", str(steps), "--save-every", "100000", "--sample-every", "100000",
        "--out", str(out), "--name", f"{name}-r{round_}", "--force",
    ]  # fmt: skip
    print("+", " ".join(command), file=sys.stderr, flush=True)
    with log.open("w") as err:
        subprocess.run(command, stdout=subprocess.DEVNULL, stderr=err, check=True)
    return windows(log)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--logs", type=Path, default=Path("runs/attention-layout"))
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/attention_layout.json"))
    args = parser.parse_args()
    args.logs.mkdir(parents=True, exist_ok=True)
    speeds: dict[str, list[int]] = {name: [] for name in LAYOUTS}
    for round_ in range(1, args.rounds + 1):
        for name in LAYOUTS:
            speeds[name] += [rate for _, rate in run_layout(name, args.steps, args.logs, round_)[1:]]
    rows = []
    for name, rates in speeds.items():
        median = statistics.median(rates)
        cost = 1 - median / statistics.median(speeds["none"])
        rows.append({"layout": name, "flags": LAYOUTS[name], "images_per_second": median,
                     "windows": rates, "cost_vs_none": round(cost, 3)})  # fmt: skip
        print(f"{name:5s} {median:6.0f} img/s  {100 * cost:+5.1f}% throughput lost to attention", file=sys.stderr)
    record = {"steps": args.steps, "rounds": args.rounds, "rows": rows, "machine": machine()}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
