"""Adversarial losses, one registry entry each; `train_step` takes the run's loss from here.

A new loss is one `register_loss(GanLoss(...))` call: a name (stored as TrainConfig.loss) and the
two functions from discriminator scores to the scalar each network minimises.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import UsageError

DEFAULT_LOSS = "hinge"


@dataclass(frozen=True)
class GanLoss:
    """What D and G minimise, from D's scores on real (B,) and fake (B,) images."""

    name: str
    discriminator: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (d_real, d_fake) -> scalar
    generator: Callable[[torch.Tensor], torch.Tensor]  # d_fake (scores of G's images, through D) -> scalar


LOSSES: dict[str, GanLoss] = {}


def register_loss(loss: GanLoss) -> GanLoss:
    """Add a loss under its name (names are unique)."""
    if loss.name in LOSSES:
        raise ValueError(f"loss {loss.name!r} is already registered")
    LOSSES[loss.name] = loss
    return loss


def get_loss(name: str) -> GanLoss:
    """The registered loss `name`; UsageError naming the known ones otherwise."""
    if name not in LOSSES:
        raise UsageError(f"unknown loss {name!r}; use one of {', '.join(LOSSES)}")
    return LOSSES[name]


def _hinge_d(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    return F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean()


def _hinge_g(d_fake: torch.Tensor) -> torch.Tensor:
    return -d_fake.mean()


# The paper's loss (SAGAN, eq. 3, after Lim & Ye 2017 / Miyato et al. 2018).
register_loss(GanLoss(DEFAULT_LOSS, _hinge_d, _hinge_g))
