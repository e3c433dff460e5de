"""Training throughput of OUR step (`build_state` + `train_step`), with ablations and a reference-style yardstick.

Each configuration runs in a fresh subprocess: it builds the state through the library, times
`train_step` on a real `ImageData` of random uint8 images (median after warm-up), counts FLOPs
per iteration with `torch.utils.flop_counter.FlopCounterMode`, measures the fp32 GEMM peak
(2048^3 torch.mm) right before every timed step, and reports achieved GFLOP/s as a fraction of it.
`--rounds N` runs the whole configuration list N times, interleaved, and merges the timings.

The `reference-style` rows are a yardstick only: the same architecture trained the way popular
SAGAN code does it (attention as a naive bmm that materialises the N x N map, fakes not detached
so the D step back-propagates through G, separate D forwards for real and fake, a second G
forward for the G step, D weight gradients computed in the G step, upsampling before G's 3x3
convs and pooling after D's, the default malloc, per-parameter Adam).

Every other row is the library's step with one thing changed: `w32-no-reuse` (a fresh G
forward for the G step instead of reusing the D step's fakes), `w32-plain-convs` (G's up-conv
and D's conv+pool on the big maps instead of the exact rewrites in `model.py`),
`w32-default-malloc` (without `runtime.tune_cpu_allocator`, which the CLI calls at start-up),
`w32-contiguous`, `w32-adam-*`, `w32-math-sdpa`, `w32-bf16`, `w32-compile`.

    python benchmarks/bench_train.py                 # default set of configurations
    python benchmarks/bench_train.py --configs ours-w32,ref-w32 --repeats 3 --rounds 3
    python benchmarks/bench_train.py --json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import _common as common
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from sagan_cli import train as train_module
from sagan_cli.config import TrainConfig
from sagan_cli.data import ImageData, to_model_range
from sagan_cli.model import ModelConfig, SelfAttention, count_parameters
from sagan_cli.runtime import tune_cpu_allocator
from sagan_cli.train import STREAM_LATENTS, batch_indices, build_state, step_generator, train_step

# name -> (width, variant); width is G's and D's, or (G width, D width); variants apply on top of the library's defaults.
CONFIGS: dict[str, tuple[int | tuple[int, int], str]] = {
    "ours-w32": (32, "default"),
    "ours-w64": (64, "default"),
    "ours-w16": (16, "default"),
    "w32-d64": ((32, 64), "default"),  # D width 64: the 64 px default until D width became size-dependent
    "w32-contiguous": (32, "contiguous"),
    "w32-plain-convs": (32, "plain-convs"),
    "w32-default-malloc": (32, "default-malloc"),
    "w32-no-reuse": (32, "no-reuse"),
    "w32-adam-loop": (32, "adam-loop"),
    "w32-adam-foreach": (32, "adam-foreach"),
    "w32-adam-fused": (32, "adam-fused"),
    "w32-math-sdpa": (32, "math-sdpa"),
    "w32-bf16": (32, "bf16"),
    "w32-compile": (32, "compile"),
    "ref-w32": (32, "reference"),
    "ref-w64": (64, "reference"),
}
DEFAULT_CONFIGS = (
    "ours-w32,ref-w32,ours-w16,ours-w64,w32-plain-convs,w32-default-malloc,w32-no-reuse,w32-adam-loop,w32-contiguous"
)
SCRIPT = Path(__file__).resolve()


def sdpa_cpu_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of the fused CPU attention forward: Q K^T and P V, 2 * 2 B H N M d (as for CUDA flash)."""
    b, h, n, d = query
    return 4 * b * h * n * key[2] * d


