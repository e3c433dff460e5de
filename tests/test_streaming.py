"""--data-mode: image folders decoded on the fly by DataLoader workers train exactly as when preloaded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import run_cli
from PIL import Image
from test_reliability import assert_same_tensors

TINY = [
    "--image-size",
    "32",
    "--batch-size",
    "8",
    "--g-width",
    "8",
    "--d-width",
    "8",
    "--z-dim",
    "16",
    "--log-every",
    "1",
    "--sample-every",
    "100",
    "--save-every",
    "2",
    "--keep",
    "10",
]


def png_folder(folder: Path, count: int = 20, corrupt: bool = False) -> Path:
    """Noise PNGs of a size other than 32 (so resizing is part of the path), optionally one damaged file."""
    folder.mkdir(parents=True)
    rng = torch.Generator().manual_seed(0)
    for i in range(count):
        pixels = torch.randint(0, 256, (36, 40, 3), dtype=torch.uint8, generator=rng)  # (H, W, C)
        Image.fromarray(pixels.numpy(), "RGB").save(folder / f"img_{i:03d}.png")
    if corrupt:  # sorts between img_004 and img_005: met in the first epochs
        (folder / "img_004b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"broken" * 10)
    return folder


def train(folder: Path, out: Path, name: str, *flags: object):
    result = run_cli("train", *TINY, "--dataset", folder, "--out", out, "--name", name, *flags)
    assert result.exit_code == 0, result.stderr
    return result


def test_streaming_skips_a_corrupt_image_with_a_count_and_resumes_exactly(tmp_path: Path) -> None:
    folder = png_folder(tmp_path / "pngs", corrupt=True)
    whole = train(folder, tmp_path, "whole", "--data-mode", "stream", "--data-workers", "1", "--max-steps", 4)
    assert "streaming them from disk with 1 worker process(es)" in whole.stderr
    assert "21 images" in whole.stderr  # the damaged file keeps its place: the set's size does not change
    warnings = [line for line in whole.stderr.splitlines() if "unreadable" in line]
    assert warnings and "1 unreadable image(s)" in warnings[0] and "img_004b.png" in warnings[0]
    # Stopped at step 2 and resumed (in-process decoding this time): the same weights as straight through.
    train(folder, tmp_path, "split", "--data-mode", "stream", "--data-workers", "1", "--max-steps", 2)
    resumed = run_cli("train", "--resume", tmp_path / "split", "--max-steps", 4, "--data-workers", "0")
    assert resumed.exit_code == 0, resumed.stderr
    assert_same_tensors(
        tmp_path / "whole" / "checkpoints" / "final.safetensors",
        tmp_path / "split" / "checkpoints" / "final.safetensors",
    )


def test_memory_and_stream_modes_give_the_same_weights_and_resume_each_other(tmp_path: Path) -> None:
    folder = png_folder(tmp_path / "pngs")
    memory = train(folder, tmp_path, "memory", "--data-mode", "memory", "--max-steps", 3)
    assert "streaming" not in memory.stderr
    train(folder, tmp_path, "stream", "--data-mode", "stream", "--data-workers", "2", "--max-steps", 3)
    assert_same_tensors(
        tmp_path / "memory" / "checkpoints" / "final.safetensors",
        tmp_path / "stream" / "checkpoints" / "final.safetensors",
    )
    # A run preloaded at first continues streaming (e.g. `auto` chose differently on a busier machine).
    resumed = run_cli("train", "--resume", tmp_path / "memory", "--max-steps", 4, "--data-mode", "stream")
    assert resumed.exit_code == 0, resumed.stderr


def test_auto_says_which_mode_it_chose(tmp_path: Path) -> None:
    folder = png_folder(tmp_path / "pngs", count=8)
    result = train(folder, tmp_path, "auto", "--max-steps", 1)
    assert "8 images at 3x32x32" in result.stderr and "preloading them (--data-mode auto)" in result.stderr


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--dataset", "mnist", "--data-mode", "stream"], "--data-mode stream applies to image folders and celeba"),
        (["--dataset", "mnist", "--data-mode", "disk"], "--data-mode must be auto, memory or stream, got 'disk'"),
        (["--dataset", "mnist", "--data-workers", "-1"], "--data-workers must be in 0..256"),
    ],
)
def test_bad_data_mode_flags_are_one_line_usage_errors(tmp_path: Path, flags: list[str], message: str) -> None:
    result = run_cli("train", *TINY, "--no-download", "--max-steps", 1, "--out", tmp_path, *flags)
    assert result.exit_code == 2 and message in result.stderr.strip().splitlines()[-1], result.stderr
    assert not any(tmp_path.iterdir())


def test_scores_during_training_are_the_same_streamed_or_preloaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # --eval-every needs reference images: a streamed set decodes the subset a preloaded one would use.
    import json

    from eval_support import isolate_caches

    isolate_caches(monkeypatch, tmp_path)  # no Inception weights: grey 28 px models get the digits extractor
    folder = png_folder(tmp_path / "pngs", count=24)
    grey = ["--image-size", "28", "--channels", "1", "--eval-every", "2", "--eval-samples", "20", "--max-steps", 2]
    fids = []
    for mode in ("memory", "stream"):
        result = run_cli(
            "train", *TINY[2:], *grey, "--dataset", folder, "--out", tmp_path, "--name", mode, "--data-mode", mode
        )
        assert result.exit_code == 0, result.stderr
        lines = (tmp_path / mode / "metrics.jsonl").read_text().splitlines()
        fids.append([record["fid"] for record in map(json.loads, lines) if "fid" in record])
    assert len(fids[0]) == 1 and fids[0] == fids[1]
