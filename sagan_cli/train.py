"""Training: the registered GAN loss (hinge by default), Adam (TTUR-capable), EMA generator, exact resume.

Every random draw of a step comes from a generator seeded by (seed, step), and
the data order of an epoch from (seed, epoch), so a resumed run needs no RNG
state and continues bit for bit. Batches are chosen by dataset index; under
torchrun every rank draws the same global batch (indices and latents) and
computes its contiguous slice of it (distributed.py), so the global batch does
not depend on the number of processes.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import signal
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from . import distributed
from .augment import augment
from .checkpoint import load_module_state, load_optimizer_state, read_checkpoint_info, save_checkpoint
from .clusters import cluster_tensors, recluster_data
from .config import R1_EVERY, TrainConfig
from .data import ImageData, to_model_range
from .errors import EXIT_SIGINT, EXIT_SIGTERM, DivergenceError, Interrupted, UsageError
from .images import make_grid
from .logs import Log, no_log
from .losses import get_loss, mode_seeking, r1_penalty
from .model import Discriminator, Generator, ModelConfig, attention_gammas
from .precision import Precision, backward_and_step, load_scaler_metadata, resolve_precision, scaler_metadata
from .rundir import BEST_NAME, RunDir
from .runtime import preferred_memory_format
from .sampling import draw_classes, generate, sample_latents
from .streaming import IndexFn, RealBatch, TrainingData, real_batches
from .train_guards import FiniteWatch, RankAgreement, StopFlag, weights_are_finite
from .train_hooks import TrainingHooks, build_hooks

STREAM_AUGMENT = 1  # a step's augmentation draws (D step, then G step)
STREAM_LATENTS = 0  # a step's latents, then its fake labels, come from this stream
PREVIEW_SAMPLES = 64


class Reporter(Protocol):
    """What the trainer tells the outside world; the CLI implements it with Rich or plain lines."""

    def start(self, total_steps: int, first_step: int) -> None: ...
    def step(self, step: int, stats: dict[str, float]) -> None: ...
    def log(self, message: str) -> None: ...
    def close(self) -> None: ...


@dataclass
class StepSetup:
    """How a step runs: the modules it calls (DDP wrappers under torchrun), this rank, autocast, fp16 scalers."""

    generator: torch.nn.Module
    discriminator: torch.nn.Module
    world: distributed.World = distributed.World()
    precision: Precision = Precision()
    scaler_g: torch.amp.GradScaler | None = None
    scaler_d: torch.amp.GradScaler | None = None


@dataclass
class TrainState:
    """Models, optimizers and counters: everything a checkpoint restores (models never DDP-wrapped)."""

    generator: Generator
    discriminator: Discriminator
    generator_ema: Generator | None
    optimizer_g: torch.optim.Optimizer
    optimizer_d: torch.optim.Optimizer
    step: int = 0
    train_seconds: float = 0.0
    setup: StepSetup | None = None  # None: one process, fp32


def step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    """A CPU generator for one purpose at one step: no RNG state to carry across a resume."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 16 + stream)


def batch_indices(batch_number: int, dataset_size: int, batch_size: int, seed: int) -> torch.Tensor:
    """Dataset indices of the n-th batch: epoch-wise permutations from (seed, epoch), last partial batch dropped."""
    per_epoch = dataset_size // batch_size
    epoch, position = divmod(batch_number, per_epoch)
    order = _epoch_order(dataset_size, seed, epoch)
    return order[position * batch_size : (position + 1) * batch_size]


def index_function(data_size: int, config: TrainConfig, shard: slice = slice(None)) -> IndexFn:
    """batch number -> this rank's dataset indices (n,) of this run: what every data mode's loader is asked for.

    Every rank draws the global batch's indices and keeps its `shard` (all of them in one process).
    """

    def index_of(batch_number: int) -> torch.Tensor:
        return batch_indices(batch_number, data_size, config.batch_size, config.seed)[shard]

    return index_of


