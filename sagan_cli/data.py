"""Datasets: a registry of named datasets plus image folders, preloaded as uint8 tensors.

Every loader returns `ImageData` whose images are uint8 (N, C, S, S) at the
requested size and channel count, so training never touches the disk per step.
"""

from __future__ import annotations

import contextlib
import socket
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from .errors import DatasetError, UsageError
from .logs import Log, no_log
from .model import check_image_shape
from .runtime import available_memory_bytes

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")
DOWNLOAD_TIMEOUT_SECONDS = 20
MAX_IMAGE_PIXELS = 8192 * 8192  # larger files are skipped unread: a corrupt header can claim any size


@dataclass
class ImageData:
    """A preloaded dataset: uint8 images (N, C, S, S), optional int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor | None
    num_classes: int
    name: str  # what the user asked for: a registry name or a folder path
    source: str  # where the pixels came from, e.g. "bundled MNIST test digits"
    legacy_source: str | None = None  # DatasetSpec.legacy_source

    def matches(self, data_id: str) -> bool:
        """True when a checkpoint recording `data_id` trained on this data."""
        legacy = (
            None
            if self.legacy_source is None
            else self.data_id.replace(f"|{self.source}|", f"|{self.legacy_source}|", 1)
        )
        return data_id in (self.data_id, legacy)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def data_id(self) -> str:
        """Identifies the exact pixels (for reference-statistics caches and metadata)."""
        n, c, s, _ = self.images.shape
        return f"{self.name}|{self.source}|{n}x{c}x{s}x{s}"


@dataclass(frozen=True)
class DatasetSpec:
    """A named dataset: native shape and a loader returning (uint8 N,C,H,W images, labels)."""

    name: str
    channels: int
    image_size: int
    num_classes: int
    load: Callable[[Path | None, bool, Log], tuple[torch.Tensor, torch.Tensor | None, str]]
    # The source earlier versions recorded for this dataset (torchvision's name, not the content):
    # their runs resume on data of the same shape, which is all they were checked against then.
    legacy_source: str | None = None


def default_cache_dir() -> Path:
    """Where downloads go when no --data-dir is given."""
    import os

    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sagan" / "datasets"


@contextlib.contextmanager
def _download_timeout() -> Iterator[None]:
    # torchvision's downloads have no timeout: a dropped-packet network would hang forever.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_SECONDS)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _torchvision_dataset(
    factory: Callable[..., object], name: str, data_dir: Path | None, download: bool, **kwargs: object
) -> object:
    """Open a torchvision dataset from data_dir (or the cache), downloading if allowed."""
    root = data_dir or default_cache_dir()
    try:
        return factory(root=str(root), download=False, **kwargs)
    except (RuntimeError, FileNotFoundError, OSError):
        pass
    _download(factory, name, root, download, kwargs)
    return factory(root=str(root), download=False, **kwargs)


def _download(
    factory: Callable[..., object],
    name: str,
    root: Path,
    download: bool,
    options: dict[str, object],
    what: str = "",
) -> None:
    """Download a torchvision dataset into root; a failure leaves root as it was (no empty trees).

    torchvision creates its folders before fetching anything, so it works in a temporary folder
    next to the data and only a complete download is moved into place.
    """
    if not download:
        raise DatasetError(
            f"{name} not found in {root}; put the torchvision files there or allow downloading (drop --no-download)"
        )
    created = _missing_ancestors(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".sagan-download-", dir=root) as staging:
            with _download_timeout(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                factory(root=staging, download=True, **options)
            _move_into(Path(staging), root)
    except Exception as exc:  # urllib, socket, gdown and integrity errors all mean "no data"
        for folder in created:  # deepest first; only the folders this attempt made, and only if empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise DatasetError(
            f"could not download {name} into {root} ({exc.__class__.__name__}); "
            f"with no network, copy {what or f'the torchvision {name} files'} there or pass --data-dir"
        ) from None


def _missing_ancestors(folder: Path) -> list[Path]:
    """folder and its parents that do not exist yet, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _move_into(source: Path, target: Path) -> None:
    """Move source's entries into target, merging folders; files already in target are kept."""
    for entry in source.iterdir():
        destination = target / entry.name
        if entry.is_dir() and destination.is_dir():
            _move_into(entry, destination)
        elif not destination.exists():
            entry.rename(destination)


