"""Training options chosen for short runs: linear learning-rate decay at the end, translation DiffAugment."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TINY_TRAIN_FLAGS, run_cli
from test_cli_errors import assert_one_error

from sagan_cli.augment import translate
from sagan_cli.checkpoint import read_checkpoint_info
from sagan_cli.errors import EXIT_USAGE


def test_translation_shifts_each_image_whole_and_repeats_its_edges() -> None:
    images = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).reshape(2, 1, 8, 8)
    shifted = translate(images, torch.Generator().manual_seed(0))
    assert shifted.shape == images.shape
    for original, moved in zip(images, shifted, strict=True):
        # Some shift (dy, dx) in [-1, 1]^2 (1/8 of 8 px) with clamped indices reproduces the output exactly.
        matches = [
            (dy, dx)
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
            if torch.equal(
                moved, original[:, (torch.arange(8) - dy).clamp(0, 7)][:, :, (torch.arange(8) - dx).clamp(0, 7)]
            )
        ]
        assert matches


def test_translation_passes_gradients_to_the_generator() -> None:
    fake = torch.randn(3, 3, 8, 8, requires_grad=True)
    translate(fake, torch.Generator().manual_seed(1)).sum().backward()
    assert fake.grad is not None and float(fake.grad.sum()) == 3 * 3 * 8 * 8  # each output pixel reads one input


def test_lr_decay_ends_at_zero_and_augmented_training_runs(tmp_path: Path) -> None:
    result = run_cli(
        "train", *TINY_TRAIN_FLAGS, "--lr-decay", "0.5", "--augment", "translation", "--out", tmp_path, "--name", "d"
    )
    assert result.exit_code == 0, result.stderr
    from safetensors import safe_open

    with safe_open(str(tmp_path / "d" / "checkpoints" / "step_000002.safetensors"), "pt") as f:
        meta = f.metadata()
    assert read_checkpoint_info(tmp_path / "d" / "checkpoints" / "final.safetensors").step == 4
    assert '"augment": "translation"' in meta["train_config"] and '"lr_decay": 0.5' in meta["train_config"]


def test_bad_values_of_the_new_options_are_refused(tmp_path: Path) -> None:
    assert_one_error(
        run_cli("train", *TINY_TRAIN_FLAGS, "--lr-decay", "1.5", "--out", tmp_path), EXIT_USAGE, "--lr-decay"
    )
    assert_one_error(
        run_cli("train", *TINY_TRAIN_FLAGS, "--augment", "flip", "--out", tmp_path), EXIT_USAGE, "--augment 'flip'"
    )
    assert list(tmp_path.iterdir()) == []


def test_lr_decay_is_constant_then_linear_to_zero_by_steps_or_by_minutes() -> None:
    from sagan_cli.config import TrainConfig
    from sagan_cli.model import ModelConfig
    from sagan_cli.train import _set_learning_rates, build_state

    model = ModelConfig(g_width=4, d_width=4, z_dim=4, attention=False)
    config = TrainConfig(max_steps=100, lr_decay=0.25, lr_g=1e-3, lr_d=2e-3, model=model)
    state = build_state(config, torch.device("cpu"))
    rates = []
    for step in (0, 75, 90, 100):
        state.step = step
        _set_learning_rates(state, config)
        rates.append((state.optimizer_g.param_groups[0]["lr"], state.optimizer_d.param_groups[0]["lr"]))
    assert rates == [(1e-3, 2e-3), (1e-3, 2e-3), (pytest.approx(4e-4), pytest.approx(8e-4)), (0.0, 0.0)]
    timed = config.with_overrides(max_minutes=1.0)  # a time budget that ends first sets the pace
    state.step, state.train_seconds = 10, 54.0
    _set_learning_rates(state, timed)
    assert state.optimizer_g.param_groups[0]["lr"] == pytest.approx(4e-4)
