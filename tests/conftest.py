"""Shared helpers: drive the real CLI in-process, and a tiny trained checkpoint."""

from __future__ import annotations

import os

# Tiny models gain nothing from intra-op threads, and on a busy 2-core machine OpenMP spinning
# makes them many times slower; subprocesses started by tests inherit this too.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path

import pytest
from typer.testing import CliRunner

from sagan_cli.cli import app

# A model small enough to train a few steps in about a second on a busy 2-core CPU.
TINY_TRAIN_FLAGS = (
    "--max-steps 4 --batch-size 8 --g-width 8 --d-width 8 --z-dim 16 "
    "--no-download --log-every 2 --sample-every 2 --save-every 2"
).split()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` are skipped where CUDA is not available (as on the development machine)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def run_cli(*args: str):
    """Invoke `sagan ARGS` in-process; the result has exit_code, stdout and stderr apart."""
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 4-step plain unconditional MNIST run (bundled digits, attention on); returns its run directory."""
    out = tmp_path_factory.mktemp("runs")
    result = run_cli("train", *TINY_TRAIN_FLAGS, "--no-conditional", "--clusters", "0", "--out", out, "--name", "tiny")
    assert result.exit_code == 0, result.stderr
    return out / "tiny"


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_run: Path) -> Path:
    """The final checkpoint of the tiny run."""
    return tiny_run / "checkpoints" / "final.safetensors"
