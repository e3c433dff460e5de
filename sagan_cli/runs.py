"""Which run `train` works on: a new one from the given settings, or a saved one to resume.

`resolve_new` and `resolve_resume` turn what the user asked for into a `RunPlan` (config, run
directory, resume checkpoint); `open_run` checks the loaded data and creates or opens the run
directory. Every check runs before anything on disk changes: a refused run leaves the old one
(even with --force) and creates no directory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from .checkpoint import read_checkpoint_info
from .clusters import cluster_images, stored_clusters
from .config import (
    AUGMENT_FOLDERS,
    CLUSTERS_MIN_IMAGES,
    CLUSTERS_UNLABELLED,
    LR_UNCONDITIONAL,
    MODE_SEEKING_CONDITIONAL,
    RECLUSTER_EVERY_CLUSTERS,
    RECLUSTER_UNTIL_CLUSTERS,
    RESUMABLE_OVERRIDES,
    TrainConfig,
    config_differences,
)
from .data import DATASETS, ImageData, is_folder_dataset, native_shape
from .errors import UsageError
from .logs import Log, no_log
from .model import ATTENTION_IN, ModelConfig, attention_sizes, check_image_shape
from .rundir import RUNS_ROOT, RunDir, unique_run_path
from .streaming import TrainingData
from .train import check_training_data


@dataclass(frozen=True)
class RunPlan:
    """A resolved run: its config, its directory, and the checkpoint it continues from (None if new)."""

    config: TrainConfig
    path: Path
    checkpoint: Path | None = None
    force: bool = False
    # A new unconditional run clustered by default (no --clusters given): its config without clusters, which
    # apply_clusters trains instead when the data turns out too small or streamed.
    plain: TrainConfig | None = None


def resolve_new(
    given: dict[str, Any],
    model_given: dict[str, Any],
    conditional: bool | None = None,
    name: str | None = None,
    out: Path | None = None,
    force: bool = False,
    check_disk: bool = True,
) -> RunPlan:
    """A new run from TrainConfig fields (`given`) and ModelConfig fields (`model_given`) that were set.

    Unset model fields follow the dataset's native shape. The run goes to out/name, or to a free
    out/<dataset>-<attn|noattn>[-N]. `check_disk=False` (non-writing ranks) skips the folder checks.
    """
    config = _new_config(dict(given), model_given, conditional)
    plain = None
    if config.clusters and "clusters" not in given:  # re-clustering options apply to the clustered run only
        unclustered = {k: v for k, v in given.items() if k not in ("recluster_every", "recluster_until")}
        plain = _new_config({**unclustered, "clusters": 0}, model_given, conditional)
    out = RUNS_ROOT if out is None else Path(out)
    base = name or f"{Path(config.dataset).name or 'data'}-{'attn' if config.model.attention else 'noattn'}"
    path = out / base if name else unique_run_path(out, base)
    if check_disk:
        RunDir.check_new(path, force)
    return RunPlan(config, path, None, force, plain)


def _new_config(given: dict[str, Any], model_given: dict[str, Any], conditional: bool | None) -> TrainConfig:
    dataset = given.get("dataset", TrainConfig().dataset)
    channels, image_size, num_classes = native_shape(dataset)
    clusters = given.get("clusters")
    if clusters and conditional:
        raise UsageError(
            f"--clusters {clusters} trains on clusters instead of the dataset's labels; drop --conditional"
        )
    if conditional is None:  # default: class-conditional whenever the data has labels (docs/results.md)
        conditional = num_classes > 0 and not clusters
    if clusters is None:  # unlabelled data (or labels not used) trains on clusters of the images by default
        clusters = given["clusters"] = 0 if conditional else CLUSTERS_UNLABELLED
    folder = is_folder_dataset(dataset)
    if conditional and num_classes == 0:
        labelled = ", ".join(name for name, spec in DATASETS.items() if spec.num_classes)
        raise UsageError(f"--conditional needs a labelled dataset ({labelled}); {dataset!r} has no labels")
    model_values = {"image_size": image_size, "channels": channels, **model_given}
    model_values["num_classes"] = num_classes if conditional else max(clusters, 0)  # validate() checks clusters
    if conditional or clusters:  # a clustered run trains the conditional model: its mode seeking
        given.setdefault("mode_seeking", MODE_SEEKING_CONDITIONAL)
    if folder or not (conditional or clusters):  # and on a folder, clustered or not, the unconditional rates
        given.setdefault("lr_g", LR_UNCONDITIONAL[0])
        given.setdefault("lr_d", LR_UNCONDITIONAL[1])
    if clusters:  # and re-clusters on D's features
        given.setdefault("recluster_every", RECLUSTER_EVERY_CLUSTERS)
        given.setdefault("recluster_until", RECLUSTER_UNTIL_CLUSTERS)
    try:
        check_image_shape(model_values["image_size"], model_values["channels"], "--image-size", "--channels")
        _check_attention_placement(model_values)
        model = ModelConfig(**model_values)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if folder:  # stored absolute: a resume from another working directory finds it
        given["dataset"] = str(Path(dataset).expanduser().absolute())
        given.setdefault("augment", AUGMENT_FOLDERS)  # a user's folder is small enough for D to memorise
    return TrainConfig(**{**given, "model": model}).validate()


def _check_attention_placement(model_values: dict[str, Any]) -> None:
    """--attn-res and --attention-in in the user's words: every size must exist in each network that gets it."""
    where = model_values.get("attention_in", "both")
    if where not in ATTENTION_IN:
        raise UsageError(f"--attention-in must be both, g or d, got {where!r}")
    size = model_values["image_size"]
    g_sizes, d_sizes = attention_sizes(size, "g"), attention_sizes(size, "d")
    allowed = [r for r in g_sizes if r in d_sizes] if where == "both" else attention_sizes(size, where)
    for res in model_values.get("attn_resolutions") or ():
        if res in allowed:
            continue
        has = [net.upper() for net, sizes in (("g", g_sizes), ("d", d_sizes)) if res in sizes]
        if not has:
            problem = f"neither G nor D has a {res}x{res} feature map"
        else:
            problem = f"only {has[0]} has a {res}x{res} feature map"
            problem += ", and SAGAN puts attention in both" if where == "both" else ""
        hint = f", or add --attention-in {has[0].lower()}" if has and where == "both" else ""
        raise UsageError(f"--attn-res {res}: at {size} px {problem}; choose from {', '.join(map(str, allowed))}{hint}")


