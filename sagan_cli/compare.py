"""Compare checkpoints on equal terms: same reference, same latents, same extractor, one row each."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .checkpoint import CheckpointInfo, load_generator, read_checkpoint_info
from .errors import UsageError
from .evaluation import EvalOptions, load_for_scoring, load_reference, score_generator
from .extractors import Extractor, digits_caveat, file_sha256, resolve_extractor
from .logs import Log
from .model import count_parameters
from .sampling import check_sample_count, generate, sample_labels, sample_latents


@dataclass
class CompareRow:
    """One checkpoint's line in the comparison."""

    name: str
    checkpoint: Path
    sha256: str
    info: CheckpointInfo
    parameters: int
    metrics: dict[str, float]
    images_per_second: float

    @property
    def attention(self) -> str:
        """Where attention sits, e.g. `14` or `16,32`, `14 (G only)`; `none` without attention."""
        model = self.info.model
        where = model.active_attn_resolutions
        if not where:
            return "none"
        only = f" ({model.attention_in.upper()} only)" if model.attention_in != "both" else ""
        return ",".join(map(str, where)) + only

    def to_json(self) -> dict[str, Any]:
        """One entry of the `models` list in `sagan compare --json`."""
        return {
            "name": self.name,
            "checkpoint": str(self.checkpoint),
            "sha256": self.sha256,
            "attention": self.attention,
            "parameters": self.parameters,
            "steps": self.info.step,
            "train_seconds": self.info.train_seconds,
            "metrics": self.metrics,
            "images_per_second": round(self.images_per_second, 1),
        }


def display_names(paths: list[Path]) -> list[str]:
    """Short unique names: the run name for runs/<run>/checkpoints/<file>, plus the file stem if needed."""

    def run_name(path: Path) -> str:
        if path.parent.name == "checkpoints" and path.parent.parent.name:
            return f"{path.parent.parent.name}/{path.stem}" if path.stem != "final" else path.parent.parent.name
        return path.stem

    names = [run_name(path) for path in paths]
    if len(set(names)) < len(names):
        names = [str(path) for path in paths]
    return names


def check_distinct(paths: list[Path]) -> None:
    """The same file twice would only compare a model with itself."""
    seen: dict[Path, Path] = {}
    for path in paths:
        key = Path(path).expanduser().resolve()
        if key in seen:
            if str(seen[key]) == str(path):
                raise UsageError(f"{path} is given twice; compare different checkpoints")
            raise UsageError(f"{seen[key]} and {path} are the same file; compare different checkpoints")
        seen[key] = path


def check_compatible(
    infos: list[CheckpointInfo], paths: list[Path], ref: str | None, needs_reference: bool = True
) -> str | None:
    """All models must make the same image shape; returns the reference name to use (None when no metric needs one)."""
    shapes = {(info.model.channels, info.model.image_size) for info in infos}
    if len(shapes) > 1:
        listed = ", ".join(
            f"{name}: {i.model.channels}x{i.model.image_size}x{i.model.image_size}"
            for name, i in zip(display_names(paths), infos, strict=True)
        )
        raise UsageError(f"checkpoints make different image shapes ({listed}); compare models of one shape")
    if not needs_reference:
        return None
    datasets = {info.dataset for info in infos}
    if ref is None and len(datasets) > 1:
        raise UsageError(
            f"checkpoints were trained on different datasets ({', '.join(sorted(datasets))}); pass --ref to pick one"
        )
    return ref or infos[0].dataset


def compare_checkpoints(
    paths: list[Path], options: EvalOptions, cache_folder: Path, log: Log
) -> tuple[list[CompareRow], Extractor, Any]:
    """Score every checkpoint against one reference (None for IS alone) with one extractor and the same latents."""
    options.validate()
    if len(paths) < 2:
        raise UsageError("compare needs at least two checkpoints")
    check_distinct(paths)
    infos = [read_checkpoint_info(path) for path in paths]
    reference_name = check_compatible(infos, paths, options.ref, options.needs_reference)
    for info in infos:
        check_sample_count(options.num_samples, info.model)
    model = infos[0].model
    extractor = resolve_extractor(options.extractor, model.channels, model.image_size, options.inception_weights)
    for dataset in sorted({info.dataset for info in infos}):
        caveat = digits_caveat(extractor, dataset)
        if caveat:
            log(caveat)
    reference = None if reference_name is None else load_reference(reference_name, infos[0], options.num_samples, log)
    names = display_names(paths)
    generators, scores = [], []
    for name, path, info in zip(names, paths, infos, strict=True):
        log(f"scoring {name} ({options.num_samples} samples, seed {options.seed}, {extractor.name} extractor)")
        generators.append(load_for_scoring(path, options))
        scores.append(score_generator(generators[-1], info.model, reference, extractor, options, cache_folder, log)[0])
    log("timing sampling speed")
    speeds = sampling_speeds(
        generators, min(options.num_samples, 2 * options.batch_size), options.batch_size, options.seed
    )
    rows = [
        CompareRow(name, path, file_sha256(path), info, count_parameters(generator), results, speed)
        for name, path, info, generator, results, speed in zip(
            names, paths, infos, generators, scores, speeds, strict=True
        )
    ]
    return rows, extractor, reference


def sampling_speeds(generators: list[Any], num: int, batch_size: int, seed: int, rounds: int = 2) -> list[float]:
    """Images/s of each generator: a warm-up batch each, then `rounds` interleaved timings (median).

    Timing while scoring favoured whichever model ran second (warm kernels, a grown heap): the same
    two checkpoints measured 1,572 vs 1,916 img/s in one order and 2,044 vs 2,067 in the other.
    """
    plans = [(sample_latents(num, g.config.z_dim, seed), sample_labels(num, g.config, seed)) for g in generators]
    for generator, (latents, labels) in zip(generators, plans, strict=True):
        generate(generator, latents[:batch_size], None if labels is None else labels[:batch_size], batch_size)
    times: list[list[float]] = [[] for _ in generators]
    for _ in range(rounds):
        for index, (generator, (latents, labels)) in enumerate(zip(generators, plans, strict=True)):
            start = time.perf_counter()
            generate(generator, latents, labels, batch_size)  # returns CPU tensors: device work is finished
            times[index].append(time.perf_counter() - start)
    return [num / statistics.median(t) for t in times]


def side_by_side(
    paths: list[Path], num: int, seed: int, truncation: float, use_ema: bool, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """uint8 (models * num, C, S, S): the same `num` latents (and labels) through every model, one row each."""
    rows = []
    for path in paths:
        generator, info = load_generator(path, use_ema=use_ema, device=device)
        latents = sample_latents(num, info.model.z_dim, seed, truncation)
        rows.append(generate(generator, latents, sample_labels(num, info.model, seed)))
    return torch.cat(rows)
