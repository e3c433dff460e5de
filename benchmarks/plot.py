"""Draw the performance plots from benchmarks/results/*.json with Pillow (no matplotlib).

python benchmarks/plot.py            # writes docs/img/perf_train.png, perf_attention.png, perf_sampling.png
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "docs" / "img"
COLORS = {"naive": (214, 39, 40), "math": (255, 127, 14), "flash": (44, 160, 44), "ours": (31, 119, 180)}
FONT = ImageFont.load_default()


def bar_chart(
    title: str, items: list[tuple[str, float, tuple[int, int, int]]], unit: str, path: Path, target: float | None = None
) -> None:
    """Horizontal bars, one per (label, value, colour), with an optional dashed target line."""
    label_w, bar_w, row_h, top = 230, 480, 26, 50
    width, height = label_w + bar_w + 90, top + row_h * len(items) + 40
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 12), title, fill="black", font=FONT)
    peak = max([v for _, v, _ in items] + ([target] if target else [])) or 1.0
    for i, (label, value, color) in enumerate(items):
        y = top + i * row_h
        draw.text((10, y + 6), label, fill="black", font=FONT)
        length = int(bar_w * value / peak)
        draw.rectangle([label_w, y + 3, label_w + max(length, 1), y + row_h - 5], fill=color)
        draw.text((label_w + length + 6, y + 6), f"{value:.1f} {unit}", fill="black", font=FONT)
    if target:
        x = label_w + int(bar_w * target / peak)
        for y in range(top - 8, height - 30, 8):
            draw.line([x, y, x, y + 4], fill=(120, 120, 120))
        draw.text((x - 40, height - 26), f"target {target:g} {unit}", fill=(90, 90, 90), font=FONT)
    image.save(path)


def line_chart(
    draw: ImageDraw.ImageDraw,
    box: tuple[int, int, int, int],
    title: str,
    series: dict[str, list[tuple[float, float]]],
    x_label: str,
    y_label: str,
) -> None:
    """Log-log line chart inside box = (left, top, right, bottom)."""
    left, top, right, bottom = box
    points = [p for values in series.values() for p in values if p[1] > 0]
    if not points:
        return
    x_lo, x_hi = math.log10(min(p[0] for p in points)), math.log10(max(p[0] for p in points))
    y_lo, y_hi = math.floor(math.log10(min(p[1] for p in points))), math.ceil(math.log10(max(p[1] for p in points)))
    x_hi, y_hi = max(x_hi, x_lo + 1e-9), max(y_hi, y_lo + 1)

    def at(x: float, y: float) -> tuple[float, float]:
        return (
            left + (math.log10(x) - x_lo) / (x_hi - x_lo) * (right - left),
            bottom - (math.log10(y) - y_lo) / (y_hi - y_lo) * (bottom - top),
        )

    draw.text((left, top - 30), title, fill="black", font=FONT)
    draw.rectangle([left, top, right, bottom], outline=(0, 0, 0))
    for decade in range(int(y_lo), int(y_hi) + 1):
        _, y = at(10**x_lo, 10.0**decade)
        draw.line([left, y, right, y], fill=(225, 225, 225))
        draw.text((left - 45, y - 6), f"1e{decade}", fill="black", font=FONT)
    for x in sorted({p[0] for p in points}):
        px, _ = at(x, 10**y_lo)
        draw.line([px, top, px, bottom], fill=(235, 235, 235))
        draw.text((px - 12, bottom + 6), f"{int(x)}", fill="black", font=FONT)
    draw.text(((left + right) // 2 - 60, bottom + 22), x_label, fill="black", font=FONT)
    draw.text((left - 45, top - 14), y_label, fill="black", font=FONT)
    for i, (name, values) in enumerate(series.items()):
        color = COLORS.get(name, (100, 100, 100))
        coords = [at(x, y) for x, y in sorted(values) if y > 0]
        if len(coords) > 1:
            draw.line(coords, fill=color, width=3)
        for cx, cy in coords:
            draw.ellipse([cx - 4, cy - 4, cx + 4, cy + 4], fill=color)
        draw.rectangle([right - 90, top + 8 + 16 * i, right - 78, top + 18 + 16 * i], fill=color)
        draw.text((right - 72, top + 6 + 16 * i), name, fill="black", font=FONT)


def plot_train(results: Path) -> None:
    data = json.loads((results / "train.json").read_text())
    items = [
        (r["config"], r["images_per_s"], (214, 39, 40) if r.get("variant") == "reference" else (31, 119, 180))
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
    items = [(r["config"], r["images_per_s"], (31, 119, 180)) for r in data["rows"] if "images_per_s" in r]
    bar_chart(
        "Sampling images/s (generate, inference_mode, batch 64)", items, "img/s", OUT / "perf_sampling.png", target=400
    )


def plot_attention(results: Path) -> None:
    data = json.loads((results / "attention.json").read_text())
    rows = [r for r in data["rows"] if "seconds" in r]
    image = Image.new("RGB", (1000, 420), "white")
    draw = ImageDraw.Draw(image)
    for box, key, title, unit in (
        ((80, 60, 470, 360), "seconds", "attention fwd+bwd time", "s"),
        ((580, 60, 970, 360), "peak_mb", "attention peak memory (RSS delta)", "MB"),
    ):
        series: dict[str, list[tuple[float, float]]] = {}
        for r in rows:
            series.setdefault(r["impl"], []).append((r["size"], max(r[key], 1e-3)))
        line_chart(
            draw,
            box,
            f"{title}, C={rows[0]['channels']}, batch {rows[0]['batch']}",
            series,
            "feature-map side (N = side^2)",
            unit,
        )
    image.save(OUT / "perf_attention.png")


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
