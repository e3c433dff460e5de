"""Differentiable augmentation for the discriminator's input (DiffAugment, Zhao et al. 2020, translation only).

Pure module: tensors in, tensors out. Real and generated images both pass through it before D, in
the D step and the G step, so D never sees an un-augmented image and G gets gradients through it.
"""

from __future__ import annotations

import torch

AUGMENTATIONS = ("none", "translation")
TRANSLATION_FRACTION = 0.125  # shift by up to 1/8 of the image side, as DiffAugment's translation


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


def augment(images: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """Apply the named augmentation ("none" returns the input itself)."""
    if kind == "none":
        return images
    if kind == "translation":
        return translate(images, generator)
    raise ValueError(f"unknown augmentation {kind!r}; use one of {AUGMENTATIONS}")
