"""`sagan interpolate`, `sagan evaluate` and `sagan compare`, registered on the main app.

Parsing, Rich tables and exit codes only; the work is in walk.py, evaluation.py, compare.py and metrics.py.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, List, Optional

import typer

from .cli import app
from .errors import EXIT_GATE, SaganError, UsageError

EXTRACTOR_HELP = "auto, inception or digits (default: auto = inception if --inception-weights is given or its weights are present, else digits for grey 1-channel models)"
INCEPTION_HELP = "Inception weights file (default: $TORCH_HOME/hub/checkpoints/weights-inception-2015-12-05-6726825d.pth)"
METRIC_COLUMNS = (  # (torch-fidelity key, column title, format)
    ("frechet_inception_distance", "FID", "{:.3f}"),
    ("inception_score_mean", "IS", "{:.3f}"),
    ("kernel_inception_distance_mean", "KID", "{:.5f}"),
)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _chosen_metrics(fid: bool, isc: bool, kid: bool, gate_metrics: frozenset[str] = frozenset()) -> tuple[str, ...]:
    from .metrics import METRICS

    chosen = {name for name, wanted in (("fid", fid), ("isc", isc), ("kid", kid)) if wanted} | gate_metrics
    return tuple(name for name in METRICS if name in chosen) if chosen else METRICS


def _format_metric(results: dict[str, float], key: str, fmt: str, with_std: bool = True) -> str:
    if key not in results:
        return "-"
    std_key = key.replace("_mean", "_std")
    text = fmt.format(results[key])
    if not (with_std and std_key != key and std_key in results):
        return text
    spread = fmt.format(results[std_key])
    if spread == fmt.format(0.0):
        return text  # e.g. KID with n <= 1,000: every subset is the whole set, and "± 0.00000" would read as precision
    return f"{text} ± {spread}"


def _finite(value: Any) -> Any:
    """NaN / inf -> null, so stdout is always strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def _print_json(payload: dict[str, Any]) -> None:
    print(json.dumps(_finite(payload), indent=2, allow_nan=False), flush=True)


@app.command(
    epilog="Examples: sagan interpolate CKPT --seeds 3,7 --steps 10 -o walk.png\n\n"
    "          sagan interpolate CKPT --seeds 3,7,1,2 -o walk.gif      (two rows: 3->7 and 1->2)\n\n"
    "          sagan interpolate CKPT --seeds 5 --classes 1,7 -o morph.png   (conditional: class 1 -> 7 at z of seed 5)"
)
def interpolate(
    checkpoint: Path = typer.Argument(..., help="A .safetensors checkpoint written by sagan train"),
    seeds: List[str] = typer.Option(["0,1"], "--seeds", help="Seed pairs start,end; more pairs = more rows (3,7,1,2 or repeat --seeds)"),
    steps: int = typer.Option(10, "--steps", help="Frames per row, both endpoints included"),
    lerp: bool = typer.Option(False, "--lerp", help="Straight-line interpolation instead of slerp"),
    class_index: Optional[int] = typer.Option(None, "--class", help="Fixed class (conditional models)"),
    classes: Optional[str] = typer.Option(None, "--classes", help="Walk from class A to class B at each seed's fixed z, e.g. 1,7"),
    truncation: float = typer.Option(1.0, "--truncation", help="Scale latents by T in (0, 1], as in sagan sample"),
    output: Path = typer.Option(Path("walk.png"), "-o", "--output", help="A grid image (.png/.jpg/.webp) or an animation (.gif)"),
    duration_ms: Optional[int] = typer.Option(None, "--frame-ms", help="GIF frame duration in milliseconds (default: 120)"),
    ema: bool = typer.Option(True, "--ema/--no-ema", help="Use the EMA generator when the checkpoint has one"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or mps"),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output file"),
) -> None:
    """Walk the latent space between seeds: rows of a grid, or a GIF; prints the written path on stdout."""
    from .checkpoint import load_generator
    from .outputs import check_output_file
    from .runtime import resolve_device
    from .sampling import WALK_SUFFIXES, check_class, check_truncation, make_grid, save_gif, save_image
    from .walk import parse_classes, parse_seeds, plan_rows, walk

    if steps < 2:
        raise UsageError(f"--steps must be at least 2 (both endpoints), got {steps}")
    if duration_ms is not None and output.suffix.lower() != ".gif":
        raise UsageError(f"--frame-ms only applies to a GIF, and -o {output} is a still grid; drop it or write a .gif")
    duration_ms = 120 if duration_ms is None else duration_ms
    if duration_ms < 10:
        raise UsageError(f"--frame-ms must be at least 10, got {duration_ms}")
    check_truncation(truncation)
    seed_list = parse_seeds(seeds)
    check_output_file(output, WALK_SUFFIXES, force)
    generator, info = load_generator(checkpoint, use_ema=ema, device=resolve_device(device))
    check_class(class_index, info.model.num_classes)
    class_pair = parse_classes(classes, info.model.num_classes)
    rows = plan_rows(seed_list, info.model.num_classes, class_index, class_pair)
    method = "lerp" if lerp else "slerp"
    frames = walk(generator, rows, steps, method, truncation)  # (R, T, C, S, S)
    metadata = {
        "checkpoint": str(checkpoint),
        "step": str(info.step),
        "seeds": ";".join(f"{r.start_seed},{r.end_seed}" for r in rows),
        "labels": ";".join(f"{r.start_label},{r.end_label}" for r in rows),
        "steps": str(steps),
        "interpolation": method,
        "truncation": str(truncation),
        "weights": "ema" if ema and info.has_ema else "raw",
    }
    if output.suffix.lower() == ".gif":
        per_frame = [make_grid(frames[:, t], nrow=max(1, math.ceil(math.sqrt(len(rows))))) for t in range(steps)]
        save_gif(per_frame, output, duration_ms, comment=json.dumps(metadata))
    else:
        save_image(make_grid(frames.flatten(0, 1), nrow=steps), output, metadata)
    print(output)


