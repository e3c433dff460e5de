"""Read and write IDX files (the MNIST file format) and load the bundled MNIST test digits.

IDX layout: a 4-byte big-endian magic ``0x00 0x00 <type> <ndim>``, then ``ndim`` big-endian
uint32 dimension sizes, then the data in C order, big-endian. ``write_idx`` gzip-compresses
when the file name ends in ``.gz``; ``read_idx`` recognises gzip by its magic bytes, whatever the
name. Only bytes are parsed here: no pickle, no numpy.
"""

from __future__ import annotations

import gzip
import importlib.resources
import os
import struct
import zlib
from pathlib import Path

import torch

__all__ = [
    "read_idx",
    "write_idx",
    "parse_idx",
    "encode_idx",
    "load_bundled_mnist",
    "BUNDLED_MNIST_FILES",
]

# IDX type code -> torch dtype (all multi-byte types are stored big-endian).
_CODE_TO_DTYPE: dict[int, torch.dtype] = {
    0x08: torch.uint8,
    0x09: torch.int8,
    0x0B: torch.int16,
    0x0C: torch.int32,
    0x0D: torch.float32,
    0x0E: torch.float64,
}
_DTYPE_TO_CODE: dict[torch.dtype, int] = {v: k for k, v in _CODE_TO_DTYPE.items()}
_GZIP_MAGIC = b"\x1f\x8b"

#: Package-relative paths of the bundled MNIST test split (standard torchvision raw names).
BUNDLED_MNIST_FILES: tuple[str, str] = (
    "assets/mnist/t10k-images-idx3-ubyte.gz",
    "assets/mnist/t10k-labels-idx1-ubyte.gz",
)


def _swap_bytes(flat: torch.Tensor) -> torch.Tensor:
    """Reverse the byte order of every element of a 1-D tensor (big <-> little endian)."""
    size = flat.element_size()
    if size == 1:
        return flat
    as_bytes = flat.view(torch.uint8).reshape(-1, size).flip(-1).contiguous()
    return as_bytes.view(flat.dtype).reshape(-1)


def _host_is_little_endian() -> bool:
    """True on little-endian hosts (IDX data is big-endian)."""
    return struct.pack("=H", 1) == b"\x01\x00"


def _decompress(raw: bytes, source: str) -> bytes:
    """Gunzip ``raw`` if it carries the gzip magic; raise ValueError on a corrupt stream."""
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise ValueError(f"{source}: corrupt or truncated gzip stream ({exc})") from exc


def parse_idx(data: bytes, source: str = "<bytes>") -> torch.Tensor:
    """Decode uncompressed IDX ``data`` into a tensor, validating header and size."""
    if len(data) < 4:
        raise ValueError(f"{source}: too short for an IDX header ({len(data)} bytes)")
    zero0, zero1, code, ndim = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0:
        raise ValueError(f"{source}: bad IDX magic {data[:4].hex()} (first two bytes must be zero)")
    if code not in _CODE_TO_DTYPE:
        raise ValueError(f"{source}: unknown IDX data type code 0x{code:02x}")
    if ndim == 0:
        raise ValueError(f"{source}: IDX header declares zero dimensions")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise ValueError(f"{source}: truncated IDX header (need {header_len} bytes, have {len(data)})")
    dims = struct.unpack(f">{ndim}I", data[4:header_len])
    dtype = _CODE_TO_DTYPE[code]
    itemsize = torch.empty((), dtype=dtype).element_size()
    count = 1
    for d in dims:
        count *= d
    expected = header_len + count * itemsize
    if len(data) != expected:
        kind = "truncated" if len(data) < expected else "has trailing bytes"
        raise ValueError(
            f"{source}: IDX data {kind}: header says shape {tuple(dims)} "
            f"({expected} bytes in total), file has {len(data)} bytes"
        )
    if count == 0:
        return torch.empty(dims, dtype=dtype)
    # bytearray -> writable buffer, so torch.frombuffer neither warns nor aliases read-only memory.
    flat = torch.frombuffer(bytearray(data[header_len:]), dtype=dtype)
    if _host_is_little_endian():
        flat = _swap_bytes(flat)
    return flat.reshape(dims)


def read_idx(path: str | os.PathLike[str]) -> torch.Tensor:
    """Read an IDX file (gzip-compressed or not) into a tensor; raise ValueError if malformed."""
    raw = Path(path).read_bytes()
    return parse_idx(_decompress(raw, str(path)), str(path))


def encode_idx(tensor: torch.Tensor) -> bytes:
    """Encode a tensor as uncompressed IDX bytes (big-endian header and data)."""
    if tensor.dtype not in _DTYPE_TO_CODE:
        supported = ", ".join(str(d) for d in _CODE_TO_DTYPE.values())
        raise ValueError(f"IDX cannot store dtype {tensor.dtype}; supported: {supported}")
    if not 1 <= tensor.dim() <= 255:
        raise ValueError(f"IDX needs 1..255 dimensions, got {tensor.dim()}")
    if any(d >= 2**32 for d in tensor.shape):
        raise ValueError(f"IDX dimension sizes must fit in uint32, got {tuple(tensor.shape)}")
    header = bytes([0, 0, _DTYPE_TO_CODE[tensor.dtype], tensor.dim()])
    header += struct.pack(f">{tensor.dim()}I", *tensor.shape)
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    if _host_is_little_endian():
        flat = _swap_bytes(flat)
    return header + _tensor_bytes(flat)


def _tensor_bytes(flat: torch.Tensor) -> bytes:
    """Raw bytes of a contiguous 1-D tensor without requiring numpy."""
    as_u8 = flat.view(torch.uint8)
    if as_u8.numel() == 0:
        return b""
    buf = bytearray(as_u8.numel())
    torch.frombuffer(buf, dtype=torch.uint8).copy_(as_u8)
    return bytes(buf)


def write_idx(path: str | os.PathLike[str], tensor: torch.Tensor) -> None:
    """Write a tensor as an IDX file, gzip-compressed (mtime=0, reproducible) if path ends in .gz."""
    data = encode_idx(tensor)
    if str(path).endswith(".gz"):
        data = gzip.compress(data, compresslevel=9, mtime=0)
    Path(path).write_bytes(data)


def load_bundled_mnist() -> tuple[torch.Tensor, torch.Tensor]:
    """Return the bundled MNIST test split: uint8 images (10000, 28, 28) and int64 labels (10000,)."""
    root = importlib.resources.files("sagan_cli")
    images_ref, labels_ref = (root.joinpath(p) for p in BUNDLED_MNIST_FILES)
    images = parse_idx(_decompress(images_ref.read_bytes(), str(images_ref)), str(images_ref))
    labels = parse_idx(_decompress(labels_ref.read_bytes(), str(labels_ref)), str(labels_ref))
    if images.dtype != torch.uint8 or images.dim() != 3 or tuple(images.shape[1:]) != (28, 28):
        raise ValueError(f"bundled MNIST images: unexpected {images.dtype} {tuple(images.shape)}")
    if labels.dtype != torch.uint8 or labels.dim() != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"bundled MNIST labels: unexpected {labels.dtype} {tuple(labels.shape)}")
    return images, labels.to(torch.int64)
