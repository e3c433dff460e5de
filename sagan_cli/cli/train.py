"""`sagan train`: parse -> resolve the run -> load data -> train. Defaults live in TrainConfig."""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer

from ..config import (
    CLUSTERS_MIN_IMAGES,
    CLUSTERS_UNLABELLED,
    LR_UNCONDITIONAL,
    MODE_SEEKING_CONDITIONAL,
    R1_EVERY,
    RECLUSTER_EVERY_CLUSTERS,
    RECLUSTER_UNTIL_CLUSTERS,
    TrainConfig,
)
from ..data import DATASETS
from ..errors import EXIT_FAILURE, Interrupted, UsageError
from ..model import SUPPORTED_IMAGE_SIZES, ModelConfig, default_attention_resolutions, default_d_width
from ..rundir import RUNS_ROOT
from .console import error

if TYPE_CHECKING:  # annotations only: `sagan train --help` should not import torch's training stack
    import torch

    from ..runs import RunPlan
    from ..train import Reporter

DEFAULTS = TrainConfig()
MODEL_DEFAULTS = ModelConfig()
EPILOG = "Example: sagan train --dataset mnist --attention    (about 15 minutes on a 2-core CPU)"


def _default(name: str) -> str:
    return f"(default: {getattr(DEFAULTS, name)})"


def _by_image_size(rule: Any) -> str:
    """A model.py rule written out per supported image size, e.g. `28 px: 64, 32 px: 64, 64 px: 32`."""
    return ", ".join(f"{size} px: {rule(size)}" for size in SUPPORTED_IMAGE_SIZES)


ATTN_RES_HELP = (
    "Feature-map size(s) that get attention, e.g. 14 or 16,32 (default: "
    f"{_by_image_size(lambda size: ','.join(map(str, default_attention_resolutions(size))))})"
)
D_WIDTH_HELP = f"Discriminator width (default: {_by_image_size(default_d_width)})"


