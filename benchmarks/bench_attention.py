"""Self-attention block forward + backward: naive N x N bmm vs SDPA math vs SDPA fused (flash) vs ours.

`naive` is the yardstick only (kept here, not in the library): it materialises the (B, N, N)
attention map as popular SAGAN code does. `math` and `flash` run our `SelfAttention.forward`
with `torch.nn.attention.sdpa_kernel` forcing one backend; `ours` is the library's dispatch.
Each (implementation, map size) runs in a fresh subprocess, so its peak RSS is its own; the
memory column is peak RSS minus the RSS before the timed calls (inputs and weights excluded).
Numerics: output and input gradient of the first samples are compared with the naive ones.

    python benchmarks/bench_attention.py --sizes 16,32,64
    python benchmarks/bench_attention.py --kernels      # which aten kernels run in fwd and bwd
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import _common as common
import torch

from sagan_cli.model import SelfAttention

SCRIPT = Path(__file__).resolve()
IMPLS = ("naive", "math", "flash", "ours")
KEEP_SAMPLES = 2  # samples saved for the numerics comparison


def naive_forward(block: SelfAttention, x: torch.Tensor) -> torch.Tensor:
    """Yardstick: the SAGAN paper's formula with the (B, N, N) attention map materialised."""
    b, c, h, w = x.shape
    q, k, v = (t.reshape(b, block.inner, h * w) for t in (block.query(x), block.key(x), block.value(x)))  # (B, C/8, N)
    attention = torch.bmm(q.transpose(1, 2), k).softmax(dim=-1)  # (B, N, N): row i = weights of query i
    attended = torch.bmm(v, attention.transpose(1, 2)).reshape(b, block.inner, h, w)  # (B, C/8, H, W)
    return x + block.gamma * block.out(attended)


def make_block(channels: int, size: int, batch: int) -> tuple[SelfAttention, torch.Tensor]:
    """A seeded block with gamma = 1 (so the attention path carries gradient) and a channels_last input."""
    torch.manual_seed(0)
    block = SelfAttention(channels).to(memory_format=torch.channels_last)
    with torch.no_grad():
        block.gamma.fill_(1.0)
    x = torch.randn(batch, channels, size, size).to(memory_format=torch.channels_last).requires_grad_(True)
    return block, x


def forward_backward(impl: str, block: SelfAttention, x: torch.Tensor) -> torch.Tensor:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    x.grad = None
    block.zero_grad(set_to_none=True)
    if impl == "naive":
        out = naive_forward(block, x)
    elif impl == "ours":
        out = block(x)
    else:
        backend = SDPBackend.MATH if impl == "math" else SDPBackend.FLASH_ATTENTION
        with sdpa_kernel(backend):
            out = block(x)
    out.square().mean().backward()
    return out


def run_child(
    impl: str, size: int, channels: int, batch: int, warmup: int, repeats: int, save: str | None
) -> dict[str, Any]:
    block, x = make_block(channels, size, batch)
    block.eval()  # spectral norm: no power iteration, so every call sees the same weights
    baseline = common.current_rss_mb()
    seconds, times = common.median_time(lambda: forward_backward(impl, block, x), warmup, repeats)
    peak_delta = common.peak_rss_mb() - baseline
    if save:
        out = forward_backward(impl, block, x)
        torch.save({"out": out[:KEEP_SAMPLES].detach().clone(), "grad": x.grad[:KEEP_SAMPLES].clone()}, save)
    return {
        "impl": impl,
        "size": size,
        "tokens": size * size,
        "channels": channels,
        "batch": batch,
        "seconds": seconds,
        "times": times,
        "peak_mb": peak_delta,
        "machine": common.machine(),
    }


def kernels_report(channels: int, batch: int, sizes: list[int]) -> list[dict[str, Any]]:
    """The aten ops that do the attention in forward and backward, per map size (ours, training mode)."""
    from torch.profiler import ProfilerActivity, profile

    rows = []
    for size in sizes:
        block, x = make_block(channels, size, batch)
        block.train()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            block(x).square().mean().backward()
        names = sorted(
            {e.key for e in prof.key_averages() if any(s in e.key for s in ("attention", "bmm", "softmax", "baddbmm"))}
        )
        forward = [n for n in names if "backward" not in n and not n.startswith("autograd")]
        backward = [n for n in names if "backward" in n and not n.startswith("autograd")]
        rows.append({"size": size, "forward": ", ".join(forward), "backward": ", ".join(backward)})
    return rows


