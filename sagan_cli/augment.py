"""Differentiable augmentation for the discriminator's input (DiffAugment, Zhao et al. 2020).

Pure module: tensors in, tensors out. Real and generated images both pass through it before D, in
the D step and the G step, so D never sees an un-augmented image and G gets gradients through it.
A policy is "none" or a comma-separated list of operations, applied in DiffAugment's order
(color, translation, cutout) whatever order the list gives.
"""

from __future__ import annotations

import torch

OPERATIONS = ("color", "translation", "cutout")  # DiffAugment's order of application
TRANSLATION_FRACTION = 0.125  # shift by up to 1/8 of the image side, as DiffAugment's translation
CUTOUT_FRACTION = 0.5  # erase a square of half the image side, as DiffAugment's cutout


def parse_policy(policy: str) -> tuple[str, ...]:
    """The operations of a policy in application order: "none" -> (); "cutout,translation" -> ("translation", "cutout")."""
    if policy == "none":
        return ()
    names = policy.split(",")
    unknown = [name for name in names if name not in OPERATIONS]
    if unknown or len(set(names)) != len(names):
        raise ValueError(
            f"{policy!r} is unknown; use none, or one or more of {', '.join(OPERATIONS)} joined by commas "
            "(e.g. translation,cutout)"
        )
    return tuple(name for name in OPERATIONS if name in names)


def _uniform(b: int, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """One U[0, 1) draw per image, shaped to broadcast over (B, C, H, W): (B, 1, 1, 1)."""
    return torch.rand(b, 1, 1, 1, generator=generator).to(device=like.device, dtype=like.dtype)


def color(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """DiffAugment's colour jitter on [-1, 1] images: brightness, saturation, contrast, each per image.

    (B,C,S,S)->(B,C,S,S). Brightness adds U[-0.5, 0.5); saturation scales the distance from the pixel's
    channel mean by U[0, 2); contrast scales the distance from the image's mean by U[0.5, 1.5).
    """
    b = images.shape[0]
    images = images + (_uniform(b, generator, images) - 0.5)
    mean = images.mean(dim=1, keepdim=True)  # (B, 1, S, S)
    images = (images - mean) * (_uniform(b, generator, images) * 2) + mean
    mean = images.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    return (images - mean) * (_uniform(b, generator, images) + 0.5) + mean


def translate(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by its own random (dy, dx) in [-S/8, S/8], repeating the edge pixels: (B,C,S,S)->(B,C,S,S).

    Edge repetition (not zero padding) keeps the border the colour of the background, whether that is
    black digits' ground or white emoji's.
    """
    b, _, h, w = images.shape
    max_shift = max(1, round(min(h, w) * TRANSLATION_FRACTION))
    shifts = torch.randint(-max_shift, max_shift + 1, (2, b, 1), generator=generator).to(images.device)  # (2, B, 1)
    rows = (torch.arange(h, device=images.device) - shifts[0]).clamp_(0, h - 1)  # (B, H)
    cols = (torch.arange(w, device=images.device) - shifts[1]).clamp_(0, w - 1)  # (B, W)
    batch = torch.arange(b, device=images.device)[:, None, None, None]
    channel = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    return images[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]  # (B, C, H, W)


def cutout(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Set a square of half the image side to 0 (mid-grey in [-1, 1]) at a random centre per image.

    (B,C,S,S)->(B,C,S,S). The centre is uniform over the image, so the square may be clipped by an edge,
    as in DiffAugment.
    """
    b, _, h, w = images.shape
    size_h, size_w = max(1, round(h * CUTOUT_FRACTION)), max(1, round(w * CUTOUT_FRACTION))
    centre_y = torch.randint(0, h, (b, 1), generator=generator).to(images.device)  # (B, 1)
    centre_x = torch.randint(0, w, (b, 1), generator=generator).to(images.device)  # (B, 1)
    dy = torch.arange(h, device=images.device) - (centre_y - size_h // 2)  # (B, H)
    dx = torch.arange(w, device=images.device) - (centre_x - size_w // 2)  # (B, W)
    inside = ((dy >= 0) & (dy < size_h))[:, :, None] & ((dx >= 0) & (dx < size_w))[:, None, :]  # (B, H, W)
    return images * (~inside)[:, None].to(images.dtype)  # (B, C, H, W)


_APPLY = {"color": color, "translation": translate, "cutout": cutout}


def augment(images: torch.Tensor, policy: str, generator: torch.Generator) -> torch.Tensor:
    """Apply the policy's operations in order ("none" returns the input itself)."""
    for name in parse_policy(policy):
        images = _APPLY[name](images, generator)
    return images
