"""A small MNIST digit classifier, used as the feature extractor for digit FID/KID/IS.

Pure module: the model and one loader for the shipped weights
(``sagan_cli/assets/digits_classifier.safetensors``, trained by
``scripts/train_digits_classifier.py``; see ``docs/digits-classifier.md``).
Scores computed in this feature space are NOT comparable to Inception-based FIDs.

Input convention (same as the generator's output): float (N, 1, 28, 28) in [-1, 1],
i.e. uint8 pixels ``p`` map to ``p / 127.5 - 1`` (0 = black background, 255 = white ink).
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

__all__ = [
    "DigitsClassifier",
    "FEATURE_DIM",
    "NUM_CLASSES",
    "IMAGE_SIZE",
    "digits_weights_path",
    "fit_to_classifier",
    "load_digits_classifier",
    "uint8_to_model_input",
]

FEATURE_DIM = 128  # width of the penultimate layer (features for FID/KID)
NUM_CLASSES = 10  # digits 0..9 (logits for IS)
IMAGE_SIZE = 28
WEIGHTS_RESOURCE = "assets/digits_classifier.safetensors"


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    """3x3 'valid' convolution (no padding, so H and W shrink by 2), BatchNorm, ReLU."""
    return [nn.Conv2d(c_in, c_out, 3, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class DigitsClassifier(nn.Module):
    """CNN conv32-conv32-pool-conv64-conv64-pool-fc128-fc10 with BatchNorm (~200k parameters)."""

    def __init__(self, dropout: float = 0.3) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_conv_bn_relu(1, 32),  # (N, 32, 26, 26)
            *_conv_bn_relu(32, 32),  # (N, 32, 24, 24)
            nn.MaxPool2d(2),  # (N, 32, 12, 12)
            *_conv_bn_relu(32, 64),  # (N, 64, 10, 10)
            *_conv_bn_relu(64, 64),  # (N, 64, 8, 8)
            nn.MaxPool2d(2),  # (N, 64, 4, 4)
            nn.Flatten(),  # (N, 1024)
            nn.Linear(64 * 4 * 4, FEATURE_DIM, bias=False),  # (N, 128)
            nn.BatchNorm1d(FEATURE_DIM),
            nn.ReLU(inplace=True),  # (N, 128) penultimate features
        )
        self.dropout = nn.Dropout(dropout)  # identity in eval mode
        self.head = nn.Linear(FEATURE_DIM, NUM_CLASSES)  # (N, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Map images (N, 1, 28, 28) in [-1, 1] to (features (N, 128), logits (N, 10))."""
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"expected input of shape (N, 1, 28, 28), got {tuple(x.shape)}")
        features = self.body(x)  # (N, FEATURE_DIM), >= 0 after ReLU
        logits = self.head(self.dropout(features))  # (N, NUM_CLASSES)
        return features, logits


def uint8_to_model_input(images: torch.Tensor) -> torch.Tensor:
    """Convert uint8 digits (N, 28, 28) or (N, 1, 28, 28) to float (N, 1, 28, 28) in [-1, 1]."""
    if images.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images, got {images.dtype}")
    if images.dim() == 3:
        images = images.unsqueeze(1)
    return images.float() / 127.5 - 1.0


def fit_to_classifier(pixels: torch.Tensor) -> torch.Tensor:
    """Float grey images (N, 1, H, W) -> (N, 1, 28, 28): unchanged at 28x28, else an antialiased bilinear resize.

    This lets a model trained on digits at 32 or 64 px be scored in the same feature space, the way
    Inception resizes every input to 299x299. Samples and reference go through the same resize.
    """
    if pixels.dim() != 4 or pixels.shape[1] != 1:
        raise ValueError(f"expected grey images (N, 1, H, W), got {tuple(pixels.shape)}")
    if tuple(pixels.shape[2:]) == (IMAGE_SIZE, IMAGE_SIZE):
        return pixels
    return F.interpolate(pixels, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True, align_corners=False)


def digits_weights_path() -> Path:
    """Filesystem path of the shipped classifier weights (a safetensors file)."""
    return Path(str(importlib.resources.files("sagan_cli").joinpath(WEIGHTS_RESOURCE)))


def load_digits_classifier(device: str | torch.device = "cpu") -> DigitsClassifier:
    """Load the shipped weights (safetensors, never pickle) into a frozen DigitsClassifier in eval mode."""
    state = load_file(str(digits_weights_path()), device=str(device))
    model = DigitsClassifier()
    model.load_state_dict(state, strict=True)
    model.requires_grad_(False)  # frozen extractor; gradients w.r.t. the input still work
    # channels_last runs ~1.5x faster on CPU (oneDNN); outputs match NCHW to ~1e-6.
    return model.to(device).to(memory_format=torch.channels_last).eval()
