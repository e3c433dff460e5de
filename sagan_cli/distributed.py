"""Multi-process training on torch.distributed: process group, DDP wrapping, rank shards, agreement.

Started by torchrun (which sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT); with WORLD_SIZE
absent or 1 nothing here does anything and training is the single-process code path. Backend: NCCL
on CUDA (each rank on cuda:LOCAL_RANK), gloo on CPU. There is no distribution layer of our own:
DistributedDataParallel averages gradients, and every rank computes its contiguous slice of the
global batch, whose dataset indices and latents are the same whatever the world size.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from .errors import SaganError, UsageError


class DistributedFailure(SaganError):
    """Another training process died or stopped answering (a collective failed or timed out)."""


@dataclass(frozen=True)
class World:
    """Where this process sits: rank among world_size processes (0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def shard(self, global_batch: int) -> slice:
        """This rank's contiguous slice of a global batch (the caller checked divisibility)."""
        per_rank = global_batch // self.world_size
        return slice(self.rank * per_rank, (self.rank + 1) * per_rank)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise UsageError(
            f"environment variable {name}={value!r} is not an integer (torchrun sets it); unset it"
        ) from None


def world_from_env() -> World:
    """RANK / WORLD_SIZE / LOCAL_RANK as torchrun sets them; one process when they are absent."""
    world = World(_env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0))
    if world.world_size < 1 or not 0 <= world.rank < world.world_size:
        raise UsageError(
            f"RANK={world.rank} and WORLD_SIZE={world.world_size} do not describe a process; unset them or use torchrun"
        )
    return world


def current_world() -> World:
    """The initialised process group's view (one process when none is initialised)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0))
    return World()


def check_global_batch(batch_size: int, world: World) -> None:
    """--batch-size is the global batch: every rank must get the same number of images."""
    if batch_size % world.world_size:
        lower = batch_size // world.world_size * world.world_size
        hint = f"{lower} or {lower + world.world_size}" if lower else str(world.world_size)
        raise UsageError(
            f"--batch-size {batch_size} (the global batch) does not divide among {world.world_size} processes; "
            f"use a multiple of {world.world_size}, e.g. {hint}"
        )


def rank_device(device: torch.device, world: World) -> torch.device:
    """The device of this rank: cuda:LOCAL_RANK on CUDA, the CPU otherwise; refuses what cannot work."""
    if not world.distributed:
        return device
    if device.type == "cuda":
        if device.index is not None and device.index != world.local_rank:
            raise UsageError(
                f"--device {device}: under torchrun each process uses cuda:LOCAL_RANK; pass --device cuda or auto"
            )
        if world.local_rank >= torch.cuda.device_count():
            raise UsageError(
                f"LOCAL_RANK {world.local_rank} but this machine has {torch.cuda.device_count()} CUDA device(s); "
                "start at most that many processes per node (--nproc-per-node)"
            )
        return torch.device("cuda", world.local_rank)
    if device.type != "cpu":
        raise UsageError(
            f"--device {device.type}: multi-process training runs on CUDA (NCCL) or CPU (gloo); use --device cpu"
        )
    return device


def start(world: World, device: torch.device, timeout_seconds: int) -> None:
    """Join the process group (NCCL on CUDA, gloo on CPU); every collective then fails after the timeout."""
    if not world.distributed or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    try:
        dist.init_process_group(
            backend,
            timeout=datetime.timedelta(seconds=timeout_seconds),
            device_id=device if device.type == "cuda" else None,
        )
    except (dist.DistError, RuntimeError, ValueError) as exc:
        raise DistributedFailure(
            f"could not join the {world.world_size} training processes within {timeout_seconds}s "
            f"({_first_line(exc)}); start every rank with the same torchrun command"
        ) from None


def stop() -> None:
    """Leave the process group (a no-op when none was started)."""
    if joined():
        dist.destroy_process_group()


@contextlib.contextmanager
def session(world: World, device: torch.device, timeout_seconds: int) -> Iterator[None]:
    """The process group for the duration of a block (nothing when not distributed)."""
    start(world, device, timeout_seconds)
    try:
        yield
    except DistributedFailure:
        # A peer died or hung: the group is broken, and tearing it down could wait on, or abort the
        # process in, work still queued for that peer. The caller leaves without a teardown (train CLI).
        raise
    except BaseException:
        stop()
        raise
    stop()


def joined() -> bool:
    """True once this process is in a process group (torchrun with more than one process)."""
    return dist.is_available() and dist.is_initialized()


def check_sync_bn(sync_bn: bool, world: World, device: torch.device) -> None:
    """torch's SyncBatchNorm runs on CUDA only (it would raise on the first multi-process CPU step)."""
    if sync_bn and world.distributed and device.type == "cpu":
        raise UsageError("--sync-bn needs CUDA: torch's SyncBatchNorm does not run on CPU processes; use --no-sync-bn")


