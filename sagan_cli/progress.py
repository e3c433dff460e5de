"""Training progress on stderr: a Rich progress bar on a terminal, plain log lines elsewhere."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def compact_stats(stats: dict[str, float]) -> str:
    """`D 1.23 G 0.45 γg14 +0.012 120 img/s`: what fits beside a progress bar on 80 columns."""
    parts = [f"D {stats['loss_d']:.2f} G {stats['loss_g']:.2f}"] if "loss_d" in stats else []
    parts += [f"γ{k[len('gamma_') :]} {v:+.3f}" for k, v in stats.items() if k.startswith("gamma")]
    if "images_per_second" in stats:
        parts.append(f"{stats['images_per_second']:.0f} img/s")
    return " ".join(parts)


def format_stats(stats: dict[str, float]) -> str:
    """`loss_d 1.23 loss_g 0.45 ... 120 img/s` in a stable order."""
    parts = [f"{k} {v:.3f}" for k, v in stats.items() if k.startswith(("loss", "d_"))]
    parts += [f"{k} {v:+.3f}" for k, v in stats.items() if k.startswith("gamma")]
    if "images_per_second" in stats:
        parts.append(f"{stats['images_per_second']:.0f} img/s")
    return "  ".join(parts)


class PlainReporter:
    """One line per logged step, for CI logs and pipes."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.total = 0
        self.first = 0
        self.started = time.perf_counter()

    def start(self, total_steps: int, first_step: int) -> None:
        self.total, self.first, self.started = total_steps, first_step, time.perf_counter()
        self.log(f"training from step {first_step} to {total_steps}")

    def step(self, step: int, stats: dict[str, float]) -> None:
        elapsed = time.perf_counter() - self.started
        done = step - self.first
        eta = elapsed / done * (self.total - step) if done else 0.0
        self.log(f"step {step}/{self.total}  {format_stats(stats)}  eta {eta:.0f}s")

    def log(self, message: str) -> None:
        print(message, file=self.stream, flush=True)

    def close(self) -> None:
        pass


class RichReporter:
    """A live progress bar with losses, gammas and speed."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(bar_width=16),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[stats]}"),
            console=self.console,
        )
        self.task: TaskID | None = None

    def start(self, total_steps: int, first_step: int) -> None:
        self.progress.start()
        self.task = self.progress.add_task("train", total=total_steps, completed=first_step, stats="")

    def step(self, step: int, stats: dict[str, float]) -> None:
        if self.task is not None:
            self.progress.update(self.task, completed=step, stats=compact_stats(stats))

    def log(self, message: str) -> None:
        self.console.print(message, highlight=False, markup=False)

    def close(self) -> None:
        self.progress.stop()


class SilentReporter:
    """What torchrun's ranks other than 0 report: nothing (errors still reach stderr through the CLI)."""

    def start(self, total_steps: int, first_step: int) -> None:
        pass

    def step(self, step: int, stats: dict[str, float]) -> None:
        pass

    def log(self, message: str) -> None:
        pass

    def close(self) -> None:
        pass


def make_reporter(enabled: bool = True) -> PlainReporter | RichReporter | SilentReporter:
    """Rich on an interactive stderr, plain lines otherwise, nothing when not enabled."""
    if not enabled:
        return SilentReporter()
    return RichReporter() if sys.stderr.isatty() else PlainReporter()
