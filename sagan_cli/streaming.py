"""Data modes: image folders and CelebA preloaded into memory, or decoded on the fly by DataLoader workers.

The trainer decides which images form each batch (`train.batch_indices`: an epoch-wise
permutation from (seed, epoch)); a loader here only maps those indices to uint8 images. Both
modes therefore draw the same images in the same order, a resumed run continues with the batch
it stopped at, and a rank of a distributed run can take its shard of each index tensor.
"""

from __future__ import annotations

import os
import signal
import warnings
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .data import (
    DATASETS,
    ImageData,
    _SizedPaths,
    decode_image,
    load_dataset,
    load_folder_paths,
    load_image_paths,
    native_shape,
)
from .errors import DatasetError, UsageError
from .logs import Log
from .runtime import available_memory_bytes

DATA_MODES = ("auto", "memory", "stream")
COMFORTABLE_FRACTION = 0.5  # `auto` preloads a set that takes at most this share of the free memory
IndexFn = Callable[[int], torch.Tensor]  # batch number -> dataset indices (B,)


@dataclass
class StreamedData:
    """A set decoded from its files at every use: no labels, the same identity as when preloaded."""

    paths: list[Path]
    channels: int
    image_size: int
    name: str
    source: str
    labels: torch.Tensor | None = None
    num_classes: int = 0

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def data_id(self) -> str:
        """The id ImageData gives the same files when all decode (so the two modes resume each other)."""
        return f"{self.name}|{self.source}|{len(self)}x{self.channels}x{self.image_size}x{self.image_size}"

    def matches(self, data_id: str) -> bool:
        """True when a checkpoint recording `data_id` trained on this data."""
        return data_id == self.data_id


TrainingData = ImageData | StreamedData


@dataclass
class RealBatch:
    """uint8 images (B, C, S, S), labels (B,) or None, and the unreadable files replaced in it."""

    images: torch.Tensor
    labels: torch.Tensor | None
    unreadable: list[str]


class ImageFiles(Dataset):
    """index -> (uint8 (C, S, S), unreadable paths met); an unreadable file is replaced by the next readable one.

    The replacement depends on the index only, so the set keeps its size and a resumed run sees
    exactly what the original run saw.
    """

    def __init__(self, paths: list[Path], channels: int, image_size: int) -> None:
        self.paths, self.channels, self.image_size = paths, channels, image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, list[str]]:
        unreadable: list[str] = []
        for offset in range(len(self.paths)):
            path = self.paths[(index + offset) % len(self.paths)]
            try:
                return decode_image(path, self.channels, self.image_size), unreadable
            except Exception:
                unreadable.append(str(path))
        raise DatasetError(f"no readable image among the {len(self.paths)} files of the set")


class StepBatchSampler(Sampler[list[int]]):
    """Yields the trainer's index tensors for batches first..stop-1, in order, as lists for the DataLoader."""

    def __init__(self, index_of: IndexFn, first: int, stop: int) -> None:
        self.index_of, self.first, self.stop = index_of, first, stop

    def __iter__(self) -> Iterator[list[int]]:
        for batch_number in range(self.first, self.stop):
            yield self.index_of(batch_number).tolist()

    def __len__(self) -> int:
        return max(0, self.stop - self.first)


def _collate(items: list[tuple[torch.Tensor, list[str]]]) -> RealBatch:
    return RealBatch(torch.stack([image for image, _ in items]), None, [path for _, paths in items for path in paths])


def _quiet_worker(worker_id: int) -> None:
    # Ctrl-C and SIGTERM reach the whole process group; the main process finishes the step and
    # saves, so its workers must not die under it. They exit when the main process shuts them down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def real_batches(
    data: TrainingData, index_of: IndexFn, first: int, stop: int, device: torch.device, workers: int, log: Log
) -> Generator[RealBatch, None, None]:
    """Batches first..stop-1: indexed from the preloaded tensor, or decoded by a DataLoader with `workers` processes."""
    if isinstance(data, ImageData):
        for batch_number in range(first, stop):
            indices = index_of(batch_number)
            yield RealBatch(data.images[indices], None if data.labels is None else data.labels[indices], [])
        return
    with warnings.catch_warnings():  # torch's two-line warning when workers outnumber the usable CPUs; ours is one
        warnings.simplefilter("ignore", UserWarning)
        loader = DataLoader(
            ImageFiles(data.paths, data.channels, data.image_size),
            batch_sampler=StepBatchSampler(index_of, first, stop),
            num_workers=workers,
            collate_fn=_collate,
            pin_memory=device.type == "cuda",  # page-locked batches copy to the GPU asynchronously
            worker_init_fn=_quiet_worker if workers else None,
        )
        iterator = iter(loader)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if workers > cpus:
        log(f"notice: {workers} data workers on {cpus} usable CPU(s) may slow training; see --data-workers")
    seen: set[str] = set()
    for batch in iterator:
        new = [path for path in batch.unreadable if path not in seen]
        seen.update(new)
        if new and _worth_logging(len(seen) - len(new), len(seen)):
            log(
                f"warning: {len(seen)} unreadable image(s) so far, each replaced by the next readable file (latest: {new[-1]})"
            )
        yield batch


