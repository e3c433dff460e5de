"""Attention maps: the softmax weights each self-attention layer used in one real forward pass.

The layers' opt-in capture (`SelfAttention.capture_weights`) keeps softmax(QK^T) computed from the
very q and k of that forward, so a map is what the model attended to, not a re-computation. A
generated image comes from exactly the latent and label `sagan sample CKPT -n 1 --seed S` uses.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import CheckpointInfo
from .data import to_model_range
from .errors import UsageError
from .model import Discriminator, Generator, ModelConfig, SelfAttention
from .plotting import QUERY_COLOURS
from .sampling import generate, sample_labels, sample_latents


@dataclass(frozen=True)
class AttentionOptions:
    """Defaults of `sagan attention`, read by its CLI options and by attention_from_checkpoint."""

    seed: int = 0
    output: str = "attention.png"
    use_ema: bool = True
    device: str = "auto"


ATTENTION_DEFAULTS = AttentionOptions()
FIGURE_SUFFIXES = (".png",)  # matplotlib writes the metadata (seed, checkpoint, queries) as PNG text chunks
MAX_QUERIES = len(QUERY_COLOURS)  # each query gets a colour of its own
DEFAULT_QUERY_COUNT = 5  # four on the object, one on the background
FOREGROUND_CONTRAST = 48  # luma levels (of 255) from the background that count as the object


@dataclass(frozen=True)
class Query:
    """A query point in image pixels: x to the right, y down, (0, 0) the top-left pixel."""

    x: int
    y: int

    def grid(self, image_size: int, resolution: int) -> tuple[int, int]:
        """(column, row) of the feature-map cell over this pixel, on a resolution x resolution map."""
        return self.x * resolution // image_size, self.y * resolution // image_size


@dataclass
class LayerAttention:
    """One attention layer's weights for one image."""

    network: str  # "G" or "D"
    resolution: int  # feature-map side: the map is resolution x resolution
    gamma: float  # the layer's gate: how much of the attention output reaches the next layer
    weights: torch.Tensor  # float (N, N) on the CPU, N = resolution**2; row i = query position i, sums to 1

    def query_map(self, query: Query, image_size: int) -> torch.Tensor:
        """The weights of the cell under `query` over all positions: (resolution, resolution), sums to 1."""
        column, row = query.grid(image_size, self.resolution)
        return self.weights[row * self.resolution + column].reshape(self.resolution, self.resolution)


@dataclass
class AttentionResult:
    """An image (uint8 (C, S, S)) and every attention layer's weights on it, bottom layer first."""

    image: torch.Tensor
    network: str
    layers: list[LayerAttention]


def attention_layers(module: nn.Module) -> dict[int, SelfAttention]:
    """The attention blocks of a G or D, keyed by feature-map size, in forward order."""
    return {int(name.rsplit(".", 1)[-1]): m for name, m in module.named_modules() if isinstance(m, SelfAttention)}


@contextlib.contextmanager
def capturing(module: nn.Module) -> Iterator[dict[int, SelfAttention]]:
    """Turn on weight capture in every attention block of `module` for the duration; clears it after."""
    layers = attention_layers(module)
    for layer in layers.values():
        layer.capture_weights, layer.weights = True, None
    try:
        yield layers
    finally:
        for layer in layers.values():
            layer.capture_weights, layer.weights = False, None


def _collect(network: str, layers: dict[int, SelfAttention]) -> list[LayerAttention]:
    collected = []
    for resolution, layer in layers.items():
        assert layer.weights is not None, f"attention layer {resolution} did not run"
        collected.append(
            LayerAttention(network, resolution, float(layer.gamma.detach()), layer.weights[0].float().cpu())
        )
    return collected


def generator_attention(generator: Generator, seed: int, class_index: int | None = None) -> AttentionResult:
    """G's image for `seed` (as `sagan sample -n 1 --seed S`) and the attention it used to draw it."""
    config = generator.config
    latents = sample_latents(1, config.z_dim, seed)
    labels = sample_labels(1, config, seed, class_index)
    with capturing(generator) as layers:
        image = generate(generator, latents, labels)[0]  # (C, S, S) uint8
        return AttentionResult(image, "G", _collect("G", layers))


@torch.inference_mode()
def discriminator_attention(discriminator: Discriminator, image: torch.Tensor) -> AttentionResult:
    """D's attention on one uint8 (C, S, S) image at the model's size and channels."""
    device = next(discriminator.parameters()).device
    batch = to_model_range(image[None]).to(device)  # (1, C, S, S) in [-1, 1], as in training
    # The label enters only D's last layer (the projection), after every attention block: any class will do.
    labels = torch.zeros(1, dtype=torch.int64, device=device) if discriminator.config.num_classes else None
    with capturing(discriminator) as layers:
        discriminator(batch, labels)
        return AttentionResult(image, "D", _collect("D", layers))


