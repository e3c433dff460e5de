"""Per-class sanity of a digits model, judged by the shipped digits classifier (sagan_cli/digits.py).

Unconditional checkpoint: the share of each digit among N samples (an even model gives each ~10%;
issue 12 asks 8-12%) and the class entropy in bits (log2 10 = 3.32 is perfectly even).
Conditional checkpoint: for each class K, the share of samples drawn with label K that the
classifier calls K (issue 12 asks >= 97%), and the same histogram.

Both: the intra-class FID (Miyato & Koyama 2018), FID between the samples of each class and the
real digits of that class in the classifier's feature space, and its mean over classes. It sees
what the overall FID, IS and class accuracy reward instead of punish: a model that draws one digit
per class (within-class collapse) gets a high IS and full accuracy but a large intra-class FID.
Classes are the drawn labels for a conditional model, the classifier's predictions otherwise.
A --clusters model re-clustered during training (its checkpoint stores each image's cluster) also
gets each cluster's share of its majority digit in the data against among G's samples of it.

    python benchmarks/classes.py runs/mnist-attn/checkpoints/final.safetensors -n 10000 --json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from sagan_cli.clusters import stored_clusters
from sagan_cli.digits import NUM_CLASSES, fit_to_classifier, load_digits_classifier, uint8_to_model_input
from sagan_cli.idx import load_bundled_mnist
from sagan_cli.sampling import sample_from_checkpoint


def class_report(checkpoint: Path, num_samples: int, seed: int = 0) -> dict[str, object]:
    """Histogram of predicted digits, class entropy and (conditional models) per-class accuracy."""
    images, info, _ = sample_from_checkpoint(checkpoint, num_samples, seed=seed, device="cpu")  # uint8 (N, C, S, S)
    if info.model.channels != 1:
        raise SystemExit(f"error: {checkpoint} is an RGB model; the digits classifier needs grey digits")
    classifier = load_digits_classifier()
    real_images, real_labels = load_bundled_mnist()  # the reference digits: intra-class FID and cluster mixes
    with torch.no_grad():
        pixels = fit_to_classifier(images.float() / 127.5 - 1.0)  # (N, 1, 28, 28) in [-1, 1]
        outputs = [classifier(chunk) for chunk in pixels.split(1000)]
        features = torch.cat([f for f, _ in outputs])  # (N, 128)
        predicted = torch.cat([logits.argmax(1) for _, logits in outputs])  # (N,)
    counts = torch.bincount(predicted, minlength=NUM_CLASSES).tolist()
    shares = [c / num_samples for c in counts]
    entropy = -sum(p * math.log2(p) for p in shares if p > 0)
    report: dict[str, object] = {
        "checkpoint": str(checkpoint),
        "step": info.step,
        "conditional": info.model.num_classes > 0 and not info.model.class_weights,
        "clusters": len(info.model.class_weights),
        "num_samples": num_samples,
        "seed": seed,
        "class_shares": [round(p, 4) for p in shares],
        "min_share": round(min(shares), 4),
        "max_share": round(max(shares), 4),
        "class_entropy_bits": round(entropy, 4),
    }
    groups = predicted
    # The same labels sample_from_checkpoint drew (from the seed's label stream).
    from sagan_cli.sampling import sample_labels

    labels = sample_labels(num_samples, info.model, seed)
    if labels is not None and info.model.class_weights:  # --clusters: how surely each cluster draws one digit
        majority = sum(int(torch.bincount(predicted[labels == k]).max()) for k in labels.unique())
        report["cluster_purity"] = round(majority / num_samples, 4)
        report.update(cluster_mix(checkpoint, predicted, labels, real_labels))
    elif labels is not None:
        groups = labels
        per_class = [float((predicted[labels == k] == k).float().mean()) for k in range(info.model.num_classes)]
        report["class_accuracy"] = [round(a, 4) for a in per_class]
        report["min_class_accuracy"] = round(min(per_class), 4)
        report["accuracy"] = round(float((predicted == labels).float().mean()), 4)
    intra = intra_class_fid(features, groups, classifier, real_images, real_labels)
    report["intra_fid"] = [round(v, 3) for v in intra]
    report["mean_intra_fid"] = round(sum(intra) / len(intra), 3)
    return report


def cluster_mix(
    checkpoint: Path, predicted: torch.Tensor, labels: torch.Tensor, truth: torch.Tensor
) -> dict[str, object]:
    """For a --recluster-every run on the bundled digits: each training cluster's true-digit mix against the
    digits G draws for that cluster (`truth`: the bundled digits' labels, the run's training data offline).
    Shows whether G reproduces a mixed cluster or draws its majority digit.

    Rows (one per cluster that holds images): [cluster, images, majority digit, its share in the cluster,
    its share among G's samples of the cluster]. Empty for other checkpoints (clusters not stored)."""
    stored = stored_clusters(checkpoint)
    if stored is None or stored.shape != truth.shape:
        return {}
    stored = stored.long()
    rows, kept = [], 0
    for k in range(int(stored.max()) + 1):
        digits = torch.bincount(truth[stored == k], minlength=NUM_CLASSES)
        if digits.sum() == 0 or not (labels == k).any():
            continue
        top = int(digits.argmax())
        kept += int(digits.max())
        drawn = float((predicted[labels == k] == top).float().mean())
        rows.append([k, int(digits.sum()), top, round(float(digits.max() / digits.sum()), 3), round(drawn, 3)])
    return {"training_cluster_purity": round(kept / len(truth), 4), "cluster_mix": rows}


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """FID between two feature sets (N, D) and (M, D), in float64; tr sqrt(S1 S2) from its eigenvalues."""
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)  # (D, D) each
    # S1 S2 is similar to a PSD matrix, so its eigenvalues are real and >= 0 up to round-off.
    eig = torch.linalg.eigvals(cov_a @ cov_b).real.clamp(min=0)
    return float((mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * eig.sqrt().sum())


def intra_class_fid(
    features: torch.Tensor,
    groups: torch.Tensor,
    classifier: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
) -> list[float]:
    """FID of each class's samples against the bundled real digits of that class (nan if < 2 samples)."""
    with torch.no_grad():
        real = torch.cat([classifier(chunk)[0] for chunk in uint8_to_model_input(images).split(1000)])  # (10000, 128)
    result = []
    for k in range(NUM_CLASSES):
        mine = features[groups == k]
        result.append(frechet_distance(mine, real[labels == k]) if len(mine) >= 2 else float("nan"))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("-n", "--num-samples", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a summary")
    args = parser.parse_args()
    for checkpoint in args.checkpoints:
        report = class_report(checkpoint, args.num_samples, args.seed)
        if args.json:
            print(json.dumps(report))
            continue
        shares = " ".join(f"{100 * p:.1f}" for p in report["class_shares"])  # type: ignore[union-attr]
        line = f"{checkpoint}: step {report['step']}, shares % [{shares}], entropy {report['class_entropy_bits']} bits"
        if report["conditional"]:
            line += (
                f", accuracy {100 * report['accuracy']:.2f}% (worst class {100 * report['min_class_accuracy']:.2f}%)"
            )
        line += f", mean intra-class FID {report['mean_intra_fid']}"
        print(line, file=sys.stderr)
        for k, size, digit, in_data, in_samples in report.get("cluster_mix", []):  # type: ignore[attr-defined]
            print(
                f"  cluster {k:3d} ({size} images): {100 * in_data:.0f}% {digit}s in the data, "
                f"{100 * in_samples:.0f}% of its samples",
                file=sys.stderr,
            )


if __name__ == "__main__":
    main()
