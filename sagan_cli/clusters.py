"""Pseudo-labels for unlabelled images: k-means clusters that a class-conditional SAGAN trains on.

`sagan train --clusters K` groups the training images into K clusters once, before the first
step, and trains the conditional model (conditional BN in G, projection D) with the cluster of
each image as its class. Samples then draw a cluster by its share of the data (the model's
`class_weights`), so the mix of images follows the data. This is the idea of self-conditioned
GANs (Liu et al., CVPR 2020). The first clustering is on downsampled pixels; with
`--recluster-every N` the images are clustered again every N steps on D's own features, starting
from the current clusters so that each keeps its number (and G its meaning for it).
Pure torch; deterministic for a seed on a given machine.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from . import distributed
from .checkpoint import load_tensors
from .config import TrainConfig
from .data import ImageData, to_model_range
from .model import Discriminator, ModelConfig
from .runtime import preferred_memory_format

FEATURE_SIZE = 16  # images are area-downsampled to at most 16x16 before clustering
D_FEATURE_SIZE = 4  # D's last feature map is area-downsampled to at most 4x4 before re-clustering
MAX_ITERATIONS = 50  # Lloyd iterations; clustering stops earlier when no image changes cluster
CHUNK = 8192  # images per distance computation: bounds memory at CHUNK x K distances
LABELS_PART = "clusters"  # a --recluster-every run's checkpoints hold each image's cluster (N,) int32 ...
LABELS_TENSOR = f"{LABELS_PART}.labels"  # ... under this name (written by cluster_tensors, read by stored_clusters)


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
    return _relabel_by_size(_lloyd(features, centres), k)


def _lloyd(features: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Lloyd's iterations from `centres` (K, F) until no row changes cluster: the cluster (N,) of each row."""
    k = centres.shape[0]
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
    return assignment


def recluster(features: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """New clusters (N,) of `features` (N, F), starting from each current cluster's mean: cluster c stays
    "the cluster near the old c", so a conditional model's class c keeps (most of) its images.

    A currently empty cluster starts at the mean of all rows and usually stays empty.
    """
    counts = torch.bincount(labels, minlength=k)  # (K,)
    sums = torch.zeros(k, features.shape[1], dtype=features.dtype).index_add_(0, labels, features)  # (K, F)
    sums[counts == 0] = features.mean(dim=0)
    return _lloyd(features, sums / counts.clamp(min=1).unsqueeze(1).to(features.dtype))


@torch.no_grad()
def discriminator_features(
    discriminator: Discriminator, images: torch.Tensor, device: torch.device, batch_size: int = 256
) -> torch.Tensor:
    """uint8 images (N, C, S, S) -> unit-length float features (N, C_last * s * s) on the CPU from D's last
    feature map, area-downsampled to s = min(r0, D_FEATURE_SIZE). D is used in eval mode (its spectral-norm
    power iteration does not advance) and left in the mode it was in."""
    was_training = discriminator.training
    discriminator.eval()
    memory_format = preferred_memory_format(device)
    chunks = []
    try:
        for start in range(0, images.shape[0], batch_size):
            x = to_model_range(images[start : start + batch_size].to(device)).contiguous(memory_format=memory_format)
            h = discriminator.features(x).float()  # (b, C_last, r0, r0)
            if h.shape[-1] > D_FEATURE_SIZE:
                h = F.adaptive_avg_pool2d(h, D_FEATURE_SIZE)  # (b, C_last, s, s)
            chunks.append(F.normalize(h.flatten(1), dim=1).cpu())
    finally:
        discriminator.train(was_training)
    return torch.cat(chunks)


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


def recluster_data(
    discriminator: Discriminator, data: ImageData, model: ModelConfig, device: torch.device
) -> tuple[ModelConfig, float]:
    """Cluster `data` again on D's features (data.labels replaced); the model config with the new cluster
    sizes as class_weights, and the fraction of images that kept their cluster.

    Under torchrun every rank clusters (D is the same everywhere) and then takes rank 0's clusters, so
    the ranks agree even where their arithmetic could break a tie differently.
    """
    assert data.labels is not None  # a clustered run's data (runs.apply_clusters)
    features = discriminator_features(discriminator, data.images, device)  # (N, F)
    labels = distributed.from_main(recluster(features, data.labels, model.num_classes), device)  # (N,)
    kept = float((labels == data.labels).double().mean())
    counts = torch.bincount(labels, minlength=model.num_classes)
    data.labels = labels
    return replace(model, class_weights=tuple(int(c) for c in counts)), kept


def cluster_tensors(config: TrainConfig, data: object) -> dict[str, torch.Tensor]:
    """What a --recluster-every run's checkpoint stores besides the weights: each image's current cluster,
    which --resume cannot recompute (it depends on D's weights at every past re-clustering)."""
    if not config.recluster_every or not isinstance(data, ImageData) or data.labels is None:
        return {}
    return {LABELS_TENSOR: data.labels.to(torch.int32)}


def stored_clusters(checkpoint: Path) -> torch.Tensor | None:
    """Each image's cluster (N,) as a checkpoint of a --recluster-every run stored it; None when it holds none."""
    return load_tensors(checkpoint, LABELS_PART).get(LABELS_TENSOR.removeprefix(f"{LABELS_PART}."))
