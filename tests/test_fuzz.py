"""Fuzzing the loaders: damaged checkpoints and images give a clean sagan error or a correct load, never a crash."""

from __future__ import annotations

import atexit
import io
import json
import shutil
import struct
import tempfile
import zlib
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from sagan_cli.checkpoint import load_generator, read_checkpoint_info, save_checkpoint
from sagan_cli.config import TrainConfig
from sagan_cli.data import ImageData, load_folder
from sagan_cli.errors import DatasetError, SaganError
from sagan_cli.model import ModelConfig
from sagan_cli.train import build_state, restore_state, train_step

FUZZ = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
CONFIG = TrainConfig(batch_size=4, model=ModelConfig(z_dim=8, g_width=2, d_width=2, num_classes=3))
WORK = Path(tempfile.mkdtemp(prefix="sagan-fuzz-"))
atexit.register(shutil.rmtree, WORK, True)


def _real_checkpoint() -> bytes:
    """A complete training checkpoint (G, G_ema, D, both optimizers) after one real step."""
    torch.manual_seed(0)
    images = torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8)
    data = ImageData(images, torch.arange(8) % 3, 3, "fuzz", "random pixels")
    state = build_state(CONFIG, torch.device("cpu"))
    train_step(state, data, CONFIG, torch.device("cpu"))
    path = WORK / "real.safetensors"
    save_checkpoint(
        path,
        train_config=CONFIG,
        step=state.step,
        train_seconds=0.5,
        generator=state.generator,
        generator_ema=state.generator_ema,
        discriminator=state.discriminator,
        optimizer_g=state.optimizer_g,
        optimizer_d=state.optimizer_d,
    )
    return path.read_bytes()


REAL = _real_checkpoint()
SCRATCH_STATE = build_state(CONFIG, torch.device("cpu"))
HEADER_LEN = struct.unpack("<Q", REAL[:8])[0]
HEADER = json.loads(REAL[8 : 8 + HEADER_LEN])
BODY = REAL[8 + HEADER_LEN :]
TENSOR_NAMES = sorted(k for k in HEADER if k != "__metadata__")
METADATA_KEYS = sorted(HEADER["__metadata__"])
MODEL_KEYS = sorted(json.loads(HEADER["__metadata__"]["model_config"]))
TRAIN_KEYS = sorted(json.loads(HEADER["__metadata__"]["train_config"]))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=6,
)
weird_numbers = st.sampled_from(
    ["-1", "0", "²", "٣", "1e3", " 7", "9" * 5000, "nan", "inf", "-0", "18446744073709551616"]
)


def _pack(header: dict, body: bytes = BODY) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


@st.composite
def byte_mutations(draw: st.DrawFn) -> bytes:
    """Truncations, overwritten bytes and inserted garbage anywhere in the file."""
    data = bytearray(REAL)
    kind = draw(st.sampled_from(["truncate", "flip", "insert", "header_len"]))
    if kind == "truncate":
        return bytes(data[: draw(st.integers(0, len(data) - 1))])
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            # Bias towards the header, where a flip changes meaning rather than a weight.
            limit = 8 + HEADER_LEN if draw(st.booleans()) else len(data)
            data[draw(st.integers(0, limit - 1))] = draw(st.integers(0, 255))
        return bytes(data)
    if kind == "insert":
        at = draw(st.integers(0, len(data)))
        return bytes(data[:at]) + draw(st.binary(min_size=1, max_size=64)) + bytes(data[at:])
    return struct.pack("<Q", draw(st.integers(0, 2**64 - 1))) + bytes(data[8:])


@st.composite
def header_mutations(draw: st.DrawFn) -> bytes:
    """Valid safetensors framing around a header whose entries have wrong types, dtypes, shapes or offsets."""
    header = json.loads(json.dumps(HEADER))
    metadata = header["__metadata__"]
    kind = draw(
        st.sampled_from(
            [
                "metadata_value",
                "model_field",
                "train_field",
                "dtype",
                "shape",
                "offsets",
                "drop",
                "version",
                "metadata_type",
                "numbers",
            ]
        )
    )
    if kind == "metadata_value":
        metadata[draw(st.sampled_from(METADATA_KEYS))] = draw(json_values)
    elif kind == "model_field":
        model = json.loads(metadata["model_config"])
        model[draw(st.sampled_from(MODEL_KEYS + ["surprise"]))] = draw(json_values | st.integers(-3, 10**6))
        metadata["model_config"] = json.dumps(model)
    elif kind == "train_field":
        train = json.loads(metadata["train_config"])
        train[draw(st.sampled_from(TRAIN_KEYS))] = draw(json_values)
        metadata["train_config"] = json.dumps(train)
    elif kind == "dtype":
        header[draw(st.sampled_from(TENSOR_NAMES))]["dtype"] = draw(
            st.sampled_from(["F16", "F64", "I64", "U8", "BOOL", "BF16", "F8_E4M3", "X9"])
        )
    elif kind == "shape":
        header[draw(st.sampled_from(TENSOR_NAMES))]["shape"] = draw(st.lists(st.integers(-2, 2**40), max_size=4))
    elif kind == "offsets":
        header[draw(st.sampled_from(TENSOR_NAMES))]["data_offsets"] = draw(st.lists(st.integers(-5, 2**63), max_size=3))
    elif kind == "drop":
        header.pop(draw(st.sampled_from(TENSOR_NAMES + ["__metadata__"])))
    elif kind == "version":
        metadata["format_version"] = draw(weird_numbers | st.sampled_from(["2", "1", "v1", ""]))
    elif kind == "numbers":
        metadata[draw(st.sampled_from(["step", "seed", "train_seconds"]))] = draw(weird_numbers)
    else:
        header["__metadata__"] = draw(json_values)
    return _pack(header)