@app.command(
    epilog="Examples: sagan evaluate --fid                 (newest checkpoint of the latest run)\n\n"
    "          sagan evaluate CKPT --fid --isc --kid --json --max-fid 40\n\n"
    "          sagan evaluate CKPT --extractor inception --inception-weights ~/weights-inception-2015-12-05-6726825d.pth"
)
def evaluate(
    checkpoint: Optional[Path] = typer.Argument(None, help="A checkpoint (default: newest checkpoint of the most recent run in --runs)"),
    fid: bool = typer.Option(False, "--fid", help="Frechet distance (FID)"),
    isc: bool = typer.Option(False, "--isc", help="Inception score (IS)"),
    kid: bool = typer.Option(False, "--kid", help="Kernel distance (KID) (no metric flag: all three)"),
    ref: Optional[str] = typer.Option(None, "--ref", help="Reference: a dataset name or image folder (default: the checkpoint's training data)"),
    num_samples: int = typer.Option(10_000, "--num-samples", "-n", help="Generated images (the reference uses as many, or all it has)"),
    seed: int = typer.Option(0, "--seed", help="Seed of the latents (same as sagan sample) and of IS/KID subsets"),
    truncation: float = typer.Option(1.0, "--truncation", help="Scale latents by T in (0, 1]"),
    batch_size: int = typer.Option(500, "--batch-size", help="Images per generator / extractor pass"),
    ema: bool = typer.Option(True, "--ema/--no-ema", help="Use the EMA generator when the checkpoint has one"),
    extractor: str = typer.Option("auto", "--extractor", help=EXTRACTOR_HELP),
    inception_weights: Optional[Path] = typer.Option(None, "--inception-weights", help=INCEPTION_HELP),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Cache reference features (~/.cache/sagan/fidelity or $SAGAN_FIDELITY_CACHE)"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout"),
    max_fid: Optional[float] = typer.Option(None, "--max-fid", help="Exit 3 when FID is above this"),
    min_isc: Optional[float] = typer.Option(None, "--min-isc", help="Exit 3 when IS is below this"),
    max_kid: Optional[float] = typer.Option(None, "--max-kid", help="Exit 3 when KID is above this"),
    runs: Path = typer.Option(Path("runs"), "--runs", help="Where to look for the latest run when no CKPT is given"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or mps"),
) -> None:
    """Score a checkpoint with FID / IS / KID (torch-fidelity, offline); exit 3 when a gate fails."""
    from .evaluation import EvalOptions, evaluate_checkpoint, resolve_checkpoint, versions
    from .metrics import cache_root, failed_gates, make_gates

    gates = make_gates(max_fid, min_isc, max_kid)
    options = EvalOptions(
        metrics=_chosen_metrics(fid, isc, kid, frozenset(gate.metric for gate in gates)),
        num_samples=num_samples, seed=seed, truncation=truncation, batch_size=batch_size, use_ema=ema,
        extractor=extractor, inception_weights=inception_weights, ref=ref, device=device,
    ).validate()
    path = resolve_checkpoint(checkpoint, runs)
    with cache_root(cache) as folder:
        result = evaluate_checkpoint(path, options, folder, _log)
    failures = failed_gates(gates, result.metrics)
    if as_json:
        payload = {"schema": "sagan.evaluate/1", **result.to_json(), "cache": cache}
        payload["gates"] = {"checked": [g.flag for g in gates], "failed": failures}
        payload["versions"] = versions()
        _print_json(payload)
    _print_eval_table(result)
    if failures:
        raise SaganError(f"quality gate failed: {'; '.join(failures)}", exit_code=EXIT_GATE)


