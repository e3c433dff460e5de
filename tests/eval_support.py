"""Helpers shared by the evaluate / interpolate / compare tests: extra tiny checkpoints, trained once per session."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from PIL import Image


def untrained_checkpoint(tmp_path_factory: pytest.TempPathFactory, name: str, **model: object) -> Path:
    """runs/<name>/checkpoints/final.safetensors of an untrained tiny model (no training: seconds matter here).

    Looks like a 4-step bundled-MNIST run to every reader; `model` overrides ModelConfig fields.
    """
    from sagan_cli.checkpoint import save_checkpoint
    from sagan_cli.config import TrainConfig
    from sagan_cli.model import Generator, ModelConfig

    checkpoint = tmp_path_factory.getbasetemp() / "eval-runs" / name / "checkpoints" / "final.safetensors"
    if not checkpoint.exists():
        checkpoint.parent.mkdir(parents=True)
        config = TrainConfig(download=False, model=ModelConfig(**{"g_width": 8, "d_width": 8, "z_dim": 16, **model}))
        torch.manual_seed(0)
        generator = Generator(config.model).eval()
        save_checkpoint(
            checkpoint,
            train_config=config,
            step=4,
            train_seconds=1.25,
            generator=generator,
            generator_ema=copy.deepcopy(generator),
        )
        (checkpoint.parent.parent / "config.json").write_text(config.to_json())
    return checkpoint


def isolate_caches(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Metric cache and torch hub in a fresh folder: no real Inception weights, no shared cache."""
    monkeypatch.setenv("SAGAN_FIDELITY_CACHE", str(tmp_path / "fidelity-cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    return tmp_path / "fidelity-cache"


def read_png(path: Path) -> torch.Tensor:
    """A PNG as uint8 (C, H, W)."""
    from torchvision.transforms.v2.functional import pil_to_tensor

    with Image.open(path) as image:
        return pil_to_tensor(image)


def grid_cell(grid: torch.Tensor, row: int, col: int, size: int, padding: int = 2) -> torch.Tensor:
    """Cell (row, col) of a make_grid image: uint8 (C, size, size)."""
    top, left = padding + row * (size + padding), padding + col * (size + padding)
    return grid[:, top : top + size, left : left + size]
