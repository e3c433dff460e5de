"""Feature extractors for FID / IS / KID: a registry (inception, digits) and the digits extractor for torch-fidelity.

`inception` is torch-fidelity's `inception-v3-compat`, the extractor published FIDs use; its weights
are never downloaded (resolved here, checked, then passed to torch-fidelity). `digits` is sagan's
MNIST classifier registered with torch-fidelity as `sagan-digits`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch_fidelity
from safetensors.torch import load_file
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from .digits import IMAGE_SIZE as DIGITS_IMAGE_SIZE
from .digits import DigitsClassifier, digits_weights_path, fit_to_classifier, uint8_to_model_input
from .errors import UsageError

INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"


# ---------------------------------------------------------------- the digits extractor


class DigitsFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity view of sagan's digit classifier: 128-d penultimate features (FID/KID), logits (IS)."""

    FEATURES = ("digits-features", "digits-logits")

    def __init__(
        self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None, **kwargs: object
    ) -> None:
        super().__init__(name, features_list)
        self.classifier = DigitsClassifier()
        self.classifier.load_state_dict(
            load_file(feature_extractor_weights_path or str(digits_weights_path())), strict=True
        )
        self.classifier.requires_grad_(False).eval().to(memory_format=torch.channels_last)  # ~25% faster on CPU

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return DigitsFeatureExtractor.FEATURES

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return "digits-logits" if metric == "isc" else "digits-features"

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        return torch.zeros(1, 3, DIGITS_IMAGE_SIZE, DIGITS_IMAGE_SIZE, dtype=torch.uint8)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """uint8 (N, 3, H, W) grey images repeated to RGB -> features in the order of `features_list`."""
        pixels = fit_to_classifier(uint8_to_model_input(images[:, :1]))  # (N, 1, 28, 28)
        pixels = pixels.contiguous(memory_format=torch.channels_last)
        features, logits = self.classifier(pixels)  # (N, 128), (N, 10)
        named = {"digits-features": features.float(), "digits-logits": logits.float()}
        return tuple(named[name] for name in self.features_list)


DIGITS_FIDELITY_NAME = "sagan-digits"
if DIGITS_FIDELITY_NAME not in FEATURE_EXTRACTORS_REGISTRY:  # registering twice raises
    torch_fidelity.register_feature_extractor(DIGITS_FIDELITY_NAME, DigitsFeatureExtractor)


# ---------------------------------------------------------------- extractor registry


@dataclass(frozen=True)
class Extractor:
    """A resolved feature extractor: what torch-fidelity calls it and the exact weights it uses."""

    name: str  # sagan's name: "inception" or "digits"
    fidelity_name: str  # torch-fidelity's registry name
    weights_path: Path
    weights_sha256: str


@dataclass(frozen=True)
class ExtractorSpec:
    """One entry of the extractor registry."""

    name: str
    fidelity_name: str
    weights: Callable[[Path | None], Path]  # --inception-weights (or None) -> a checked weights file
    unsupported: Callable[[int, int], str | None]  # (channels, image size) -> why not, or None


def default_inception_weights() -> Path:
    """Where torch-fidelity would cache the Inception weights: $TORCH_HOME/hub/checkpoints/<file>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE


def _missing_inception_message(path: Path, given: bool) -> str:
    where = "--inception-weights" if given else "the torch hub cache"
    return (
        f"Inception weights not found at {path} ({where}); they cannot be downloaded offline. "
        f"Copy {INCEPTION_WEIGHTS_FILE} (from the torch-fidelity v0.2.0 GitHub release) to "
        f"{default_inception_weights()} or pass --inception-weights PATH; offline alternative: "
        "--extractor digits (grey digit models only)"
    )


def _inception_weights(override: Path | None) -> Path:
    path = Path(override).expanduser() if override is not None else default_inception_weights()
    if not path.is_file():
        raise UsageError(_missing_inception_message(path, override is not None))
    _check_inception_state_dict(path)
    return path


def _check_inception_state_dict(path: Path) -> None:
    """Refuse anything but a plain Inception state_dict: torch-fidelity later unpickles it without restrictions."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # pickle/zip/mmap errors all mean "not a usable weights file"
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise UsageError(
                f"cannot read Inception weights {path} as a plain state_dict ({exc.__class__.__name__}); "
                f"pass the original {INCEPTION_WEIGHTS_FILE}"
            ) from None
    fc = state.get("fc.weight") if isinstance(state, dict) else None
    if not isinstance(fc, torch.Tensor) or tuple(fc.shape) != (1008, 2048):
        raise UsageError(f"{path} is not an inception-v3-compat state_dict (no fc.weight of shape 1008x2048)")


def _digits_unsupported(channels: int, image_size: int) -> str | None:
    if channels == 1:
        return None  # other sizes are resized to 28x28 (digits.fit_to_classifier)
    return (
        "the digits extractor only scores 1-channel (grey) images; this model makes "
        f"{channels}-channel {image_size}x{image_size} images: use --extractor inception"
    )


EXTRACTORS: dict[str, ExtractorSpec] = {
    spec.name: spec
    for spec in (
        ExtractorSpec("inception", "inception-v3-compat", _inception_weights, lambda channels, size: None),
        ExtractorSpec("digits", DIGITS_FIDELITY_NAME, lambda override: digits_weights_path(), _digits_unsupported),
    )
}
EXTRACTOR_CHOICES = ("auto", *EXTRACTORS)


_SHA_CACHE: dict[tuple[str, int, float], str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of a file, memoised per (path, size, mtime) within the process."""
    stat = Path(path).stat()
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime)
    if key not in _SHA_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _SHA_CACHE[key] = digest.hexdigest()
    return _SHA_CACHE[key]


def digits_caveat(extractor: Extractor, dataset: str) -> str | None:
    """A warning when the MNIST digit classifier scores a model of something else (fashion-mnist, a folder)."""
    if extractor.name != "digits" or dataset == "mnist":
        return None
    return (
        f"warning: the digits extractor is an MNIST classifier, and {dataset} is not MNIST: FID and KID compare "
        "digit features and IS counts digit classes, so the scores rank models only roughly; "
        "pass --inception-weights for the standard scores"
    )


def resolve_extractor(name: str, channels: int, image_size: int, inception_weights: Path | None = None) -> Extractor:
    """Pick and check the extractor: `auto` = inception when its weights are given or exist, else digits when it fits."""
    if name not in EXTRACTOR_CHOICES:
        raise UsageError(f"unknown extractor {name!r}; use one of {', '.join(EXTRACTOR_CHOICES)}")
    if name == "digits" and inception_weights is not None:
        raise UsageError(
            "--inception-weights is for the inception extractor, and --extractor digits was asked for; drop one"
        )
    if name == "auto":
        # An explicit --inception-weights asks for Inception: a wrong path must be an error, not digits.
        inception_wanted = inception_weights is not None or default_inception_weights().is_file()
        if inception_wanted or _digits_unsupported(channels, image_size) is not None:
            name = "inception"
        else:
            name = "digits"
    spec = EXTRACTORS[name]
    reason = spec.unsupported(channels, image_size)
    if reason:
        raise UsageError(reason)
    weights = spec.weights(inception_weights)
    return Extractor(spec.name, spec.fidelity_name, weights, file_sha256(weights))
