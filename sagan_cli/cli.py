"""The `sagan` command line: parsing, exit codes and output; the work happens in the library modules."""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from typer.core import TyperGroup

from . import __version__
from .config import RESUMABLE_OVERRIDES, TrainConfig, check_seed, config_differences
from .errors import EXIT_FAILURE, EXIT_SIGINT, EXIT_USAGE, SaganError, UsageError
from .model import SUPPORTED_IMAGE_SIZES, ModelConfig, feature_resolutions
from .runtime import tune_cpu_allocator

if TYPE_CHECKING:  # imported lazily at run time: `sagan --help` should not pay for it
    from .rundir import RunDir

DEFAULTS = TrainConfig()
MODEL_DEFAULTS = ModelConfig()


def debug_enabled() -> bool:
    """Tracebacks are shown only with --debug or SAGAN_DEBUG=1."""
    return os.environ.get("SAGAN_DEBUG", "") not in ("", "0")


def error(message: str) -> None:
    """Print one human line to stderr."""
    print(f"error: {message}", file=sys.stderr, flush=True)


# Typer >= 0.29 vendors click; older releases use the click package. Find its UsageError either way.
ClickUsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


class SaganGroup(TyperGroup):
    """Turns expected failures into one line on stderr and an exit code, for app() and CliRunner alike."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except SaganError as exc:
            error(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except ClickUsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
            error(f"{exc.format_message()}{hint}")
            raise typer.Exit(EXIT_USAGE) from None
        except KeyboardInterrupt:
            # Ctrl-C outside the training loop's own handler (loading data, writing images): nothing to save.
            error("interrupted")
            raise typer.Exit(EXIT_SIGINT) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:
            if debug_enabled():
                raise
            error(f"unexpected {exc.__class__.__name__}: {exc} (run with --debug for a traceback)")
            raise typer.Exit(EXIT_FAILURE) from None


app = typer.Typer(
    cls=SaganGroup,
    name="sagan",
    help="Train Self-Attention GANs, sample and interpolate from them, and score them with FID / IS / KID.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"sagan {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show Python tracebacks for unexpected errors (or set SAGAN_DEBUG=1)."),
) -> None:
    """Train Self-Attention GANs, sample and interpolate from them, and score them with FID / IS / KID.

    Exit codes: 0 ok, 1 runtime failure, 2 usage error, 3 quality gate failed (evaluate),
    130/143 interrupted by SIGINT/SIGTERM after saving a checkpoint.
    """
    if debug:
        os.environ["SAGAN_DEBUG"] = "1"
    tune_cpu_allocator()  # large activations reused instead of re-faulted every step (docs/performance.md)


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


def _default_d(name: str) -> str:
    return f"(default: {getattr(DEFAULTS, name)})"


def _resolve_new_config(given: dict[str, Any], model_given: dict[str, Any], conditional: bool | None) -> TrainConfig:
    from .data import is_folder_dataset, native_shape

    dataset = given.get("dataset", DEFAULTS.dataset)
    channels, image_size, num_classes = native_shape(dataset)
    if conditional is None:  # default: class-conditional whenever the data has labels (docs/results.md)
        conditional = num_classes > 0
    if conditional and num_classes == 0:
        raise UsageError(f"--conditional needs a labelled dataset (mnist, fashion-mnist, cifar10); {dataset!r} has no labels")
    model_values = {"image_size": image_size, "channels": channels, **model_given}
    model_values["num_classes"] = num_classes if conditional else 0
    if model_values["image_size"] not in SUPPORTED_IMAGE_SIZES:
        raise UsageError(
            f"--image-size {model_values['image_size']} is not supported; use one of {', '.join(map(str, SUPPORTED_IMAGE_SIZES))}"
        )
    if model_values["channels"] not in (1, 3):
        raise UsageError(f"--channels must be 1 or 3, got {model_values['channels']}")
    try:
        model = ModelConfig(**model_values)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    in_both = feature_resolutions(model.image_size)[1:-1]  # G's top map and D's bottom map exist in one net only
    only_one = [r for r in model.active_attn_resolutions if r not in in_both]
    if only_one:
        raise UsageError(
            f"--attn-res {only_one[0]}: at {model.image_size} px only one of G and D has a {only_one[0]}x{only_one[0]} "
            f"feature map, and SAGAN puts attention in both; choose from {', '.join(map(str, in_both))}"
        )
    if is_folder_dataset(dataset):  # stored absolute: a resume from another working directory finds it
        given["dataset"] = str(Path(dataset).expanduser().absolute())
    return TrainConfig(**{**given, "model": model}).validate()


def _resolve_resume(
    target: Path, given: dict[str, Any], model_given: dict[str, Any], conditional: bool | None, force: bool
) -> tuple[TrainConfig, Path, Path]:
    from .rundir import RunDir

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
    return config, run_path, checkpoint


def _check_resume_step(config: TrainConfig, run: RunDir, checkpoint: Path, force: bool) -> None:
    from .checkpoint import read_checkpoint_info

    run_path = run.path
    info = read_checkpoint_info(checkpoint)
    if not info.has_training_state:
        raise UsageError(f"{checkpoint} holds no training state (discriminator/optimizers); it cannot be resumed")
    minutes = info.train_seconds / 60
    out_of_time = config.max_minutes is not None and config.max_minutes <= minutes
    if checkpoint.name == "final.safetensors" and (config.max_steps <= info.step or out_of_time):
        raise UsageError(
            f"{run_path} already finished at step {info.step} after {minutes:.3g} minutes of training; "
            "pass a larger --max-steps or --max-minutes to train on"
        )
    if config.max_steps < info.step:
        raise UsageError(f"--max-steps {config.max_steps} is below the checkpoint's step {info.step} ({checkpoint}); raise it")
    later = run.checkpoints_after(info.step)
    if later and not force:
        raise UsageError(
            f"--resume {checkpoint}: the run has later checkpoints ({', '.join(p.name for p in later)}) that continuing "
            f"from step {info.step} would delete; pass --force to drop them, or copy the run first"
        )


@app.command(
    epilog="Example: sagan train --dataset mnist --attention    (about 16 minutes on a 2-core CPU)",
)
def train(
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help=f"mnist, fashion-mnist, cifar10, celeba, or a folder of images {_default_d('dataset')}"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Where the dataset files are (or are downloaded to) (default: ~/.cache/sagan/datasets)"),
    download: Optional[bool] = typer.Option(None, "--download/--no-download", help="Allow dataset downloads (default: download)"),
    attention: Optional[bool] = typer.Option(None, "--attention/--no-attention", help="Self-attention in G and D (default: attention)"),
    attn_res: Optional[str] = typer.Option(None, "--attn-res", help="Feature-map size(s) that get attention, e.g. 14 or 16,32 (default: image size / 2, at most 64)"),
    conditional: Optional[bool] = typer.Option(None, "--conditional/--no-conditional", help="Class-conditional (conditional BN in G, projection D); default: on for labelled datasets (mnist, fashion-mnist, cifar10), off for folders"),
    image_size: Optional[int] = typer.Option(None, "--image-size", help=f"One of {', '.join(map(str, SUPPORTED_IMAGE_SIZES))} (default: the dataset's)"),
    channels: Optional[int] = typer.Option(None, "--channels", help="1 or 3 (default: the dataset's)"),
    z_dim: Optional[int] = typer.Option(None, "--z-dim", help=f"Latent size (default: {MODEL_DEFAULTS.z_dim})"),
    g_width: Optional[int] = typer.Option(None, "--g-width", help=f"Generator width (default: {MODEL_DEFAULTS.g_width})"),
    d_width: Optional[int] = typer.Option(None, "--d-width", help="Discriminator width (default: 32)"),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help=f"Training iterations {_default_d('max_steps')}"),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", help="Time budget: stop with a final checkpoint at the first step past M minutes of training (with --resume: a new total budget; --max-steps alone lifts it) (default: none)"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", help=_default_d("batch_size")),
    lr_g: Optional[float] = typer.Option(None, "--lr-g", help=f"Generator Adam learning rate {_default_d('lr_g')}"),
    lr_d: Optional[float] = typer.Option(None, "--lr-d", help=f"Discriminator Adam learning rate {_default_d('lr_d')}"),
    beta1: Optional[float] = typer.Option(None, "--beta1", help=_default_d("beta1")),
    beta2: Optional[float] = typer.Option(None, "--beta2", help=_default_d("beta2")),
    d_steps: Optional[int] = typer.Option(None, "--d-steps", help=f"D updates per G update {_default_d('d_steps')}"),
    lr_decay: Optional[float] = typer.Option(None, "--lr-decay", help=f"Fraction of the run (steps, or minutes with --max-minutes) at its end over which both learning rates fall linearly to 0 {_default_d('lr_decay')}"),
    augment: Optional[str] = typer.Option(None, "--augment", help=f"Augment D's real and fake inputs alike: none or translation (DiffAugment) {_default_d('augment')}"),
    ema: Optional[bool] = typer.Option(None, "--ema/--no-ema", help="Keep an EMA copy of G for sampling (default: ema)"),
    ema_decay: Optional[float] = typer.Option(None, "--ema-decay", help=_default_d("ema_decay")),
    seed: Optional[int] = typer.Option(None, "--seed", help=f"Seed of every random draw {_default_d('seed')}"),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda or mps (default: auto)"),
    name: Optional[str] = typer.Option(None, "--name", help="Run name (default: <dataset>-<attn|noattn>, numbered if taken)"),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder that holds run directories (default: runs)"),
    save_every: Optional[int] = typer.Option(None, "--save-every", help=f"Checkpoint every N steps {_default_d('save_every')}"),
    sample_every: Optional[int] = typer.Option(None, "--sample-every", help=f"Preview grid every N steps {_default_d('sample_every')}"),
    log_every: Optional[int] = typer.Option(None, "--log-every", help=f"Log line every N steps {_default_d('log_every')}"),
    keep: Optional[int] = typer.Option(None, "--keep", help=f"Periodic checkpoints kept (final always kept) {_default_d('keep')}"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue a run: its directory or one of its checkpoints"),
    force: bool = typer.Option(False, "--force", help="Replace an existing run directory of the same name; with --resume CKPT, drop the run's later checkpoints"),
) -> None:
    """Train a SAGAN; prints the final checkpoint's path on stdout."""
    from .data import load_dataset
    from .progress import make_reporter
    from .rundir import RunDir, unique_run_path
    from .runtime import is_main_process, resolve_device
    from .train import StopFlag, check_training_data, train as run_training

    local = locals()
    train_keys = {f.name for f in fields(TrainConfig)} - {"model"}
    given = {k: local[k] for k in train_keys if local.get(k) is not None}
    if data_dir is not None:
        given["data_dir"] = str(data_dir.expanduser().absolute())
    model_given = {
        key: value
        for key, value in {
            "image_size": image_size,
            "channels": channels,
            "z_dim": z_dim,
            "g_width": g_width,
            "d_width": d_width,
            "attention": attention,
            "attn_resolutions": _parse_resolutions(attn_res),
        }.items()
        if value is not None
    }
    # Every check runs before anything on disk changes: a refused run leaves the old one (even with
    # --force) and creates no directory.
    writer = is_main_process()
    if resume is not None:
        config, run_path, checkpoint = _resolve_resume(resume, given, model_given, conditional, force)
        if name is not None and name != run_path.name:
            raise UsageError(f"--name {name!r} conflicts with --resume {resume}; drop --name")
        if out is not None and Path(out).absolute() != run_path.absolute().parent:
            raise UsageError(f"--out {out} conflicts with --resume {resume}, whose run is in {run_path.parent}; drop --out")
    else:
        out = Path("runs") if out is None else out
        config, checkpoint = _resolve_new_config(given, model_given, conditional), None
        base = name or f"{Path(config.dataset).name or 'data'}-{'attn' if config.model.attention else 'noattn'}"
        run_path = out / base if name else unique_run_path(out, base)
        if writer:
            RunDir.check_new(run_path, force)
    torch_device = resolve_device(config.device)
    reporter = make_reporter()
    data = load_dataset(
        config.dataset,
        image_size=config.model.image_size,
        channels=config.model.channels,
        data_dir=Path(config.data_dir) if config.data_dir else None,
        download=config.download,
        log=reporter.log,
    )
    check_training_data(config, data, checkpoint)
    if checkpoint is None:
        run = RunDir.create(run_path, config, force=force, enabled=writer)
    else:
        run = RunDir(run_path, enabled=writer)
    stop = StopFlag()
    previous_handlers = _install_signal_handlers(stop)
    try:
        with run.locked():
            reporter.log(f"run {run.path}: {config.dataset} ({data.source}, {len(data)} images), device {torch_device}")
            final = run_training(config, data, run, torch_device, reporter, stop=stop, resume_from=checkpoint)
    finally:
        for signal_number, handler in previous_handlers.items():
            signal.signal(signal_number, handler)
    if final is not None:
        print(final)