def sdpa_cpu_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of its backward: dV, dP, dQ, dK (recomputing P not counted, as for CUDA flash)."""
    b, h, n, d = query
    return 8 * b * h * n * key[2] * d


FLOP_MAPPING = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default: sdpa_cpu_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward.default: sdpa_cpu_backward_flops,
}


def naive_attention_forward(self: SelfAttention, x: torch.Tensor) -> torch.Tensor:
    """Yardstick only: the N x N attention map materialised with bmm, as popular SAGAN code does."""
    b, c, h, w = x.shape
    q, k, v = (t.reshape(b, self.inner, h * w) for t in (self.query(x), self.key(x), self.value(x)))  # (B, C/8, N)
    attention = torch.bmm(q.transpose(1, 2), k).softmax(dim=-1)  # (B, N, N)
    attended = torch.bmm(v, attention.transpose(1, 2)).reshape(b, self.inner, h, w)  # (B, C/8, H, W)
    return x + self.gamma * self.out(attended)


def reference_step(state: train_module.TrainState, data: ImageData, config: TrainConfig, device: torch.device) -> None:
    """Yardstick only: one D and one G step the way popular SAGAN re-implementations do them."""
    G, D, batch = state.generator, state.discriminator, config.batch_size
    indices = batch_indices(state.step, len(data), batch, config.seed)
    real = to_model_range(data.images[indices]).to(device)
    rng = step_generator(config.seed, state.step, STREAM_LATENTS)
    z = torch.randn(batch, config.model.z_dim, generator=rng)
    d_real = D(real)  # separate D forward for the real batch
    fake = G(z)  # not detached: the D loss back-propagates through G as well
    d_fake = D(fake)
    loss_d = F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean()
    state.optimizer_d.zero_grad()
    state.optimizer_g.zero_grad()
    loss_d.backward()
    state.optimizer_d.step()
    z = torch.randn(batch, config.model.z_dim, generator=rng)
    loss_g = -D(G(z)).mean()  # a fresh G forward; D weight gradients computed and thrown away
    state.optimizer_d.zero_grad()
    state.optimizer_g.zero_grad()
    loss_g.backward()
    state.optimizer_g.step()
    state.step += 1


def no_reuse_step(state: train_module.TrainState, data: ImageData, config: TrainConfig, device: torch.device) -> None:
    """Ablation only: the library's step, except that the G step runs a fresh G forward instead of
    reusing the D step's fakes (same values: G has not changed in between)."""
    G, D, batch = state.generator, state.discriminator, config.batch_size
    indices = batch_indices(state.step, len(data), batch, config.seed)
    real = to_model_range(data.images[indices]).to(device, memory_format=torch.channels_last)
    rng = step_generator(config.seed, state.step, STREAM_LATENTS)
    z = torch.randn(batch, config.model.z_dim, generator=rng)
    with torch.no_grad():
        fake = G(z)
    scores = D(torch.cat([real, fake]))
    loss_d = F.relu(1.0 - scores[:batch]).mean() + F.relu(1.0 + scores[batch:]).mean()
    state.optimizer_d.zero_grad(set_to_none=True)
    loss_d.backward()
    state.optimizer_d.step()
    D.requires_grad_(False)
    loss_g = -D(G(z)).mean()  # the second G forward that train_step avoids
    state.optimizer_g.zero_grad(set_to_none=True)
    loss_g.backward()
    state.optimizer_g.step()
    D.requires_grad_(True)
    state.step += 1


def random_data(n: int, channels: int, size: int, seed: int = 0) -> ImageData:
    """A real ImageData of random uint8 images (the trainer's input type)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=generator)
    return ImageData(images, None, 0, "random", "random uint8 images")


def adam(params: Any, config: TrainConfig, lr: float, variant: str) -> torch.optim.Adam:
    kwargs = {"adam-loop": {"foreach": False}, "adam-foreach": {"foreach": True}, "adam-fused": {"fused": True}}[
        variant
    ]
    return torch.optim.Adam(params, lr=lr, betas=(config.beta1, config.beta2), **kwargs)


def run_config(name: str, image_size: int, batch: int, attn: int, warmup: int, repeats: int) -> dict[str, Any]:
    """Build, count FLOPs, time: one configuration in this process."""
    width, variant = CONFIGS[name]
    if variant not in ("default-malloc", "reference"):
        tune_cpu_allocator()  # as the CLI does at start-up; popular code runs on the default malloc
    if variant in ("plain-convs", "reference"):
        common.use_plain_convs()  # upsample-then-conv and conv-then-pool on the big maps
    g_width, d_width = width if isinstance(width, tuple) else (width, width)
    model = ModelConfig(image_size=image_size, channels=3, attn_resolutions=(attn,), g_width=g_width, d_width=d_width)
    config = TrainConfig(model=model, batch_size=batch, seed=0)
    device = torch.device("cpu")
    if variant == "contiguous":
        train_module.preferred_memory_format = lambda device: torch.contiguous_format
    if variant == "reference":
        SelfAttention.forward = naive_attention_forward
    state = build_state(config, device)
    if variant == "reference":
        variant_adam = "adam-loop"  # popular code uses torch.optim.Adam's default: the per-parameter loop on CPU
        state.optimizer_g = adam(state.generator.parameters(), config, config.lr_g, variant_adam)
        state.optimizer_d = adam(state.discriminator.parameters(), config, config.lr_d, variant_adam)
    if variant.startswith("adam-"):
        state.optimizer_g = adam(state.generator.parameters(), config, config.lr_g, variant)
        state.optimizer_d = adam(state.discriminator.parameters(), config, config.lr_d, variant)
    data = random_data(max(4 * batch, 256), 3, image_size)
    context: Any = contextlib.nullcontext
    if variant == "bf16":
        context = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    if variant == "math-sdpa":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        context = lambda: sdpa_kernel(SDPBackend.MATH)  # noqa: E731
    compile_seconds = None
    if variant == "compile":
        state.generator.compile()
        state.discriminator.compile()
    step = {"reference": reference_step, "no-reuse": no_reuse_step}.get(variant, train_step)

    def one_step() -> None:
        with context():
            step(state, data, config, device)

    start = time.perf_counter()
    one_step()
    first_step_seconds = time.perf_counter() - start
    if variant == "compile":
        compile_seconds = first_step_seconds
    counter = FlopCounterMode(display=False, custom_mapping=FLOP_MAPPING)
    with counter:
        one_step()
    flops = counter.get_total_flops()
    for _ in range(warmup):
        one_step()
    # The GEMM peak is measured right before every timed step: on a shared VM the machine's speed
    # drifts by 2x over minutes, and the fraction of peak is only meaningful against a peak taken
    # under the same conditions.
    times, peaks = [], []
    for _ in range(repeats):
        peaks.append(common.gemm_peak_gflops(repeats=3))
        start = time.perf_counter()
        one_step()
        times.append(time.perf_counter() - start)
    fractions = [flops / t / 1e9 / p for t, p in zip(times, peaks, strict=True)]
    seconds = statistics.median(times)
    gflops_per_s = flops / seconds / 1e9
    images_per_iteration = batch  # one D step and one G step on `batch` fresh fakes and reals
    return {
        "config": name,
        "variant": variant,
        "width": width,
        "image_size": image_size,
        "batch": batch,
        "params_g": count_parameters(state.generator),
        "params_d": count_parameters(state.discriminator),
        "gflop_per_iter": flops / 1e9,
        "seconds_per_iter": seconds,
        "times": times,
        "gemm_peaks": peaks,
        "fractions": fractions,
        "images_per_s": images_per_iteration / seconds,
        "gflops_per_s": gflops_per_s,
        "gemm_peak_gflops": statistics.median(peaks),
        "fraction_of_peak": statistics.median(fractions),
        "compile_seconds": compile_seconds,
        "peak_rss_mb": common.peak_rss_mb(),
        "machine": common.machine(),
    }


def merge_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One row per configuration: medians over every timed step of every round."""
    ok = [r for r in rounds if "error" not in r]
    if not ok:
        return rounds[-1]
    row = dict(ok[0])
    times = [t for r in ok for t in r["times"]]
    seconds = statistics.median(times)
    row.update(
        rounds=len(ok),
        times=times,
        gemm_peaks=[p for r in ok for p in r["gemm_peaks"]],
        fractions=[f for r in ok for f in r["fractions"]],
        seconds_per_iter=seconds,
        images_per_s=row["batch"] / seconds,
        gflops_per_s=row["gflop_per_iter"] / seconds,
        peak_rss_mb=max(r["peak_rss_mb"] for r in ok),
    )
    row["gemm_peak_gflops"] = statistics.median(row["gemm_peaks"])
    row["fraction_of_peak"] = statistics.median(row["fractions"])
    return row


