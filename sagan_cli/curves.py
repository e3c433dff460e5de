"""Training curves: read a run's metrics.jsonl (running, finished or old) and draw curves.png from it.

Each record is one logged step (losses, D scores, gammas, images/s, time); evaluation during
training adds records or keys with quality metrics (fid, isc, kid). Every panel plots only the
records that carry its keys, so old runs and runs without evaluation draw what they have.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UsageError
from .rundir import CONFIG_FILE

# Quality metrics another part of training may log, with their label and which way is better.
QUALITY_KEYS = {"fid": ("FID", "lower is better"), "isc": ("IS", "higher is better"), "kid": ("KID", "lower is better")}


@dataclass
class Metrics:
    """The parsed records of a metrics.jsonl, in file order, and how many lines could not be read."""

    records: list[dict[str, Any]]
    skipped_lines: int = 0

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of the records holding a finite number under `key`."""
        steps, values = [], []
        for record in self.records:
            value = record.get(key)
            if (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and math.isfinite(value)
                and "step" in record
            ):
                steps.append(record["step"])
                values.append(float(value))
        return steps, values

    def keys(self) -> list[str]:
        """Every key any record holds, in first-seen order."""
        return list(dict.fromkeys(key for record in self.records for key in record))

    def gamma_keys(self) -> list[str]:
        return [key for key in self.keys() if key.startswith("gamma_")]


def read_metrics(path: Path) -> Metrics:
    """Parse metrics.jsonl, skipping lines that are not a JSON object with an integer step.

    A run being written (or killed mid-write) may end in a half line; that is not an error.
    """
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        raise UsageError(f"{path} not found; is {Path(path).parent} a sagan run directory?") from None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    records, skipped = [], 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            skipped += 1
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and not isinstance(record["step"], bool):
            records.append(record)
        else:
            skipped += 1
    return Metrics(records, skipped)


@dataclass
class Summary:
    """What `sagan report` says about a run in a few lines."""

    steps: int
    train_seconds: float | None
    records: int
    final: dict[str, float] = field(default_factory=dict)  # last losses, scores, gammas, images/s
    best: dict[str, dict[str, float]] = field(default_factory=dict)  # quality key -> {"value", "step"}

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "train_seconds": self.train_seconds,
            "records": self.records,
            "final": self.final,
            "best": self.best,
        }


def summarize(metrics: Metrics) -> Summary:
    """Last step and time, the final value of every curve, and the best value of every quality metric."""
    if not metrics.records:
        raise UsageError("no metrics logged yet")
    steps = max(record["step"] for record in metrics.records)
    _, seconds = metrics.series("train_seconds")
    final = {}
    for key in ("loss_d", "loss_g", "d_real", "d_fake", "images_per_second", *metrics.gamma_keys()):
        _, values = metrics.series(key)
        if values:
            final[key] = values[-1]
    best = {}
    for key, (_, direction) in QUALITY_KEYS.items():
        steps_of, values = metrics.series(key)
        if values:
            pick = min if direction.startswith("lower") else max
            index = values.index(pick(values))
            best[key] = {"value": values[index], "step": steps_of[index]}
    return Summary(steps, seconds[-1] if seconds else None, len(metrics.records), final, best)


def curves_figure(metrics: Metrics, title: str, metadata: dict[str, str]) -> bytes:
    """curves.png as bytes: losses, D scores, gammas, images/s, and one panel per quality metric present."""
    from matplotlib.ticker import MaxNLocator

    from .plotting import figure_png, new_figure

    panels: list[tuple[str, list[tuple[str, str]], str]] = [  # (title, [(key, label)], y label)
        ("Hinge losses", [("loss_d", "D"), ("loss_g", "G")], "loss"),
        ("D scores (mean logit)", [("d_real", "real"), ("d_fake", "fake")], "score"),
        ("Attention gates", [(key, _gamma_label(key)) for key in metrics.gamma_keys()], "gamma"),
        ("Speed", [("images_per_second", "training")], "images / s"),
    ]
    for key, (label, direction) in QUALITY_KEYS.items():
        if metrics.series(key)[0]:
            panels.append((f"{label} ({direction})", [(key, label)], label))
    columns = 2 if len(panels) <= 4 else 3
    rows = math.ceil(len(panels) / columns)
    figure = new_figure(4.2 * columns, 2.9 * rows + 0.4)
    axes = figure.subplots(rows, columns, squeeze=False).flatten()
    for axis, (panel_title, keys, y_label) in zip(axes, panels, strict=False):  # the grid may have a spare cell
        drawn = False
        for key, label in keys:
            steps, values = metrics.series(key)
            if steps:
                axis.plot(
                    steps, values, label=label, linewidth=1.4, marker="o" if len(steps) < 12 else None, markersize=3
                )
                drawn = True
        axis.set_title(panel_title, fontsize=10)
        axis.set_xlabel("step", fontsize=8)
        axis.set_ylabel(y_label, fontsize=8)
        axis.tick_params(labelsize=8)
        axis.grid(alpha=0.3)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
        axis.ticklabel_format(axis="y", useOffset=False)  # no '1e-5+1.0001' offset on flat curves
        if panel_title.startswith(("D scores", "Attention")):
            axis.axhline(0.0, color="black", linewidth=0.6, alpha=0.5)
        if drawn and len(keys) > 1:
            axis.legend(fontsize=8)
        if not drawn:
            axis.text(
                0.5,
                0.5,
                "not logged in this run",
                ha="center",
                va="center",
                transform=axis.transAxes,
                fontsize=9,
                alpha=0.6,
            )
    for axis in axes[len(panels) :]:
        axis.set_visible(False)
    figure.suptitle(title, fontsize=11)
    return figure_png(figure, metadata)


def _gamma_label(key: str) -> str:
    """gamma_g14 -> 'G 14x14'."""
    name = key.removeprefix("gamma_")
    network, resolution = name[:1].upper(), name[1:]
    return f"{network} {resolution}x{resolution}" if resolution.isdigit() else name


def run_title(run: Path, summary: Summary) -> str:
    """The figure's title: the run's name, last step and training time."""
    time = f", {summary.train_seconds / 60:.1f} min of training" if summary.train_seconds is not None else ""
    return f"{run.name}: step {summary.steps}{time}"


def draw_run_curves(run: Path, metrics: Metrics) -> tuple[bytes, Summary]:
    """curves.png of the run at `run` from its parsed metrics, and the summary it shows."""
    summary = summarize(metrics)
    metadata = {"run": str(run), "step": str(summary.steps)}
    try:
        metadata["seed"] = str(json.loads((Path(run) / CONFIG_FILE).read_text())["seed"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # an old or partial run: the curves do not need its config
    return curves_figure(metrics, run_title(Path(run), summary), metadata), summary