def _load_mnist_like(
    torchvision_name: str, name: str, other: str
) -> Callable[[Path | None, bool, Log], tuple[torch.Tensor, torch.Tensor | None, str]]:
    """Loader of MNIST or Fashion-MNIST: the standard IDX files from --data-dir (or the cache), read by sagan."""

    def load(data_dir: Path | None, download: bool, log: Log) -> tuple[torch.Tensor, torch.Tensor | None, str]:
        import torchvision.datasets as tvd

        from .mnist_files import content_sha256, find_idx_files, read_idx_pair

        root = data_dir or default_cache_dir()
        files = find_idx_files(root, torchvision_name, name)
        if files is None:
            try:
                if not download:
                    raise DatasetError(
                        f"{name} not found: no train-images-idx3-ubyte[.gz] in {root} or {root / torchvision_name / 'raw'}; "
                        "put the standard IDX files there or allow downloading (drop --no-download)"
                    )
                _download(
                    getattr(tvd, torchvision_name),
                    name,
                    root,
                    download,
                    {"train": True},
                    "the standard IDX files (train-images-idx3-ubyte.gz, ...)",
                )
            except DatasetError:
                if name != "mnist" or data_dir is not None:
                    raise
                from .idx import load_bundled_mnist

                reason = "could not be downloaded (offline?)" if download else "is not in the cache (--no-download)"
                log(f"notice: MNIST {reason}; using the 10,000 bundled MNIST test digits")
                images, labels = load_bundled_mnist()
                return images[:, None], labels, "bundled MNIST test digits"
            files = find_idx_files(root, torchvision_name, name)
            if files is None:
                raise DatasetError(
                    f"{name}: the download into {root} left no {torchvision_name}/raw/train-*-ubyte files"
                )
        folder = files.folder.absolute()
        if other in (folder.name, folder.parent.name if folder.name == "raw" else None):  # same file names in both sets
            raise DatasetError(
                f"{name}: {files.folder} looks like {other}'s folder; pass the right --dataset or --data-dir"
            )
        log(f"reading {name} from {files.images.name} and {files.labels.name} in {files.folder}")
        images, labels = read_idx_pair(files, name)
        return images[:, None], labels, f"IDX train files, content sha256 {content_sha256(images, labels)[:16]}"

    return load


def _load_cifar10(data_dir: Path | None, download: bool, log: Log) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    import torchvision.datasets as tvd

    dataset = _torchvision_dataset(tvd.CIFAR10, "cifar10", data_dir, download, train=True)
    images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()  # type: ignore[attr-defined]
    return images, torch.tensor(dataset.targets, dtype=torch.int64), "torchvision CIFAR10 train"  # type: ignore[attr-defined]


def _load_celeba(data_dir: Path | None, download: bool, log: Log) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    import torchvision.datasets as tvd

    dataset = _torchvision_dataset(tvd.CelebA, "celeba", data_dir, download, split="train", target_type=[])
    folder = Path(dataset.root) / dataset.base_folder / "img_align_celeba"  # type: ignore[attr-defined]
    paths = [folder / name for name in dataset.filename]  # type: ignore[attr-defined]
    return _SizedPaths(paths), None, "torchvision CelebA train"  # type: ignore[return-value]


