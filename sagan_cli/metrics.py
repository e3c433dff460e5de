"""FID / IS / KID through torch-fidelity, offline: inputs, cache names, the one call, and CI gates.

torch-fidelity is only ever called from `compute_metrics`, which pins the settings that bite on a
CPU box (no CUDA assumption, no loader workers, nothing on stdout), always passes the extractor
weights itself (so no download is ever attempted) and protects the caller's RNG state.
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch_fidelity
from torch.utils.data import Dataset
from torch_fidelity.generative_model_base import GenerativeModelBase

from .errors import SaganError, UsageError
from .extractors import Extractor
from .logs import Log, no_log
from .metric_registry import METRIC_REGISTRY, metric_for_key
from .model import Generator
from .sampling import generate

KEY_FID = torch_fidelity.KEY_METRIC_FID
KEY_ISC_MEAN = torch_fidelity.KEY_METRIC_ISC_MEAN
KEY_ISC_STD = torch_fidelity.KEY_METRIC_ISC_STD
KEY_KID_MEAN = torch_fidelity.KEY_METRIC_KID_MEAN
KEY_KID_STD = torch_fidelity.KEY_METRIC_KID_STD
METRICS = tuple(METRIC_REGISTRY)  # torch-fidelity's flag names, in display order
CACHE_ENV = "SAGAN_FIDELITY_CACHE"
CACHE_VERSION = "v1"  # bump when what goes into reference features changes
REFERENCE_SUBSET_SEED = 0  # fixed, so a reference subset (and its cache entry) never depends on --seed
KID_SUBSET_SIZE = 1000
ISC_SPLITS = 10


# ---------------------------------------------------------------- inputs


class ImageTensorDataset(Dataset):
    """uint8 images (N, C, H, W) served one by one as uint8 (3, H, W), as torch-fidelity wants."""

    def __init__(self, images: torch.Tensor) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected uint8 (N, 1|3, H, W) images, got {images.dtype} {tuple(images.shape)}")
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index].expand(3, -1, -1)  # (3, H, W)


class GeneratorInput(GenerativeModelBase):
    """A sagan generator as a torch-fidelity input, fed with *our* latents and labels (not torch-fidelity's noise).

    torch-fidelity asks for batches in order; each call returns the next images of `latents`, so
    sample i has the latent (and label) of image i of `sagan sample --seed S -n N`. Generation time is
    recorded from the second batch on, because the first pays one-off kernel set-up (oneDNN primitives,
    caches). `sagan compare` times speed separately (`compare.sampling_speeds`).

    The generator is held outside the module tree: torch-fidelity calls `.cuda()` on its input when
    CUDA exists, which would otherwise move a generator put on `--device cpu` (or cuda:1) to cuda:0.
    """

    def __init__(
        self, generator: Generator, latents: torch.Tensor, labels: torch.Tensor | None, batch_size: int
    ) -> None:
        super().__init__()
        object.__setattr__(self, "generator", generator.eval())  # not a submodule: .cuda()/.to() leave it alone
        self.latents = latents  # (N, z_dim)
        self.labels = labels  # (N,) or None
        self.batch_size = batch_size
        self.cursor = 0
        self.generate_seconds = 0.0  # from the second batch on
        self.timed_images = 0
        self.first_batch_seconds = 0.0

    @property
    def z_size(self) -> int:
        return self.latents.shape[1]

    @property
    def z_type(self) -> str:
        return "normal"

    @property
    def num_classes(self) -> int:
        return 0  # labels are ours: torch-fidelity's conditional path breaks on numpy 2

    def __len__(self) -> int:
        return self.latents.shape[0]

    def forward(self, noise: torch.Tensor, *unused: torch.Tensor) -> torch.Tensor:
        """Ignore torch-fidelity's noise; return the next uint8 (B, 3, H, W) images."""
        start, end = self.cursor, self.cursor + noise.shape[0]
        assert end <= len(self), "torch-fidelity asked for more samples than planned"
        labels = None if self.labels is None else self.labels[start:end]
        began = time.perf_counter()
        images = generate(self.generator, self.latents[start:end], labels, self.batch_size)  # (B, C, H, W) uint8
        seconds = time.perf_counter() - began
        if start == 0:
            self.first_batch_seconds = seconds
        else:
            self.generate_seconds += seconds
            self.timed_images += end - start
        self.cursor = end
        return images.expand(-1, 3, -1, -1).to(noise.device)

    @property
    def images_per_second(self) -> float:
        """Generation throughput measured while scoring, after the first batch (all of it if there is one)."""
        if self.timed_images > 0 and self.generate_seconds > 0:
            return self.timed_images / self.generate_seconds
        return self.cursor / self.first_batch_seconds if self.first_batch_seconds > 0 else 0.0


def reference_subset(images: torch.Tensor, n: int) -> torch.Tensor:
    """At most n reference images: all of them, or a fixed-seed random subset (never --seed dependent)."""
    if n >= images.shape[0]:
        return images
    generator = torch.Generator().manual_seed(REFERENCE_SUBSET_SEED)
    index = torch.randperm(images.shape[0], generator=generator)[:n].sort().values
    return images[index]


# ---------------------------------------------------------------- cache


def cache_dir() -> Path:
    """Reference-statistics cache: $SAGAN_FIDELITY_CACHE or ~/.cache/sagan/fidelity."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sagan" / "fidelity"


def tensor_sha256(images: torch.Tensor) -> str:
    """sha256 of a tensor's bytes and shape: identifies reference pixels exactly."""
    digest = hashlib.sha256(str(tuple(images.shape)).encode())
    digest.update(images.contiguous().numpy().tobytes())
    return digest.hexdigest()


def reference_cache_name(data_id: str, num_images: int, extractor: Extractor, pixels_sha256: str = "") -> str:
    """Cache name for reference features; torch-fidelity keys by name only, so the name holds every input.

    data id, image count, a hash of the pixels themselves (so an edited image folder is a new entry)
    and the extractor's weights hash all go in.
    """
    slug = re.sub(r"[^A-Za-z0-9]+", "-", data_id.split("|", 1)[0]).strip("-")[-40:] or "data"
    data_hash = hashlib.sha256(f"{data_id}|{pixels_sha256}".encode()).hexdigest()[:16]
    return f"sagan-{CACHE_VERSION}-{slug}-{data_hash}-n{num_images}-{extractor.name}-{extractor.weights_sha256[:16]}"


@contextmanager
def cache_root(enabled: bool) -> Iterator[Path | None]:
    """The cache folder, or None when disabled."""
    if not enabled:
        yield None
        return
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(
            f"cannot create the metrics cache {folder} ({exc.strerror}); set {CACHE_ENV} or pass --no-cache"
        ) from None
    yield folder


@contextmanager
def shared_cache(enabled: bool) -> Iterator[Path]:
    """A cache folder for several evaluations in one command: the real cache, or a temporary one."""
    if enabled:
        with cache_root(True) as folder:
            assert folder is not None
            yield folder
    else:
        with tempfile.TemporaryDirectory(prefix="sagan-fidelity-") as folder:
            yield Path(folder)


def _numpy_safe_globals() -> list[Any]:
    """What a pickled float ndarray needs under weights_only (torch-fidelity saves FID statistics as numpy)."""
    try:
        from numpy._core.multiarray import _reconstruct  # numpy 2
    except ImportError:  # pragma: no cover - numpy 1
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    dtype_classes = [type(np.dtype(kind)) for kind in (np.float16, np.float32, np.float64)]
    return [_reconstruct, np.ndarray, np.dtype, *dtype_classes]


def _numpy_allowed() -> AbstractContextManager[object]:
    """Allow those numpy globals for weights_only loads inside the block (torch 2.4 has only the global allow-list)."""
    scoped = getattr(torch.serialization, "safe_globals", None)
    if scoped is not None:
        return scoped(_numpy_safe_globals())
    torch.serialization.add_safe_globals(_numpy_safe_globals())  # pragma: no cover - torch < 2.5
    return nullcontext()


def _cache_entry_problem(path: Path) -> str | None:
    """Why torch-fidelity must not load this cache file, or None when it holds what torch-fidelity saves there."""
    try:
        with _numpy_allowed():
            item = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError:
        return "it holds objects other than tensors and arrays"
    except Exception as exc:  # zip, mmap and I/O errors all mean "not a cache entry torch-fidelity wrote"
        return f"truncated or not written by torch.save ({exc.__class__.__name__})"
    if "-stat-fid-" in path.name:  # FID statistics: {"mu": (D,), "sigma": (D, D)} numpy arrays
        ok = isinstance(item, dict) and all(isinstance(item.get(key), np.ndarray) for key in ("mu", "sigma"))
        return None if ok else "not FID statistics"
    return None if isinstance(item, torch.Tensor) and item.dim() == 2 else "not a feature tensor"


def discard_unsafe_cache_files(cache_folder: Path, cache_name: str, log: Log = no_log) -> list[Path]:
    """Delete the entries of `cache_name` that do not load with weights_only=True; returns them.

    torch-fidelity reads its cache with full pickle (torch's load with weights_only=False): a planted
    file would run code, a truncated one would crash without naming itself. Every file torch-fidelity
    can load for this name starts with `<cache_name>-` (`...-<extractor>-features-<layer>.pt`,
    `...-<extractor>-stat-fid-<layer>.pt`). A bad one is only a cache entry: it is deleted and recomputed.
    """
    prefix = f"{cache_name}-"
    try:
        candidates = sorted(p for p in cache_folder.iterdir() if p.name.startswith(prefix) and p.name.endswith(".pt"))
    except OSError as exc:
        raise UsageError(f"cannot read the metrics cache {cache_folder} ({exc.strerror}); pass --no-cache") from None
    discarded = []
    for path in candidates:
        problem = _cache_entry_problem(path)
        if problem is None:
            continue
        try:
            path.unlink()
        except OSError as exc:
            raise UsageError(
                f"cannot delete the damaged cache file {path} ({exc.strerror}); delete it by hand or pass --no-cache"
            ) from None
        log(f"warning: deleted damaged or unsafe cache file {path} ({problem}); recomputing it")
        discarded.append(path)
    return discarded


# ---------------------------------------------------------------- metrics


def isc_splits(num_samples: int) -> int:
    """10 splits as usual, fewer for tiny sample counts (each split needs a few dozen images)."""
    return max(1, min(ISC_SPLITS, num_samples // 50))


def compute_metrics(
    samples: Dataset | GenerativeModelBase,
    num_samples: int,
    reference: Dataset | None,
    metrics: set[str],
    extractor: Extractor,
    *,
    seed: int,
    batch_size: int,
    reference_cache: str | None = None,
    cache_folder: Path | None = None,
    log: Log = no_log,
) -> dict[str, float]:
    """Run torch-fidelity for `metrics` (subset of fid/isc/kid); returns its keys -> floats. RNG state untouched.

    Cached reference entries are checked first (`discard_unsafe_cache_files`); `log` gets a line per deleted one.
    """
    unknown = set(metrics) - set(METRICS)
    assert metrics and not unknown, f"bad metric set {metrics}"
    needs_reference = any(METRIC_REGISTRY[name].needs_reference for name in metrics)
    if needs_reference and reference is None:
        raise UsageError("FID and KID need a reference set")
    kwargs: dict[str, object] = {
        "input1": samples,
        **{name: name in metrics for name in METRIC_REGISTRY},
        "feature_extractor": extractor.fidelity_name,
        "feature_extractor_weights_path": str(extractor.weights_path),
        "batch_size": batch_size,
        "rng_seed": seed,
        "cuda": torch.cuda.is_available(),
        "save_cpu_ram": True,
        "verbose": False,
        "cache": cache_folder is not None and reference_cache is not None,
        "isc_splits": isc_splits(num_samples),
    }
    if isinstance(samples, GenerativeModelBase):
        kwargs["input1_model_num_samples"] = num_samples
    if needs_reference:
        kwargs["input2"] = reference
        kid_size = min(KID_SUBSET_SIZE, num_samples, len(reference))  # type: ignore[arg-type]
        kwargs["kid_subset_size"] = kid_size
        if kwargs["cache"]:
            assert cache_folder is not None and reference_cache is not None
            discard_unsafe_cache_files(cache_folder, reference_cache, log)
            kwargs["input2_cache_name"] = reference_cache
            kwargs["cache_root"] = str(cache_folder)
    with torch.random.fork_rng(devices=[]):  # extractor construction advances the global RNG
        try:
            results = torch_fidelity.calculate_metrics(**kwargs)
        except ValueError as exc:
            if not _raised_by_torch_fidelity(exc):
                raise  # from our inputs' own code (a dataset, generator or extractor): a bug, not a refusal
            raise SaganError(f"torch-fidelity refused the inputs: {str(exc).splitlines()[0]}") from None
    results = {key: float(value) for key, value in results.items()}
    if KEY_FID in results:
        results[KEY_FID] = clamp_round_off(results[KEY_FID])
    return results


def clamp_round_off(value: float) -> float:
    """Tiny negative FIDs (identical inputs, round-off) -> 0; NaN and inf stay what they are, so gates fail on them."""
    return max(0.0, value) if math.isfinite(value) else value


def _raised_by_torch_fidelity(exc: BaseException) -> bool:
    """True when one of torch-fidelity's own input checks (`helpers.vassert`) raised `exc` itself.

    Those checks are how torch-fidelity refuses inputs, and they raise from inside `vassert`; a
    ValueError from anywhere else (a dataset, generator or extractor of ours it called back) is
    ours and must surface as a bug, not as a refusal.
    """
    from torch_fidelity.helpers import vassert

    innermost = exc.__traceback__
    while innermost is not None and innermost.tb_next is not None:
        innermost = innermost.tb_next
    return innermost is not None and innermost.tb_frame.f_code is vassert.__code__


# ---------------------------------------------------------------- gates


@dataclass(frozen=True)
class Gate:
    """A CI bound on one metric: `--max-fid 40` is Gate("--max-fid", KEY_FID, 40, upper=True)."""

    flag: str
    key: str
    bound: float
    upper: bool

    @property
    def metric(self) -> str:
        """The torch-fidelity flag the gate needs."""
        return metric_for_key(self.key).name

    def failure(self, results: dict[str, float]) -> str | None:
        """A one-line reason when the value is out of bounds, else None."""
        value = results[self.key]
        broken = value > self.bound if self.upper else value < self.bound
        if not broken and math.isfinite(value):  # NaN and infinities fail every gate
            return None
        return f"{self.key} = {value:.6g} {'>' if self.upper else '<'} {self.flag} {self.bound:g}"


def make_gates(bounds: dict[str, float | None]) -> list[Gate]:
    """Gates for the bounds that were given, keyed by metric name (`{"fid": 40.0}` is --max-fid 40)."""
    return [
        Gate(spec.gate_flag, spec.key, bound, spec.lower_is_better)
        for name, spec in METRIC_REGISTRY.items()
        if (bound := bounds.get(name)) is not None
    ]


def failed_gates(gates: list[Gate], results: dict[str, float]) -> list[str]:
    """Reasons of every gate that fails."""
    return [reason for gate in gates if (reason := gate.failure(results)) is not None]