def wrap(module: nn.Module, device: torch.device) -> nn.Module:
    """DDP around a module when distributed, the module itself otherwise.

    Buffers are synchronised once, at construction, not before every forward: the spectral-norm
    vectors u, v are updated by the same arithmetic on the same (synchronised) weights on every
    rank, so they stay equal without a broadcast; G's BatchNorm running statistics differ per rank
    (each normalises its own shard) and only rank 0's are used and saved (previews, checkpoints).
    This saves one collective per forward.
    """
    if not current_world().distributed:
        return module
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids, forward_sync_buffers=False)


def sync_batchnorm(generator: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm layers of G replaced by SyncBatchNorm (same parameters and buffers, same state_dict)."""
    check_sync_bn(True, current_world(), device)
    return nn.SyncBatchNorm.convert_sync_batchnorm(generator)


def agree(values: torch.Tensor) -> torch.Tensor:
    """Sum of `values` over all ranks (the tensor itself in one process); one collective."""
    if current_world().distributed:
        guarded(dist.all_reduce, values, op=dist.ReduceOp.SUM)
    return values


def from_main(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Rank 0's `values` on every rank (the tensor itself in one process); one collective on `device`."""
    if not current_world().distributed:
        return values
    on_device = values.to(device).contiguous()  # NCCL sends CUDA tensors; gloo CPU ones
    guarded(dist.broadcast, on_device, src=0)
    return on_device.to(values.device)


def check_replicas_agree(*modules: nn.Module | None) -> None:
    """Raise unless every rank holds the same weights (checked before a checkpoint is written)."""
    world = current_world()
    if not world.distributed:
        return
    params = [p.detach().double().sum() for m in modules if m is not None for p in m.parameters()]
    fingerprint = torch.stack(params) if params else torch.zeros(1, dtype=torch.float64)
    low, high = fingerprint.clone(), fingerprint.clone()
    guarded(dist.all_reduce, low, op=dist.ReduceOp.MIN)
    guarded(dist.all_reduce, high, op=dist.ReduceOp.MAX)
    if not torch.equal(low, high):
        raise DistributedFailure(
            "the training processes hold different weights; this is a bug in sagan, please report it"
        )


def guarded(collective, *args, **kwargs):
    """Run a collective; a dead or hung peer becomes one DistributedFailure line instead of a traceback."""
    try:
        return collective(*args, **kwargs)
    except (dist.DistError, RuntimeError) as exc:
        raise failure(exc) from None


@contextlib.contextmanager
def failures_as_errors() -> Iterator[None]:
    """Inside the block, a collective that fails because a peer died or hung (inside DDP too) becomes one DistributedFailure line."""
    try:
        yield
    except RuntimeError as exc:
        if current_world().distributed and is_collective_failure(exc):
            raise failure(exc) from None
        raise


def failure(exc: BaseException) -> DistributedFailure:
    """The one-line error for a collective that failed because another rank did."""
    return DistributedFailure(f"another training process failed or stopped responding ({_first_line(exc)})")


def is_collective_failure(exc: BaseException) -> bool:
    """True for the errors a dead or timed-out peer raises inside DDP or a collective."""
    return isinstance(exc, dist.DistError) or (
        isinstance(exc, RuntimeError)
        and any(word in str(exc) for word in ("gloo", "NCCL", "Connection closed", "Timed out"))
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else exc.__class__.__name__)[:200]
