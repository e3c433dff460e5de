"""The run directory: config, metrics, preview grids and checkpoints of one training run.

Layout::

    runs/<name>/config.json            resolved training config (model config nested)
    runs/<name>/metrics.jsonl          one JSON object per logged step
    runs/<name>/curves.png             the curves of metrics.jsonl, redrawn with each preview grid
    runs/<name>/samples/step_000250.png
    runs/<name>/checkpoints/step_000500.safetensors, final.safetensors
    runs/<name>/checkpoints/best.safetensors   lowest FID so far (with --eval-every); never pruned
    runs/<name>/tensorboard/           event files (with --tensorboard)
    runs/<name>/.lock                  flock held by the process training the run

Only the main process (rank 0) writes; other ranks get a RunDir with enabled=False.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from .atomic import write_atomically
from .checkpoint import read_checkpoint_info
from .config import TrainConfig
from .errors import CheckpointError, UsageError
from .images import save_image

RUNS_ROOT = Path("runs")  # where `train` puts runs and `evaluate` looks for the latest one
CONFIG_FILE = "config.json"
LOCK_FILE = ".lock"
METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"
STEP_PATTERN = re.compile(r"^step_(\d+)\.safetensors$")
FINAL_NAME = "final"
BEST_NAME = "best"


class RunDir:
    """Reads and writes the files of one run; writes are no-ops when `enabled` is False."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self.checkpoints = self.path / "checkpoints"
        self.samples = self.path / "samples"

    @contextlib.contextmanager
    def locked(self) -> Iterator[RunDir]:
        """Hold an exclusive lock on the run while training it: two processes training one run would
        overwrite each other's checkpoints and metrics. Released when the block or process ends."""
        if not self.enabled:
            yield self
            return
        handle = self._acquire_lock()
        try:
            yield self
        finally:
            handle.close()  # closing the file releases the lock

    def _acquire_lock(self) -> Any:
        handle = open(self.path / LOCK_FILE, "a")
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; run directories are not protected there
            return handle
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise UsageError(
                f"{self.path} is being trained by another process right now; wait for it to finish, "
                "or train under another --name"
            ) from None
        return handle

    @classmethod
    def check_new(cls, path: Path, force: bool = False) -> None:
        """Raise UsageError unless a new run can be started at `path`; changes nothing on disk."""
        path = Path(path)
        existing = next((p for p in (path, *path.parents) if p.exists()), None)
        if existing is not None and not existing.is_dir():
            where = "the run directory" if existing == path else "a folder on the run's path"
            raise UsageError(f"{existing} is a file, but {where}; choose another --name or --out")
        if path.is_dir() and any(path.iterdir()):
            if not force:
                raise UsageError(
                    f"run directory {path} already exists; continue it with --resume {path}, "
                    "choose another --name, or pass --force to replace it"
                )
            if not (path / CONFIG_FILE).exists() and not cls._abandoned_start(path):
                raise UsageError(f"{path} exists and is not a sagan run; refusing to replace it even with --force")
            cls(path)._acquire_lock().close()  # refuse to delete a run that another process is training

    @staticmethod
    def _abandoned_start(path: Path) -> bool:
        """True for a run killed inside `create` by an older sagan: only empty run folders, no data."""
        names = {"checkpoints", "samples", LOCK_FILE}
        return all(
            p.name in names and (p.is_file() and p.stat().st_size == 0 or p.is_dir() and not any(p.iterdir()))
            for p in path.iterdir()
        )

    @classmethod
    def create(cls, path: Path, config: TrainConfig, force: bool = False, enabled: bool = True) -> RunDir:
        """Start a new run directory; an existing run is only replaced with force.

        Callers run every other check first (the CLI: config, data, batch size): the old run is
        deleted here, and nothing after this point should refuse the new one.
        """
        run = cls(path, enabled)
        if enabled:
            cls.check_new(run.path, force)
            if run.path.exists() and any(run.path.iterdir()):
                shutil.rmtree(run.path)
            run.path.mkdir(parents=True, exist_ok=True)
            run.write_config(config)  # first: a run killed right after is still one --force may replace
            run.checkpoints.mkdir(exist_ok=True)
            run.samples.mkdir(exist_ok=True)
        return run

    def write_config(self, config: TrainConfig) -> None:
        if self.enabled:
            write_atomically(self.path / CONFIG_FILE, (config.to_json() + "\n").encode(), durable=True)

    def read_config(self) -> TrainConfig:
        """The config a run was started with."""
        config_path = self.path / CONFIG_FILE
        try:
            return TrainConfig.from_dict(json.loads(config_path.read_text()))
        except FileNotFoundError:
            raise UsageError(f"{self.path} is not a sagan run directory (no {CONFIG_FILE})") from None
        except OSError as exc:
            raise UsageError(f"cannot read {config_path}: {exc.strerror or exc}") from None
        except (ValueError, TypeError) as exc:
            raise UsageError(f"{config_path} is damaged ({exc}); fix or remove it") from None

    def append_metrics(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with (self.path / METRICS_FILE).open("a") as handle:
                handle.write(json.dumps(record) + "\n")

    def write_sample_grid(self, step: int, grid: torch.Tensor, metadata: dict[str, str] | None = None) -> None:
        if self.enabled:
            save_image(grid, self.samples / f"step_{step:06d}.png", metadata)

    def write_curves(self) -> None:
        """Redraw curves.png from metrics.jsonl (training calls this with each preview grid)."""
        if not self.enabled:
            return
        from .curves import draw_run_curves, read_metrics  # lazy: matplotlib loads on the first preview only

        metrics = read_metrics(self.path / METRICS_FILE)
        if metrics.records:  # a preview may come before the first logged step
            write_atomically(self.path / CURVES_FILE, draw_run_curves(self.path, metrics)[0])

    @staticmethod
    def step_name(step: int) -> str:
        return f"step_{step:06d}"

    def write_checkpoint(self, name: str, write: Callable[[Path], Path]) -> Path | None:
        """Let `write` produce checkpoints/<name>.safetensors (atomically); None on non-writing ranks."""
        if not self.enabled:
            return None
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        return write(self.checkpoints / f"{name}.safetensors")

    def step_checkpoints(self) -> list[Path]:
        """Periodic checkpoints, oldest first."""
        if not self.checkpoints.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.checkpoints.iterdir() if (m := STEP_PATTERN.match(p.name))]
        return [p for _, p in sorted(found)]

    def prune_checkpoints(self, keep: int) -> None:
        """Delete all but the newest `keep` periodic checkpoints (final is never deleted)."""
        if self.enabled:
            for old in self.step_checkpoints()[:-keep]:
                old.unlink(missing_ok=True)

    def rewind(self, step: int) -> None:
        """Prepare to continue from `step`: drop temp files a killed writer left, and what the run
        wrote after `step` (metrics, preview grids, periodic checkpoints): resuming from an earlier
        checkpoint abandons those steps, and a later --resume must not pick them up again."""
        if not self.enabled:
            return
        for folder in (self.path, self.checkpoints, self.samples):
            for stale in folder.glob(".*.tmp") if folder.is_dir() else ():
                stale.unlink(missing_ok=True)  # write_atomically's temp names; never a complete file
        for checkpoint in self.checkpoints_after(step):
            checkpoint.unlink(missing_ok=True)
        # The best checkpoint of abandoned steps goes too (its FID is in the metrics dropped below); it
        # never blocks a resume as later checkpoints do: the run re-evaluates those steps as it goes.
        best = self.checkpoints / f"{BEST_NAME}.safetensors"
        try:
            if best.exists() and read_checkpoint_info(best).step > step:
                best.unlink()
        except CheckpointError:
            best.unlink(missing_ok=True)  # unreadable: the next evaluation writes a new one
        for grid in self.samples.glob("step_*.png") if self.samples.is_dir() else ():
            number = grid.stem.removeprefix("step_")
            if number.isdigit() and int(number) > step:
                grid.unlink(missing_ok=True)
        metrics = self.path / METRICS_FILE
        if metrics.exists():
            kept = []
            for line in metrics.read_text(errors="replace").splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # the half-written last line of a killed run
                if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
                    kept.append(line + "\n")
            write_atomically(metrics, "".join(kept).encode(), durable=True)

    def checkpoints_after(self, step: int) -> list[Path]:
        """Checkpoints (final included) of steps after `step`: what resuming from `step` abandons."""
        later = [p for p in self.step_checkpoints() if (m := STEP_PATTERN.match(p.name)) and int(m.group(1)) > step]
        final = self.checkpoints / f"{FINAL_NAME}.safetensors"
        try:
            if final.exists() and read_checkpoint_info(final).step > step:
                later.append(final)
        except CheckpointError:
            pass  # unreadable: never picked by latest_checkpoint, and overwritten when this run finishes
        return later

    def latest_checkpoint(self) -> Path | None:
        """The readable checkpoint with the highest step (final included), or None."""
        candidates = self.step_checkpoints()
        final = self.checkpoints / f"{FINAL_NAME}.safetensors"
        if final.exists():
            candidates.append(final)
        best: tuple[int, Path] | None = None
        for path in candidates:
            try:
                step = read_checkpoint_info(path).step
            except CheckpointError:
                continue  # e.g. a file damaged by hand; atomic writes never leave one behind
            if best is None or step >= best[0]:
                best = (step, path)
        return best[1] if best else None


def find_latest_checkpoint(runs_root: Path) -> Path | None:
    """The newest checkpoint of the most recently modified run under runs_root."""
    if not runs_root.is_dir():
        return None
    runs = sorted(
        (p for p in runs_root.iterdir() if (p / CONFIG_FILE).exists()),
        key=lambda p: max((f.stat().st_mtime for f in (p / "checkpoints").glob("*.safetensors")), default=0.0),
        reverse=True,
    )
    for run in runs:
        checkpoint = RunDir(run).latest_checkpoint()
        if checkpoint is not None:
            return checkpoint
    return None


def unique_run_path(root: Path, base_name: str) -> Path:
    """root/base_name, or root/base_name-2, -3, ... if taken."""
    candidate, number = root / base_name, 2
    while candidate.exists():
        candidate, number = root / f"{base_name}-{number}", number + 1
    return candidate