def _install_signal_handlers(stop: Any) -> dict[int, Any]:
    """First SIGINT/SIGTERM: finish the step, save, exit 130/143. A second SIGINT stops at once.

    Returns the handlers they replace, to be put back when training ends.
    """

    def handle(signal_number: int, frame: object) -> None:
        if stop.signal_number is not None and signal_number == signal.SIGINT:
            raise KeyboardInterrupt
        stop.request(signal_number)
        print(f"\nsignal {signal_number}: saving a checkpoint after this step (Ctrl-C again to stop at once)", file=sys.stderr)

    return {number: signal.signal(number, handle) for number in (signal.SIGINT, signal.SIGTERM)}


@app.command(epilog="Examples: sagan sample runs/mnist-attn/checkpoints/final.safetensors -n 64 -o grid.png\n\n"
             "          sagan sample CKPT -n 16 -o digits/ --seed 3")
def sample(
    checkpoint: Path = typer.Argument(..., help="A .safetensors checkpoint written by sagan train"),
    num: int = typer.Option(64, "-n", "--num", help="How many images"),
    output: str = typer.Option("samples.png", "-o", "--output", help="A grid image (.png/.jpg/.webp) or a folder DIR/ of single PNGs"),
    nrow: Optional[int] = typer.Option(None, "--nrow", help="Images per grid row (default: about sqrt(n))"),
    seed: int = typer.Option(0, "--seed", help="Seed of the latents: same seed, same images"),
    truncation: float = typer.Option(1.0, "--truncation", help="Scale latents by T in (0, 1]: lower = cleaner, less varied"),
    class_index: Optional[int] = typer.Option(None, "--class", help="Class to draw (conditional models only; default: every image gets a class drawn uniformly from its seed)"),
    ema: bool = typer.Option(True, "--ema/--no-ema", help="Use the EMA generator when the checkpoint has one"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or mps"),
    batch_size: int = typer.Option(256, "--batch-size", help="Images generated per forward pass"),
    force: bool = typer.Option(False, "--force", help="Overwrite existing output files"),
) -> None:
    """Draw images from a checkpoint; prints the written path(s) on stdout."""
    from .checkpoint import read_checkpoint_info
    from .outputs import check_output_file, check_output_folder, remove_earlier_samples, sample_file_names, wants_folder
    from .sampling import IMAGE_SUFFIXES, check_sample_count, make_grid, sample_from_checkpoint, save_image

    if num < 1:
        raise UsageError(f"-n must be at least 1, got {num}")
    if nrow is not None and nrow < 1:
        raise UsageError(f"--nrow must be at least 1, got {nrow}")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    check_seed(seed)
    path = Path(output)
    folder = wants_folder(path, output)
    if folder and nrow is not None:
        raise UsageError(f"--nrow only applies to a grid, and -o {output} is a folder of single images; drop --nrow")
    check_sample_count(num, read_checkpoint_info(checkpoint).model, grid=not folder)
    names = sample_file_names(num)
    if folder:
        check_output_folder(path, names, force)
    else:
        check_output_file(path, IMAGE_SUFFIXES, force)
    images, info, metadata = sample_from_checkpoint(
        checkpoint, num, seed=seed, truncation=truncation, class_index=class_index, use_ema=ema,
        device=device, batch_size=batch_size,
    )
    if folder:  # each write is atomic and reports its own failure as one line
        for i, name_ in enumerate(names):
            save_image(images[i], path / name_, {**metadata, "index": str(i)})
        removed = remove_earlier_samples(path, names)  # only with --force: check_output_folder refuses otherwise
        if removed:
            print(f"removed {len(removed)} sample file(s) of an earlier run from {path}", file=sys.stderr)
    else:
        save_image(make_grid(images, nrow), path, metadata)
    print(path)


from . import cli_eval  # noqa: E402,F401  (registers interpolate, evaluate, compare on `app`)


def main() -> None:
    """Console-script entry point."""
    app()
