"""Training: hinge loss, Adam (TTUR-capable), EMA generator, exact resume.

Every random draw of a step comes from a generator seeded by (seed, step), and
the data order of an epoch from (seed, epoch), so a resumed run needs no RNG
state and continues bit for bit. Batches are chosen by dataset index, which
is what a DistributedSampler-style shard by rank needs later.
"""

from __future__ import annotations

import copy
import functools
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F

from .augment import augment
from .checkpoint import load_module_state, load_optimizer_state, read_checkpoint_info, save_checkpoint
from .config import TrainConfig
from .data import ImageData, to_model_range
from .errors import DivergenceError, Interrupted, UsageError
from .errors import EXIT_SIGINT, EXIT_SIGTERM
from .model import Discriminator, Generator, attention_gammas
from .rundir import RunDir
from .runtime import preferred_memory_format
from .sampling import generate, make_grid, sample_latents

STREAM_LATENTS = 0  # a step's latents, then its fake labels, come from this stream
STREAM_AUGMENT = 1  # a step's augmentation draws (D step, then G step)
PREVIEW_SAMPLES = 64


class Reporter(Protocol):
    """What the trainer tells the outside world; the CLI implements it with Rich or plain lines."""

    def start(self, total_steps: int, first_step: int) -> None: ...
    def step(self, step: int, stats: dict[str, float]) -> None: ...
    def log(self, message: str) -> None: ...
    def close(self) -> None: ...


class StopFlag:
    """Set by a signal handler; the loop checks it between steps and saves before exiting."""

    def __init__(self) -> None:
        self.signal_number: int | None = None

    def request(self, signal_number: int) -> None:
        self.signal_number = signal_number


@dataclass
class TrainState:
    """Models, optimizers and counters: everything a checkpoint restores."""

    generator: Generator
    discriminator: Discriminator
    generator_ema: Generator | None
    optimizer_g: torch.optim.Optimizer
    optimizer_d: torch.optim.Optimizer
    step: int = 0
    train_seconds: float = 0.0


def step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    """A CPU generator for one purpose at one step: no RNG state to carry across a resume."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 16 + stream)


def batch_indices(batch_number: int, dataset_size: int, batch_size: int, seed: int) -> torch.Tensor:
    """Dataset indices of the n-th batch: epoch-wise permutations from (seed, epoch), last partial batch dropped."""
    per_epoch = dataset_size // batch_size
    epoch, position = divmod(batch_number, per_epoch)
    order = _epoch_order(dataset_size, seed, epoch)
    return order[position * batch_size : (position + 1) * batch_size]


@functools.lru_cache(maxsize=2)
def _epoch_order(dataset_size: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of one epoch, drawn once per epoch rather than once per step (read-only)."""
    return torch.randperm(dataset_size, generator=torch.Generator().manual_seed(seed * 7919 + epoch))


def build_state(config: TrainConfig, device: torch.device) -> TrainState:
    """Fresh models and optimizers, initialised from the run's seed."""
    torch.manual_seed(config.seed)
    memory_format = preferred_memory_format(device)
    generator = Generator(config.model).to(device, memory_format=memory_format)
    discriminator = Discriminator(config.model).to(device, memory_format=memory_format)
    generator_ema = copy.deepcopy(generator).eval().requires_grad_(False) if config.ema else None
    optimizer_g = _adam(generator, config.lr_g, config, device)
    optimizer_d = _adam(discriminator, config.lr_d, config, device)
    return TrainState(generator, discriminator, generator_ema, optimizer_g, optimizer_d)


def _adam(module: torch.nn.Module, lr: float, config: TrainConfig, device: torch.device) -> torch.optim.Adam:
    """Adam, fused (one kernel for all parameters) where torch has it: several times faster than the loop on CPU."""
    fused = device.type in ("cpu", "cuda")
    optimizer = torch.optim.Adam(module.parameters(), lr=lr, betas=(config.beta1, config.beta2), fused=fused)
    if fused:
        optimizer.register_load_state_dict_post_hook(_match_parameter_layout)
    return optimizer