@functools.lru_cache(maxsize=2)
def _epoch_order(dataset_size: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of one epoch, drawn once per epoch rather than once per step (read-only)."""
    return torch.randperm(dataset_size, generator=torch.Generator().manual_seed(seed * 7919 + epoch))


def build_state(config: TrainConfig, device: torch.device) -> TrainState:
    """Fresh models and optimizers, initialised from the run's seed."""
    torch.manual_seed(config.seed)
    memory_format = preferred_memory_format(device)
    generator = Generator(config.model).to(device).to(memory_format=memory_format)
    discriminator = Discriminator(config.model).to(device).to(memory_format=memory_format)
    generator_ema = copy.deepcopy(generator).eval().requires_grad_(False) if config.ema else None
    optimizer_g = _adam(generator, config.lr_g, config, device)
    optimizer_d = _adam(discriminator, config.lr_d, config, device)
    return TrainState(generator, discriminator, generator_ema, optimizer_g, optimizer_d)


def prepare_step(state: TrainState, config: TrainConfig, device: torch.device) -> StepSetup:
    """Wrap G and D for DDP (SyncBatchNorm in G with config.sync_bn) and make the fp16 scalers; call after restoring."""
    world = distributed.current_world()
    generator: torch.nn.Module = state.generator
    if config.sync_bn and world.distributed:  # same parameter and buffer objects: optimizer and checkpoints unchanged
        generator = distributed.sync_batchnorm(generator, device)
    precision = Precision(resolve_precision(config.precision, device), device.type)
    state.setup = StepSetup(
        distributed.wrap(generator, device),
        distributed.wrap(state.discriminator, device),
        world,
        precision,
        precision.scaler(),
        precision.scaler(),
    )
    return state.setup


def _adam(module: torch.nn.Module, lr: float, config: TrainConfig, device: torch.device) -> torch.optim.Adam:
    """Adam, fused (one kernel for all parameters) where torch has it: several times faster than the loop on CPU."""
    fused = device.type in ("cpu", "cuda")
    optimizer = torch.optim.Adam(_param_groups(module, config), lr=lr, betas=(config.beta1, config.beta2), fused=fused)
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]
    if fused:
        optimizer.register_load_state_dict_post_hook(_match_parameter_layout)
    return optimizer


