"""`sagan compare`: same reference, latents and extractor for every checkpoint; table, JSON and grid."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from sagan_cli.compare import display_names
from sagan_cli.sampling import sample_from_checkpoint

from conftest import run_cli
from eval_support import grid_cell, isolate_caches, read_png, untrained_checkpoint

N = 48


@pytest.fixture(autouse=True)
def _caches(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    return isolate_caches(monkeypatch, tmp_path)


@pytest.fixture(scope="session")
def no_attention_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return untrained_checkpoint(tmp_path_factory, "tiny-noattn", attention=False)


def test_compare_two_tiny_checkpoints(tiny_checkpoint: Path, no_attention_checkpoint: Path, tmp_path: Path) -> None:
    grid_png = tmp_path / "compare.png"
    result = run_cli("compare", tiny_checkpoint, no_attention_checkpoint, "-n", N, "--json", "-o", grid_png, "--grid-n", 4)
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["schema"] == "sagan.compare/1" and payload["extractor"]["name"] == "digits"
    assert payload["num_samples"] == N and payload["grid"] == str(grid_png)
    first, second = payload["models"]
    assert (first["name"], second["name"]) == ("tiny", "tiny-noattn")
    assert (first["attention"], second["attention"]) == ("14", "none")
    assert first["parameters"] > second["parameters"] > 0
    assert first["steps"] == second["steps"] == 4 and second["train_seconds"] == 1.25
    for model in (first, second):
        assert set(model["metrics"]) >= {"frechet_inception_distance", "inception_score_mean", "kernel_inception_distance_mean"}
        assert model["images_per_second"] > 0 and len(model["sha256"]) == 64
    for title in ("FID", "IS", "KID", "img/s", "tiny-noattn"):
        assert title in result.stderr
    grid = read_png(grid_png)
    assert grid.shape[1:] == (2 + 2 * 30, 2 + 4 * 30)  # one row per model, 4 images each
    for row, checkpoint in enumerate((tiny_checkpoint, no_attention_checkpoint)):
        images, _, _ = sample_from_checkpoint(checkpoint, 4, seed=0)  # the same z through each model
        assert torch.equal(grid_cell(grid, row, 3, 28), images[3])
    assert Image.open(grid_png).text["seed"] == "0"


def test_compare_metric_subset_and_single_checkpoint(tiny_checkpoint: Path, no_attention_checkpoint: Path) -> None:
    only_fid = run_cli("compare", tiny_checkpoint, no_attention_checkpoint, "-n", N, "--fid", "--json", "--no-cache")
    assert only_fid.exit_code == 0, only_fid.stderr
    assert all(set(m["metrics"]) == {"frechet_inception_distance"} for m in json.loads(only_fid.stdout)["models"])
    single = run_cli("compare", tiny_checkpoint, "-n", N)
    assert single.exit_code == 2 and "at least two" in single.stderr


def test_display_names_are_short_and_unique() -> None:
    a = Path("runs/a/checkpoints/final.safetensors")
    b = Path("runs/a/checkpoints/step_000500.safetensors")
    assert display_names([a, b]) == ["a", "a/step_000500"]
    assert display_names([a, Path("other/runs/a/checkpoints/final.safetensors")]) == [str(a), "other/runs/a/checkpoints/final.safetensors"]