def _match_parameter_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give loaded moments their parameter's strides: the fused kernel walks param, grad and moments
    as flat memory, so a contiguous moment for a channels_last weight would be silently misapplied."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                if value.shape == param.shape and value.stride() != param.stride():
                    optimizer.state[param][key] = torch.empty_like(param).copy_(value)


def check_training_data(config: TrainConfig, data: ImageData, resume_from: Path | None = None) -> None:
    """Refuse data this run cannot train on, before any file of the run is touched.

    On resume the data must be what the checkpoint trained on: same dataset, source and shape. A
    run started on torchvision's MNIST and resumed offline would otherwise go on with the 10,000
    bundled digits without a word.
    """
    if config.model.num_classes and data.labels is None:
        raise UsageError(f"--conditional needs labels, but {config.dataset!r} has none")
    if len(data) < config.batch_size:
        raise UsageError(f"--batch-size {config.batch_size} is larger than the dataset ({len(data)} images); lower it")
    if resume_from is not None:
        trained_on = read_checkpoint_info(resume_from).metadata.get("data_id")
        if trained_on is not None and trained_on != data.data_id:
            raise UsageError(
                f"--resume {resume_from}: the run trained on {trained_on!r}, but the data loaded now is "
                f"{data.data_id!r}; make the same data available (e.g. --data-dir) to continue it"
            )


def restore_state(state: TrainState, checkpoint: Path) -> None:
    """Load a full training checkpoint into a freshly built state."""
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