def _param_groups(module: torch.nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """One group, or with --gamma-lr-mult a second for the attention gates at that multiple of the rate.

    Only a multiple other than 1 splits: optimizer state is stored by parameter order over the
    groups, so runs without it keep the order (and checkpoints) of a single group."""
    gates = [param for name, param in module.named_parameters() if name.rsplit(".", 1)[-1] == "gamma"]
    if config.gamma_lr_mult == 1 or not gates:
        return [{"params": list(module.parameters()), "lr_scale": 1.0}]
    gate_ids = {id(param) for param in gates}
    rest = [param for param in module.parameters() if id(param) not in gate_ids]
    return [{"params": rest, "lr_scale": 1.0}, {"params": gates, "lr_scale": config.gamma_lr_mult}]


def _match_parameter_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give loaded moments their parameter's strides: the fused kernel walks param, grad and moments
    as flat memory, so a contiguous moment for a channels_last weight would be silently misapplied."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                if value.shape == param.shape and value.stride() != param.stride():
                    optimizer.state[param][key] = torch.empty_like(param).copy_(value)


def check_training_data(config: TrainConfig, data: TrainingData, resume_from: Path | None = None) -> None:
    """Refuse data this run cannot train on, before any file of the run is touched.

    On resume the data must be what the checkpoint trained on: same dataset, source and shape. A
    run started on torchvision's MNIST and resumed offline would otherwise go on with the 10,000
    bundled digits without a word.
    """
    if config.model.num_classes and data.labels is None:
        raise UsageError(f"--conditional needs labels, but {config.dataset!r} has none")
    if len(data) < config.batch_size:
        raise UsageError(f"--batch-size {config.batch_size} is larger than the dataset ({len(data)} images); lower it")
    if config.eval_every > 0 and len(data) < 2:  # FID's reference is the training data: a covariance needs 2 images
        raise UsageError(
            f"--eval-every {config.eval_every}: FID needs at least 2 reference images, but the dataset has {len(data)}; "
            "drop --eval-every"
        )
    if resume_from is not None:
        trained_on = read_checkpoint_info(resume_from).metadata.get("data_id")
        if trained_on is not None and not data.matches(trained_on):
            raise UsageError(
                f"--resume {resume_from}: the run trained on {trained_on!r}, but the data loaded now is "
                f"{data.data_id!r}; make the same data available (e.g. --data-dir) to continue it"
            )


def restore_state(state: TrainState, checkpoint: Path) -> None:
    """Load a full training checkpoint into a freshly built state (and its fp16 loss scales when training in fp16)."""
    info = read_checkpoint_info(checkpoint)
    if not info.has_training_state:
        raise UsageError(f"{checkpoint} holds no training state (discriminator/optimizers); it cannot be resumed")
    load_module_state(state.generator, checkpoint, "generator")
    load_module_state(state.discriminator, checkpoint, "discriminator")
    if state.generator_ema is not None:
        load_module_state(state.generator_ema, checkpoint, "generator_ema" if info.has_ema else "generator")
    load_optimizer_state(state.optimizer_g, checkpoint, info, "optimizer_g")
    load_optimizer_state(state.optimizer_d, checkpoint, info, "optimizer_d")
    state.step, state.train_seconds = info.step, info.train_seconds
    setup = state.setup or StepSetup(state.generator, state.discriminator)
    for part, scaler in (("g", setup.scaler_g), ("d", setup.scaler_d)):
        saved = info.metadata.get(f"grad_scaler_{part}")
        if scaler is not None and saved is not None:
            load_scaler_metadata(scaler, saved, str(checkpoint))


@torch.no_grad()
def update_ema(ema: Generator, model: Generator, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model for parameters; buffers (BN stats, SN vectors) copied."""
    ema_params: list[torch.Tensor] = list(ema.parameters())
    params: list[torch.Tensor] = list(model.parameters())
    torch._foreach_lerp_(ema_params, params, 1.0 - decay)
    for ema_buffer, buffer in zip(ema.buffers(), model.buffers(), strict=True):
        ema_buffer.copy_(buffer)


def ema_decay_at(step: int, config: TrainConfig) -> float:
    """EMA decay with warm-up ((1+t)/(10+t)): early averages do not drag in the random init."""
    if step < config.ema_start:
        return 0.0
    return min(config.ema_decay, (1.0 + step) / (10.0 + step))


@contextlib.contextmanager
def _without_ddp_stride_warning() -> Iterator[None]:
    """Silence one harmless DDP warning for a backward that includes the R1 penalty.

    The penalty's double backward gives D's (1, K) head weight a gradient with strides (1, 1), the
    same memory as the weight's (K, 1), which DDP's reducer reports as a layout mismatch.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        yield


def train_step(
    state: TrainState,
    data: TrainingData,
    config: TrainConfig,
    device: torch.device,
    batches: Iterator[RealBatch] | None = None,
) -> dict[str, torch.Tensor]:
    """One iteration: d_steps discriminator updates, then one generator update, with the run's loss.

    Under torchrun this rank computes its slice of the global batch (B/world images and latents);
    DDP averages the gradients, which equals the gradient of the global batch's mean loss.
    `batches` yields this step's real batches, already this rank's slice (the training loop keeps
    one loader for the run); without it they are drawn from `data` here.
    """
    setup = state.setup or StepSetup(state.generator, state.discriminator)
    G, D = setup.generator, setup.discriminator  # DDP wrappers under torchrun
    model = config.model
    loss = get_loss(config.loss)
    memory_format = preferred_memory_format(device)
    conditional = model.num_classes > 0
    _set_learning_rates(state, config)
    shard = setup.world.shard(config.batch_size)
    n = shard.stop - shard.start  # this rank's images per batch
    if batches is None:
        first = state.step * config.d_steps
        batches = real_batches(
            data, index_function(len(data), config, shard), first, first + config.d_steps, device, 0, no_log
        )
    for d_step in range(config.d_steps):
        batch = next(batches)  # the images of batch_indices(step * d_steps + d_step)[shard]
        real = to_model_range(batch.images.to(device, non_blocking=True)).contiguous(
            memory_format=memory_format
        )  # (n, C, S, S)
        real_labels = batch.labels.to(device) if conditional and batch.labels is not None else None
        rng = step_generator(config.seed, state.step * config.d_steps + d_step, STREAM_LATENTS)
        # The global batch's latents, then this rank's rows: the same fakes whatever the world size.
        z = torch.randn(config.batch_size, model.z_dim, generator=rng)[shard].to(device)  # (n, z_dim)
        fake_labels = None if not conditional else draw_classes(model, config.batch_size, rng)[shard].to(device)
        # The last D step's fakes are kept with their graph and reused for the G step: G's weights
        # have not changed since, so this saves a forward. It is not bit-exact with a fresh forward:
        # that one would advance G's spectral-norm power iteration once more and update G's
        # BatchNorm running statistics again (and see a new BN batch in train mode).
        keep_graph = d_step == config.d_steps - 1
        with torch.set_grad_enabled(keep_graph), setup.precision.autocast():
            fake = G(z, fake_labels)  # (n, C, S, S)
        labels = None if real_labels is None or fake_labels is None else torch.cat([real_labels, fake_labels])
        augment_rng = step_generator(config.seed, state.step * config.d_steps + d_step, STREAM_AUGMENT)
        both = augment(torch.cat([real, fake.detach().to(real.dtype)]), config.augment, augment_rng)  # (2n, C, S, S)
        penalise = config.r1 > 0 and d_step == 0 and state.step % R1_EVERY == 0
        if penalise:
            both.requires_grad_(True)  # a leaf: neither half carries a graph
        # The penalty back-propagates through D's input gradient, which the fused attention kernels cannot.
        kernels = sdpa_kernel(SDPBackend.MATH) if penalise else contextlib.nullcontext()
        with setup.precision.autocast(), kernels:
            scores = D(both.contiguous(memory_format=memory_format), labels).float()  # (2n,): one D pass for both
        d_real, d_fake = scores[:n], scores[n:]
        loss_d = loss.discriminator(d_real, d_fake)
        if penalise:
            loss_d = loss_d + (config.r1 / 2 * R1_EVERY) * r1_penalty(d_real, both)
        state.optimizer_d.zero_grad(set_to_none=True)
        with _without_ddp_stride_warning() if penalise else contextlib.nullcontext():
            backward_and_step(loss_d, state.optimizer_d, setup.scaler_d)

    # The G step calls D itself, not its DDP wrapper: D's weights get no gradients here (and must
    # not, or DDP would reduce them outside its D step); gradients flow through D into G's DDP.
    state.discriminator.requires_grad_(False)  # the G step needs gradients w.r.t. D's input only
    with setup.precision.autocast():
        seen = augment(fake, config.augment, augment_rng).contiguous(memory_format=memory_format)  # (n, C, S, S)
        scores_g = state.discriminator(seen, fake_labels).float()  # (n,)
    loss_g = loss.generator(scores_g)
    if config.mode_seeking > 0:
        loss_g = loss_g + config.mode_seeking * mode_seeking(fake, z, fake_labels)
    state.optimizer_g.zero_grad(set_to_none=True)
    backward_and_step(loss_g, state.optimizer_g, setup.scaler_g)
    state.discriminator.requires_grad_(True)

    if state.generator_ema is not None:
        update_ema(state.generator_ema, state.generator, ema_decay_at(state.step, config))  # the unwrapped G
    state.step += 1
    return {
        "loss_d": loss_d.detach(),
        "loss_g": loss_g.detach(),
        "d_real": d_real.detach().mean(),
        "d_fake": d_fake.detach().mean(),
    }


def recluster_run(
    state: TrainState, config: TrainConfig, data: TrainingData, device: torch.device, log: Log
) -> tuple[TrainConfig, float]:
    """--recluster-every: the images' clusters again on D's features; returns the config with the new
    cluster sizes (which the fakes' classes, checkpoints and samples follow) and the seconds it took."""
    start = time.perf_counter()
    assert isinstance(data, ImageData)  # runs.apply_clusters refused streamed data
    model, kept = recluster_data(state.discriminator, data, config.model, device)
    for module in (state.generator, state.generator_ema, state.discriminator):
        if module is not None:
            module.config = model
    seconds = time.perf_counter() - start
    sizes = [w for w in model.class_weights if w]
    log(
        f"step {state.step}: re-clustered {len(data)} images on D's features in {seconds:.1f} s: "
        f"{kept:.0%} kept their cluster; {len(sizes)} clusters with images (sizes {min(sizes)}-{max(sizes)})"
    )
    return replace(config, model=model), seconds


def run_progress(state: TrainState, config: TrainConfig) -> float:
    """How far the run is, 0..1: by steps, or by training time when a --max-minutes budget ends it sooner."""
    progress = state.step / config.max_steps
    if config.max_minutes is not None:
        progress = max(progress, state.train_seconds / (config.max_minutes * 60))
    return min(progress, 1.0)


def reclusters_now(state: TrainState, config: TrainConfig) -> bool:
    """--recluster-every N: every N steps, while the run is within its first --recluster-until fraction."""
    every = config.recluster_every
    return bool(every) and state.step % every == 0 and run_progress(state, config) <= config.recluster_until


def _set_learning_rates(state: TrainState, config: TrainConfig) -> None:
    """Linear decay to 0 over the last `lr_decay` of the run (the constant rates before it)."""
    if config.lr_decay <= 0:
        return
    factor = min(1.0, (1.0 - run_progress(state, config)) / config.lr_decay)
    for optimizer, lr in ((state.optimizer_g, config.lr_g), (state.optimizer_d, config.lr_d)):
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"] * factor


def training_done(state: TrainState, config: TrainConfig) -> bool:
    """True once the run reached --max-steps or spent its --max-minutes of training time (over all resumes)."""
    if state.step >= config.max_steps:
        return True
    return config.max_minutes is not None and state.train_seconds >= config.max_minutes * 60


def preview_labels(model: ModelConfig, n: int) -> torch.Tensor | None:
    """Classes (n,) of the preview grid: every class in turn, skipping a --clusters run's empty clusters."""
    if not model.num_classes:
        return None
    drawn = torch.tensor(model.drawn_classes())  # (C',) classes that saw images
    return drawn[torch.arange(n) % len(drawn)]


def preview_grid(state: TrainState, config: TrainConfig) -> torch.Tensor:
    """A grid from a fixed set of latents (the run's seed), EMA weights when available."""
    generator = state.generator_ema if state.generator_ema is not None else state.generator
    was_training = generator.training
    generator.eval()
    latents = sample_latents(PREVIEW_SAMPLES, config.model.z_dim, config.seed)
    images = generate(generator, latents, preview_labels(generator.config, PREVIEW_SAMPLES))
    generator.train(was_training)
    return make_grid(images, nrow=8)


def save_training_checkpoint(
    state: TrainState,
    config: TrainConfig,
    run: RunDir,
    name: str,
    data: TrainingData,
    extra_metadata: dict[str, str] | None = None,
    every_rank: bool = True,
) -> Path | None:
    """Write a full checkpoint (after checking the weights are finite); None when this rank does not write.

    Rank 0 writes the unwrapped models, so the file is the same format whatever the number of
    processes. With every_rank (periodic, final and signal saves) all ranks call this at the same
    step and first check that they hold the same weights (a collective); best.safetensors is saved
    by rank 0 alone, after its evaluation, without that check.
    """
    if every_rank:
        distributed.check_replicas_agree(state.generator, state.discriminator)
    # The models carry the current cluster sizes of a --recluster-every run (recluster_run); a caller's
    # config may predate the last re-clustering (best.safetensors is saved by a hook built at the start).
    config = replace(config, model=state.generator.config)
    setup = state.setup or StepSetup(state.generator, state.discriminator)
    extra = {
        "data_source": data.source,
        "data_id": data.data_id,
        "world_size": str(setup.world.world_size),
        "precision": setup.precision.name,
    }
    for part, scaler in (("g", setup.scaler_g), ("d", setup.scaler_d)):
        saved = scaler_metadata(scaler)
        if saved is not None:
            extra[f"grad_scaler_{part}"] = saved
    if not weights_are_finite(state.generator, state.discriminator, state.generator_ema):
        last = run.latest_checkpoint()
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint was saved yet"
        raise DivergenceError(
            f"training diverged at step {state.step}: non-finite weights; not saving them; {kept}; "
            "try lower learning rates (--lr-g/--lr-d)"
        )
    return run.write_checkpoint(
        name,
        lambda path: save_checkpoint(
            path,
            train_config=config,
            step=state.step,
            train_seconds=state.train_seconds,
            generator=state.generator,
            generator_ema=state.generator_ema,
            discriminator=state.discriminator,
            optimizer_g=state.optimizer_g,
            optimizer_d=state.optimizer_d,
            extra_metadata={**extra, **(extra_metadata or {})},
            extra_tensors=cluster_tensors(config, data),
        ),
    )


def train(
    config: TrainConfig,
    data: TrainingData,
    run: RunDir,
    device: torch.device,
    reporter: Reporter,
    stop: StopFlag | None = None,
    resume_from: Path | None = None,
) -> Path | None:
    """Train until config.max_steps; return the final checkpoint (None on non-writing ranks).

    `data` must have passed check_training_data (runs.open_run checks it before creating `run`).
    """
    distributed.check_global_batch(config.batch_size, distributed.current_world())
    if config.max_minutes is not None and distributed.current_world().distributed:
        # Each rank measures its own time, so ranks could stop at different steps and hang the others.
        raise UsageError("--max-minutes is not supported under torchrun; give the run a --max-steps instead")
    state = build_state(config, device)
    with distributed.failures_as_errors():  # a peer that died: one line, not DDP's traceback
        setup = prepare_step(state, config, device)  # DDP broadcasts rank 0's weights here
    if resume_from is not None:
        restore_state(state, resume_from)
        run.rewind(state.step)
        run.write_config(config)  # only now: a checkpoint that failed to load leaves config.json as it was
        reporter.log(f"resuming {run.path} from step {state.step} ({resume_from.name})")
    if setup.world.distributed:
        per_rank = config.batch_size // setup.world.world_size
        reporter.log(
            f"{setup.world.world_size} processes: global batch {config.batch_size} = {setup.world.world_size} x {per_rank}"
        )
    if setup.precision.name != "fp32":
        reporter.log(f"precision {setup.precision.name} (autocast; weights and checkpoints stay fp32)")
    state.generator.train()
    state.discriminator.train()
    stop = stop or StopFlag()
    last_checkpoint = resume_from

    # Evaluation and TensorBoard, as asked for; best.safetensors is a full checkpoint like the others.
    def save_best(metadata: dict[str, str]) -> Path | None:
        return save_training_checkpoint(state, config, run, BEST_NAME, data, metadata, every_rank=False)

    hooks = build_hooks(config, data, run, state.step, reporter.log, save_best)
    reporter.start(config.max_steps, state.step)
    try:
        with distributed.failures_as_errors():
            return _train_loop(state, config, data, run, device, reporter, stop, last_checkpoint, hooks)
    finally:
        reporter.close()  # also on divergence or interruption: a live progress bar must not outlive the run
        hooks.close()


def _train_loop(
    state: TrainState,
    config: TrainConfig,
    data: TrainingData,
    run: RunDir,
    device: torch.device,
    reporter: Reporter,
    stop: StopFlag,
    last_checkpoint: Path | None,
    hooks: TrainingHooks,
) -> Path | None:
    """The step loop of `train`: log, preview, checkpoint; stop cleanly on a signal, loudly on divergence."""
    window_start, window_steps = time.perf_counter(), 0
    agree = RankAgreement(state.setup.world if state.setup else distributed.World())
    saved_step = state.step if last_checkpoint is not None else None
    watch = FiniteWatch()
    index_of = index_function(len(data), config, agree.world.shard(config.batch_size))
    batches = real_batches(
        data,
        index_of,
        state.step * config.d_steps,
        config.max_steps * config.d_steps,
        device,
        config.data_workers,
        reporter.log,
    )
    try:
        while not training_done(state, config):
            step_start = time.perf_counter()
            losses, stopping = agree(train_step(state, data, config, device, batches), stop)  # global-batch losses
            watch.update(state.step, losses)
            state.train_seconds += time.perf_counter() - step_start
            window_steps += 1
            last = training_done(state, config)
            if last and state.step < config.max_steps:
                reporter.log(f"time budget of {config.max_minutes:g} minutes reached at step {state.step}")
            if (
                last
                or stopping
                or hooks.due(state.step)
                or any(state.step % every == 0 for every in (config.log_every, config.sample_every, config.save_every))
            ):
                watch.check(last_checkpoint)  # before anything is logged, drawn, scored or saved
            logged, grid = None, None
            if state.step % config.log_every == 0 or last:
                now = time.perf_counter()
                stats = {k: float(v) for k, v in losses.items()}
                stats["images_per_second"] = (
                    window_steps * config.batch_size * config.d_steps / max(now - window_start, 1e-9)
                )
                gammas = {f"gamma_g{k}": v for k, v in attention_gammas(state.generator).items()}
                gammas.update({f"gamma_d{k}": v for k, v in attention_gammas(state.discriminator).items()})
                logged = {"step": state.step, "train_seconds": round(state.train_seconds, 3), **stats, **gammas}
                run.append_metrics(logged)
                reporter.step(state.step, {**stats, **gammas})
                window_start, window_steps = now, 0
            if run.enabled and (state.step % config.sample_every == 0 or last):
                grid = preview_grid(state, config)
                run.write_sample_grid(state.step, grid, {"step": str(state.step), "seed": str(config.seed)})
            hooks_start = time.perf_counter()
            hooks.after_step(
                state.step, state.generator if state.generator_ema is None else state.generator_ema, logged, grid
            )
            if grid is not None:  # after the hooks (evaluation), and like them kept out of images/s
                run.write_curves()
            window_start += time.perf_counter() - hooks_start  # evaluation is not training: kept out of images/s
            if reclusters_now(state, config) and not last:
                config, seconds = recluster_run(state, config, data, device, reporter.log)
                state.train_seconds += seconds  # part of the training's cost (and of its --max-minutes)
                window_start += seconds  # but not of images/s
            if state.step % config.save_every == 0 and not last:
                last_checkpoint = save_training_checkpoint(state, config, run, run.step_name(state.step), data)
                saved_step = state.step
                run.prune_checkpoints(config.keep)
            if stopping and not last:
                break  # a signal during the last step changes nothing: the final checkpoint follows
    except KeyboardInterrupt:
        # Raised mid-step (no graceful handler installed, or a second Ctrl-C): the state may be
        # half-updated, so it is not saved; the last periodic checkpoint stays the resume point.
        kept = f"resume from {last_checkpoint}" if last_checkpoint else "no checkpoint was saved"
        raise Interrupted(f"interrupted at step {state.step} without saving; {kept}", EXIT_SIGINT) from None
    finally:
        batches.close()  # stops a streaming loader's worker processes now, not at garbage collection
    if not training_done(state, config):  # stopped by a signal: save (unless this step just was) and say how to go on
        if saved_step != state.step:
            last_checkpoint = save_training_checkpoint(state, config, run, run.step_name(state.step), data)
            run.prune_checkpoints(config.keep)
        code = EXIT_SIGINT if stop.signal_number == signal.SIGINT else EXIT_SIGTERM
        saved = f"saved {last_checkpoint}" if last_checkpoint else "the main process saved a checkpoint"
        raise Interrupted(
            f"stopped at step {state.step}; {saved}; continue with: sagan train --resume {run.path}", code
        )
    return save_training_checkpoint(state, config, run, "final", data)
