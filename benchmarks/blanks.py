"""Collapse check for colour models, in pixel space: no Inception weights needed.

FID / IS on RGB need torch-fidelity's Inception weights, which cannot be fetched offline. This
script measures the failure seen on the 32 px emoji run instead, where G drifts to pale, nearly
blank images, by comparing each checkpoint's samples with the training images:

- blank share: the share of samples whose pixel standard deviation is below the 1st percentile of
  the real images' (so about 1% for a model that draws like the data; a collapsed model gets most);
- contrast: the mean per-image pixel standard deviation, samples against reals;
- spread: the mean pixel distance between two different samples, against two different reals
  (a model drawing one image everywhere gets 0).

These are coarse: they see blanks and sameness, not whether an image looks like an emoji.

    python benchmarks/blanks.py FOLDER runs/emoji32/checkpoints/step_*.safetensors --image-size 32 --json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from sagan_cli.data import load_folder
from sagan_cli.sampling import sample_from_checkpoint

BLANK_PERCENTILE = 0.01  # a sample is blank when its pixel std is below this quantile of the reals'


def image_stats(images: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Per-image pixel std in [0, 1] units (N,), and the mean L2 distance per pixel between image i and i+1."""
    pixels = images.flatten(1).float() / 255.0  # (N, C*S*S)
    spread = (pixels[1:] - pixels[:-1]).pow(2).mean(1).sqrt().mean()  # neighbours in a random order
    return pixels.std(dim=1), float(spread)


def blank_report(folder: Path, checkpoints: list[Path], image_size: int, num_samples: int, seed: int) -> list[dict]:
    """One row for the reals, then one per checkpoint."""
    reals = load_folder(folder, 3, image_size, lambda _line: None).images  # uint8 (N, 3, S, S)
    order = torch.randperm(len(reals), generator=torch.Generator().manual_seed(seed))[:num_samples]
    real_std, real_spread = image_stats(reals[order])
    threshold = float(torch.quantile(image_stats(reals)[0], BLANK_PERCENTILE))
    rows = [_row("real images", None, real_std, real_spread, threshold)]
    for checkpoint in checkpoints:
        images, info, _ = sample_from_checkpoint(checkpoint, num_samples, seed=seed, device="cpu")
        std, spread = image_stats(images)
        rows.append(_row(str(checkpoint), info.step, std, spread, threshold))
    return rows


def _row(what: str, step: int | None, std: torch.Tensor, spread: float, threshold: float) -> dict:
    return {
        "what": what,
        "step": step,
        "blank_share": round(float((std < threshold).float().mean()), 4),
        "contrast": round(float(std.mean()), 4),
        "spread": round(spread, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="the training folder the checkpoints learned from")
    parser.add_argument("checkpoints", type=Path, nargs="+")
    parser.add_argument("--image-size", type=int, required=True, help="the checkpoints' image size")
    parser.add_argument("-n", "--num-samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="one JSON list on stdout instead of a table")
    args = parser.parse_args()
    rows = blank_report(args.folder, args.checkpoints, args.image_size, args.num_samples, args.seed)
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(f"{'step':>6}  {'blank':>6}  {'contrast':>8}  {'spread':>6}  what")
    for row in rows:
        step = "-" if row["step"] is None else str(row["step"])
        print(f"{step:>6}  {row['blank_share']:6.3f}  {row['contrast']:8.3f}  {row['spread']:6.3f}  {row['what']}")


if __name__ == "__main__":
    main()