def _worth_logging(before: int, after: int) -> bool:
    """Log the 1st, 2nd, 4th, 8th, ... distinct unreadable file: a count without a line per file."""
    return any(before < 2**k <= after for k in range(after.bit_length()))


def resolve_data_mode(mode: str, count: int, channels: int, image_size: int, workers: int, what: str, log: Log) -> str:
    """`auto` -> `memory` when the uint8 set takes at most half the free memory, else `stream`; says which."""
    if mode not in DATA_MODES:
        raise UsageError(f"--data-mode {mode!r} is not one of {', '.join(DATA_MODES)}")
    need, have = count * channels * image_size**2, available_memory_bytes()
    sizes = f"{count:,} images at {channels}x{image_size}x{image_size}: {need / 2**30:,.2f} GiB as uint8, {have / 2**30:,.1f} GiB free"
    if mode == "auto":
        mode = "memory" if need <= COMFORTABLE_FRACTION * have else "stream"
        chosen = (
            "preloading them" if mode == "memory" else f"streaming them from disk with {workers} worker process(es)"
        )
        log(f"data: {what}, {sizes}; {chosen} (--data-mode auto)")
    elif mode == "stream":
        log(f"data: {what}, {sizes}; streaming them from disk with {workers} worker process(es)")
    return mode


def load_training_data(
    name: str,
    *,
    image_size: int,
    channels: int,
    data_dir: Path | None,
    download: bool,
    data_mode: str,
    workers: int,
    log: Log,
) -> TrainingData:
    """The training set in the requested mode: folders and CelebA may stream; the others are always in memory."""
    if name in DATASETS and name != "celeba":
        if data_mode == "stream":
            raise UsageError(
                f"--data-mode stream applies to image folders and celeba; {name} is held in memory; drop --data-mode"
            )
        return load_dataset(
            name, image_size=image_size, channels=channels, data_dir=data_dir, download=download, log=log
        )
    native_shape(name)  # an unknown name is a usage error before any file is touched
    if name in DATASETS:  # celeba: torchvision finds the files, sagan decodes them
        raw, _, source = DATASETS[name].load(data_dir, download, log)
        assert isinstance(raw, _SizedPaths)
        paths = list(raw)
    else:
        paths, source = load_folder_paths(Path(name)), ""
    mode = resolve_data_mode(data_mode, len(paths), channels, image_size, workers, name, log)
    if mode == "memory":
        images = load_image_paths(paths, channels, image_size, log, name)
        return ImageData(images, None, 0, name, source or f"image folder ({len(images)} images)")
    _check_one_decodes(paths, channels, image_size, name)
    return StreamedData(paths, channels, image_size, name, source or f"image folder ({len(paths)} images)")


def preload_subset(data: StreamedData, num: int) -> ImageData:
    """At most `num` images of a streamed set decoded into memory: the subset a preloaded set gives
    evaluation (metrics.reference_subset), so scores during training do not depend on the mode."""
    from .metrics import reference_subset  # lazy: torch-fidelity is imported only when scoring

    indices = reference_subset(torch.arange(len(data)), num)  # (M,) dataset indices, sorted
    files = ImageFiles(data.paths, data.channels, data.image_size)
    images = torch.stack([files[int(index)][0] for index in indices]) if len(indices) else torch.empty(0)
    return ImageData(images, None, 0, data.name, data.source)  # (M, C, S, S)


def _check_one_decodes(paths: list[Path], channels: int, image_size: int, what: str) -> None:
    """Fail now, in one line, if the first files are all unreadable, rather than in a worker mid-run."""
    for path in paths[:64]:
        try:
            decode_image(path, channels, image_size)
            return
        except Exception:
            continue
    raise DatasetError(f"no readable image among the first {min(len(paths), 64)} files of {what}")
