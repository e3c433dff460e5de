"""`sagan interpolate`: slerp/lerp, row layout, GIFs, class walks, and endpoints equal to `sagan sample`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from eval_support import grid_cell, read_png, untrained_checkpoint
from PIL import Image

from sagan_cli.checkpoint import load_generator
from sagan_cli.sampling import sample_from_checkpoint
from sagan_cli.walk import lerp, plan_rows, slerp, walk

SIZE = 28


@pytest.fixture(scope="session")
def conditional_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return untrained_checkpoint(tmp_path_factory, "tiny-cond", num_classes=10)


def test_slerp_and_lerp_hit_the_endpoints_and_keep_shapes() -> None:
    a, b = (
        torch.randn(16, generator=torch.Generator().manual_seed(0)),
        torch.randn(16, generator=torch.Generator().manual_seed(1)),
    )
    t = torch.linspace(0, 1, 7)
    for method in (slerp, lerp):
        path = method(a, b, t)
        assert path.shape == (7, 16)
        torch.testing.assert_close(path[0], a)
        torch.testing.assert_close(path[-1], b)
    norms = slerp(a, b, t).norm(dim=1)
    torch.testing.assert_close(norms, (1 - t) * a.norm() + t * b.norm())  # slerp stays on the shell
    assert lerp(a, -a, torch.tensor([0.5])).norm() < 1e-6 < slerp(a, b, torch.tensor([0.5])).norm()
    torch.testing.assert_close(slerp(a, 2 * a, t)[3], 1.5 * a)  # parallel vectors fall back to lerp


def test_endpoints_equal_sagan_sample_bitwise(tiny_checkpoint: Path, tmp_path: Path) -> None:
    walk_png = tmp_path / "walk.png"
    result = run_cli("interpolate", tiny_checkpoint, "--seeds", "3,7", "--seeds", "1,2", "--steps", 5, "-o", walk_png)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == str(walk_png)
    grid = read_png(walk_png)
    assert grid.shape[1:] == (2 + 2 * (SIZE + 2), 2 + 5 * (SIZE + 2))  # 2 rows of 5 frames
    for row, (start, end) in enumerate(((3, 7), (1, 2))):
        for col, seed in ((0, start), (4, end)):
            sample_png = tmp_path / f"seed{seed}.png"
            sampled = run_cli("sample", tiny_checkpoint, "-n", 1, "--seed", seed, "-o", sample_png)
            assert sampled.exit_code == 0, sampled.stderr
            assert torch.equal(grid_cell(grid, row, col, SIZE), grid_cell(read_png(sample_png), 0, 0, SIZE))
    assert not torch.equal(grid_cell(grid, 0, 0, SIZE), grid_cell(grid, 0, 2, SIZE))  # the middle differs
    text = Image.open(walk_png).text
    assert text["seeds"] == "3,7;1,2" and text["interpolation"] == "slerp" and text["steps"] == "5"


def test_flat_seed_list_means_consecutive_pairs(tiny_checkpoint: Path, tmp_path: Path) -> None:
    generator, info = load_generator(tiny_checkpoint)
    rows = plan_rows([3, 7, 1, 2], info.model, None, None)
    assert [(r.start_seed, r.end_seed) for r in rows] == [(3, 7), (1, 2)]
    frames = walk(generator, rows, 4, "lerp")
    assert frames.shape == (2, 4, 1, SIZE, SIZE) and frames.dtype == torch.uint8
    one_row = run_cli("interpolate", tiny_checkpoint, "--seeds", "3,7,1", "-o", tmp_path / "odd.png")
    assert one_row.exit_code == 2 and "odd number of seeds" in one_row.stderr


def test_gif_output_is_an_animation(tiny_checkpoint: Path, tmp_path: Path) -> None:
    gif = tmp_path / "walk.gif"
    result = run_cli("interpolate", tiny_checkpoint, "--seeds", "3,7", "--steps", 4, "--lerp", "-o", gif)
    assert result.exit_code == 0, result.stderr
    with Image.open(gif) as image:
        assert image.n_frames == 2 * 4 - 2  # forward then back, endpoints not repeated
        assert json.loads(image.info["comment"])["interpolation"] == "lerp"
    again = run_cli("interpolate", tiny_checkpoint, "--seeds", "3,7", "-o", gif)
    assert again.exit_code == 2 and "--force" in again.stderr


def test_class_walk_endpoints_equal_class_samples(conditional_checkpoint: Path) -> None:
    generator, info = load_generator(conditional_checkpoint)
    rows = plan_rows([5], info.model, None, (1, 7))
    frames = walk(generator, rows, 4, "slerp")  # (1, 4, 1, 28, 28)
    for class_index, frame in ((1, frames[0, 0]), (7, frames[0, -1])):
        images, _, _ = sample_from_checkpoint(conditional_checkpoint, 1, seed=5, class_index=class_index)
        assert torch.equal(frame, images[0])
    assert generator.blocks[0].bn1.scale.num_embeddings == info.model.num_classes  # the class tables are restored
    seed_rows = plan_rows([3, 7], info.model, None, None)  # no --class: each seed keeps its own label
    seed_frames = walk(generator, seed_rows, 3, "slerp")
    for seed, frame in ((3, seed_frames[0, 0]), (7, seed_frames[0, -1])):
        images, _, _ = sample_from_checkpoint(conditional_checkpoint, 1, seed=seed)
        assert torch.equal(frame, images[0])


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--seeds", "3,x"], "not an integer seed"),
        (["--steps", "1"], "--steps"),
        (["--class", "1"], "unconditional"),
        (["--classes", "1,7"], "unconditional"),
        (["-o", "walk.tiff"], "unknown image extension"),
    ],
)
def test_bad_input_is_a_usage_error(tiny_checkpoint: Path, tmp_path: Path, args: list[str], fragment: str) -> None:
    output = [] if "-o" in args else ["-o", str(tmp_path / "w.png")]
    result = run_cli("interpolate", tiny_checkpoint, *args, *output)
    assert result.exit_code == 2, result.stderr
    assert fragment in result.stderr and "Traceback" not in result.stderr


def test_classes_are_checked_on_conditional_models(conditional_checkpoint: Path, tmp_path: Path) -> None:
    for args, fragment in (
        (["--classes", "1,12"], "out of range"),
        (["--classes", "1"], "exactly two"),
        (["--class", "2", "--classes", "1,7"], "exclude each other"),
    ):
        result = run_cli("interpolate", conditional_checkpoint, "--seeds", "5", *args, "-o", tmp_path / "c.png")
        assert result.exit_code == 2 and fragment in result.stderr, result.stderr
