"""Tests for sagan_cli.idx: IDX round trips, malformed input, and the bundled MNIST digits."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest
import torch

from sagan_cli.idx import load_bundled_mnist, read_idx, write_idx

MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize(
    "tensor",
    [
        torch.arange(2 * 3 * 4, dtype=torch.uint8).reshape(2, 3, 4),
        torch.tensor([7, 2, 1, 0, 255], dtype=torch.uint8),
        torch.tensor([[-3, 1000], [70000, -1]], dtype=torch.int32),
        torch.tensor([0.5, -1.25, 3.0e9], dtype=torch.float32),
        torch.tensor([1.0, -2.0], dtype=torch.float64),
        torch.tensor([-300, 300], dtype=torch.int16),
        torch.tensor([-5, 5], dtype=torch.int8),
    ],
)
def test_round_trip(tmp_path: Path, tensor: torch.Tensor, suffix: str) -> None:
    path = tmp_path / f"data-idx{suffix}"
    write_idx(path, tensor)
    back = read_idx(path)
    assert back.dtype == tensor.dtype
    assert torch.equal(back, tensor)


def test_header_is_big_endian_standard(tmp_path: Path) -> None:
    path = tmp_path / "images-idx3-ubyte"
    write_idx(path, torch.zeros(3, 28, 28, dtype=torch.uint8))
    raw = path.read_bytes()
    assert raw[:16] == struct.pack(">IIII", 0x00000803, 3, 28, 28)
    assert len(raw) == 16 + 3 * 28 * 28


def test_gzip_output_is_reproducible(tmp_path: Path) -> None:
    t = torch.arange(100, dtype=torch.uint8)
    write_idx(tmp_path / "a.gz", t)
    write_idx(tmp_path / "b.gz", t)
    assert (tmp_path / "a.gz").read_bytes() == (tmp_path / "b.gz").read_bytes()


def test_write_rejects_unsupported_dtype(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="dtype"):
        write_idx(tmp_path / "x", torch.zeros(2, dtype=torch.int64))


def _good_bytes() -> bytes:
    return struct.pack(">II", 0x00000801, 4) + bytes([1, 2, 3, 4])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "too short"),
        (b"\x00\x00", "too short"),
        (b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"\x00", "magic"),
        (b"\x00\x00\x42\x01" + struct.pack(">I", 1) + b"\x00", "type code"),
        (b"\x00\x00\x08\x00", "zero dimensions"),
        (b"\x00\x00\x08\x03" + struct.pack(">I", 1), "truncated IDX header"),
        (_good_bytes()[:-1], "truncated"),
        (_good_bytes() + b"\x00", "trailing"),
    ],
    ids=["empty", "short", "magic", "type", "ndim0", "header", "truncated", "trailing"],
)
def test_malformed_raises_value_error(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "bad"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=message):
        read_idx(path)


def test_truncated_gzip_raises_value_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.gz"
    path.write_bytes(gzip.compress(_good_bytes() * 50)[:20])
    with pytest.raises(ValueError, match="gzip"):
        read_idx(path)


def test_gzip_of_truncated_idx_raises_value_error(tmp_path: Path) -> None:
    path = tmp_path / "short.gz"
    path.write_bytes(gzip.compress(_good_bytes()[:-2]))
    with pytest.raises(ValueError, match="truncated"):
        read_idx(path)


def test_bundled_mnist() -> None:
    images, labels = load_bundled_mnist()
    assert images.shape == (10000, 28, 28)
    assert images.dtype == torch.uint8
    assert labels.shape == (10000,)
    assert labels.dtype == torch.int64
    assert torch.bincount(labels, minlength=10).tolist() == MNIST_TEST_COUNTS
    assert labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]  # standard test-set order
    assert int(images.max()) == 255 and int(images.min()) == 0
    # White digits on a black background: the border is almost all zeros.
    assert images[:, 0, :].float().mean() < 1.0