def resolve_resume(
    target: Path,
    given: dict[str, Any],
    model_given: dict[str, Any],
    conditional: bool | None = None,
    name: str | None = None,
    out: Path | None = None,
    force: bool = False,
) -> RunPlan:
    """The saved run that `target` (a run directory or one of its checkpoints) continues.

    Settings that would change what is trained must agree with the run's config; the ones in
    RESUMABLE_OVERRIDES (steps, intervals, device, data location) replace it.
    """
    if not target.exists():
        raise UsageError(f"--resume {target}: no such run directory or checkpoint")
    is_checkpoint = target.is_file() and target.suffix == ".safetensors"
    if not (is_checkpoint or target.is_dir()):
        raise UsageError(f"--resume {target}: pass a run directory or one of its .safetensors checkpoints")
    run_path = target.parent.parent if is_checkpoint else target
    run = RunDir(run_path)
    saved = run.read_config()
    checkpoint = target if is_checkpoint else run.latest_checkpoint()
    if checkpoint is None:
        raise UsageError(
            f"--resume {target}: the run has no complete checkpoint yet; start it again with the same flags and --force"
        )
    requested = {k: v for k, v in given.items() if k not in RESUMABLE_OVERRIDES}
    requested.update({f"model.{k}": v for k, v in model_given.items()})
    if conditional is not None and conditional != (saved.model.num_classes > 0):
        requested["model.num_classes"] = "conditional" if conditional else 0
    differences = config_differences(saved, requested)
    if differences:
        listed = "; ".join(f"{key}: run has {old!r}, flags say {new!r}" for key, (old, new) in differences.items())
        raise UsageError(f"--resume {run_path}: flags conflict with the run's config ({listed}); drop those flags")
    overrides = {k: v for k, v in given.items() if k in RESUMABLE_OVERRIDES}
    if "max_steps" in overrides and "max_minutes" not in overrides:
        overrides["max_minutes"] = None  # a new step budget alone replaces the run's time budget
    config = saved.with_overrides(**overrides).validate()
    _check_resume_step(config, run, checkpoint, force)
    if name is not None and name != run_path.name:
        raise UsageError(f"--name {name!r} conflicts with --resume {target}; drop --name")
    if out is not None and Path(out).absolute() != run_path.absolute().parent:
        raise UsageError(f"--out {out} conflicts with --resume {target}, whose run is in {run_path.parent}; drop --out")
    return RunPlan(config, run_path, checkpoint, force)