def _parse_resolutions(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UsageError(f"--attn-res {text!r} is not a comma-separated list of sizes, e.g. 16 or 16,32") from None
    if not values:
        raise UsageError("--attn-res needs at least one feature-map size, e.g. 16")
    return values


def train(
    dataset: str | None = typer.Option(
        None,
        "--dataset",
        "-d",
        help=f"{', '.join(DATASETS)}, or a folder of images {_default('dataset')}",
    ),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="Where the dataset files are (or are downloaded to) (default: ~/.cache/sagan/datasets)"
    ),
    download: bool | None = typer.Option(
        None, "--download/--no-download", help="Allow dataset downloads (default: download)"
    ),
    data_mode: str | None = typer.Option(
        None,
        "--data-mode",
        help="Image folders and celeba: memory (preload), stream (decode every batch in worker processes), "
        f"auto (preload if it fits in half the free memory) {_default('data_mode')}",
    ),
    data_workers: int | None = typer.Option(
        None, "--data-workers", help=f"Worker processes that decode images when streaming {_default('data_workers')}"
    ),
    attention: bool | None = typer.Option(
        None, "--attention/--no-attention", help="Self-attention in G and D (default: attention)"
    ),
    attn_res: str | None = typer.Option(None, "--attn-res", help=ATTN_RES_HELP),
    attention_in: str | None = typer.Option(
        None,
        "--attention-in",
        help="Which networks get the attention blocks: both (the paper), g or d (default: both)",
    ),
    conditional: bool | None = typer.Option(
        None,
        "--conditional/--no-conditional",
        help="Class-conditional (conditional BN in G, projection D); "
        "default: on for labelled datasets (mnist, fashion-mnist, cifar10), off for folders; without labels "
        "a run trains on clusters of the images instead (see --clusters)",
    ),
    image_size: int | None = typer.Option(
        None, "--image-size", help=f"One of {', '.join(map(str, SUPPORTED_IMAGE_SIZES))} (default: the dataset's)"
    ),
    channels: int | None = typer.Option(None, "--channels", help="1 or 3 (default: the dataset's)"),
    z_dim: int | None = typer.Option(None, "--z-dim", help=f"Latent size (default: {MODEL_DEFAULTS.z_dim})"),
    g_width: int | None = typer.Option(None, "--g-width", help=f"Generator width (default: {MODEL_DEFAULTS.g_width})"),
    d_width: int | None = typer.Option(None, "--d-width", help=D_WIDTH_HELP),
    max_steps: int | None = typer.Option(None, "--max-steps", help=f"Training iterations {_default('max_steps')}"),
    max_minutes: float | None = typer.Option(
        None,
        "--max-minutes",
        help="Time budget: stop with a final checkpoint at the first step past M minutes of training "
        "(with --resume: a new total budget; --max-steps alone lifts it) (default: none)",
    ),
    batch_size: int | None = typer.Option(None, "--batch-size", "-b", help=_default("batch_size")),
    lr_g: float | None = typer.Option(
        None,
        "--lr-g",
        help=f"Generator Adam learning rate (default: {DEFAULTS.lr_g:g} class-conditional, "
        f"{LR_UNCONDITIONAL[0]:g} unconditional and on folders)",
    ),
    lr_d: float | None = typer.Option(
        None,
        "--lr-d",
        help=f"Discriminator Adam learning rate (default: {DEFAULTS.lr_d:g} class-conditional, "
        f"{LR_UNCONDITIONAL[1]:g} unconditional and on folders)",
    ),
    beta1: float | None = typer.Option(None, "--beta1", help=_default("beta1")),
    beta2: float | None = typer.Option(None, "--beta2", help=_default("beta2")),
    d_steps: int | None = typer.Option(None, "--d-steps", help=f"D updates per G update {_default('d_steps')}"),
    lr_decay: float | None = typer.Option(
        None,
        "--lr-decay",
        help="Fraction of the run (steps, or minutes with --max-minutes) at its end over which both learning "
        f"rates fall linearly to 0 {_default('lr_decay')}",
    ),
    gamma_lr_mult: float | None = typer.Option(
        None,
        "--gamma-lr-mult",
        help="Learning rate of the attention gates (gamma) as a multiple of their network's rate "
        f"{_default('gamma_lr_mult')}",
    ),
    r1: float | None = typer.Option(
        None,
        "--r1",
        help="Weight gamma of the zero-centred R1 gradient penalty on D's real inputs "
        f"(gamma/2)|grad D(x)|^2, applied every {R1_EVERY} steps; 0 turns it off {_default('r1')}",
    ),
    clusters: int | None = typer.Option(
        None,
        "--clusters",
        help="For unlabelled data: group the images into K k-means clusters before training and train the "
        "class-conditional model on them, with its mode seeking (and, on built-in datasets, its learning "
        f"rates), re-clustering on D's features every {RECLUSTER_EVERY_CLUSTERS} steps in the first "
        f"{RECLUSTER_UNTIL_CLUSTERS:.0%} of the run (see --recluster-every, --recluster-until); samples draw "
        f"clusters by their share of the data; 0 trains the plain unconditional model (default: "
        f"{CLUSTERS_UNLABELLED} for folders, celeba and --no-conditional when the data has at least "
        f"{CLUSTERS_MIN_IMAGES:,} images held in memory, else 0)",
    ),
    recluster_every: int | None = typer.Option(
        None,
        "--recluster-every",
        help="With --clusters: cluster the images again every N steps on D's features, starting from the "
        "current clusters so each keeps its number (self-conditioned GAN); the checkpoint stores each image's "
        f"cluster for --resume; 0 clusters once, on pixels (default: {RECLUSTER_EVERY_CLUSTERS} with --clusters, else 0)",
    ),
    recluster_until: float | None = typer.Option(
        None,
        "--recluster-until",
        help="With --recluster-every: re-cluster only during this first fraction of the run (by --max-steps, or "
        "--max-minutes when that ends it sooner), then keep the clusters so G settles on them "
        f"(default: {RECLUSTER_UNTIL_CLUSTERS:g} with --clusters)",
    ),
    augment: str | None = typer.Option(
        None,
        "--augment",
        help="DiffAugment of D's real and fake inputs alike: none, or color, translation, cutout joined by commas "
        "(e.g. translation,cutout) (default: translation for image folders, none for built-in datasets)",
    ),
    mode_seeking: float | None = typer.Option(
        None,
        "--mode-seeking",
        help="Weight of the mode-seeking term (MSGAN) in G's loss, which keeps G using its latent within a class; "
        f"0 turns it off (default: {MODE_SEEKING_CONDITIONAL:g} for class-conditional models, 0 otherwise)",
    ),
    ema: bool | None = typer.Option(None, "--ema/--no-ema", help="Keep an EMA copy of G for sampling (default: ema)"),
    ema_decay: float | None = typer.Option(None, "--ema-decay", help=_default("ema_decay")),
    seed: int | None = typer.Option(None, "--seed", help=f"Seed of every random draw {_default('seed')}"),
    device: str | None = typer.Option(None, "--device", help=f"auto, cpu, cuda or mps {_default('device')}"),
    name: str | None = typer.Option(
        None, "--name", help="Run name (default: <dataset>-<attn|noattn>, numbered if taken)"
    ),
    out: Path | None = typer.Option(None, "--out", help=f"Folder that holds run directories (default: {RUNS_ROOT})"),
    save_every: int | None = typer.Option(
        None, "--save-every", help=f"Checkpoint every N steps {_default('save_every')}"
    ),
    sample_every: int | None = typer.Option(
        None, "--sample-every", help=f"Preview grid every N steps {_default('sample_every')}"
    ),
    log_every: int | None = typer.Option(None, "--log-every", help=f"Log line every N steps {_default('log_every')}"),
    keep: int | None = typer.Option(
        None, "--keep", help=f"Periodic checkpoints kept (final always kept) {_default('keep')}"
    ),
    eval_every: int | None = typer.Option(
        None,
        "--eval-every",
        help="Score the EMA generator with FID / IS every N steps, keep checkpoints/best.safetensors (default: 0 = never)",
    ),
    eval_samples: int | None = typer.Option(
        None, "--eval-samples", help=f"Images per evaluation {_default('eval_samples')}"
    ),
    tensorboard: bool | None = typer.Option(
        None,
        "--tensorboard/--no-tensorboard",
        help='Also log to TensorBoard in <run>/tensorboard (needs pip install "sagan-cli\\[tensorboard]")',
    ),
    config_file: Path | None = typer.Option(
        None, "--config", help="A TOML or JSON file with the keys of a run's config.json; flags given here override it"
    ),
    print_config: bool = typer.Option(
        False, "--print-config", help="Print the resolved configuration as JSON on stdout and exit"
    ),
    precision: str | None = typer.Option(
        None,
        "--precision",
        help="auto, fp32, bf16 or fp16: the autocast dtype; weights and checkpoints stay fp32 "
        "(default: auto = bf16 on CUDA GPUs that have it, else fp32)",
    ),
    sync_bn: bool | None = typer.Option(
        None,
        "--sync-bn/--no-sync-bn",
        help="Under torchrun on CUDA: G's BatchNorm statistics over the global batch, not each rank's shard "
        "(default: no-sync-bn)",
    ),
    dist_timeout: int | None = typer.Option(
        None,
        "--dist-timeout",
        help=f"Under torchrun: seconds before the processes give up on a silent one {_default('dist_timeout')}",
    ),
    resume: Path | None = typer.Option(
        None, "--resume", help="Continue a run: its directory or one of its checkpoints"
    ),
    force: bool = typer.Option(
        False,
        "--force",
        help="Replace an existing run directory of the same name; with --resume CKPT, drop the run's later checkpoints",
    ),
) -> None:
    """Train a SAGAN; prints the final checkpoint's path on stdout.

    Under `torchrun --nproc-per-node N -m sagan_cli train ...` N processes train one run with
    DistributedDataParallel; --batch-size is the global batch (docs/scaling.md).
    """
    from .. import distributed
    from ..config_file import check_num_classes, merge_config_file
    from ..precision import resolve_precision
    from ..progress import make_reporter
    from ..runs import resolve_new, resolve_resume
    from ..runtime import is_main_process, resolve_device
    from ..train_hooks import check_hooks

    # parse: only what was given; the library fills in the rest (TrainConfig, the dataset's shape)
    local = locals()
    train_keys = {f.name for f in fields(TrainConfig)} - {"model"}
    given = {k: local[k] for k in train_keys if local.get(k) is not None}
    if data_dir is not None:
        given["data_dir"] = str(data_dir.expanduser().absolute())
    model_values = {
        "image_size": image_size,
        "channels": channels,
        "z_dim": z_dim,
        "g_width": g_width,
        "d_width": d_width,
        "attention": attention,
        "attn_resolutions": _parse_resolutions(attn_res),
        "attention_in": attention_in,
    }
    model_given = {key: value for key, value in model_values.items() if value is not None}
    if config_file is not None:  # the file's keys count as flags; flags given here win
        given, model_given, conditional = merge_config_file(config_file, given, model_given, conditional)
    # resolve
    writer = is_main_process()
    if resume is not None:
        plan = resolve_resume(resume, given, model_given, conditional, name, out, force)
    else:
        plan = resolve_new(given, model_given, conditional, name, out, force, check_disk=writer and not print_config)
    config = plan.config
    if config_file is not None:
        check_num_classes(config_file, config)
    if eval_samples is not None and config.eval_every == 0:
        raise UsageError(
            f"--eval-samples {eval_samples} is only used with --eval-every N; add --eval-every or drop --eval-samples"
        )
    if print_config:
        print(config.to_json(every_key=True))
        return
    check_hooks(config)  # --tensorboard without the package, an --eval-samples too large: before any work
    world = distributed.world_from_env()  # torchrun's RANK / WORLD_SIZE; one process without them
    distributed.check_global_batch(config.batch_size, world)
    torch_device = distributed.rank_device(resolve_device(config.device), world)
    resolve_precision(config.precision, torch_device)
    distributed.check_sync_bn(config.sync_bn, world, torch_device)
    reporter = make_reporter(enabled=writer)  # other ranks stay silent except for errors
    try:
        with distributed.session(world, torch_device, config.dist_timeout):
            _load_and_train(plan, writer, torch_device, reporter, world.distributed)
            if world.distributed:
                _leave_finished_group()
    except distributed.DistributedFailure as exc:
        if not distributed.joined():
            raise  # never joined a group: an ordinary one-line error
        _leave_broken_group(str(exc))


