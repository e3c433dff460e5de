"""Pseudo-labels for unlabelled images: k-means clusters that a class-conditional SAGAN trains on.

`sagan train --clusters K` groups the training images into K clusters once, before the first
step, and trains the conditional model (conditional BN in G, projection D) with the cluster of
each image as its class. Samples then draw a cluster by its share of the data (the model's
`class_weights`), so the mix of images follows the data. This is the idea of self-conditioned
GANs (Liu et al., CVPR 2020), clustered once on downsampled pixels instead of re-clustered on
D's features during training. Pure torch; deterministic for a seed on a given machine.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FEATURE_SIZE = 16  # images are area-downsampled to at most 16x16 before clustering
MAX_ITERATIONS = 50  # Lloyd iterations; clustering stops earlier when no image changes cluster
CHUNK = 8192  # images per distance computation: bounds memory at CHUNK x K distances


def image_features(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, S, S) -> float features (N, C * s * s) in [0, 1], s = min(S, FEATURE_SIZE)."""
    size = min(images.shape[-1], FEATURE_SIZE)
    features = []
    for start in range(0, images.shape[0], CHUNK):
        chunk = images[start : start + CHUNK].float().div_(255)  # (n, C, S, S)
        if size != images.shape[-1]:
            chunk = F.adaptive_avg_pool2d(chunk, size)  # (n, C, s, s)
        features.append(chunk.flatten(1))
    return torch.cat(features)


def _nearest(features: torch.Tensor, centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index (N,) of each row's nearest centre and the squared distance (N,) to it."""
    indices, distances = [], []
    for start in range(0, features.shape[0], CHUNK):
        d2 = torch.cdist(features[start : start + CHUNK], centres).square_()  # (n, K)
        best = d2.min(dim=1)
        indices.append(best.indices)
        distances.append(best.values)
    return torch.cat(indices), torch.cat(distances)


def kmeans(features: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """Cluster index (N,) of each row of `features` (N, F): k-means++ seeding from `seed`, then Lloyd."""
    n = features.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must lie in 1..{n}, got {k}")
    generator = torch.Generator().manual_seed(seed)
    centres = features[torch.randint(n, (1,), generator=generator)]  # (1, F)
    _, d2 = _nearest(features, centres)
    for _ in range(k - 1):  # k-means++: each new centre far from the ones so far
        weights = d2.double() if d2.sum() > 0 else torch.ones(n, dtype=torch.float64)
        pick = features[torch.multinomial(weights, 1, generator=generator)]  # (1, F)
        centres = torch.cat([centres, pick])
        d2 = torch.minimum(d2, torch.cdist(features, pick).square_().squeeze(1))
    assignment = _nearest(features, centres)[0]
    for _ in range(MAX_ITERATIONS):
        counts = torch.bincount(assignment, minlength=k)  # (K,)
        sums = torch.zeros_like(centres).index_add_(0, assignment, features)  # (K, F)
        filled = counts > 0  # an emptied cluster keeps its centre
        centres[filled] = sums[filled] / counts[filled].unsqueeze(1).to(sums.dtype)
        new_assignment = _nearest(features, centres)[0]
        if torch.equal(new_assignment, assignment):
            break
        assignment = new_assignment
    return _relabel_by_size(assignment, k)


def _relabel_by_size(assignment: torch.Tensor, k: int) -> torch.Tensor:
    """Number clusters from largest to smallest (ties by first image): labels do not depend on centre order."""
    counts = torch.bincount(assignment, minlength=k)
    first = torch.full((k,), assignment.shape[0], dtype=torch.int64)
    first.scatter_reduce_(0, assignment, torch.arange(assignment.shape[0]), reduce="amin")
    order = sorted(range(k), key=lambda c: (-int(counts[c]), int(first[c])))
    new_label = torch.empty(k, dtype=torch.int64)
    new_label[torch.tensor(order)] = torch.arange(k)
    return new_label[assignment]


def cluster_images(images: torch.Tensor, k: int, seed: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Pseudo-labels (N,) int64 for uint8 images (N, C, S, S), and the images per cluster (K counts).

    A cluster can end up empty (fewer distinct images than k); its count is 0 and it is never drawn.
    """
    labels = kmeans(image_features(images), k, seed)
    counts = torch.bincount(labels, minlength=k)
    return labels, tuple(int(c) for c in counts)
