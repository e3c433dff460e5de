"""`sagan interpolate`, `sagan evaluate` and `sagan compare`, registered on the main app."""

from __future__ import annotations

from .cli import app
from .errors import SaganError


@app.command(epilog="Example: sagan interpolate CKPT --seeds 3,7 --steps 10 -o walk.png")
def interpolate() -> None:
    """Walk the latent space between seeds (grid or GIF). Not available yet."""
    raise SaganError("`sagan interpolate` is not available yet in this version")


@app.command(epilog="Example: sagan evaluate --fid --json")
def evaluate() -> None:
    """Score a checkpoint with FID / IS / KID. Not available yet."""
    raise SaganError("`sagan evaluate` is not available yet in this version")


@app.command(epilog="Example: sagan compare runs/mnist-attn/checkpoints/final.safetensors runs/mnist-noattn/checkpoints/final.safetensors")
def compare() -> None:
    """Compare checkpoints side by side. Not available yet."""
    raise SaganError("`sagan compare` is not available yet in this version")