def parse_queries(raw: list[str], image_size: int) -> list[Query]:
    """--query values ("X,Y", several pairs per value allowed) -> queries inside the image."""
    queries = []
    for value in raw:
        parts = [part.strip() for part in value.split(",")]
        if len(parts) % 2 or not all(part.lstrip("-").isdigit() for part in parts):
            raise UsageError(f"--query {value!r} is not X,Y in image pixels; use e.g. --query 14,7")
        numbers = [int(part) for part in parts]
        for x, y in zip(numbers[::2], numbers[1::2], strict=True):
            if not (0 <= x < image_size and 0 <= y < image_size):
                raise UsageError(
                    f"--query {x},{y} is outside the {image_size}x{image_size} image; X and Y must be in 0..{image_size - 1}"
                )
            queries.append(Query(x, y))
    if len(queries) > MAX_QUERIES:
        raise UsageError(f"{len(queries)} query points given; at most {MAX_QUERIES} fit one figure")
    return queries


def foreground_mask(image: torch.Tensor) -> torch.Tensor:
    """(S, S) bool: the pixels of a uint8 (C, S, S) image whose luma is far from the background's (the median)."""
    luma = image.float().mean(dim=0)  # (S, S)
    return (luma - luma.median()).abs() > FOREGROUND_CONTRAST


def default_queries(image: torch.Tensor, count: int = DEFAULT_QUERY_COUNT) -> list[Query]:
    """A spread of query points for a uint8 (C, S, S) image: count - 1 spread over the object, one on the background.

    The background is the median luma; pixels far from it are the object. Object points are
    picked farthest-first from the one nearest the object's centre, so they cover its parts.
    An image without a clear object gets the centre and four points around it.
    """
    size = image.shape[-1]
    foreground = foreground_mask(image)
    ys, xs = torch.nonzero(foreground, as_tuple=True)
    if len(xs) < count:
        quarter, half = size // 4, size // 2
        spots = [
            (half, half),
            (quarter, quarter),
            (size - 1 - quarter, quarter),
            (quarter, size - 1 - quarter),
            (size - 1 - quarter, size - 1 - quarter),
        ]
        return [Query(x, y) for x, y in spots[:count]]
    points = torch.stack([xs, ys], dim=1).float()  # (P, 2)
    first = int((points - points.mean(dim=0)).norm(dim=1).argmin())
    chosen = [first]
    distance = (points - points[first]).norm(dim=1)  # (P,): to the nearest chosen point
    while len(chosen) < count - 1:
        chosen.append(int(distance.argmax()))
        distance = torch.minimum(distance, (points - points[chosen[-1]]).norm(dim=1))
    queries = [Query(int(points[i, 0]), int(points[i, 1])) for i in chosen]
    return queries + [_background_query(foreground)]


def _background_query(foreground: torch.Tensor) -> Query:
    """The background pixel farthest from the object, kept an eighth of the image away from the border."""
    size = foreground.shape[0]
    margin = size // 8
    grid_y, grid_x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    ys, xs = torch.nonzero(foreground, as_tuple=True)
    candidates = (
        (~foreground) & (grid_x >= margin) & (grid_x < size - margin) & (grid_y >= margin) & (grid_y < size - margin)
    )
    if not bool(candidates.any()):
        return Query(margin, margin)
    cy, cx = torch.nonzero(candidates, as_tuple=True)
    distance = ((cx[:, None] - xs[None]) ** 2 + (cy[:, None] - ys[None]) ** 2).min(dim=1).values  # (candidates,)
    best = int(distance.argmax())
    return Query(int(cx[best]), int(cy[best]))


def load_image_like_training(path: Path, channels: int, image_size: int) -> torch.Tensor:
    """One image file as uint8 (C, S, S), converted as training data is (channels, shorter side to S, centre crop)."""
    from .data import load_image_paths

    if not Path(path).is_file():
        raise UsageError(f"--image {path} is not a file; give an image such as a PNG")
    return load_image_paths([Path(path)], channels, image_size, lambda message: None, f"--image {path}")[0]


def attention_from_checkpoint(
    path: Path,
    *,
    seed: int = ATTENTION_DEFAULTS.seed,
    class_index: int | None = None,
    image: Path | None = None,
    use_ema: bool = ATTENTION_DEFAULTS.use_ema,
    device: str = ATTENTION_DEFAULTS.device,
) -> tuple[AttentionResult, CheckpointInfo, dict[str, str]]:
    """G's attention on its image for `seed` or, with `image`, D's attention on that file; with the metadata that reproduces it."""
    from .checkpoint import load_discriminator, load_generator, read_checkpoint_info
    from .runtime import resolve_device
    from .sampling import check_class

    info = read_checkpoint_info(path)
    check_has_attention(info.model, str(path), "g" if image is None else "d")
    check_class(class_index, info.model)
    torch_device = resolve_device(device)
    metadata = {"checkpoint": str(path), "step": str(info.step)}
    if image is None:
        generator, _ = load_generator(path, use_ema=use_ema, device=torch_device)
        result = generator_attention(generator, seed, class_index)
        metadata.update(seed=str(seed), weights="ema" if use_ema and info.has_ema else "raw")
        if class_index is not None:
            metadata["class"] = str(class_index)
    else:
        picture = load_image_like_training(image, info.model.channels, info.model.image_size)
        discriminator, _ = load_discriminator(path, device=torch_device)
        result = discriminator_attention(discriminator, picture)
        metadata["image"] = str(image)
    return result, info, metadata


