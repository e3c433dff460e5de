"""Draw the performance plots from benchmarks/results/*.json with matplotlib (off-screen, Agg).

python benchmarks/plot.py            # writes docs/img/perf_train.png, perf_attention.png, perf_sampling.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from sagan_cli.plotting import figure_png, new_figure  # noqa: E402  (the figures sagan itself draws use the same setup)

OUT = HERE.parent / "docs" / "img"
COLORS = {"naive": "#d62728", "math": "#ff7f0e", "flash": "#2ca02c", "ours": "#1f77b4"}
REFERENCE, OURS = "#d62728", "#1f77b4"


def bar_chart(
    title: str, items: list[tuple[str, float, str]], unit: str, path: Path, target: float | None = None
) -> None:
    """Horizontal bars, one per (label, value, colour), with an optional dashed target line."""
    figure = new_figure(8.5, 0.9 + 0.32 * len(items))
    axis = figure.subplots()
    labels = [label for label, _, _ in items][::-1]  # first item on top
    values = [value for _, value, _ in items][::-1]
    bars = axis.barh(labels, values, color=[color for _, _, color in items][::-1])
    axis.bar_label(bars, labels=[f"{value:.1f} {unit}" for value in values], padding=4, fontsize=8)
    if target:
        axis.axvline(target, color="grey", linestyle="--", linewidth=1, label=f"target {target:g} {unit}")
        axis.legend(fontsize=8, loc="best")
    axis.set_xlim(0, max(values + [target or 0]) * 1.18)
    axis.set_title(title, fontsize=9)
    axis.tick_params(labelsize=8)
    axis.spines[["top", "right"]].set_visible(False)
    path.write_bytes(figure_png(figure, {}))


def plot_train(results: Path) -> None:
    data = json.loads((results / "train.json").read_text())
    items = [
        (r["config"], r["images_per_s"], REFERENCE if r.get("variant") == "reference" else OURS)
        for r in data["rows"]
        if "images_per_s" in r
    ]
    bar_chart(
        f"Training images/s, 64x64 RGB, batch 64, attention at 32x32 (load avg {data['machine']['load_average'][0]})",
        items,
        "img/s",
        OUT / "perf_train.png",
        target=80,
    )


def plot_sampling(results: Path) -> None:
    data = json.loads((results / "sampling.json").read_text())
    items = [(r["config"], r["images_per_s"], OURS) for r in data["rows"] if "images_per_s" in r]
    bar_chart(
        "Sampling images/s (generate, inference_mode, batch 64)", items, "img/s", OUT / "perf_sampling.png", target=400
    )


def plot_attention(results: Path) -> None:
    """Time and peak memory of each attention implementation against the feature-map side, log-log."""
    data = json.loads((results / "attention.json").read_text())
    rows = [r for r in data["rows"] if "seconds" in r]
    figure = new_figure(10, 4.2)
    for axis, (key, title, unit) in zip(
        figure.subplots(1, 2),
        (("seconds", "attention fwd+bwd time", "s"), ("peak_mb", "attention peak memory (RSS delta)", "MB")),
        strict=True,
    ):
        series: dict[str, list[tuple[float, float]]] = {}
        for r in rows:
            series.setdefault(r["impl"], []).append((r["size"], max(r[key], 1e-3)))
        for name, points in series.items():
            sizes, values = zip(*sorted(points), strict=True)
            axis.loglog(sizes, values, marker="o", label=name, color=COLORS.get(name, "grey"))
        sides = sorted({r["size"] for r in rows})
        axis.set_xticks(sides, labels=[str(side) for side in sides])
        axis.set_xticks([], minor=True)  # no 2x10^1-style labels between the sizes
        axis.set_title(f"{title}, C={rows[0]['channels']}, batch {rows[0]['batch']}", fontsize=9)
        axis.set_xlabel("feature-map side (N = side^2)", fontsize=8)
        axis.set_ylabel(unit, fontsize=8)
        axis.grid(alpha=0.3, which="both")
        axis.legend(fontsize=8)
    (OUT / "perf_attention.png").write_bytes(figure_png(figure, {}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=HERE / "results")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    for name, plot in (("train", plot_train), ("attention", plot_attention), ("sampling", plot_sampling)):
        if (args.results / f"{name}.json").exists():
            plot(args.results)
            print(f"wrote {OUT}/perf_{name}.png")


if __name__ == "__main__":
    main()
