"""Evaluation during training: FID / IS of the generator every N steps, and the best checkpoint by FID.

It reuses what `sagan evaluate` runs (extractor choice, reference subset, cache names, torch-fidelity
call), set up once per run. Every evaluation draws the same latents (EVAL_SEED), so scores of
different steps are comparable and equal what `sagan evaluate CKPT -n N --fid --isc --seed 0` gives
for a checkpoint of that step. Scoring leaves training untouched: the global RNG is forked, the
generator is run without gradients in eval mode (BatchNorm statistics are read, not updated) and its
mode is put back afterwards.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .checkpoint import read_checkpoint_info
from .config import TrainConfig
from .errors import CheckpointError, UsageError
from .eval_options import EvalOptions
from .evaluation import Reference, reference_from_data, score_generator
from .extractors import Extractor, digits_caveat, resolve_extractor
from .logs import Log
from .metrics import KEY_FID, KEY_ISC_MEAN, KEY_ISC_STD, cache_dir
from .model import Generator
from .sampling import check_sample_count
from .streaming import StreamedData, TrainingData, preload_subset

EVAL_SEED = 0  # fixed, never the run's --seed: runs of different seeds are scored on the same latents
EVAL_METRICS = ("fid", "isc")
# Metadata keys of best.safetensors (TrainingEvaluator.identity adds the eval_* ones that make FIDs comparable).
META_FID, META_ISC = "best_fid", "best_isc"


@dataclass(frozen=True)
class EvalRecord:
    """One evaluation during training, as logged to metrics.jsonl under these names."""

    step: int
    fid: float
    isc: float
    isc_std: float
    seconds: float
    num_samples: int
    extractor: str

    def to_metrics(self) -> dict[str, Any]:
        """The metrics.jsonl record: `fid`, `isc` (mean), `isc_std`, `eval_seconds` (never part of train_seconds)."""

        def finite(value: float) -> float | None:  # strict JSON: a NaN FID is logged as null
            return round(value, 5) if math.isfinite(value) else None

        return {
            "step": self.step,
            "fid": finite(self.fid),
            "isc": finite(self.isc),
            "isc_std": finite(self.isc_std),
            "eval_seconds": round(self.seconds, 3),
            "eval_samples": self.num_samples,
            "eval_seed": EVAL_SEED,
            "extractor": self.extractor,
        }


class TrainingEvaluator:
    """Scores a generator with FID and IS against a fixed subset of the training data; tracks the best FID."""

    def __init__(self, config: TrainConfig, extractor: Extractor, reference: Reference, cache_folder: Path) -> None:
        self.every = config.eval_every
        self.extractor = extractor
        self.reference = reference
        self.cache_folder = cache_folder
        self.options = EvalOptions(
            metrics=EVAL_METRICS,
            num_samples=config.eval_samples,
            seed=EVAL_SEED,
            batch_size=min(EvalOptions.batch_size, config.eval_samples),
        )
        self.best_fid: float | None = None

    @property
    def identity(self) -> dict[str, str]:
        """What makes two FIDs comparable: extractor, its weights, sample count, seed, reference."""
        return {
            "eval_extractor": self.extractor.name,
            "eval_extractor_sha256": self.extractor.weights_sha256,
            "eval_samples": str(self.options.num_samples),
            "eval_seed": str(EVAL_SEED),
            "eval_reference": f"{self.reference.data_id} ({self.reference.images.shape[0]} images)",
        }

    def due(self, step: int, max_steps: int) -> bool:
        """Every `eval_every` steps, and at the last step so the final model has a score."""
        return step % self.every == 0 or step == max_steps

    def evaluate(self, generator: Generator, step: int, log: Log) -> EvalRecord:
        """FID and IS of `generator` now; its mode, the global RNG and every weight and buffer are left as they were."""
        was_training = generator.training
        began = time.perf_counter()
        try:
            with torch.random.fork_rng(devices=[]):
                results, _ = score_generator(  # generator.config: a --recluster-every run's current cluster sizes
                    generator, generator.config, self.reference, self.extractor, self.options, self.cache_folder, log
                )
        finally:
            generator.train(was_training)  # GeneratorInput switches it to eval mode and leaves it there
        return EvalRecord(
            step=step,
            fid=results[KEY_FID],
            isc=results[KEY_ISC_MEAN],
            isc_std=results.get(KEY_ISC_STD, 0.0),
            seconds=time.perf_counter() - began,
            num_samples=self.options.num_samples,
            extractor=self.extractor.name,
        )

    def is_best(self, record: EvalRecord) -> bool:
        """True when the record's FID is finite and lower than every earlier one (then it becomes the best)."""
        if not math.isfinite(record.fid) or (self.best_fid is not None and record.fid >= self.best_fid):
            return False
        self.best_fid = record.fid
        return True

    def best_metadata(self, record: EvalRecord) -> dict[str, str]:
        """Metadata for best.safetensors: its FID and IS, and how they were measured (its step is `step`)."""
        return {META_FID: repr(record.fid), META_ISC: repr(record.isc), **self.identity}

    def adopt_best(self, best: Path, log: Log) -> None:
        """On resume: continue from the FID of an existing best checkpoint when it was measured the same way."""
        if not best.exists():
            return
        try:
            metadata = read_checkpoint_info(best).metadata
            fid = float(metadata[META_FID])
        except (CheckpointError, KeyError, ValueError):
            log(f"note: {best} is unreadable or has no FID; the next evaluation replaces it")
            return
        if any(metadata.get(key) != value for key, value in self.identity.items()):
            log(
                f"note: {best} was scored differently (extractor, samples or reference); the next evaluation replaces it"
            )
            return
        self.best_fid = fid if math.isfinite(fid) else None


def setup_evaluator(
    config: TrainConfig, data: TrainingData, stack: contextlib.ExitStack, log: Log
) -> TrainingEvaluator | None:
    """The evaluator for a run with eval_every > 0, or None (with one line why) when no extractor fits.

    Raises UsageError for an --eval-samples that cannot fit in memory: the run has not started yet.
    """
    if config.eval_every == 0:
        return None
    check_sample_count(config.eval_samples, config.model)
    model = config.model
    try:
        extractor = resolve_extractor("auto", model.channels, model.image_size)
    except UsageError as exc:  # e.g. an RGB model and no Inception weights on this machine
        log(f"note: --eval-every {config.eval_every}: no evaluation in this run: {exc}")
        return None
    caveat = digits_caveat(extractor, config.dataset)
    if caveat:
        log(caveat)
    if isinstance(data, StreamedData):  # decode just the reference images, once per run
        data = preload_subset(data, config.eval_samples)
    reference = reference_from_data(data, config.eval_samples, config.dataset)
    return TrainingEvaluator(config, extractor, reference, _cache_folder(stack, log))


def _cache_folder(stack: contextlib.ExitStack, log: Log) -> Path:
    """The reference-statistics cache `sagan evaluate` uses, or a folder for this run only when it cannot be made."""
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    except OSError as exc:
        log(
            f"note: cannot create the metrics cache {folder} ({exc.strerror}); reference statistics are kept for this run only"
        )
        return Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sagan-fidelity-")))
