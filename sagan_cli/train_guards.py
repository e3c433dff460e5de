"""Guards of the training loop: stop requests, rank agreement under torchrun, non-finite losses and weights.

Kept out of train.py so the loop reads in one sitting; none of these draws a random number or
changes a weight.
"""

from __future__ import annotations

from pathlib import Path

import torch

from . import distributed
from .errors import DivergenceError


class StopFlag:
    """Set by a signal handler; the loop checks it between steps and saves before exiting."""

    def __init__(self) -> None:
        self.signal_number: int | None = None

    def request(self, signal_number: int) -> None:
        self.signal_number = signal_number


class RankAgreement:
    """Under torchrun: the losses averaged over ranks, and a stop decision every rank takes at the same step.

    One small all-reduce per step carries the losses and this rank's stop flag. The flag is read
    one step late, after the next step is queued, so waiting for it does not drain the device queue
    every step: a signal seen during step k stops every rank after step k+1, whichever rank saw it.
    In one process the losses pass through and a signal stops after the current step, as before.
    """

    def __init__(self, world: distributed.World) -> None:
        self.world = world
        self.pending: torch.Tensor | None = None  # the previous step's summed stop flags

    def __call__(self, losses: dict[str, torch.Tensor], stop: StopFlag) -> tuple[dict[str, torch.Tensor], bool]:
        requested = stop.signal_number is not None
        if not self.world.distributed:
            return losses, requested
        values = torch.stack([value.float() for value in losses.values()])  # (L,)
        flag = torch.full((1,), float(requested), device=values.device)
        summed = distributed.agree(torch.cat([values, flag]))  # (L+1,), on the device
        stopping = self.pending is not None and bool(self.pending > 0)
        self.pending = summed[-1]
        means = summed[:-1] / self.world.world_size
        return dict(zip(losses, means.unbind(), strict=True)), stopping


class FiniteWatch:
    """Remembers, on the device, the first step whose losses were not finite.

    `update` runs every step without a host sync (a sync per step stalls CUDA/MPS queues); `check`
    reads the flag back (one sync) and runs only at log, preview and checkpoint steps, so nothing
    non-finite is logged, drawn or saved, and the error still names the step it began.
    """

    def __init__(self) -> None:
        self.first_bad: torch.Tensor | None = None  # int64 scalar on the device, -1 while all is finite
        self.losses: dict[str, torch.Tensor] = {}

    def update(self, step: int, losses: dict[str, torch.Tensor]) -> None:
        """Record this step's losses (device tensors); no host sync."""
        stacked = torch.stack(list(losses.values()))  # (L,)
        if self.first_bad is None:
            self.first_bad = torch.full((), -1, dtype=torch.int64, device=stacked.device)
        newly_bad = (self.first_bad < 0) & ~torch.isfinite(stacked).all()
        self.first_bad.masked_fill_(newly_bad, step)
        self.losses = losses

    def check(self, last_checkpoint: Path | None) -> None:
        """Raise DivergenceError naming the first non-finite step, if there was one (one host sync)."""
        if self.first_bad is None:
            return
        bad_step = int(self.first_bad)
        if bad_step < 0:
            return
        values = ", ".join(f"{k}={float(v):.4g}" for k, v in self.losses.items())
        kept = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint was saved yet"
        raise DivergenceError(
            f"training diverged at step {bad_step}: non-finite loss (now {values}); {kept}; "
            "try lower learning rates (--lr-g/--lr-d)"
        )


def weights_are_finite(*modules: torch.nn.Module | None) -> bool:
    """True when no parameter or buffer of the given modules is NaN or infinite."""
    tensors = [t for m in modules if m is not None for t in (*m.parameters(), *m.buffers()) if t.is_floating_point()]
    return all(bool(torch.isfinite(t).all()) for t in tensors)
