"""Shared helpers for the benchmarks: machine description, timing, GEMM peak, tables, subprocesses.

Every benchmark prints a human table (or JSON with --json) and runs each configuration in a
fresh subprocess when memory is measured, so peak RSS (`resource.getrusage`) belongs to it alone.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (or platform.processor())."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    """The few ISA flags that matter for oneDNN speed (AVX-512, bf16, AMX)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")
    return [f for f in wanted if f in flags]


def machine() -> dict[str, Any]:
    """What the numbers were measured on, printed with every table."""
    return {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "isa_flags": cpu_flags(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }


def median_time(fn: Callable[[], object], warmup: int, repeats: int) -> tuple[float, list[float]]:
    """Median wall time of fn() in seconds after `warmup` untimed calls, plus all timings."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def gemm_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Measured fp32 GEMM throughput: median of torch.mm on n x n matrices (2 n^3 FLOPs)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    seconds, _ = median_time(lambda: torch.mm(a, b), warmup=2, repeats=repeats)
    return 2 * n**3 / seconds / 1e9


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    """Current resident set size of this process."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return peak_rss_mb()


def run_child(script: Path, args: list[str], timeout: float = 3600) -> dict[str, Any]:
    """Run `python script --child ... --json` in a fresh process and parse its JSON stdout."""
    command = [sys.executable, str(script), "--child", "--json", *args]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:] if proc.stderr else ''}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def format_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    """A plain fixed-width table: columns are (key, header) pairs."""

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
        return str(value)

    body = [[cell(row.get(key)) for key, _ in columns] for row in rows]
    widths = [
        max(len(header), *(len(r[i]) for r in body)) if body else len(header) for i, (_, header) in enumerate(columns)
    ]
    lines = ["  ".join(h.ljust(w) for (_, h), w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in body]
    return "\n".join(lines)


def describe_machine(info: dict[str, Any]) -> str:
    """One-paragraph machine description for the human output."""
    return (
        f"{info['cpu']} | {info['logical_cpus']} logical CPUs, {info['torch_threads']} torch threads | "
        f"{info['cpu_capability']} {','.join(info['isa_flags'])} | torch {info['torch']} | "
        f"load average {info['load_average']}"
    )


def emit(result: dict[str, Any], as_json: bool, table: str) -> None:
    """Print JSON (one line, for run_all) or the human table with the machine description."""
    if as_json:
        print(json.dumps(result))
    else:
        print(describe_machine(result["machine"]))
        print(table)


def plain_upsample_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Yardstick: nearest 2x upsampling, then a 3x3 conv on the big map (what popular code does)."""
    return torch.nn.functional.conv2d(
        torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=1
    )


def plain_conv3x3_avgpool(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Yardstick: a 3x3 conv on the big map, then 2x2 average pooling."""
    return torch.nn.functional.avg_pool2d(torch.nn.functional.conv2d(x, weight, bias, padding=1), 2)


def use_plain_convs() -> None:
    """Swap the library's exact cheaper conv rewrites for the textbook formulations (same values)."""
    from sagan_cli import model

    model.upsample_conv3x3 = plain_upsample_conv3x3
    model.conv3x3_avgpool = plain_conv3x3_avgpool