def _leave_broken_group(message: str) -> NoReturn:
    """Say the one line and end the process now, without running the broken group's destructors.

    After a peer died or hung, gloo may still hold work queued for it; the destructors that run at a
    normal interpreter exit then wait on that work or abort (a CI run once saw SIGABRT, exit -6, here
    instead of 1). Everything worth keeping was already written atomically before this point.
    """
    error(message)
    _leave_group(EXIT_FAILURE)


def _leave_finished_group() -> NoReturn:
    """End a torchrun process whose training finished, without tearing the process group down.

    Every checkpoint is written and the last collective has returned on every rank. CI twice saw a
    rank abort (SIGABRT, "terminate called without an active exception") after such a run had
    finished, which torchrun reports as a failed run; about 25 local tries did not reproduce it, so
    the cause is not proven. gloo's own threads are what runs in that teardown (destroy_process_group
    and the interpreter's exit), so this process skips both, as a failed rank does.
    """
    _leave_group(0)


def _leave_group(code: int) -> NoReturn:
    """Flush stdout and stderr (os._exit skips the interpreter's own flush) and end the process with `code`."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _load_and_train(
    plan: RunPlan, writer: bool, torch_device: torch.device, reporter: Reporter, distributed_run: bool
) -> None:
    """Load the data, open the run, train under the signal handlers; print the final checkpoint."""
    from ..runs import apply_clusters, open_run
    from ..streaming import load_training_data
    from ..train import StopFlag
    from ..train import train as run_training

    config = plan.config
    data = load_training_data(
        config.dataset,
        image_size=config.model.image_size,
        channels=config.model.channels,
        data_dir=Path(config.data_dir) if config.data_dir else None,
        download=config.download,
        data_mode=config.data_mode,
        workers=config.data_workers,
        log=reporter.log,
    )
    plan = apply_clusters(plan, data, reporter.log)
    config = plan.config
    run = open_run(plan, data, writer)
    # train
    stop = StopFlag()
    previous_handlers = _install_signal_handlers(stop, repeat_interrupts=not distributed_run, announce=writer)
    try:
        with run.locked():
            reporter.log(f"run {run.path}: {config.dataset} ({data.source}, {len(data)} images), device {torch_device}")
            final = run_training(config, data, run, torch_device, reporter, stop=stop, resume_from=plan.checkpoint)
    except Interrupted as exc:
        if writer:
            raise
        raise typer.Exit(exc.exit_code) from None  # rank 0 says where it saved; the others exit quietly
    finally:
        for signal_number, handler in previous_handlers.items():
            signal.signal(signal_number, handler)
    if final is not None:
        print(final)


def _install_signal_handlers(stop: Any, repeat_interrupts: bool = True, announce: bool = True) -> dict[int, Any]:
    """First SIGINT/SIGTERM: finish the step, save, exit 130/143. A second SIGINT stops at once,
    except under torchrun (repeat_interrupts False): there one Ctrl-C reaches a worker twice (from
    the terminal and forwarded by torchrun), and every rank must reach the agreed step to save.
    Only the announcing process (rank 0) says so on stderr.

    Returns the handlers they replace, to be put back when training ends.
    """

    def handle(signal_number: int, frame: object) -> None:
        if stop.signal_number is not None and not repeat_interrupts:
            return
        if stop.signal_number is not None and signal_number == signal.SIGINT:
            raise KeyboardInterrupt
        stop.request(signal_number)
        if announce:
            again = " (Ctrl-C again to stop at once)" if repeat_interrupts else ""
            print(f"\nsignal {signal_number}: saving a checkpoint after this step{again}", file=sys.stderr)

    return {number: signal.signal(number, handle) for number in (signal.SIGINT, signal.SIGTERM)}


def register(app: typer.Typer) -> None:
    """Add `sagan train` to the app."""
    app.command(epilog=EPILOG)(train)
