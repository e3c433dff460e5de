"""What the training loop calls after each step besides training: evaluation, TensorBoard, the small-data note.

One object with one entry point (`after_step`), so the loop in train.py stays a loop; the time spent
here is kept out of train_seconds and images/s by the caller.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .config import TrainConfig
from .errors import SaganError
from .logs import Log
from .model import Generator
from .rundir import BEST_NAME, RunDir
from .streaming import TrainingData

SaveBest = Callable[[dict[str, str]], "Path | None"]  # extra metadata -> checkpoints/best.safetensors
# Passes over the data after which an un-augmented run is told D may memorise it: the 32 px emoji run
# (3,786 images) had 4% blank samples at 42 passes, 18% at 72, 86% at 119 (docs/results.md).
MEMORISATION_EPOCHS = 50


class TrainingHooks:
    """Evaluation (metrics.jsonl records, best.safetensors) and TensorBoard, each only when asked for."""

    def __init__(self, run: RunDir, max_steps: int, log: Log, save_best: SaveBest) -> None:
        self.run = run
        self.max_steps = max_steps
        self.log = log
        self.save_best = save_best
        self.evaluator: Any = (
            None  # train_eval.TrainingEvaluator (imported only when evaluating: torch-fidelity is slow to import)
        )
        self.tensorboard: Any = None  # tb.TensorBoardLog
        self.note_step: int | None = None  # the step to log note_text at (memorisation_note)
        self.note_text = ""
        self.stack = contextlib.ExitStack()

    def due(self, step: int) -> bool:
        """True when this step will be scored (the loop checks the weights are finite first)."""
        return self.evaluator is not None and self.evaluator.due(step, self.max_steps)

    def after_step(
        self, step: int, generator: Generator, logged: dict[str, Any] | None, grid: torch.Tensor | None
    ) -> None:
        """Called once per step with the record just logged (or None) and the preview grid just made (or None)."""
        if step == self.note_step:
            self.log(self.note_text)
        if self.tensorboard is not None:
            if logged is not None:
                self.tensorboard.scalars(step, logged)
            if grid is not None:
                self.tensorboard.image(step, grid)
        if self.due(step):
            self._evaluate(step, generator)

    def _evaluate(self, step: int, generator: Generator) -> None:
        try:
            record = self.evaluator.evaluate(generator, step, self.log)
        except SaganError as exc:  # e.g. torch-fidelity refused the inputs: the run itself is fine
            self.log(f"warning: evaluation at step {step} failed ({exc}); training goes on without evaluation")
            self.evaluator = None
            return
        metrics = record.to_metrics()
        self.run.append_metrics(metrics)
        best = self.evaluator.is_best(record)
        if best:
            self.save_best(self.evaluator.best_metadata(record))
        self.log(
            f"eval step {step}: FID {record.fid:.3f}  IS {record.isc:.3f}  ({record.extractor}, {record.num_samples} samples, "
            f"{record.seconds:.1f} s){'  new best' if best else ''}"
        )
        if self.tensorboard is not None:
            self.tensorboard.scalars(step, metrics)

    def close(self) -> None:
        """Flush TensorBoard and drop a temporary metrics cache."""
        if self.tensorboard is not None:
            self.tensorboard.close()
        self.stack.close()


def check_hooks(config: TrainConfig) -> None:
    """Raise UsageError now for what build_hooks would refuse later: the CLI calls it before any work."""
    if config.tensorboard:
        from .tb import require_tensorboard

        require_tensorboard()
    if config.eval_every > 0:
        from .sampling import check_sample_count

        check_sample_count(config.eval_samples, config.model)


def build_hooks(
    config: TrainConfig, data: TrainingData, run: RunDir, first_step: int, log: Log, save_best: SaveBest
) -> TrainingHooks:
    """Hooks for this run; on a resumed one, an existing best.safetensors sets the FID to beat.

    Only the writing process (rank 0) evaluates and logs. Raises UsageError (before the first step)
    when --tensorboard is asked for without the package or --eval-samples cannot fit in memory.
    """
    hooks = TrainingHooks(run, config.max_steps, log, save_best)
    if not run.enabled:
        return hooks
    hooks.note_step, hooks.note_text = memorisation_note(config, len(data), run.path)
    try:
        if config.eval_every > 0:
            from .train_eval import setup_evaluator

            hooks.evaluator = setup_evaluator(config, data, hooks.stack, log)
            if hooks.evaluator is not None:
                hooks.evaluator.adopt_best(run.checkpoints / f"{BEST_NAME}.safetensors", log)
        if config.tensorboard:
            from .tb import TensorBoardLog

            hooks.tensorboard = TensorBoardLog(run.path, first_step)
    except BaseException:
        hooks.close()
        raise
    return hooks


def memorisation_note(config: TrainConfig, dataset_size: int, run_path: Path) -> tuple[int | None, str]:
    """The step at which an un-augmented run passes MEMORISATION_EPOCHS over its data, and what to tell the user then.

    (None, "") when the run augments D's input already. The step may lie beyond the run's end:
    then nothing is said.
    """
    if config.augment != "none":
        return None, ""
    per_step = config.batch_size * config.d_steps  # real images a step reads: one batch per D step
    step = math.ceil(MEMORISATION_EPOCHS * dataset_size / per_step)
    text = (
        f"note: each of the {dataset_size:,} training images has now been seen {MEMORISATION_EPOCHS} times; "
        "on a set this small D can memorise them and G fade to blank images: watch "
        f"{run_path / 'samples'}, keep earlier checkpoints (--keep), and for long runs consider "
        "--augment translation (docs/results.md)"
    )
    return step, text
