"""Plot FID and IS against training minutes from the JSON that benchmarks/sweep.py writes.

    python benchmarks/plot_quality.py benchmarks/results/quality-sweep.json -o docs/img/quality_vs_minutes.png \
        --variants d32-lr2,d32-lr2-noattn,u-d32-lr2 --labels "conditional, attention,conditional, no attention,unconditional"

matplotlib is needed only here (issue 12 asks for the plot); the sagan package does not import it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def load_records(path: Path) -> list[dict]:
    """The run records of a sweep.py results file (a list), or of one that keeps them under "runs"."""
    data = json.loads(path.read_text())
    return data["runs"] if isinstance(data, dict) else data


def final_table(records: list[dict]) -> str:
    """One Markdown row per run: its last checkpoint's step, minutes, scores and class checks."""
    lines = [
        "| variant | seed | steps | minutes (1 thread) | img/s (1 thread) | FID | IS | class shares | class accuracy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(records, key=lambda r: (r["variant"], r["seed"])):
        last, classes = r["rows"][-1], r.get("classes") or {}
        speed = last["step"] * 64 / (last["train_minutes"] * 60)
        shares = f"{100 * classes['min_share']:.1f}-{100 * classes['max_share']:.1f}%" if classes else ""
        accuracy = f"{100 * classes['accuracy']:.2f}%" if "accuracy" in classes else ""
        lines.append(
            f"| {r['variant']} | {r['seed']} | {last['step']} | {last['train_minutes']:.1f} | {speed:.0f} | "
            f"{last['FID']:.2f} | {last['IS']:.2f} | {shares} | {accuracy} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("-o", "--output", type=Path, help="the plot (PNG)")
    parser.add_argument("--variants", help="comma-separated variant names, in legend order")
    parser.add_argument("--table", action="store_true", help="print a Markdown table of every run's last checkpoint")
    parser.add_argument("--labels", help="comma-separated legend labels (default: the variant names)")
    parser.add_argument("--title", default="")
    parser.add_argument(
        "--speed",
        help="VARIANT=IMG_PER_S,...: plot against the minutes these steps take at that speed (e.g. the measured "
        "2-thread speed) instead of the runs' own training minutes; quality at a step does not depend on threads",
    )
    parser.add_argument("--x-label", default="training minutes at 1 thread")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    if args.table:
        print(final_table(load_records(args.results)), end="")
    if not (args.output and args.variants):
        return

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = load_records(args.results)
    variants = args.variants.split(",")
    labels = args.labels.split(",") if args.labels else variants
    fig, (ax_fid, ax_is) = plt.subplots(1, 2, figsize=(10, 3.8))
    styles = ["-", "--", ":"]
    speeds = {k: float(v) for k, v in (item.split("=") for item in args.speed.split(","))} if args.speed else {}
    for colour, (variant, label) in enumerate(zip(variants, labels, strict=True)):
        runs = sorted((r for r in records if r["variant"] == variant), key=lambda r: r["seed"])
        for i, record in enumerate(runs):
            rows = record["rows"]
            if variant in speeds:
                minutes = [row["step"] * args.batch_size / speeds[variant] / 60 for row in rows]
            else:
                minutes = [row["train_minutes"] for row in rows]
            kwargs = {"color": f"C{colour}", "linestyle": styles[i % len(styles)], "marker": "o", "markersize": 3}
            name = f"{label}, seed {record['seed']}"
            ax_fid.plot(minutes, [row["FID"] for row in rows], label=name, **kwargs)
            ax_is.plot(minutes, [row["IS"] for row in rows], label=name, **kwargs)
    ax_fid.set_yscale("log")
    ax_fid.set_ylabel("digits-FID (lower is better, log scale)")
    ax_is.set_ylabel("digits-IS (higher is better, max 10)")
    for ax in (ax_fid, ax_is):
        ax.set_xlabel(args.x_label)
        ax.grid(True, alpha=0.3)
    ax_is.legend(fontsize=7, loc="lower right")
    if args.title:
        fig.suptitle(args.title)
    fig.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=110)


if __name__ == "__main__":
    main()
