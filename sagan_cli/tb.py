"""Optional TensorBoard logging (`--tensorboard`): the scalars of metrics.jsonl and the preview grids.

Needs the `tensorboard` package (`pip install "sagan-cli[tensorboard]"`); `require_tensorboard`
says so in one line before any work. Events go to `<run>/tensorboard/`, so `tensorboard --logdir runs`
shows one curve per run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .errors import UsageError

TENSORBOARD_FOLDER = "tensorboard"
MISSING_MESSAGE = (
    '--tensorboard needs the tensorboard package: pip install "sagan-cli[tensorboard]" (or drop --tensorboard)'
)
# metrics.jsonl key -> TensorBoard tag; gamma_* keys become gamma/<layer>.
SCALAR_TAGS = {
    "loss_d": "loss/d",
    "loss_g": "loss/g",
    "d_real": "d_score/real",
    "d_fake": "d_score/fake",
    "images_per_second": "speed/images_per_second",
    "fid": "eval/fid",
    "isc": "eval/isc",
    "eval_seconds": "eval/seconds",
}


def require_tensorboard() -> Any:
    """torch's SummaryWriter class; UsageError (exit 2) with the install command when tensorboard is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UsageError(MISSING_MESSAGE) from None
    return SummaryWriter


def scalar_tags(record: dict[str, Any]) -> dict[str, float]:
    """TensorBoard tags and values of one metrics.jsonl record (non-numeric and null values skipped)."""
    tags = {}
    for key, value in record.items():
        tag = SCALAR_TAGS.get(key) or (f"gamma/{key[len('gamma_') :]}" if key.startswith("gamma_") else None)
        if tag is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
            tags[tag] = float(value)
    return tags


class TensorBoardLog:
    """Writes scalars and preview grids of one run; resumed runs purge the events of abandoned steps."""

    def __init__(self, run_path: Path, first_step: int) -> None:
        writer_class = require_tensorboard()
        # purge_step: TensorBoard hides events at or after it from earlier files, i.e. what a resumed
        # run abandoned after its checkpoint (the checkpoint's own step was logged and stays).
        purge = first_step + 1 if first_step > 0 else None
        self.writer = writer_class(log_dir=str(Path(run_path) / TENSORBOARD_FOLDER), purge_step=purge)

    def scalars(self, step: int, record: dict[str, Any]) -> None:
        """Every known scalar of a metrics.jsonl record."""
        for tag, value in scalar_tags(record).items():
            self.writer.add_scalar(tag, value, step)

    def image(self, step: int, grid: torch.Tensor) -> None:
        """A uint8 (C, H, W) preview grid under the tag `samples`; flushed so a running TensorBoard shows it."""
        self.writer.add_image("samples", grid.cpu(), step, dataformats="CHW")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
