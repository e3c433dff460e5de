"""`sagan compare`: same reference, latents and extractor for every checkpoint; table, JSON and grid."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from eval_support import grid_cell, isolate_caches, read_png, untrained_checkpoint
from PIL import Image

from sagan_cli.compare import display_names
from sagan_cli.sampling import sample_from_checkpoint

N = 48


@pytest.fixture(autouse=True)
def _caches(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    return isolate_caches(monkeypatch, tmp_path)


@pytest.fixture(scope="session")
def no_attention_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return untrained_checkpoint(tmp_path_factory, "tiny-noattn", attention=False)


def test_compare_two_tiny_checkpoints(tiny_checkpoint: Path, no_attention_checkpoint: Path, tmp_path: Path) -> None:
    grid_png = tmp_path / "compare.png"
    result = run_cli(
        "compare", tiny_checkpoint, no_attention_checkpoint, "-n", N, "--json", "-o", grid_png, "--grid-n", 4
    )
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
        assert set(model["metrics"]) >= {
            "frechet_inception_distance",
            "inception_score_mean",
            "kernel_inception_distance_mean",
        }
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
    assert display_names([a, Path("other/runs/a/checkpoints/final.safetensors")]) == [
        str(a),
        "other/runs/a/checkpoints/final.safetensors",
    ]


def test_compare_table_keeps_long_names_and_numbers_whole_on_80_columns(
    tiny_checkpoint: Path, no_attention_checkpoint: Path, tmp_path: Path
) -> None:
    # Was: one row per model, and at 80 columns Rich cut names and parameter counts to "mnist…".
    long_a = tmp_path / "mnist-attn-2600-step-2000.safetensors"
    long_b = tmp_path / "mnist-noattn-2600-step-2000.safetensors"
    long_a.write_bytes(tiny_checkpoint.read_bytes())
    long_b.write_bytes(no_attention_checkpoint.read_bytes())
    result = run_cli("compare", long_a, long_b, "-n", N, "--json", "--fid")
    assert result.exit_code == 0, result.stderr
    table = [line for line in result.stderr.splitlines() if line[:1] in "┏┃┡│└"]
    assert table and max(len(line) for line in table) <= 80
    for model in json.loads(result.stdout)["models"]:
        assert model["name"] in result.stderr and f"{model['parameters']:,}" in result.stderr
    assert "…" not in result.stderr


def test_generation_speed_leaves_out_the_first_batch(tiny_checkpoint: Path) -> None:
    # The first batch pays one-off kernel set-up; timing it made the model scored first look slower.
    from sagan_cli.checkpoint import load_generator
    from sagan_cli.metrics import GeneratorInput
    from sagan_cli.sampling import sample_latents

    generator, info = load_generator(tiny_checkpoint, use_ema=True, device=torch.device("cpu"))
    samples = GeneratorInput(generator, sample_latents(6, info.model.z_dim, seed=0), None, batch_size=2)
    for _ in range(3):
        samples(torch.zeros(2, info.model.z_dim))
    assert samples.timed_images == 4 and samples.images_per_second > 0
    single = GeneratorInput(generator, sample_latents(2, info.model.z_dim, seed=0), None, batch_size=2)
    single(torch.zeros(2, info.model.z_dim))
    assert single.timed_images == 0 and single.images_per_second > 0


def test_torch_fidelity_cannot_move_the_generator_off_its_device(tiny_checkpoint: Path) -> None:
    # torch-fidelity calls gen_model.cuda() when CUDA exists: that moved a generator loaded for --device cpu
    # (or cuda:1) to cuda:0, and compare's speed timings then ran there. No GPU here, so the same
    # Module._apply path is driven by .to("meta") (which moves registered parameters on any machine)
    # and by .cuda() itself (which fails on a CPU-only torch if there is anything to move).
    from sagan_cli.checkpoint import load_generator
    from sagan_cli.metrics import GeneratorInput
    from sagan_cli.sampling import sample_latents

    generator, info = load_generator(tiny_checkpoint, use_ema=True, device=torch.device("cpu"))
    samples = GeneratorInput(generator, sample_latents(4, info.model.z_dim, seed=0), None, batch_size=2)
    for move in (lambda: samples.to("meta"), samples.cuda):
        move()
        assert {p.device.type for p in generator.parameters()} == {"cpu"}
        assert {b.device.type for b in generator.buffers()} == {"cpu"}
    assert samples(torch.zeros(2, info.model.z_dim)).shape == (2, 3, 28, 28)  # still generates where it was put


def test_compare_refuses_the_same_checkpoint_twice(tiny_checkpoint: Path) -> None:
    result = run_cli("compare", tiny_checkpoint, tiny_checkpoint, "-n", N, "--no-cache")
    assert result.exit_code == 2 and "is given twice" in result.stderr and "Traceback" not in result.stderr
    aliased = tiny_checkpoint.parent / ".." / "checkpoints" / tiny_checkpoint.name
    result = run_cli("compare", tiny_checkpoint, aliased, "-n", N, "--no-cache")
    assert result.exit_code == 2 and "are the same file" in result.stderr


def test_shape_mismatch_names_the_checkpoints_apart(
    tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # Was: both named by file name, "final.safetensors: 1x28x28, final.safetensors: 1x32x32".
    other = untrained_checkpoint(tmp_path_factory, "mnist32", image_size=32)
    result = run_cli("compare", tiny_checkpoint, other, "-n", N, "--no-cache")
    assert result.exit_code == 2, result.stderr
    assert "tiny: 1x28x28, mnist32: 1x32x32" in result.stderr


def test_compare_inception_score_alone_needs_no_reference(tiny_checkpoint: Path, no_attention_checkpoint: Path) -> None:
    result = run_cli("compare", tiny_checkpoint, no_attention_checkpoint, "-n", N, "--isc", "--json", "--no-cache")
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["reference"] is None
    assert all(set(m["metrics"]) == {"inception_score_mean", "inception_score_std"} for m in payload["models"])