@torch.no_grad()
def update_ema(ema: Generator, model: Generator, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model for parameters; buffers (BN stats, SN vectors) copied."""
    ema_params, params = list(ema.parameters()), list(model.parameters())
    torch._foreach_lerp_(ema_params, params, 1.0 - decay)
    for ema_buffer, buffer in zip(ema.buffers(), model.buffers()):
        ema_buffer.copy_(buffer)


def ema_decay_at(step: int, config: TrainConfig) -> float:
    """EMA decay with warm-up ((1+t)/(10+t)): early averages do not drag in the random init."""
    if step < config.ema_start:
        return 0.0
    return min(config.ema_decay, (1.0 + step) / (10.0 + step))


def train_step(state: TrainState, data: ImageData, config: TrainConfig, device: torch.device) -> dict[str, torch.Tensor]:
    """One iteration: d_steps discriminator updates, then one generator update, hinge loss."""
    G, D = state.generator, state.discriminator
    model = config.model
    memory_format = preferred_memory_format(device)
    conditional = model.num_classes > 0
    _set_learning_rates(state, config)
    for d_step in range(config.d_steps):
        indices = batch_indices(state.step * config.d_steps + d_step, len(data), config.batch_size, config.seed)
        real = to_model_range(data.images[indices]).to(device, memory_format=memory_format)  # (B, C, S, S)
        real_labels = data.labels[indices].to(device) if conditional else None
        rng = step_generator(config.seed, state.step * config.d_steps + d_step, STREAM_LATENTS)
        z = torch.randn(config.batch_size, model.z_dim, generator=rng).to(device)
        fake_labels = (
            torch.randint(model.num_classes, (config.batch_size,), generator=rng).to(device) if conditional else None
        )
        # The last D step's fakes are kept with their graph and reused for the G step: G has not
        # changed since, so this is the same computation as a fresh forward, done once.
        keep_graph = d_step == config.d_steps - 1
        with torch.set_grad_enabled(keep_graph):
            fake = G(z, fake_labels)  # (B, C, S, S)
        labels = torch.cat([real_labels, fake_labels]) if conditional else None
        augment_rng = step_generator(config.seed, state.step * config.d_steps + d_step, STREAM_AUGMENT)
        both = augment(torch.cat([real, fake.detach()]), config.augment, augment_rng)  # (2B, C, S, S)
        scores = D(both.contiguous(memory_format=memory_format), labels)  # (2B,): one D pass for real and fake
        d_real, d_fake = scores[: config.batch_size], scores[config.batch_size :]
        loss_d = F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean()
        state.optimizer_d.zero_grad(set_to_none=True)
        loss_d.backward()
        state.optimizer_d.step()

    D.requires_grad_(False)  # the G step needs gradients w.r.t. D's input only
    seen = augment(fake, config.augment, augment_rng).contiguous(memory_format=memory_format)  # (B, C, S, S)
    loss_g = -D(seen, fake_labels).mean()
    state.optimizer_g.zero_grad(set_to_none=True)
    loss_g.backward()
    state.optimizer_g.step()
    D.requires_grad_(True)

    if state.generator_ema is not None:
        update_ema(state.generator_ema, G, ema_decay_at(state.step, config))
    state.step += 1
    return {
        "loss_d": loss_d.detach(),
        "loss_g": loss_g.detach(),
        "d_real": d_real.detach().mean(),
        "d_fake": d_fake.detach().mean(),
    }


def run_progress(state: TrainState, config: TrainConfig) -> float:
    """How far the run is, 0..1: by steps, or by training time when a --max-minutes budget ends it sooner."""
    progress = state.step / config.max_steps
    if config.max_minutes is not None:
        progress = max(progress, state.train_seconds / (config.max_minutes * 60))
    return min(progress, 1.0)


def _set_learning_rates(state: TrainState, config: TrainConfig) -> None:
    """Linear decay to 0 over the last `lr_decay` of the run (the constant rates before it)."""
    if config.lr_decay <= 0:
        return
    factor = min(1.0, (1.0 - run_progress(state, config)) / config.lr_decay)
    for optimizer, lr in ((state.optimizer_g, config.lr_g), (state.optimizer_d, config.lr_d)):
        for group in optimizer.param_groups:
            group["lr"] = lr * factor


def training_done(state: TrainState, config: TrainConfig) -> bool:
    """True once the run reached --max-steps or spent its --max-minutes of training time (over all resumes)."""
    if state.step >= config.max_steps:
        return True
    return config.max_minutes is not None and state.train_seconds >= config.max_minutes * 60


def _check_finite(state: TrainState, losses: dict[str, torch.Tensor], last_checkpoint: Path | None) -> None:
    if bool(torch.isfinite(torch.stack(list(losses.values()))).all()):
        return
    values = ", ".join(f"{k}={float(v):.4g}" for k, v in losses.items())
    kept = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint was saved yet"
    raise DivergenceError(
        f"training diverged at step {state.step}: non-finite loss ({values}); {kept}; "
        "try lower learning rates (--lr-g/--lr-d)"
    )


def weights_are_finite(*modules: torch.nn.Module | None) -> bool:
    """True when no parameter or buffer of the given modules is NaN or infinite."""
    tensors = [t for m in modules if m is not None for t in (*m.parameters(), *m.buffers()) if t.is_floating_point()]
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def preview_grid(state: TrainState, config: TrainConfig) -> torch.Tensor:
    """A grid from a fixed set of latents (the run's seed), EMA weights when available."""
    generator = state.generator_ema if state.generator_ema is not None else state.generator
    was_training = generator.training
    generator.eval()
    latents = sample_latents(PREVIEW_SAMPLES, config.model.z_dim, config.seed)
    labels = (
        torch.arange(PREVIEW_SAMPLES) % config.model.num_classes if config.model.num_classes else None
    )
    images = generate(generator, latents, labels)
    generator.train(was_training)
    return make_grid(images, nrow=8)


def save_training_checkpoint(state: TrainState, config: TrainConfig, run: RunDir, name: str, data: ImageData) -> Path | None:
    """Write a full checkpoint (after checking the weights are finite); None when this rank does not write."""
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
            extra_metadata={"data_source": data.source, "data_id": data.data_id},
        ),
    )