class _SizedPaths(list):
    """Marks a list of image paths whose decoding is deferred to `prepare`."""


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("mnist", 1, 28, 10, _load_mnist_like("MNIST", "mnist", "FashionMNIST"), "torchvision MNIST train"),
        DatasetSpec(
            "fashion-mnist",
            1,
            28,
            10,
            _load_mnist_like("FashionMNIST", "fashion-mnist", "MNIST"),
            "torchvision FashionMNIST train",
        ),
        DatasetSpec("cifar10", 3, 32, 10, _load_cifar10),
        DatasetSpec("celeba", 3, 64, 0, _load_celeba),
    )
}
FOLDER_DEFAULT_SIZE = 64
FOLDER_DEFAULT_CHANNELS = 3


def is_folder_dataset(name: str) -> bool:
    """True when `name` is meant as a path rather than a registered dataset."""
    return name not in DATASETS and ("/" in name or "\\" in name or name.startswith(".") or Path(name).exists())


def native_shape(name: str) -> tuple[int, int, int]:
    """(channels, image size, classes) a dataset trains at by default."""
    if name in DATASETS:
        spec = DATASETS[name]
        return spec.channels, spec.image_size, spec.num_classes
    if is_folder_dataset(name):
        return FOLDER_DEFAULT_CHANNELS, FOLDER_DEFAULT_SIZE, 0
    raise UsageError(f"unknown dataset {name!r}; use one of {', '.join(DATASETS)} or a path to a folder of images")


RESIZE_CHUNK = 1024  # images converted at a time: bounds the float intermediates of a large set


def resize_images(images: torch.Tensor, channels: int, image_size: int) -> torch.Tensor:
    """uint8 (N, C, H, W) -> uint8 (N, channels, S, S): channel conversion, shorter side to S, centre crop.

    Works through the set in chunks into one preallocated result, so the peak is the result plus a
    chunk's intermediates, not float copies of the whole set (60,000 MNIST digits at 256 px: 3.9 GB
    instead of ~20 GB).
    """
    if images.shape[1] == channels and images.shape[-2:] == (image_size, image_size):
        return images.contiguous()
    result = torch.empty((images.shape[0], channels, image_size, image_size), dtype=torch.uint8)  # (N, C, S, S)
    for start in range(0, images.shape[0], RESIZE_CHUNK):
        result[start : start + RESIZE_CHUNK] = _resize_chunk(images[start : start + RESIZE_CHUNK], channels, image_size)
    return result


