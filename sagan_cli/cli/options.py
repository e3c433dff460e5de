"""Option declarations shared by several commands: one place for each flag's name and help.

Defaults are not declared here: each command's signature takes them from its library defaults
object (TrainConfig, SampleOptions, WalkOptions, EvalOptions), which the Python API reads too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..metric_registry import METRIC_REGISTRY

# ---------------------------------------------------------------- every command that loads a generator

Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or mps")]
Ema = Annotated[bool, typer.Option("--ema/--no-ema", help="Use the EMA generator when the checkpoint has one")]
Truncation = Annotated[
    float, typer.Option("--truncation", help="Scale latents by T in (0, 1]: lower = cleaner, less varied")
]
ClassIndex = Annotated[
    int | None,
    typer.Option(
        "--class",
        help="Class to draw (conditional models only; default: each image gets a class drawn uniformly from its seed)",
    ),
]
Force = Annotated[bool, typer.Option("--force", help="Overwrite existing output files")]
CheckpointArg = Annotated[Path, typer.Argument(help="A .safetensors checkpoint written by sagan train")]

# ---------------------------------------------------------------- evaluate and compare


def _metric_option(name: str) -> object:
    spec = METRIC_REGISTRY[name]
    return typer.Option(f"--{name}", help=f"{spec.title}: {spec.description}")


Fid = Annotated[bool, _metric_option("fid")]
Isc = Annotated[bool, _metric_option("isc")]
Kid = Annotated[bool, _metric_option("kid")]
Ref = Annotated[
    str | None,
    typer.Option("--ref", help="Reference: a dataset name or image folder (default: the checkpoints' training data)"),
]
NumSamples = Annotated[
    int,
    typer.Option(
        "--num-samples", "-n", help="Generated images per checkpoint (the reference uses as many, or all it has)"
    ),
]
EvalSeed = Annotated[
    int, typer.Option("--seed", help="Seed of the latents (same as sagan sample) and of IS/KID subsets")
]
EvalBatchSize = Annotated[int, typer.Option("--batch-size", help="Images per generator / extractor pass")]
Extractor = Annotated[
    str,
    typer.Option(
        "--extractor",
        help="auto, inception or digits (default: auto = inception if --inception-weights is given or its "
        "weights are present, else digits for grey 1-channel models)",
    ),
]
InceptionWeights = Annotated[
    Path | None,
    typer.Option(
        "--inception-weights",
        help="Inception weights file (default: $TORCH_HOME/hub/checkpoints/weights-inception-2015-12-05-6726825d.pth)",
    ),
]
Cache = Annotated[
    bool,
    typer.Option(
        "--cache/--no-cache", help="Cache reference features (~/.cache/sagan/fidelity or $SAGAN_FIDELITY_CACHE)"
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout")]


def chosen_metrics(fid: bool, isc: bool, kid: bool, gate_metrics: frozenset[str] = frozenset()) -> tuple[str, ...]:
    """The metrics the flags ask for, in registry order; no flag means all of them."""
    chosen = {name for name, wanted in (("fid", fid), ("isc", isc), ("kid", kid)) if wanted} | gate_metrics
    return tuple(name for name in METRIC_REGISTRY if name in chosen) if chosen else tuple(METRIC_REGISTRY)