COLUMNS = [
    ("config", "config"),
    ("params_g", "G params"),
    ("params_d", "D params"),
    ("gflop_per_iter", "GFLOP/iter"),
    ("seconds_per_iter", "s/iter"),
    ("images_per_s", "img/s"),
    ("gflops_per_s", "GFLOP/s"),
    ("gemm_peak_gflops", "GEMM peak"),
    ("fraction_of_peak", "of peak"),
    ("peak_rss_mb", "peak RSS MB"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default=DEFAULT_CONFIGS, help=f"comma-separated, from: {', '.join(CONFIGS)}")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--attn", type=int, default=32, help="attention feature-map size in G and D")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per configuration and round")
    parser.add_argument("--rounds", type=int, default=1, help="run the configuration list this many times, interleaved")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument(
        "--out", type=Path, default=None, help="also write the JSON result here after every configuration"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    if args.rounds < 1 or args.repeats < 1:
        parser.error("--rounds and --repeats must be at least 1")
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        parser.error(f"unknown config(s) {unknown}; choose from {', '.join(CONFIGS)}")
    if args.child:
        print(json.dumps(run_config(names[0], args.image_size, args.batch, args.attn, args.warmup, args.repeats)))
        return
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for round_index in range(args.rounds):  # interleaved, so slow phases of the machine hit every config
        for name in names:
            child_args = [
                "--configs",
                name,
                "--image-size",
                str(args.image_size),
                "--batch",
                str(args.batch),
                "--attn",
                str(args.attn),
                "--warmup",
                str(args.warmup),
                "--repeats",
                str(args.repeats),
            ]
            row = common.run_child(SCRIPT, child_args)
            row.setdefault("config", name)
            runs[name].append(row)
            if not args.json:
                print(
                    f"  round {round_index + 1}: {name}: {row.get('images_per_s', row.get('error'))}",
                    file=sys.stderr,
                    flush=True,
                )
        rows = [merge_rounds(runs[name]) for name in names if runs[name]]
        if args.out:
            partial = {
                "benchmark": "train",
                "machine": common.machine(),
                "rows": rows,
                "command": " ".join(sys.argv),
                "settings": {k: v for k, v in vars(args).items() if k not in ("json", "child", "out")},
            }
            args.out.write_text(json.dumps(partial, indent=1))
    result = {
        "benchmark": "train",
        "machine": common.machine(),
        "rows": rows,
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "child", "out")},
    }
    common.emit(result, args.json, common.format_table(rows, COLUMNS))


if __name__ == "__main__":
    main()