def _resize_chunk(images: torch.Tensor, channels: int, image_size: int) -> torch.Tensor:
    if images.shape[1] != channels:
        if channels == 3:
            images = images.expand(-1, 3, -1, -1)
        else:  # ITU-R 601 luma, as PIL's convert("L")
            weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            images = (images.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    if images.shape[-2:] != (image_size, image_size):
        from torchvision.transforms.v2 import functional as TF  # lazy: torchvision takes ~1.5 s to import

        images = TF.resize(images, image_size, antialias=True)
        images = TF.center_crop(images, [image_size, image_size])
    return images


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit and float greyscale (PIL modes I;16*, I, F) scaled to 8-bit L; convert("L") would clip them."""
    import numpy as np

    values = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16") or (image.mode == "I" and values.max(initial=0) > 255):
        values = values / 257.0  # 0..65535 -> 0..255
    elif image.mode == "F" and values.max(initial=0) <= 1.0:
        values = values * 255.0  # float images in [0, 1]
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")


def _pil_to_tensor(image: Image.Image, channels: int, image_size: int) -> torch.Tensor:
    mode = "L" if channels == 1 else "RGB"
    if image.mode.startswith("I") or image.mode == "F":
        image = _to_8bit(image)
    if image.mode in ("RGBA", "LA", "PA", "P") or "transparency" in image.info:
        image = image.convert("RGBA")  # transparent pixels become white, at 1 channel as at 3
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    image = image.convert(mode)
    from torchvision.transforms.v2 import functional as TF  # lazy, as in resize_images

    tensor = TF.pil_to_tensor(image)  # (C, H, W) uint8
    return resize_images(tensor[None], channels, image_size)[0]


def find_images(folder: Path) -> list[Path]:
    """Image files under a folder, recursively, in a stable order."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def check_dataset_memory(count: int, channels: int, image_size: int, what: str) -> None:
    """Refuse, before decoding anything, a set whose preloaded uint8 tensor cannot fit in memory."""
    need, have = count * channels * image_size**2, available_memory_bytes()
    if need > have:
        raise UsageError(
            f"{what}: {count:,} images at {channels}x{image_size}x{image_size} need {need / 2**30:,.1f} GiB of memory "
            f"once decoded (preloading holds the whole set), more than the {have / 2**30:,.1f} GiB available; "
            "train at a smaller --image-size, on fewer images, or (folders, celeba) with --data-mode stream"
        )


def decode_image(path: Path, channels: int, image_size: int) -> torch.Tensor:
    """One image file -> uint8 (C, S, S); raises on an unreadable file (memory and stream modes share this path)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL warns about odd-but-readable files; callers report skips
        with Image.open(path) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise ValueError(f"{image.width}x{image.height} is too large")  # checked before decoding
            image.load()
            return _pil_to_tensor(image, channels, image_size)


def load_image_paths(paths: list[Path], channels: int, image_size: int, log: Log, what: str) -> torch.Tensor:
    """Decode image files into uint8 (N, C, S, S), skipping unreadable ones with one warning.

    The tensor is allocated once and filled in place, so the peak is the set itself, not twice it.
    """
    check_dataset_memory(len(paths), channels, image_size, what)
    images = torch.empty((len(paths), channels, image_size, image_size), dtype=torch.uint8)  # (N, C, S, S)
    count, skipped = 0, []
    for path in paths:
        try:
            images[count] = decode_image(path, channels, image_size)
            count += 1
        except Exception:
            skipped.append(path)
    if skipped:
        log(f"warning: skipped {len(skipped)} unreadable image(s) in {what}, e.g. {skipped[0]}")
    if count == 0:
        raise DatasetError(f"no readable image in {what} ({len(paths)} file(s) tried)")
    return images[:count]


def load_folder(folder: Path, channels: int, image_size: int, log: Log) -> ImageData:
    """All readable images under a folder, recursively, as one preloaded uint8 tensor."""
    paths = load_folder_paths(folder)
    images = load_image_paths(paths, channels, image_size, log, str(folder))
    return ImageData(images, None, 0, str(folder), f"image folder ({len(images)} images)")


def load_folder_paths(folder: Path) -> list[Path]:
    """The image files of a dataset folder; DatasetError when there is no such folder or no image in it."""
    if not folder.exists():
        raise DatasetError(f"dataset folder not found: {folder}")
    if not folder.is_dir():
        raise DatasetError(f"dataset path {folder} is not a folder; pass a folder of images")
    paths = find_images(folder)
    if not paths:
        raise DatasetError(f"no images in {folder} (looked recursively for {', '.join(IMAGE_EXTENSIONS)})")
    return paths


def load_dataset(
    name: str,
    *,
    image_size: int | None = None,
    channels: int | None = None,
    data_dir: Path | None = None,
    download: bool = True,
    log: Log = no_log,
) -> ImageData:
    """Load a registered dataset or an image folder as uint8 (N, C, S, S) at the requested shape."""
    native_channels, native_size, num_classes = native_shape(name)
    channels = channels or native_channels
    image_size = image_size or native_size
    try:
        check_image_shape(image_size, channels)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if name not in DATASETS:
        return load_folder(Path(name), channels, image_size, log)
    spec = DATASETS[name]
    raw, labels, source = spec.load(data_dir, download, log)
    if isinstance(raw, _SizedPaths):
        images = load_image_paths(list(raw), channels, image_size, log, name)
    else:
        check_dataset_memory(raw.shape[0], channels, image_size, name)
        images = resize_images(raw, channels, image_size)
    legacy = spec.legacy_source if source.startswith("IDX ") else None
    return ImageData(images, labels, num_classes, name, source, legacy)


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images.float().div_(127.5).sub_(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255], rounded."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
