"""Score checkpoints: load generator and reference, pick the extractor, run the metrics, report plain objects."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch_fidelity

from . import __version__
from .checkpoint import CheckpointInfo, load_generator, read_checkpoint_info
from .data import ImageData, load_dataset
from .errors import UsageError
from .eval_options import EvalOptions
from .extractors import Extractor, digits_caveat, file_sha256, resolve_extractor
from .logs import Log, no_log
from .metrics import (
    GeneratorInput,
    ImageTensorDataset,
    compute_metrics,
    reference_cache_name,
    reference_subset,
    tensor_sha256,
)
from .model import Generator, ModelConfig
from .rundir import RUNS_ROOT, find_latest_checkpoint
from .sampling import check_sample_count, sample_labels, sample_latents


@dataclass
class Reference:
    """The reference images metrics compare against, and the id that names them in caches and reports."""

    data: ImageData
    images: torch.Tensor  # uint8 (M, C, S, S), M <= num_samples
    pixels_sha256: str = ""

    @property
    def data_id(self) -> str:
        """ImageData.data_id of the whole set; the subset size is reported (and cached) separately."""
        return self.data.data_id


@dataclass
class EvalResult:
    """The outcome of scoring one checkpoint."""

    checkpoint: Path
    checkpoint_sha256: str
    info: CheckpointInfo
    weights: str  # "ema" or "raw"
    metrics: dict[str, float]
    extractor: Extractor
    num_samples: int
    seed: int
    truncation: float
    reference_id: str | None  # None when no metric needs a reference (IS alone)
    reference_images: int | None
    images_per_second: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The documented JSON schema (see docs/evaluate.md)."""
        return {
            "checkpoint": {
                "path": str(self.checkpoint),
                "sha256": self.checkpoint_sha256,
                "step": self.info.step,
                "dataset": self.info.dataset,
                "weights": self.weights,
            },
            "metrics": self.metrics,
            "extractor": {
                "name": self.extractor.name,
                "fidelity_name": self.extractor.fidelity_name,
                "weights_sha256": self.extractor.weights_sha256,
            },
            "num_samples": self.num_samples,
            "seed": self.seed,
            "truncation": self.truncation,
            "reference": None
            if self.reference_id is None
            else {"id": self.reference_id, "num_images": self.reference_images},
            "images_per_second": round(self.images_per_second, 1),
            **self.extra,
        }


def versions() -> dict[str, str]:
    """Package versions that make a number reproducible."""
    return {
        "sagan": __version__,
        "torch": torch.__version__,
        "torch_fidelity": torch_fidelity.__version__,
        "python": sys.version.split()[0],
    }


def resolve_checkpoint(path: Path | None, runs_root: Path = RUNS_ROOT) -> Path:
    """The given checkpoint, or the newest checkpoint of the most recent run under runs/."""
    if path is not None:
        return path
    latest = find_latest_checkpoint(runs_root)
    if latest is None:
        raise UsageError(f"no checkpoint given and none found under {runs_root}/; pass CKPT or run `sagan train` first")
    return latest


def load_reference(name: str, info: CheckpointInfo, num_samples: int, log: Log) -> Reference:
    """The reference set at the model's image shape, at most num_samples images of it (at least 2: FID/KID need them)."""
    train = info.train
    data = load_dataset(
        name,
        image_size=info.model.image_size,
        channels=info.model.channels,
        data_dir=Path(train.data_dir) if train and train.data_dir and name == info.dataset else None,
        download=train.download if train else True,
        log=log,
    )
    return reference_from_data(data, num_samples, name)


def reference_from_data(data: ImageData, num_samples: int, name: str) -> Reference:
    """At most num_samples images of loaded data as a reference (at least 2: FID/KID need them); `name` for the error."""
    images = reference_subset(data.images, num_samples)
    if images.shape[0] < 2:  # a covariance of one image is undefined: torch-fidelity would fail on NaNs
        raise UsageError(
            f"the reference {name} has {images.shape[0]} image; FID and KID need at least 2: "
            "pass a larger --ref, or --isc alone (IS needs no reference)"
        )
    return Reference(data, images, tensor_sha256(images))


def plan_latents(
    num_samples: int, model: ModelConfig, options: EvalOptions
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The latents (N, z_dim) and labels (N,) | None that `sagan sample --seed S -n N` would use."""
    latents = sample_latents(num_samples, model.z_dim, options.seed, options.truncation)
    return latents, sample_labels(num_samples, model, options.seed)


def score_generator(
    generator: Generator,
    model: ModelConfig,
    reference: Reference | None,
    extractor: Extractor,
    options: EvalOptions,
    cache_folder: Path | None,
    log: Log = no_log,
) -> tuple[dict[str, float], float]:
    """Metrics of one generator against a reference (None for IS alone), and its sampling speed (images/s)."""
    latents, labels = plan_latents(options.num_samples, model, options)
    samples = GeneratorInput(generator, latents, labels, options.batch_size)
    cache_name = None
    if reference is not None:
        cache_name = reference_cache_name(
            reference.data_id, reference.images.shape[0], extractor, reference.pixels_sha256
        )
    results = compute_metrics(
        samples,
        options.num_samples,
        None if reference is None else ImageTensorDataset(reference.images),
        set(options.metrics),
        extractor,
        seed=options.seed,
        batch_size=options.batch_size,
        reference_cache=cache_name,
        cache_folder=cache_folder,
        log=log,
    )
    return results, samples.images_per_second


def load_for_scoring(checkpoint: Path, options: EvalOptions) -> Generator:
    """The generator to score (EMA weights unless --no-ema), on the chosen device, in eval mode."""
    from .runtime import resolve_device

    return load_generator(checkpoint, use_ema=options.use_ema, device=resolve_device(options.device))[0]


def prepare(checkpoint: Path, options: EvalOptions) -> tuple[Generator, CheckpointInfo, Extractor]:
    """Check -n against memory and resolve the extractor, then load the generator: cheap checks before any expensive work."""
    info = read_checkpoint_info(checkpoint)
    check_sample_count(options.num_samples, info.model)
    extractor = resolve_extractor(
        options.extractor, info.model.channels, info.model.image_size, options.inception_weights
    )
    return load_for_scoring(checkpoint, options), info, extractor


def evaluate_checkpoint(checkpoint: Path, options: EvalOptions, cache_folder: Path | None, log: Log) -> EvalResult:
    """Score one checkpoint: FID / IS / KID (as asked) against its training data or --ref (IS alone needs none)."""
    options.validate()
    generator, info, extractor = prepare(checkpoint, options)
    caveat = digits_caveat(extractor, options.ref or info.dataset)
    if caveat:
        log(caveat)
    reference = (
        load_reference(options.ref or info.dataset, info, options.num_samples, log) if options.needs_reference else None
    )
    against = "" if reference is None else f" against {reference.data_id} ({reference.images.shape[0]} images)"
    log(
        f"scoring {checkpoint} ({options.num_samples} samples, seed {options.seed}){against} with the {extractor.name} extractor"
    )
    results, speed = score_generator(generator, info.model, reference, extractor, options, cache_folder, log)
    return EvalResult(
        checkpoint=checkpoint,
        checkpoint_sha256=file_sha256(checkpoint),
        info=info,
        weights="ema" if options.use_ema and info.has_ema else "raw",
        metrics=results,
        extractor=extractor,
        num_samples=options.num_samples,
        seed=options.seed,
        truncation=options.truncation,
        reference_id=None if reference is None else reference.data_id,
        reference_images=None if reference is None else int(reference.images.shape[0]),
        images_per_second=speed,
    )
