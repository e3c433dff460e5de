"""`sagan report`: parsing and output only; the work is in curves.py."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import UsageError
from . import options
from .console import log, print_json

EPILOG = (
    "Examples: sagan report runs/mnist-attn                      (redraws runs/mnist-attn/curves.png)\n\n"
    "          sagan report runs/mnist-attn -o curves.png --json   (summary as JSON on stdout)"
)


def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by sagan train (finished, running or old)")],
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="Where to draw the curves, a .png (default: RUN_DIR/curves.png, redrawn)"),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the summary as JSON on stdout (the written path goes to stderr)")
    ] = False,
    force: options.Force = False,
) -> None:
    """Draw a run's training curves from its metrics.jsonl and summarise it: steps, time, best FID, final gammas."""
    from ..atomic import write_atomically
    from ..curves import draw_run_curves, read_metrics
    from ..outputs import check_output_file
    from ..rundir import CURVES_FILE, METRICS_FILE

    if not run_dir.is_dir():
        raise UsageError(f"{run_dir} is not a folder; give a run directory such as runs/mnist-attn")
    if not (run_dir / METRICS_FILE).is_file():
        raise UsageError(f"{run_dir} has no {METRICS_FILE}; is it a sagan run directory?")
    # The run's own curves.png is derived data that training redraws anyway: refreshing it needs no --force.
    target = run_dir / CURVES_FILE if output is None else check_output_file(output, (".png",), force)
    metrics = read_metrics(run_dir / METRICS_FILE)
    if not metrics.records:
        raise UsageError(f"{run_dir / METRICS_FILE} holds no logged step yet; try again once the run has logged one")
    picture, summary = draw_run_curves(run_dir, metrics)
    write_atomically(target, picture)
    for line in _summary_lines(run_dir, summary.to_dict(), metrics.skipped_lines):
        log(line)
    if json_output:
        print_json({"run": str(run_dir), "curves": str(target), **summary.to_dict()})
        log(str(target))
    else:
        print(target)


def _summary_lines(run_dir: Path, summary: dict[str, Any], skipped: int) -> list[str]:
    """A few human lines: steps and time, best quality, final losses and gammas."""
    seconds = summary["train_seconds"]
    time = f" in {seconds / 60:.1f} min of training" if seconds is not None else ""
    lines = [f"{run_dir}: {summary['steps']} steps{time} ({summary['records']} logged)"]
    for key, best in summary["best"].items():
        lines.append(f"best {key}: {best['value']:.4g} at step {best['step']}")
    final = summary["final"]
    losses = ", ".join(f"{key} {final[key]:.3f}" for key in ("loss_d", "loss_g", "d_real", "d_fake") if key in final)
    if losses:
        lines.append(f"final: {losses}")
    gammas = ", ".join(
        f"{key.removeprefix('gamma_')} {value:+.4f}" for key, value in final.items() if key.startswith("gamma_")
    )
    if gammas:
        lines.append(f"final gammas: {gammas}")
    if skipped:
        lines.append(f"note: skipped {skipped} unreadable line(s) of metrics.jsonl (e.g. one being written)")
    return lines


def register(app: typer.Typer) -> None:
    """Add `sagan report` to the app."""
    app.command(epilog=EPILOG)(report)
