"""MNIST-style IDX files from a user's folder: find the standard files, read and validate them.

The same images come from many places (torchvision's download, a distribution package, a mirror),
often compressed differently, so their files are recognised by name and layout and read with
sagan's own IDX reader, never by torchvision's checksums. The data's identity is a hash of the
decoded content, so a run resumes from whichever copy is at hand.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import DatasetError
from .idx import read_idx

SPLITS = ("train", "t10k")
IMAGE_SIZE = 28
NUM_CLASSES = 10


def standard_names(split: str) -> tuple[str, str]:
    """The standard (images, labels) file names of a split, without the optional .gz."""
    return f"{split}-images-idx3-ubyte", f"{split}-labels-idx1-ubyte"


@dataclass(frozen=True)
class IdxFiles:
    """Where the two files of the training split were found."""

    folder: Path
    images: Path
    labels: Path


def _one_of(folder: Path, stem: str) -> Path | None:
    """`stem` or `stem.gz` in folder (uncompressed first: it is what torchvision leaves next to the .gz)."""
    for name in (stem, f"{stem}.gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def candidate_folders(data_dir: Path, torchvision_name: str) -> list[Path]:
    """Folders that may hold the files: flat, `<Name>/raw` below a torchvision root, or `raw` below `<Name>`."""
    return [data_dir, data_dir / torchvision_name / "raw", data_dir / "raw"]


def find_idx_files(data_dir: Path, torchvision_name: str, dataset: str) -> IdxFiles | None:
    """The training split's files under data_dir, or None when no folder there holds any standard file.

    A folder holding some but not all of the pair is an error naming what is missing: training on
    half a download would fail later and less clearly.
    """
    image_stem, label_stem = standard_names("train")
    for folder in candidate_folders(data_dir, torchvision_name):
        images, labels = _one_of(folder, image_stem), _one_of(folder, label_stem)
        if images is None and labels is None:
            continue
        if images is None or labels is None:
            present, missing = (labels, image_stem) if images is None else (images, label_stem)
            assert present is not None
            raise DatasetError(
                f"{dataset}: {folder} has {present.name} but no {missing}[.gz]; copy the missing file there"
            )
        return IdxFiles(folder, images, labels)
    return None


def _read(path: Path, dataset: str) -> torch.Tensor:
    try:
        return read_idx(path)
    except OSError as exc:
        raise DatasetError(f"{dataset}: cannot read {path} ({exc.strerror or exc.__class__.__name__})") from None
    except ValueError as exc:  # the reader's messages start with the path
        raise DatasetError(f"{dataset}: {str(exc).splitlines()[0]}; not a valid IDX file") from None


def read_idx_pair(files: IdxFiles, dataset: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, 28, 28) and int64 labels (N,), validated; DatasetError names the bad file."""
    images = _read(files.images, dataset)
    if images.dtype != torch.uint8 or images.dim() != 3:
        raise DatasetError(
            f"{dataset}: {files.images} holds {images.dim()}-D {_kind(images)} data, not 3-D uint8 images "
            "(IDX magic 0x00000803); is it the right file?"
        )
    if tuple(images.shape[1:]) != (IMAGE_SIZE, IMAGE_SIZE) or images.shape[0] == 0:
        raise DatasetError(
            f"{dataset}: {files.images} holds images of shape {tuple(images.shape)}, expected (N, 28, 28) with N > 0"
        )
    labels = _read(files.labels, dataset)
    if labels.dtype != torch.uint8 or labels.dim() != 1:
        raise DatasetError(
            f"{dataset}: {files.labels} holds {labels.dim()}-D {_kind(labels)} data, not 1-D uint8 labels "
            "(IDX magic 0x00000801); is it the right file?"
        )
    if labels.shape[0] != images.shape[0]:
        raise DatasetError(
            f"{dataset}: {files.labels} has {labels.shape[0]:,} labels for the {images.shape[0]:,} images of "
            f"{files.images.name}; the two files are from different sets"
        )
    if labels.numel() and int(labels.max()) >= NUM_CLASSES:
        raise DatasetError(f"{dataset}: {files.labels} has label {int(labels.max())}, outside 0..{NUM_CLASSES - 1}")
    return images, labels.to(torch.int64)


def _kind(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def content_sha256(images: torch.Tensor, labels: torch.Tensor) -> str:
    """Hash of the decoded pixels and labels: the same whatever the compression or the folder."""
    digest = hashlib.sha256()
    digest.update(images.contiguous().numpy().tobytes())
    digest.update(labels.to(torch.uint8).contiguous().numpy().tobytes())
    return digest.hexdigest()
