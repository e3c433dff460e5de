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


def mode_seeking(images: torch.Tensor, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """Mode-seeking term of MSGAN (Mao et al. 2019), which G minimises: 1 / (|G(z1)-G(z2)| / |z1-z2|).

    The ratio is the mean absolute pixel difference over the mean absolute latent difference,
    averaged over every pair of the batch drawn for the same class (every pair when `labels` is
    None). A G that ignores its latent within a class (one digit per class) drives the ratio to 0
    and this term up; sagan's conditional G did exactly that (docs/results.md). images (B, C, S, S),
    z (B, z_dim), labels (B,). No host sync: the class mask weights the pairs instead of selecting them.
    The term is 0 when no two samples share a class (tiny batches, small shards under torchrun).
    """
    flat = images.float().flatten(1)  # (B, C*S*S)
    image_gap = torch.cdist(flat, flat, p=1) / flat.shape[1]  # (B, B) mean |x_i - x_j|
    z_gap = torch.cdist(z.float(), z.float(), p=1) / z.shape[1]  # (B, B), > 0 off the diagonal
    pairs = torch.ones_like(image_gap, dtype=torch.bool).triu(1)  # i < j
    if labels is not None:
        pairs = pairs & (labels[:, None] == labels[None, :])
    weights = pairs.float()
    ratio = (weights * image_gap / (z_gap + torch.eye(len(z), device=z.device))).sum() / weights.sum().clamp(min=1)
    # A batch (or a rank's shard) with no two samples of one class has nothing to compare: 0, not 1e5.
    return torch.where(weights.sum() > 0, 1.0 / (ratio + 1e-5), torch.zeros_like(ratio))


def r1_penalty(d_real: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """Zero-centred R1 penalty (Mescheder et al. 2018): the mean over the real images of |dD(x)/dx|^2.

    d_real (n,) are D's scores of inputs[:n]; inputs (2n, C, S, S) is the leaf D saw, with
    requires_grad. The gradient stays in the graph (create_graph), so D's step also descends the
    penalty; the caller weights it (gamma / 2, times the lazy interval).
    """
    (grad,) = torch.autograd.grad(d_real.sum(), inputs, create_graph=True)  # (2n, C, S, S); the fake rows are 0
    return grad[: len(d_real)].float().square().flatten(1).sum(1).mean()