def train(
    config: TrainConfig,
    data: ImageData,
    run: RunDir,
    device: torch.device,
    reporter: Reporter,
    stop: StopFlag | None = None,
    resume_from: Path | None = None,
) -> Path | None:
    """Train until config.max_steps or config.max_minutes; return the final checkpoint (None on non-writing ranks)."""
    check_training_data(config, data, resume_from)
    state = build_state(config, device)
    if resume_from is not None:
        restore_state(state, resume_from)
        run.rewind(state.step)
        run.write_config(config)  # only now: a checkpoint that failed to load leaves config.json as it was
        reporter.log(f"resuming {run.path} from step {state.step} ({resume_from.name})")
    state.generator.train()
    state.discriminator.train()
    stop = stop or StopFlag()
    last_checkpoint = resume_from
    reporter.start(config.max_steps, state.step)
    try:
        return _train_loop(state, config, data, run, device, reporter, stop, last_checkpoint)
    finally:
        reporter.close()  # also on divergence or interruption: a live progress bar must not outlive the run


def _train_loop(
    state: TrainState,
    config: TrainConfig,
    data: ImageData,
    run: RunDir,
    device: torch.device,
    reporter: Reporter,
    stop: StopFlag,
    last_checkpoint: Path | None,
) -> Path | None:
    """The step loop of `train`: log, preview, checkpoint; stop cleanly on a signal, loudly on divergence."""
    window_start, window_steps = time.perf_counter(), 0
    saved_step = state.step if last_checkpoint is not None else None
    try:
        while not training_done(state, config):
            step_start = time.perf_counter()
            losses = train_step(state, data, config, device)
            _check_finite(state, losses, last_checkpoint)
            state.train_seconds += time.perf_counter() - step_start
            window_steps += 1
            done = training_done(state, config)
            if done and state.step < config.max_steps:
                reporter.log(f"time budget of {config.max_minutes:g} minutes reached at step {state.step}")
            if state.step % config.log_every == 0 or done:
                now = time.perf_counter()
                stats = {k: float(v) for k, v in losses.items()}
                stats["images_per_second"] = window_steps * config.batch_size * config.d_steps / max(now - window_start, 1e-9)
                gammas = {f"gamma_g{k}": v for k, v in attention_gammas(state.generator).items()}
                gammas.update({f"gamma_d{k}": v for k, v in attention_gammas(state.discriminator).items()})
                run.append_metrics({"step": state.step, "train_seconds": round(state.train_seconds, 3), **stats, **gammas})
                reporter.step(state.step, {**stats, **gammas})
                window_start, window_steps = now, 0
            if state.step % config.sample_every == 0 or done:
                run.write_sample_grid(
                    state.step, preview_grid(state, config), {"step": str(state.step), "seed": str(config.seed)}
                )
            if state.step % config.save_every == 0 and not done:
                last_checkpoint = save_training_checkpoint(state, config, run, run.step_name(state.step), data)
                saved_step = state.step
                run.prune_checkpoints(config.keep)
            if stop.signal_number is not None and not done:
                break  # a signal during the last step changes nothing: the final checkpoint follows
    except KeyboardInterrupt:
        # Raised mid-step (no graceful handler installed, or a second Ctrl-C): the state may be
        # half-updated, so it is not saved; the last periodic checkpoint stays the resume point.
        kept = f"resume from {last_checkpoint}" if last_checkpoint else "no checkpoint was saved"
        raise Interrupted(f"interrupted at step {state.step} without saving; {kept}", EXIT_SIGINT) from None
    if not training_done(state, config):  # stopped by a signal: save (unless this step just was) and say how to go on
        if saved_step != state.step:
            last_checkpoint = save_training_checkpoint(state, config, run, run.step_name(state.step), data)
            run.prune_checkpoints(config.keep)
        code = EXIT_SIGINT if stop.signal_number == signal.SIGINT else EXIT_SIGTERM
        saved = f"saved {last_checkpoint}" if last_checkpoint else "the main process saved a checkpoint"
        raise Interrupted(f"stopped at step {state.step}; {saved}; continue with: sagan train --resume {run.path}", code)
    return save_training_checkpoint(state, config, run, "final", data)
