"""A score for colour models offline: FID and IS in the features of a classifier trained on the emoji.

FID / IS on RGB normally use torch-fidelity's Inception weights, which cannot be fetched here. For
the Noto emoji (docs/results.md, "Colour images"; Twemoji, npm emoji-datasource-twitter, the same
way with its own weights) this script trains its own extractor instead, the
way the digits extractor stands in for Inception on MNIST: a small CNN that learns each emoji's
category from `emoji.json` (Smileys & Emotion, People & Body, Flags, ... 10 in all) at 32 px, from
a fixed seed, on 85% of the images (the other 15% report its accuracy). Then, per checkpoint:

- emoji-FID: the Frechet distance (classes.frechet_distance, as for intra-class FID) between the 128-d penultimate features of N samples and of all
  the training images (lower is better);
- emoji-IS: exp(E KL(p(y|x) || p(y))) over the 10 categories (the real images' value is the mark);
- the two halves of log emoji-IS: H(p(y)), how evenly the samples spread over the categories, and
  E H(p(y|x)), how unsure the classifier is of each sample (so a model that over-draws rare
  categories can gain IS without drawing any emoji better);
- category shares: how often the classifier names each category among the samples (JSON only);

and two reference rows: half of the real images against the other half (the floor at this N),
and the same half blurred (2x2 average, then upsampled), which must score worse than the floor.
These numbers are comparable only with each other: same weights file, same N, same image size.

    python benchmarks/emoji_fid.py package/img/google/64 runs/emoji32/checkpoints/final.safetensors \
        --emoji-json package/emoji.json --weights emoji-extractor.safetensors -n 2000 --json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from classes import frechet_distance  # benchmarks/ is on sys.path when this runs as a script
from safetensors.torch import load_file, save_file
from torch import nn

from sagan_cli.data import load_folder_paths, load_image_paths
from sagan_cli.sampling import sample_from_checkpoint

IMAGE_SIZE = 32
FEATURE_DIM = 128
EPOCHS = 30
HELD_OUT = 0.15


class EmojiNet(nn.Module):
    """uint8 (N, 3, 32, 32) -> (features (N, 128), logits (N, classes))."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width_in = 3
        for width in (32, 64, FEATURE_DIM):  # 32 -> 16 -> 8 -> 4
            for _ in range(2):
                layers += [nn.Conv2d(width_in, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
                width_in = width
            layers.append(nn.MaxPool2d(2))
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(FEATURE_DIM, num_classes)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.float() / 127.5 - 1  # (N, 3, 32, 32) in [-1, 1]
        features = self.body(x).mean(dim=(2, 3))  # (N, 128)
        return features, self.head(features)


def emoji_labels(paths: list[Path], emoji_json: Path) -> tuple[torch.Tensor, list[str]]:
    """Each image's category index (skin-tone variants take their emoji's), and the category names."""
    category_of: dict[str, str] = {}
    for entry in json.loads(emoji_json.read_text()):
        category_of[entry["image"]] = entry["category"]
        for variant in (entry.get("skin_variations") or {}).values():
            category_of[variant["image"]] = entry["category"]
    names = sorted(set(category_of.values()))
    missing = [p.name for p in paths if p.name not in category_of]
    if missing:
        raise SystemExit(f"{len(missing)} images have no entry in {emoji_json} (e.g. {missing[0]}); wrong folder?")
    return torch.tensor([names.index(category_of[p.name]) for p in paths]), names


def shift(images: torch.Tensor, generator: torch.Generator, most: int = 3) -> torch.Tensor:
    """Random translation by up to `most` pixels, filling with white (the images' background)."""
    padded = F.pad(images, (most,) * 4, value=255)
    dx, dy = (int(v) for v in torch.randint(0, 2 * most + 1, (2,), generator=generator))
    return padded[:, :, dy : dy + IMAGE_SIZE, dx : dx + IMAGE_SIZE]


def train_extractor(images: torch.Tensor, labels: torch.Tensor, num_classes: int, seed: int) -> tuple[EmojiNet, float]:
    """The classifier trained on 85% of the images from `seed`, and its accuracy on the other 15%."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    order = torch.randperm(len(images), generator=generator)
    cut = int(len(images) * HELD_OUT)
    test, train = order[:cut], order[cut:]
    net = EmojiNet(num_classes)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _epoch in range(EPOCHS):
        net.train()
        for batch in train[torch.randperm(len(train), generator=generator)].split(64):
            loss = F.cross_entropy(net(shift(images[batch], generator))[1], labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    net.eval()
    with torch.no_grad():
        accuracy = float((net(images[test])[1].argmax(1) == labels[test]).float().mean())
    return net, accuracy


@torch.no_grad()
def features_and_logits(net: EmojiNet, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    outputs = [net(chunk) for chunk in images.split(500)]
    return torch.cat([f for f, _ in outputs]).double(), torch.cat([lg for _, lg in outputs]).double()


def inception_score(logits: torch.Tensor) -> float:
    p = logits.softmax(1)
    marginal = p.mean(0, keepdim=True)
    return float((p * (p.clamp(min=1e-12).log() - marginal.log())).sum(1).mean().exp())


def entropies(logits: torch.Tensor) -> tuple[float, float]:
    """(H(p(y)), E H(p(y|x))) in nats: log IS is the first minus the second.

    The first is how evenly the samples spread over the categories (the real images' value is the
    mark, not the maximum), the second how unsure the classifier is of each sample (lower is surer).
    """
    p = logits.softmax(1)
    marginal = p.mean(0)
    per_sample = -(p * p.clamp(min=1e-12).log()).sum(1).mean()
    return float(-(marginal * marginal.clamp(min=1e-12).log()).sum()), float(per_sample)


def load_or_train(weights: Path, images: torch.Tensor, labels: torch.Tensor, names: list[str], seed: int) -> EmojiNet:
    net = EmojiNet(len(names))
    if weights.exists():
        net.load_state_dict(load_file(str(weights)))
        return net.eval()
    start = time.perf_counter()
    net, accuracy = train_extractor(images, labels, len(names), seed)
    print(
        f"trained the extractor in {time.perf_counter() - start:.0f} s: held-out accuracy {accuracy:.3f}",
        file=sys.stderr,
    )
    metadata = {"seed": str(seed), "held_out_accuracy": f"{accuracy:.4f}", "categories": json.dumps(names)}
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights), metadata=metadata)
    return net


def report(args: argparse.Namespace) -> list[dict]:
    paths = load_folder_paths(args.folder)
    images = load_image_paths(paths, 3, IMAGE_SIZE, lambda _line: None, str(args.folder))  # uint8 (N, 3, 32, 32)
    labels, names = emoji_labels(paths, args.emoji_json)
    net = load_or_train(args.weights, images, labels, names, args.seed)
    real_features, real_logits = features_and_logits(net, images)
    half = torch.randperm(len(images), generator=torch.Generator().manual_seed(args.seed))
    first, second = half[: len(images) // 2], half[len(images) // 2 :]
    blurred = F.interpolate(F.avg_pool2d(images[first].float(), 2), scale_factor=2, mode="nearest").round().byte()
    blurred_features, blurred_logits = features_and_logits(net, blurred)
    rows = [
        _row(
            "real: half against the other half",
            None,
            len(first),
            real_features[first],
            real_features[second],
            real_logits[first],
            names,
        ),
        _row(
            "real, blurred: half against the other half",
            None,
            len(first),
            blurred_features,
            real_features[second],
            blurred_logits,
            names,
        ),
    ]
    for checkpoint in args.checkpoints:
        samples, info, _ = sample_from_checkpoint(checkpoint, args.num_samples, seed=args.seed, device="cpu")
        if samples.shape[1:] != (3, IMAGE_SIZE, IMAGE_SIZE):
            raise SystemExit(f"{checkpoint}: samples are {tuple(samples.shape[1:])}, this extractor takes 3x32x32")
        features, logits = features_and_logits(net, samples)
        rows.append(_row(str(checkpoint), info.step, len(samples), features, real_features, logits, names))
    return rows


def _row(
    what: str,
    step: int | None,
    n: int,
    features: torch.Tensor,
    reference: torch.Tensor,
    logits: torch.Tensor,
    names: list[str],
) -> dict:
    shares = torch.bincount(logits.argmax(1), minlength=len(names)).double() / len(logits)
    mix_entropy, sample_entropy = entropies(logits)
    return {
        "what": what,
        "step": step,
        "n": n,
        "emoji_fid": round(frechet_distance(features, reference), 3),
        "emoji_is": round(inception_score(logits), 3),
        "mix_entropy": round(mix_entropy, 4),
        "sample_entropy": round(sample_entropy, 4),
        "category_shares": {name: round(float(share), 4) for name, share in zip(names, shares, strict=True)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "folder", type=Path, help="package/img/google/64 of emoji-datasource-google (or img/twitter/64 of -twitter)"
    )
    parser.add_argument("checkpoints", type=Path, nargs="*", help="checkpoints of 32 px runs on that folder")
    parser.add_argument("--emoji-json", type=Path, required=True, help="package/emoji.json (the categories)")
    parser.add_argument(
        "--weights", type=Path, required=True, help="the extractor: read if it exists, else trained and written"
    )
    parser.add_argument("-n", "--num-samples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0, help="of the extractor's training, the halves and the samples")
    parser.add_argument("--json", action="store_true", help="one JSON list on stdout instead of a table")
    args = parser.parse_args()
    rows = report(args)
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(f"{'step':>6}  {'n':>5}  {'FID':>8}  {'IS':>6}  {'H(y)':>6}  {'H(y|x)':>6}  what")
    for row in rows:
        step = "-" if row["step"] is None else str(row["step"])
        print(
            f"{step:>6}  {row['n']:>5}  {row['emoji_fid']:8.3f}  {row['emoji_is']:6.3f}  "
            f"{row['mix_entropy']:6.3f}  {row['sample_entropy']:6.3f}  {row['what']}"
        )


if __name__ == "__main__":
    main()