def _load_everything(path: Path) -> None:
    info = read_checkpoint_info(path)
    generator, _ = load_generator(path)
    images = generator(
        torch.zeros(2, info.model.z_dim), torch.zeros(2, dtype=torch.int64) if info.model.num_classes else None
    )
    assert images.shape == (2, info.model.channels, info.model.image_size, info.model.image_size)
    restore_state(SCRATCH_STATE, path)  # overwritten by every example: only exceptions matter here


def _assert_clean(data: bytes) -> None:
    path = WORK / "mutated.safetensors"
    path.write_bytes(data)
    try:
        _load_everything(path)
    except SaganError:
        pass  # a clean, user-facing failure; anything else propagates and fails the test


def test_the_unmutated_checkpoint_loads_completely() -> None:
    path = WORK / "plain.safetensors"
    path.write_bytes(REAL)
    _load_everything(path)  # the fuzz baseline must be a real, fully loadable checkpoint


@FUZZ
@given(byte_mutations())
def test_byte_mutated_checkpoints_fail_cleanly(data: bytes) -> None:
    _assert_clean(data)


def _with_metadata(**changes: object) -> bytes:
    header = json.loads(json.dumps(HEADER))
    header["__metadata__"].update(changes)
    return _pack(header)


@pytest.mark.slow  # hundreds of mutated headers, ~30 s
@FUZZ
@given(header_mutations())
@example(_with_metadata(format_version="\u00b2"))  # str.isdigit() is True, int() refuses it
@example(_with_metadata(step="9" * 5000))  # int() refuses more than 4300 digits
@example(_with_metadata(optimizer_g_groups="5"))
@example(_with_metadata(train_config="[]"))  # would silently load as the default config
@example(
    _with_metadata(model_config=json.dumps({**json.loads(HEADER["__metadata__"]["model_config"]), "g_width": 10**7}))
)
@example(
    _with_metadata(model_config=json.dumps({**json.loads(HEADER["__metadata__"]["model_config"]), "attention": "no"}))
)
@example(_pack({**HEADER, "__metadata__": {**HEADER["__metadata__"], "seed": 7}}))
def test_header_mutated_checkpoints_fail_cleanly(data: bytes) -> None:
    _assert_clean(data)


def _image_bytes(fmt: str) -> bytes:
    pixels = torch.randint(0, 256, (12, 12, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    buffer = io.BytesIO()
    Image.fromarray(pixels.numpy(), "RGB").save(buffer, fmt)
    return buffer.getvalue()


IMAGES = {
    ".png": _image_bytes("PNG"),
    ".jpg": _image_bytes("JPEG"),
    ".gif": _image_bytes("GIF"),
    ".bmp": _image_bytes("BMP"),
}


@st.composite
def image_mutations(draw: st.DrawFn) -> tuple[str, bytes]:
    suffix = draw(st.sampled_from(sorted(IMAGES)))
    data = bytearray(IMAGES[suffix])
    kind = draw(st.sampled_from(["truncate", "flip", "garbage", "dimensions"]))
    if kind == "dimensions":  # a PNG whose header (with a valid CRC) claims any size, up to a decompression bomb
        png = bytearray(IMAGES[".png"])
        png[16:24] = struct.pack(">II", draw(st.integers(0, 2**31 - 1)), draw(st.integers(0, 2**31 - 1)))
        png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
        return ".png", bytes(png)
    if kind == "truncate":
        return suffix, bytes(data[: draw(st.integers(0, len(data) - 1))])
    if kind == "garbage":
        return suffix, draw(st.binary(max_size=256))
    for _ in range(draw(st.integers(1, 6))):
        # The first 40 bytes hold the dimensions and the format's header: flip them more often.
        limit = 40 if draw(st.booleans()) else len(data)
        data[draw(st.integers(0, limit - 1))] = draw(st.integers(0, 255))
    return suffix, bytes(data)


@FUZZ
@given(image_mutations(), st.booleans())
def test_mutated_images_are_loaded_or_skipped_never_crash(mutation: tuple[str, bytes], with_good_image: bool) -> None:
    suffix, data = mutation
    folder = Path(tempfile.mkdtemp(dir=WORK))
    (folder / f"mutated{suffix}").write_bytes(data)
    if with_good_image:
        (folder / "good.png").write_bytes(IMAGES[".png"])
    warnings: list[str] = []
    try:
        loaded = load_folder(folder, channels=3, image_size=28, log=warnings.append)
    except DatasetError as exc:
        assert not with_good_image, f"one readable image is enough, got: {exc}"
        assert "no readable image" in str(exc)
        return
    assert loaded.images.dtype == torch.uint8 and loaded.images.shape[1:] == (3, 28, 28)
    assert len(loaded) + (1 if warnings else 0) == 1 + with_good_image
    if warnings:
        assert "skipped 1 unreadable image" in warnings[0]
