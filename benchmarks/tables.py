"""Print the results in benchmarks/results/*.json as Markdown tables (what docs/performance.md shows).

python benchmarks/tables.py > /tmp/tables.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def fmt(value: object, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.{digits}g}"
    if isinstance(value, int) and value >= 100_000:
        return f"{value / 1e6:.2f}M"
    return str(value)


def table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row.get('config', row.get('impl', '?'))} | error: {row['error']} |")
            continue
        lines.append("| " + " | ".join(fmt(row.get(k)) for k, _ in columns) + " |")
    return "\n".join(lines)


def percent(rows: list[dict], key: str) -> None:
    for row in rows:
        if key in row:
            row[key + "_pct"] = f"{100 * row[key]:.0f}%"


SECTIONS = {
    "train": [
        ("config", "config"),
        ("params_g", "G params"),
        ("params_d", "D params"),
        ("gflop_per_iter", "GFLOP/iter"),
        ("seconds_per_iter", "s/iter"),
        ("images_per_s", "img/s"),
        ("gflops_per_s", "GFLOP/s"),
        ("gemm_peak_gflops", "GEMM peak GFLOP/s"),
        ("fraction_of_peak_pct", "of peak"),
        ("peak_rss_mb", "peak RSS MB"),
    ],
    "train128": [
        ("config", "config"),
        ("image_size", "size"),
        ("batch", "batch"),
        ("gflop_per_iter", "GFLOP/iter"),
        ("seconds_per_iter", "s/iter"),
        ("images_per_s", "img/s"),
        ("fraction_of_peak_pct", "of peak"),
        ("peak_rss_mb", "peak RSS MB"),
    ],
    "attention": [
        ("size", "map"),
        ("tokens", "N"),
        ("impl", "impl"),
        ("seconds", "fwd+bwd s"),
        ("peak_mb", "peak MB"),
        ("speedup_vs_naive", "x faster than naive"),
        ("memory_fraction_of_naive", "memory / naive"),
        ("max_abs_diff_vs_naive", "max abs diff"),
        ("scaled_note", "note"),
    ],
    "attention_kernels": [("size", "map"), ("forward", "forward"), ("backward", "backward")],
    "sampling": [
        ("config", "config"),
        ("params_g", "G params"),
        ("batch", "batch"),
        ("images", "images"),
        ("seconds", "s"),
        ("images_per_s", "img/s"),
    ],
    "evaluate": [
        ("mode", "mode"),
        ("memory_format", "memory format"),
        ("n", "samples"),
        ("generate_seconds", "generate s"),
        ("classify_seconds", "classify s"),
        ("seconds", "total s"),
    ],
    "evaluate_cli": [("mode", "mode"), ("n", "samples"), ("seconds", "total s"), ("command", "command")],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=HERE / "results")
    args = parser.parse_args()
    for name, columns in SECTIONS.items():
        path = args.results / f"{name}.json"
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        percent(data["rows"], "fraction_of_peak")
        m = data["machine"]
        print(
            f"### {name}\n\n`{data.get('command', '')}` - {m['cpu']}, {m['logical_cpus']} CPUs, torch {m['torch']}, "
            f"load average at the end {m['load_average']}\n"
        )
        print(table(data["rows"], columns) + "\n")


if __name__ == "__main__":
    main()
