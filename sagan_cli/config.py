"""One source of defaults for training: the CLI options, run configs and the Python API read them here."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from .errors import UsageError
from .losses import DEFAULT_LOSS, get_loss
from .model import ModelConfig

# Keys of a run that may change on --resume without changing what is being trained. Where the data
# comes from may change too: the resumed data must match the checkpoint's (train.check_training_data).
# Evaluation during training and TensorBoard logging only watch the run, so they may change too.
RESUMABLE_OVERRIDES = frozenset(
    {
        "max_steps",
        "max_minutes",
        "save_every",
        "sample_every",
        "log_every",
        "keep",
        "device",
        "data_dir",
        "download",
        "data_mode",
        "data_workers",
        "eval_every",
        "eval_samples",
        "tensorboard",
        "precision",
        "sync_bn",
        "dist_timeout",
    }
)
# Keys that configs written by earlier versions may hold; they are dropped on reading so old runs and
# checkpoints keep loading (num_workers: batches are drawn by index from preloaded tensors, so there
# never were loader workers, and no flag ever set it).
RETIRED_KEYS = frozenset({"num_workers"})
# Keys added after 0.1 that runs' files hold only when they differ from the default (TrainConfig.to_dict).
OMITTED_AT_DEFAULT = (
    "loss",
    "eval_every",
    "eval_samples",
    "tensorboard",
    "precision",
    "sync_bn",
    "dist_timeout",
    "data_mode",
    "data_workers",
    "mode_seeking",
    "gamma_lr_mult",
    "r1",
    "clusters",
    "recluster_every",
    "recluster_until",
)

# The mode-seeking weight a new class-conditional run gets unless --mode-seeking is given (runs._new_config).
# Without it the conditional G ignored its latent within each class; 1.0 kept variety but cost class
# accuracy (docs/results.md). --clusters runs get it and the conditional rates too: at G 4e-4 / D 4e-4 without
# it they collapsed within each cluster (digits-FID 8.6 against 2.2, docs/results.md). The dataclass
# default stays 0, what runs written before it trained with.
MODE_SEEKING_CONDITIONAL = 0.3
# The --recluster-every a new --clusters run gets unless given: re-clustering on D's features every 400
# steps raised unconditional digits-IS from 8.6 to 9.0-9.3 and lowered FID from 1.8 to 1.0-1.6 (three
# runs, docs/results.md). The dataclass default stays 0, what clustered runs before it trained with.
RECLUSTER_EVERY_CLUSTERS = 400
# The --recluster-until a new --clusters run gets unless given: re-clustering only in the first 60% of the run
# (its clusters were purest there) raised 30-cluster digits-IS from 9.31 / 9.38 to 9.58 / 9.44 and brought every
# digit into 8-12% of the samples (two seeds, docs/results.md). The dataclass default 1.0 re-clusters to the end.
RECLUSTER_UNTIL_CLUSTERS = 0.6
# The --clusters a new unconditional run (a folder, celeba, --no-conditional) gets unless given: unlabelled
# images trained as 30 k-means clusters, re-clustered on D's features (self-conditioned GAN). Against the plain
# unconditional model, two seeds each: digits-IS 9.44-9.58 against 8.19-8.24 and digits-FID 0.91-1.23 against
# 2.53-2.60; on the 3,786 Noto emoji, emoji-FID 4.70-5.12 against 6.45-7.30 (three seeds), on Twemoji 4.76-6.32
# against 11.18-11.34 with surer samples (two seeds; docs/results.md). Data of fewer
# than CLUSTERS_MIN_IMAGES images (about 100 per cluster; 100 digits per cluster did worse than none), or
# streamed from disk, trains the plain model instead (runs.apply_clusters says so).
CLUSTERS_UNLABELLED = 30
CLUSTERS_MIN_IMAGES = 3000
# --r1 is applied lazily (StyleGAN2): every R1_EVERY steps, weighted by R1_EVERY, so it costs about
# one extra D backward in R1_EVERY steps.
R1_EVERY = 16
# Adam learning rates (G, D) a new unconditional run gets unless --lr-g / --lr-d are given (runs._new_config).
# An unconditional G learns far more per step at 4e-4 / 4e-4 than at the conditional 2e-4 / 8e-4: digits-FID
# 2.6 / 2.5 against 6.4 / 6.6 at 2,800 steps, two seeds (docs/results.md). The dataclass defaults stay the
# conditional ones, which every run written before this trained with (lr_g and lr_d are always saved).
# Clustered runs on a folder get them too: on the Noto emoji, emoji-FID 4.84 / 4.70 against 4.89 / 7.38 at the
# conditional rates that clustered digits want (two seeds, docs/results.md).
LR_UNCONDITIONAL = (4e-4, 4e-4)
# The DiffAugment policy a new run on an image folder gets unless --augment is given (runs._new_config).
# On the 3,786 Noto emoji at 32 px, D memorised the folder without it: blank samples 3.5% / 5.8% at
# step 2,750 (about the default run's length) and 86% / 86% at 7,031 (seeds 0 / 1), against 0.0% /
# 0.1% and 0% / 0% with it (docs/results.md). Built-in datasets keep the dataclass default, none.
AUGMENT_FOLDERS = "translation"
MAX_CLUSTERS = 1000  # --clusters; ModelConfig checkpoints allow up to 1000 classes
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # --precision; resolved per device in precision.py
MAX_SEED = 2**32 - 1  # per-step generators are seeded from (seed, step); larger seeds overflow them
MAX_CONFIG_INT = 2**40  # no count, size or step of a real run comes near this


def check_seed(value: int, flag: str = "--seed") -> None:
    """Raise UsageError unless 0 <= value <= MAX_SEED (torch-fidelity's numpy RNG also needs < 2**32)."""
    if not 0 <= value <= MAX_SEED:
        raise UsageError(f"{flag} must be in 0..{MAX_SEED}, got {value}")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run besides the architecture."""

    dataset: str = "mnist"
    data_dir: str | None = None
    download: bool = True
    data_mode: str = (
        "auto"  # image folders and celeba: memory (preload), stream (decode per batch), auto (by free memory)
    )
    data_workers: int = 2  # DataLoader worker processes when streaming (0: decode in the training process)
    max_steps: int = 2800  # 15.5 minutes of training at ~190-210 img/s on a 2-core CPU (docs/results.md)
    max_minutes: float | None = (
        None  # time budget: stop at the first step past this much training time (total over resumes)
    )
    batch_size: int = 64
    lr_g: float = 2e-4  # the paper's TTUR ratio (D 4x G) at twice its rates: 1e-4 / 4e-4 was too slow for a short run
    lr_d: float = 8e-4  # (new unconditional runs: LR_UNCONDITIONAL)
    beta1: float = 0.0
    beta2: float = 0.9
    d_steps: int = 1
    lr_decay: float = 0.0  # fraction of the run at its end over which both learning rates fall linearly to 0
    mode_seeking: float = 0.0  # MSGAN term in G's loss; 0 = off (new conditional runs: MODE_SEEKING_CONDITIONAL)
    gamma_lr_mult: float = 1.0  # the attention gates' Adam rate as a multiple of their network's rate
    r1: float = 0.0  # weight of the zero-centred R1 penalty on D's real inputs, every R1_EVERY steps; 0 = off
    clusters: int = 0  # > 0: train conditionally on this many k-means clusters of the images (clusters.py)
    recluster_every: int = 0  # > 0: with clusters, cluster again every this many steps on D's features
    recluster_until: float = 1.0  # ... but only during this first fraction of the run (then the clusters stay)
    augment: str = "none"  # DiffAugment of D's inputs: none, or color/translation/cutout joined by commas (folders: AUGMENT_FOLDERS)
    ema: bool = True
    ema_decay: float = 0.999
    ema_start: int = 0
    seed: int = 0
    device: str = "auto"
    save_every: int = 500
    sample_every: int = 250
    log_every: int = 50
    keep: int = 3
    loss: str = DEFAULT_LOSS  # a name in losses.LOSSES
    eval_every: int = 0  # score the EMA generator with FID / IS every N steps; 0 = never (docs/evaluate.md)
    eval_samples: int = 2000  # generated images per evaluation (the reference takes as many, or all it has)
    tensorboard: bool = False  # also write TensorBoard event files into the run directory
    precision: str = "auto"  # fp32 on CPU and MPS, bf16 on CUDA GPUs that have it (precision.resolve_precision)
    sync_bn: bool = False  # under torchrun: BatchNorm statistics of G over each rank's shard (docs/scaling.md)
    dist_timeout: int = 600  # seconds a collective waits for a silent peer before every rank gives up
    model: ModelConfig = field(default_factory=ModelConfig)

    def to_dict(self, every_key: bool = False) -> dict[str, Any]:
        """Plain JSON-able dict (model config nested); keys added since 0.1 only when not at their default, unless every_key."""
        data = asdict(self)
        data["model"] = json.loads(self.model.to_json())
        # Kept where a new run of this kind would get another default (runs._new_config): a conditional
        # run's mode seeking 0, a clustered run's re-clustering 0 and a plain unconditional run's clusters 0
        # must say so, or --config would undo them.
        clustered = self.clusters > 0
        kept = {
            "mode_seeking": self.model.num_classes > 0,
            "recluster_every": clustered,
            "recluster_until": clustered,
            "clusters": self.model.num_classes == 0,  # a plain unconditional run: --config must not cluster it
        }
        for key in () if every_key else OMITTED_AT_DEFAULT:
            if data[key] == getattr(DEFAULTS_FOR_OMISSION, key) and not kept.get(key, False):
                # Written only when it is not the default: configs and checkpoints of runs that do not
                # use it stay exactly what 0.1/0.2.0 wrote, and those versions can still read them.
                del data[key]
        return data

    def to_json(self, every_key: bool = False) -> str:
        """Serialise to JSON (round-trips through from_dict)."""
        return json.dumps(self.to_dict(every_key), sort_keys=True, indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a dict; unknown keys are an error (retired ones are dropped)."""
        if not isinstance(data, dict):
            raise ValueError("a training config must be a JSON object")
        data = {key: value for key, value in data.items() if key not in RETIRED_KEYS}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training config keys: {unknown}")
        check_field_types(cls, data)
        values = dict(data)
        if "model" in values:
            if not isinstance(values["model"], dict):
                raise ValueError("training config key 'model' must be a JSON object")
            check_field_types(ModelConfig, values["model"])
            values["model"] = ModelConfig.from_json(json.dumps(values["model"]))
        return cls(**values)

    def validate(self) -> TrainConfig:
        """Check numbers a user typed; raise UsageError naming the value and the fix."""
        positive = ("max_steps", "batch_size", "d_steps", "save_every", "sample_every", "log_every", "keep")
        for name in positive:
            value = getattr(self, name)
            if value < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
            if value > MAX_CONFIG_INT:  # configs and checkpoints refuse larger numbers on reading
                hint = "; a value above --max-steps already means never" if name.endswith("_every") else ""
                raise UsageError(f"--{name.replace('_', '-')} must be at most {MAX_CONFIG_INT}, got {value}{hint}")
        for name in ("lr_g", "lr_d"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise UsageError(f"--{name.replace('_', '-')} must be a positive finite number, got {value}")
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise UsageError(f"--{name} must be in [0, 1), got {value}")
        if self.max_minutes is not None and not (math.isfinite(self.max_minutes) and self.max_minutes > 0):
            raise UsageError(f"--max-minutes must be a positive number of minutes, got {self.max_minutes}")
        if not (math.isfinite(self.mode_seeking) and self.mode_seeking >= 0):
            raise UsageError(f"--mode-seeking must be 0 (off) or a positive weight, got {self.mode_seeking}")
        if not (math.isfinite(self.gamma_lr_mult) and self.gamma_lr_mult > 0):
            raise UsageError(
                f"--gamma-lr-mult must be a positive number (1 = the network's rate), got {self.gamma_lr_mult}"
            )
        if not (math.isfinite(self.r1) and self.r1 >= 0):
            raise UsageError(f"--r1 must be 0 (off) or a positive weight such as 0.1, got {self.r1}")
        if not 0 <= self.clusters <= MAX_CLUSTERS:
            raise UsageError(
                f"--clusters must be 0 (off) or a number of clusters up to {MAX_CLUSTERS}, got {self.clusters}"
            )
        if not 0 <= self.recluster_every <= MAX_CONFIG_INT:
            raise UsageError(f"--recluster-every must be 0 (off) or a number of steps, got {self.recluster_every}")
        if self.recluster_every and not self.clusters:
            raise UsageError(
                f"--recluster-every {self.recluster_every} re-clusters the --clusters of a run; add --clusters K"
            )
        if not (math.isfinite(self.recluster_until) and 0 < self.recluster_until <= 1):
            raise UsageError(
                f"--recluster-until {self.recluster_until:g} is outside (0, 1]: give the fraction of the run that "
                "re-clusters, e.g. 0.6"
            )
        if not 0 <= self.lr_decay <= 1:
            raise UsageError(f"--lr-decay must be in [0, 1] (the fraction of the run that decays), got {self.lr_decay}")
        from .augment import parse_policy

        try:
            parse_policy(self.augment)
        except ValueError as exc:
            raise UsageError(f"--augment {exc}") from None
        if not 0 <= self.ema_decay < 1:
            raise UsageError(f"--ema-decay must be in [0, 1), got {self.ema_decay}")
        if self.data_mode not in ("auto", "memory", "stream"):
            raise UsageError(f"--data-mode must be auto, memory or stream, got {self.data_mode!r}")
        if not 0 <= self.data_workers <= 256:
            raise UsageError(f"--data-workers must be in 0..256, got {self.data_workers}")
        if not 0 <= self.eval_every <= MAX_CONFIG_INT:
            raise UsageError(f"--eval-every must be 0 (never) or a number of steps, got {self.eval_every}")
        if not 2 <= self.eval_samples <= MAX_CONFIG_INT:  # FID needs a covariance: at least 2 images
            raise UsageError(f"--eval-samples must be at least 2, got {self.eval_samples}")
        check_seed(self.seed)
        get_loss(self.loss)
        if self.precision not in PRECISIONS:
            raise UsageError(f"--precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if not 1 <= self.dist_timeout <= MAX_CONFIG_INT:
            raise UsageError(f"--dist-timeout must be at least 1 second, got {self.dist_timeout}")
        return self

    def with_overrides(self, **changes: Any) -> TrainConfig:
        """A copy with some fields replaced."""
        return replace(self, **changes)


DEFAULTS_FOR_OMISSION = TrainConfig()


def check_field_types(cls: type, data: dict[str, Any]) -> None:
    """Raise ValueError unless each known key of `data` has the JSON type of the dataclass field's default.

    Configs come from files a user may have edited or that may be damaged: a string where a
    number belongs must be a clear error now, not a crash in the middle of training.
    """
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__} must be a JSON object")
    defaults = cls()
    for f in fields(cls):
        if f.name not in data or f.name == "model":
            continue
        value, default = data[f.name], getattr(defaults, f.name)
        if default is None and "float" in str(f.type):  # an optional number (max_minutes)
            default = None if value is None else 0.0
        if not _has_type_of(value, default):
            raise ValueError(f"config key {f.name!r} has the wrong type: {str(value)[:40]!r}")


def _has_type_of(value: Any, default: Any) -> bool:
    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and abs(v) <= MAX_CONFIG_INT

    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return is_int(value)
    if isinstance(default, float):
        return is_int(value) or isinstance(value, float)
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, tuple):
        return isinstance(value, (list, tuple)) and len(value) <= MAX_CLUSTERS and all(is_int(v) for v in value)
    return default is not None or value is None or isinstance(value, str)


def config_differences(saved: TrainConfig, requested: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Keys whose requested value differs from a saved run's (model keys as `model.<key>`)."""
    saved_flat = _flatten(saved.to_dict(every_key=True))  # keys at their default are compared too
    return {
        key: (saved_flat[key], value)
        for key, value in requested.items()
        if key in saved_flat and _normalise(saved_flat[key]) != _normalise(value)
    }


def _flatten(data: dict[str, Any]) -> dict[str, Any]:
    flat = {k: v for k, v in data.items() if k != "model"}
    flat.update({f"model.{k}": v for k, v in data["model"].items()})
    return flat


def _normalise(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