def check_has_attention(model: ModelConfig, source: str, network: str | None = None) -> None:
    """One clear error for a model trained without attention (in `network`, "g" or "d", when given),
    before any weights are loaded."""
    if not model.active_attn_resolutions:
        raise UsageError(
            f"{source} has no self-attention layers (trained without --attention); there are no attention maps to show"
        )
    if network is not None and not model.attn_resolutions_of(network):
        fix = "give --image to see D's" if network == "g" else "drop --image to see G's"
        raise UsageError(
            f"{source} has self-attention only in {model.attention_in.upper()} "
            f"(trained with --attention-in {model.attention_in}); {fix}"
        )


def map_records(result: AttentionResult, queries: list[Query]) -> list[dict[str, Any]]:
    """One JSON-able record per (layer, query): sizes, the query in image and grid coordinates, the weights."""
    size = result.image.shape[-1]
    records = []
    for layer in result.layers:
        for query in queries:
            column, row = query.grid(size, layer.resolution)
            records.append(
                {
                    "network": result.network,
                    "layer": f"{result.network}{layer.resolution}",
                    "feature_size": [layer.resolution, layer.resolution],
                    "gamma": layer.gamma,
                    "query": {"image": [query.x, query.y], "grid": [column, row]},
                    "map": layer.query_map(query, size).tolist(),
                }
            )
    return records


def attention_figure(result: AttentionResult, queries: list[Query], title: str, metadata: dict[str, str]) -> bytes:
    """The paper's figure as PNG bytes: per layer a row with the image and its queries, then one map per query.

    Maps are shown as weight x N (N positions; 1 = the uniform weight 1/N) on one colour scale for
    the whole figure, so a near-uniform map looks flat and maps compare across queries and layers.
    """
    from .plotting import figure_png, new_figure

    size = result.image.shape[-1]
    columns, rows = 1 + len(queries), len(result.layers)
    figure = new_figure(1.55 * columns + 1.1, 1.7 * rows + 0.8)
    axes = figure.subplots(rows, columns, squeeze=False)
    picture = result.image.permute(1, 2, 0).numpy()  # (S, S, C) uint8
    outline = foreground_mask(result.image).float().numpy()  # (S, S): the object's outline, drawn over each map
    extent = (-0.5, size - 0.5, size - 0.5, -0.5)  # pixel centres at integer coordinates, as the queries
    relative = [[layer.query_map(q, size).numpy() * layer.resolution**2 for q in queries] for layer in result.layers]
    top = max(float(m.max()) for row in relative for m in row)
    heat = None
    for row_axes, layer, maps in zip(axes, result.layers, relative, strict=True):
        _show_image(row_axes[0], picture)
        row_axes[0].set_ylabel(
            f"{result.network} {layer.resolution}x{layer.resolution}\ngamma {layer.gamma:+.3g}", fontsize=9
        )
        for index, (axis, query, weights) in enumerate(zip(row_axes[1:], queries, maps, strict=True)):
            colour = QUERY_COLOURS[index]
            heat = axis.imshow(weights, cmap="inferno", vmin=0, vmax=top, extent=extent, interpolation="nearest")
            if 0 < outline.sum() < outline.size:
                axis.contour(outline, levels=[0.5], colors="white", linewidths=0.7, alpha=0.8)
            _mark(axis, query, colour)
            axis.set_xticks([])
            axis.set_yticks([])
            for spine in axis.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(2.5)
            axis.set_title(f"({query.x}, {query.y})  peak {weights.max():.1f}x", fontsize=8, color=colour)
        for index, query in enumerate(queries):
            _mark(row_axes[0], query, QUERY_COLOURS[index])
    if heat is not None:
        bar = figure.colorbar(heat, ax=axes[:, 1:].ravel().tolist(), shrink=0.85, pad=0.02)
        bar.set_label("weight / uniform", fontsize=8)
        bar.ax.tick_params(labelsize=7)
    figure.suptitle(title, fontsize=10)
    figure.supxlabel(
        "each map: the softmax weights of the query's cell over all positions, as multiples of the uniform "
        "weight 1/N, upsampled to the image; white: the object's outline",
        fontsize=7,
    )
    return figure_png(figure, metadata)


def _show_image(axis: Any, picture: Any) -> None:
    if picture.shape[2] == 1:
        axis.imshow(picture[:, :, 0], cmap="gray", vmin=0, vmax=255)
    else:
        axis.imshow(picture)
    axis.set_xticks([])
    axis.set_yticks([])


def _mark(axis: Any, query: Query, colour: str) -> None:
    axis.plot(
        [query.x],
        [query.y],
        marker="o",
        markersize=7,
        markerfacecolor=colour,
        markeredgecolor="white",
        markeredgewidth=1.2,
    )