def _print_eval_table(result: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"step {result.info.step}, {result.weights} weights", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, title, fmt in METRIC_COLUMNS:
        if key in result.metrics:
            table.add_row(title, _format_metric(result.metrics, key, fmt))
    console = Console(stderr=True)
    console.print(f"checkpoint  {result.checkpoint}", highlight=False, markup=False)
    console.print(table)
    _print_details(console, result.extractor, result.num_samples, result.seed, result.reference_id, result.reference_images)
    console.print(f"speed       {result.images_per_second:.0f} images/s", highlight=False, markup=False)


def _print_details(console: Any, extractor: Any, num_samples: int, seed: int, reference_id: str | None, reference_images: int | None) -> None:
    reference = "none (IS needs no reference)" if reference_id is None else f"{reference_id} ({reference_images} images)"
    for label, text in (
        ("extractor", f"{extractor.name} ({extractor.fidelity_name}, weights sha256 {extractor.weights_sha256[:12]})"),
        ("samples", f"{num_samples}, seed {seed}"),
        ("reference", reference),
    ):
        console.print(f"{label:<11} {text}", highlight=False, markup=False, soft_wrap=True)


@app.command(
    epilog="Example: sagan compare runs/mnist-attn/checkpoints/final.safetensors "
    "runs/mnist-noattn/checkpoints/final.safetensors -o compare.png"
)
def compare(
    checkpoints: List[Path] = typer.Argument(..., help="Two or more checkpoints of the same image shape"),
    fid: bool = typer.Option(False, "--fid", help="Frechet distance (FID)"),
    isc: bool = typer.Option(False, "--isc", help="Inception score (IS)"),
    kid: bool = typer.Option(False, "--kid", help="Kernel distance (KID) (no metric flag: all three)"),
    ref: Optional[str] = typer.Option(None, "--ref", help="Reference: a dataset name or image folder (default: the checkpoints' training data)"),
    num_samples: int = typer.Option(10_000, "--num-samples", "-n", help="Generated images per checkpoint"),
    seed: int = typer.Option(0, "--seed", help="Seed of the shared latents"),
    truncation: float = typer.Option(1.0, "--truncation", help="Scale latents by T in (0, 1]"),
    batch_size: int = typer.Option(500, "--batch-size", help="Images per generator / extractor pass"),
    ema: bool = typer.Option(True, "--ema/--no-ema", help="Use EMA generators when the checkpoints have them"),
    extractor: str = typer.Option("auto", "--extractor", help=EXTRACTOR_HELP),
    inception_weights: Optional[Path] = typer.Option(None, "--inception-weights", help=INCEPTION_HELP),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Cache reference features across runs"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Also write a side-by-side grid: one row per model, same z"),
    grid_n: int = typer.Option(8, "--grid-n", help="Images per model in the -o grid"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or mps"),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing -o file"),
) -> None:
    """Compare checkpoints on the same reference, latents and extractor: a table (and --json, -o grid)."""
    from .compare import compare_checkpoints, side_by_side
    from .evaluation import EvalOptions, versions
    from .metrics import shared_cache
    from .outputs import check_output_file
    from .runtime import resolve_device
    from .sampling import IMAGE_SUFFIXES, make_grid, save_image

    if grid_n < 1:
        raise UsageError(f"--grid-n must be at least 1, got {grid_n}")
    if output is not None:
        check_output_file(output, IMAGE_SUFFIXES, force)
    options = EvalOptions(
        metrics=_chosen_metrics(fid, isc, kid), num_samples=num_samples, seed=seed, truncation=truncation,
        batch_size=batch_size, use_ema=ema, extractor=extractor, inception_weights=inception_weights, ref=ref, device=device,
    ).validate()
    with shared_cache(cache) as folder:
        rows, used_extractor, reference = compare_checkpoints(list(checkpoints), options, folder, _log)
    if output is not None:
        grid = make_grid(side_by_side(list(checkpoints), grid_n, seed, truncation, ema, resolve_device(device)), nrow=grid_n)
        save_image(grid, output, {
            "checkpoints": ";".join(map(str, checkpoints)), "seed": str(seed), "truncation": str(truncation),
            "rows": ";".join(row.name for row in rows),
        })
    if as_json:
        _print_json({
            "schema": "sagan.compare/1",
            "extractor": {"name": used_extractor.name, "fidelity_name": used_extractor.fidelity_name,
                          "weights_sha256": used_extractor.weights_sha256},
            "reference": None if reference is None else {"id": reference.data_id, "num_images": int(reference.images.shape[0])},
            "num_samples": num_samples, "seed": seed, "truncation": truncation,
            "models": [row.to_json() for row in rows],
            "grid": str(output) if output is not None else None,
            "versions": versions(),
        })
    elif output is not None:
        print(output)
    _print_compare_table(rows, used_extractor, reference, options)