def _check_resume_step(config: TrainConfig, run: RunDir, checkpoint: Path, force: bool) -> None:
    """The checkpoint's step must lie below --max-steps, and continuing must not delete later checkpoints unasked."""
    info = read_checkpoint_info(checkpoint)
    minutes = info.train_seconds / 60
    out_of_time = config.max_minutes is not None and config.max_minutes <= minutes
    if checkpoint.name == "final.safetensors" and (config.max_steps <= info.step or out_of_time):
        raise UsageError(
            f"{run.path} already finished at step {info.step} after {minutes:.3g} minutes of training; "
            "pass a larger --max-steps or --max-minutes to train on"
        )
    if config.max_steps < info.step:
        raise UsageError(
            f"--max-steps {config.max_steps} is below the checkpoint's step {info.step} ({checkpoint}); raise it"
        )
    later = run.checkpoints_after(info.step)
    if later and not force:
        raise UsageError(
            f"--resume {checkpoint}: the run has later checkpoints ({', '.join(p.name for p in later)}) that continuing "
            f"from step {info.step} would delete; pass --force to drop them, or copy the run first"
        )


def apply_clusters(plan: RunPlan, data: TrainingData, log: Log = no_log) -> RunPlan:
    """With --clusters K: give `data` the k-means cluster of each image as its label, and the plan's model
    the cluster sizes as class_weights. A resumed run must find the clusters it trained on."""
    config = plan.config
    if not config.clusters:
        return plan
    if plan.plain is not None:  # clustered by default: only data that can be clustered well
        if not isinstance(data, ImageData):
            why, fix = "is streamed from disk", "--data-mode memory clusters it"
        elif len(data) < CLUSTERS_MIN_IMAGES:
            why, fix = f"has {len(data):,} images, fewer than {CLUSTERS_MIN_IMAGES:,}", "--clusters K asks anyway"
        else:
            why = fix = ""
        if why:
            log(
                f"training the plain unconditional model: {config.dataset} {why}, so it is not split into "
                f"{config.clusters} clusters ({fix})"
            )
            return replace(plan, config=plan.plain, plain=None)
    if not isinstance(data, ImageData):
        raise UsageError(
            f"--clusters {config.clusters} needs the images in memory, but {config.dataset} is streamed from disk; "
            "pass --data-mode memory"
        )
    if config.clusters > len(data):
        raise UsageError(f"--clusters {config.clusters} is more than the dataset's {len(data)} images; lower it")
    start = time.perf_counter()
    if config.recluster_every and plan.checkpoint is not None:  # clusters found on D's features: stored
        return _resumed_clusters(plan, data, log)
    labels, counts = cluster_images(data.images, config.clusters, config.seed)
    saved = config.model.class_weights
    if saved and saved != counts:
        raise UsageError(
            f"--resume: the {config.clusters} clusters of the data loaded now differ from the ones the run trained on; "
            "resume on the machine and data that started it"
        )
    data.labels, data.num_classes = labels, config.clusters
    log(
        f"clustered {len(data)} images into {config.clusters} clusters (sizes {min(counts)}-{max(counts)}) "
        f"in {time.perf_counter() - start:.1f} s"
    )
    model = replace(config.model, class_weights=counts)
    return replace(plan, config=replace(config, model=model))


def _resumed_clusters(plan: RunPlan, data: ImageData, log: Log) -> RunPlan:
    """A --recluster-every run resumes with the clusters its checkpoint stored (they depend on D's past weights)."""
    assert plan.checkpoint is not None
    config = plan.config
    stored = stored_clusters(plan.checkpoint)
    if stored is None or stored.shape != (len(data),):
        have = "no clusters" if stored is None else f"clusters for {stored.shape[0]} images"
        raise UsageError(
            f"--resume {plan.checkpoint}: the checkpoint holds {have}, not for the {len(data)} images loaded now; "
            "resume with the data the run trained on"
        )
    labels = stored.long()
    valid = len(labels) == 0 or (labels.min() >= 0 and labels.max() < config.clusters)
    counts = tuple(int(c) for c in torch.bincount(labels, minlength=config.clusters)) if valid else ()
    if counts != read_checkpoint_info(plan.checkpoint).model.class_weights:
        raise UsageError(f"--resume {plan.checkpoint}: its stored clusters do not match its model; the file is damaged")
    data.labels, data.num_classes = labels, config.clusters
    log(f"resuming with the {config.clusters} clusters stored in {plan.checkpoint.name}")
    # config.json holds the clusters the run started with; the checkpoint the ones it trains on now.
    return replace(plan, config=replace(config, model=replace(config.model, class_weights=counts)))


def open_run(plan: RunPlan, data: TrainingData, writer: bool = True) -> RunDir:
    """Check the loaded data against the plan, then create the new run directory (or open the resumed one).

    The last refusal point: creating a new run replaces an old one of the same name (with --force).
    """
    check_training_data(plan.config, data, plan.checkpoint)
    if plan.checkpoint is None:
        return RunDir.create(plan.path, plan.config, force=plan.force, enabled=writer)
    return RunDir(plan.path, enabled=writer)
