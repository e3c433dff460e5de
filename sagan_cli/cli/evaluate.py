"""`sagan evaluate` and `sagan compare`: parsing, Rich tables and exit codes; the work is in evaluation.py,
compare.py and metrics.py. Defaults: eval_options.EvalOptions; the metrics: metric_registry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import EXIT_GATE, SaganError, UsageError
from ..eval_options import EVAL_DEFAULTS as DEFAULTS
from ..eval_options import EvalOptions
from ..metric_registry import METRIC_REGISTRY, MetricSpec
from . import options
from .console import log, print_json

EVALUATE_EPILOG = (
    "Examples: sagan evaluate --fid                 (newest checkpoint of the latest run)\n\n"
    "          sagan evaluate CKPT --fid --isc --kid --json --max-fid 40\n\n"
    "          sagan evaluate CKPT --extractor inception --inception-weights ~/weights-inception-2015-12-05-6726825d.pth"
)
COMPARE_EPILOG = (
    "Example: sagan compare runs/mnist-attn/checkpoints/final.safetensors "
    "runs/mnist-noattn/checkpoints/final.safetensors -o compare.png"
)


def _gate_option(name: str) -> Any:
    spec = METRIC_REGISTRY[name]
    side = "above" if spec.lower_is_better else "below"
    return typer.Option(spec.gate_flag, help=f"Exit 3 when {spec.title} is {side} this")


def _eval_options(metrics: tuple[str, ...], flags: dict[str, Any]) -> EvalOptions:
    """EvalOptions from the option values evaluate and compare share (their parameter names)."""
    same_name = ("num_samples", "seed", "truncation", "batch_size", "extractor", "inception_weights", "ref", "device")
    return EvalOptions(metrics=metrics, use_ema=flags["ema"], **{name: flags[name] for name in same_name}).validate()


def _format_metric(results: dict[str, float], spec: MetricSpec, with_std: bool = True) -> str:
    if spec.key not in results:
        return "-"
    text = spec.fmt.format(results[spec.key])
    if not (with_std and spec.std_key is not None and spec.std_key in results):
        return text
    spread = spec.fmt.format(results[spec.std_key])
    if spread == spec.fmt.format(0.0):
        return text  # e.g. KID with n <= 1,000: every subset is the whole set, and "± 0.00000" would read as precision
    return f"{text} ± {spread}"


def evaluate(
    checkpoint: Annotated[
        Path | None,
        typer.Argument(help="A checkpoint (default: newest checkpoint of the most recent run in --runs)"),
    ] = None,
    fid: options.Fid = False,
    isc: options.Isc = False,
    kid: options.Kid = False,
    ref: options.Ref = DEFAULTS.ref,
    num_samples: options.NumSamples = DEFAULTS.num_samples,
    seed: options.EvalSeed = DEFAULTS.seed,
    truncation: options.Truncation = DEFAULTS.truncation,
    batch_size: options.EvalBatchSize = DEFAULTS.batch_size,
    ema: options.Ema = DEFAULTS.use_ema,
    extractor: options.Extractor = DEFAULTS.extractor,
    inception_weights: options.InceptionWeights = DEFAULTS.inception_weights,
    cache: options.Cache = DEFAULTS.cache,
    as_json: options.Json = False,
    max_fid: Annotated[float | None, _gate_option("fid")] = None,
    min_isc: Annotated[float | None, _gate_option("isc")] = None,
    max_kid: Annotated[float | None, _gate_option("kid")] = None,
    runs: Annotated[
        Path, typer.Option("--runs", help="Where to look for the latest run when no CKPT is given")
    ] = DEFAULTS.runs,
    device: options.Device = DEFAULTS.device,
) -> None:
    """Score a checkpoint with FID / IS / KID (torch-fidelity, offline); exit 3 when a gate fails."""
    from ..evaluation import evaluate_checkpoint, resolve_checkpoint, versions
    from ..metrics import cache_root, failed_gates, make_gates

    gates = make_gates({"fid": max_fid, "isc": min_isc, "kid": max_kid})
    metrics = options.chosen_metrics(fid, isc, kid, frozenset(gate.metric for gate in gates))
    eval_options = _eval_options(metrics, locals())
    path = resolve_checkpoint(checkpoint, runs)
    with cache_root(cache) as folder:
        result = evaluate_checkpoint(path, eval_options, folder, log)
    failures = failed_gates(gates, result.metrics)
    if as_json:
        payload = {"schema": "sagan.evaluate/1", **result.to_json(), "cache": cache}
        payload["gates"] = {"checked": [g.flag for g in gates], "failed": failures}
        payload["versions"] = versions()
        print_json(payload)
    _print_eval_table(result)
    if failures:
        raise SaganError(f"quality gate failed: {'; '.join(failures)}", exit_code=EXIT_GATE)


def _print_eval_table(result: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"step {result.info.step}, {result.weights} weights", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for spec in METRIC_REGISTRY.values():
        if spec.key in result.metrics:
            table.add_row(spec.title, _format_metric(result.metrics, spec))
    console = Console(stderr=True)
    console.print(f"checkpoint  {result.checkpoint}", highlight=False, markup=False)
    console.print(table)
    _print_details(
        console, result.extractor, result.num_samples, result.seed, result.reference_id, result.reference_images
    )
    console.print(f"speed       {result.images_per_second:.0f} images/s", highlight=False, markup=False)


def _print_details(
    console: Any, extractor: Any, num_samples: int, seed: int, reference_id: str | None, reference_images: int | None
) -> None:
    reference = (
        "none (IS needs no reference)" if reference_id is None else f"{reference_id} ({reference_images} images)"
    )
    for label, text in (
        ("extractor", f"{extractor.name} ({extractor.fidelity_name}, weights sha256 {extractor.weights_sha256[:12]})"),
        ("samples", f"{num_samples}, seed {seed}"),
        ("reference", reference),
    ):
        console.print(f"{label:<11} {text}", highlight=False, markup=False, soft_wrap=True)


def compare(
    checkpoints: Annotated[list[Path], typer.Argument(help="Two or more checkpoints of the same image shape")],
    fid: options.Fid = False,
    isc: options.Isc = False,
    kid: options.Kid = False,
    ref: options.Ref = DEFAULTS.ref,
    num_samples: options.NumSamples = DEFAULTS.num_samples,
    seed: options.EvalSeed = DEFAULTS.seed,
    truncation: options.Truncation = DEFAULTS.truncation,
    batch_size: options.EvalBatchSize = DEFAULTS.batch_size,
    ema: options.Ema = DEFAULTS.use_ema,
    extractor: options.Extractor = DEFAULTS.extractor,
    inception_weights: options.InceptionWeights = DEFAULTS.inception_weights,
    cache: options.Cache = DEFAULTS.cache,
    as_json: options.Json = False,
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="Also write a side-by-side grid: one row per model, same z"),
    ] = None,
    grid_n: Annotated[int, typer.Option("--grid-n", help="Images per model in the -o grid")] = DEFAULTS.grid_n,
    device: options.Device = DEFAULTS.device,
    force: options.Force = False,
) -> None:
    """Compare checkpoints on the same reference, latents and extractor: a table (and --json, -o grid)."""
    from ..compare import compare_checkpoints, side_by_side
    from ..evaluation import versions
    from ..images import IMAGE_SUFFIXES, make_grid, save_image
    from ..metrics import shared_cache
    from ..outputs import check_output_file
    from ..runtime import resolve_device

    if grid_n < 1:
        raise UsageError(f"--grid-n must be at least 1, got {grid_n}")
    if output is not None:
        check_output_file(output, IMAGE_SUFFIXES, force)
    eval_options = _eval_options(options.chosen_metrics(fid, isc, kid), locals())
    with shared_cache(cache) as folder:
        rows, used_extractor, reference = compare_checkpoints(list(checkpoints), eval_options, folder, log)
    if output is not None:
        grid = make_grid(
            side_by_side(list(checkpoints), grid_n, seed, truncation, ema, resolve_device(device)), nrow=grid_n
        )
        save_image(
            grid,
            output,
            {
                "checkpoints": ";".join(map(str, checkpoints)),
                "seed": str(seed),
                "truncation": str(truncation),
                "rows": ";".join(row.name for row in rows),
            },
        )
    if as_json:
        print_json(
            {
                "schema": "sagan.compare/1",
                "extractor": {
                    "name": used_extractor.name,
                    "fidelity_name": used_extractor.fidelity_name,
                    "weights_sha256": used_extractor.weights_sha256,
                },
                "reference": None
                if reference is None
                else {"id": reference.data_id, "num_images": int(reference.images.shape[0])},
                "num_samples": num_samples,
                "seed": seed,
                "truncation": truncation,
                "models": [row.to_json() for row in rows],
                "grid": str(output) if output is not None else None,
                "versions": versions(),
            }
        )
    elif output is not None:
        print(output)
    _print_compare_table(rows, used_extractor, reference, eval_options)


def _print_compare_table(rows: list[Any], extractor: Any, reference: Any, options: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    shown = [spec for spec in METRIC_REGISTRY.values() if any(spec.key in row.metrics for row in rows)]

    def train_time(row: Any) -> str:
        minutes, seconds = divmod(int(round(row.info.train_seconds)), 60)
        return f"{minutes}m{seconds:02d}s"

    titles = ["model", "attention", "G params", "steps", "train time", *[spec.title for spec in shown], "img/s"]
    cells = [  # one list of field values per model
        [
            row.name,
            row.attention,
            f"{row.parameters:,}",
            str(row.info.step),
            train_time(row),
            *[_format_metric(row.metrics, spec, with_std=False) for spec in shown],
            f"{row.images_per_second:.0f}",
        ]
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
    reference_id, reference_images = (
        (None, None) if reference is None else (reference.data_id, int(reference.images.shape[0]))
    )
    _print_details(console, extractor, options.num_samples, options.seed, reference_id, reference_images)


def register(app: typer.Typer) -> None:
    """Add `sagan evaluate` and `sagan compare` to the app."""
    app.command(epilog=EVALUATE_EPILOG)(evaluate)
    app.command(epilog=COMPARE_EPILOG)(compare)