def compare(reference: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> float:
    """Max abs difference over the saved outputs and input gradients."""
    return max(float((reference[k].float() - other[k].float()).abs().max()) for k in ("out", "grad"))


COLUMNS = [
    ("size", "map"),
    ("tokens", "N"),
    ("impl", "impl"),
    ("batch", "batch"),
    ("seconds", "fwd+bwd s"),
    ("peak_mb", "peak MB"),
    ("scaled_note", "note"),
    ("speedup_vs_naive", "x faster"),
    ("memory_fraction_of_naive", "mem / naive"),
    ("max_abs_diff_vs_naive", "max|diff|"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="8,14,16,32,64", help="feature-map sizes (N = size^2 tokens)")
    parser.add_argument("--impls", default=",".join(IMPLS))
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument(
        "--naive-max-tokens-batch",
        type=int,
        default=4096 * 16,
        help="naive and math run at a smaller batch when N x batch exceeds this; time and memory are "
        "then scaled linearly to --batch (noted in the table). 4096*64 runs it in full (~16 GB)",
    )
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kernels", action="store_true", help="only report which aten kernels run (training mode)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--save", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    impls = [s for s in args.impls.split(",") if s]
    if args.child:
        print(
            json.dumps(run_child(impls[0], sizes[0], args.channels, args.batch, args.warmup, args.repeats, args.save))
        )
        return
    if args.kernels:
        rows = kernels_report(args.channels, min(args.batch, 8), sizes)
        result = {"benchmark": "attention-kernels", "machine": common.machine(), "rows": rows}
        common.emit(
            result,
            args.json,
            common.format_table(rows, [("size", "map"), ("forward", "forward ops"), ("backward", "backward ops")]),
        )
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            saved: dict[str, dict[str, torch.Tensor]] = {}
            for impl in impls:
                batch = args.batch
                if impl in ("naive", "math"):  # both materialise the (B, N, N) map
                    while batch > 1 and size * size * batch > args.naive_max_tokens_batch:
                        batch //= 2
                path = str(Path(tmp) / f"{impl}-{size}.pt")
                child_args = [
                    "--impls",
                    impl,
                    "--sizes",
                    str(size),
                    "--channels",
                    str(args.channels),
                    "--batch",
                    str(batch),
                    "--warmup",
                    str(args.warmup),
                    "--repeats",
                    str(args.repeats),
                    "--save",
                    path,
                ]
                row = common.run_child(SCRIPT, child_args)
                row.setdefault("impl", impl)
                row.setdefault("size", size)
                if "seconds" in row and batch != args.batch:
                    scale = args.batch / batch
                    row.update(
                        measured_batch=batch,
                        batch=args.batch,
                        seconds=row["seconds"] * scale,
                        peak_mb=row["peak_mb"] * scale,
                        scaled_note=f"batch {batch} x{scale:g}",
                    )
                if Path(path).exists():
                    saved[impl] = torch.load(path)
                rows.append(row)
                if not args.json:
                    print(
                        f"  done {impl} {size}x{size}: {row.get('seconds', row.get('error'))}",
                        file=sys.stderr,
                        flush=True,
                    )
            naive = next(
                (r for r in rows if r.get("impl") == "naive" and r.get("size") == size and "seconds" in r), None
            )
            for row in rows:
                if row.get("size") != size or naive is None or "seconds" not in row:
                    continue
                row["speedup_vs_naive"] = naive["seconds"] / row["seconds"]
                row["memory_fraction_of_naive"] = row["peak_mb"] / max(naive["peak_mb"], 1e-9)
                if "naive" in saved and row["impl"] in saved:
                    row["max_abs_diff_vs_naive"] = compare(saved["naive"], saved[row["impl"]])
    result = {
        "benchmark": "attention",
        "machine": common.machine(),
        "rows": rows,
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "child", "save", "kernels")},
    }
    common.emit(result, args.json, common.format_table(rows, COLUMNS))


if __name__ == "__main__":
    main()