def _print_compare_table(rows: list[Any], extractor: Any, reference: Any, options: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    shown = [(key, title, fmt) for key, title, fmt in METRIC_COLUMNS if any(key in row.metrics for row in rows)]

    def train_time(row: Any) -> str:
        minutes, seconds = divmod(int(round(row.info.train_seconds)), 60)
        return f"{minutes}m{seconds:02d}s"

    titles = ["model", "attention", "G params", "steps", "train time", *[title for _, title, _ in shown], "img/s"]
    cells = [  # one list of field values per model
        [row.name, row.attention, f"{row.parameters:,}", str(row.info.step), train_time(row),
         *[_format_metric(row.metrics, key, fmt, with_std=False) for key, _, fmt in shown],
         f"{row.images_per_second:.0f}"]
        for row in rows
    ]
    console = Console(stderr=True)
    # A few models read best side by side, one column each (and fit 80 columns); many, one row each.
    tall_width = max(map(len, titles)) + sum(max(map(len, values)) + 3 for values in cells) + 4
    table = Table(title="sagan compare", title_justify="left")
    if tall_width <= console.width:
        table.add_column("")
        for values in cells:
            table.add_column(values[0], justify="right", overflow="fold")
        for index, title in enumerate(titles[1:], start=1):
            table.add_row(title, *[values[index] for values in cells])
    else:
        for title in titles:
            left = title in ("model", "attention")
            table.add_column(title, justify="left" if left else "right", overflow="fold", no_wrap=not left)
        for values in cells:
            table.add_row(*values)
    console.print(table)
    reference_id, reference_images = (None, None) if reference is None else (reference.data_id, int(reference.images.shape[0]))
    _print_details(console, extractor, options.num_samples, options.seed, reference_id, reference_images)
