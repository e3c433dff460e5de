"""Device choice and process rank: the few facts about where we run."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from pathlib import Path

import torch

from .errors import UsageError

DEVICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str) -> torch.device:
    """Map --device to a torch.device; `auto` prefers CUDA, then MPS, then CPU."""
    if name not in DEVICES and not name.startswith("cuda:"):
        raise UsageError(f"unknown device {name!r}; use one of {', '.join(DEVICES)}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name} was asked for but CUDA is not available here; use --device cpu or auto")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps was asked for but MPS is not available here; use --device cpu or auto")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(
            f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s); use cuda:0 or auto"
        )
    return device


def process_rank() -> int:
    """This process's global rank under torchrun (0 when not distributed)."""
    value = os.environ.get("RANK", "0")
    try:
        return int(value)
    except ValueError:
        raise UsageError(
            f"environment variable RANK={value!r} is not a process rank (torchrun sets it); unset it"
        ) from None


def is_main_process() -> bool:
    """Only rank 0 writes files; every rank computes."""
    return process_rank() == 0


def available_memory_bytes() -> int:
    """Memory this process can still get: MemAvailable on Linux, else the machine's physical memory."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62  # unknown platform: do not refuse


def preferred_memory_format(device: torch.device) -> torch.memory_format:
    """channels_last is faster for oneDNN (CPU) and cuDNN convolutions; MPS keeps the default."""
    return torch.contiguous_format if device.type == "mps" else torch.channels_last


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEEP_BYTES = 1 << 30


def tune_cpu_allocator() -> bool:
    """Let glibc malloc keep freed large blocks for reuse instead of unmapping them; True if applied.

    By default glibc serves blocks above 32 MiB with a fresh mmap and returns them with munmap, so
    every large activation (a 64x64x32 batch of 64 is 33.5 MiB) is page-faulted and zeroed by the
    kernel again on every step: ReLU, add and copy on such a tensor took 12 ms instead of 2.5 ms
    (docs/performance.md). Raising the mmap and trim thresholds is the in-process version of the
    jemalloc/tcmalloc advice in PyTorch's CPU tuning guide. The process keeps its peak heap instead
    of giving it back between steps. Linux/glibc only; SAGAN_MALLOC_TUNING=0 turns it off.
    """
    if os.environ.get("SAGAN_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or an unusual libc: leave the allocator alone
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES) == 1 and mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES) == 1
