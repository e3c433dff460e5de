"""The metrics sagan reports, one registry entry each: name, torch-fidelity key, display, CI gate.

A new metric is one `register_metric(MetricSpec(...))` call here (plus its flag in the CLI's options
and, when torch-fidelity does not compute it, its computation in metrics.py). Everything else (the
torch-fidelity call, the tables, --json, the gates) reads this registry. No torch-fidelity import:
the CLI reads the registry to build its help without paying for it (tests check the keys match).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MetricSpec:
    """One metric: how it is asked for, where its value is in the results, how it is shown and gated."""

    name: str  # torch-fidelity's flag name and ours (--fid)
    title: str  # column title
    description: str  # flag help
    key: str  # torch-fidelity's result key of the value (torch_fidelity.KEY_METRIC_*)
    std_key: str | None  # key of its spread over subsets, if any
    fmt: str  # how the value is printed
    needs_reference: bool  # compares with a reference set (FID, KID) or not (IS)
    gate_flag: str  # CLI flag of its quality gate, e.g. --max-fid
    lower_is_better: bool  # the gate is an upper bound (FID, KID) or a lower one (IS)


METRIC_REGISTRY: dict[str, MetricSpec] = {}


def register_metric(spec: MetricSpec) -> MetricSpec:
    """Add a metric; names are unique. Registration order is display order."""
    if spec.name in METRIC_REGISTRY:
        raise ValueError(f"metric {spec.name!r} is already registered")
    METRIC_REGISTRY[spec.name] = spec
    return spec


def metric_for_key(key: str) -> MetricSpec:
    """The metric whose value is stored under `key`."""
    return next(spec for spec in METRIC_REGISTRY.values() if spec.key == key)


register_metric(
    MetricSpec(
        name="fid",
        title="FID",
        description="Frechet distance between sample and reference features",
        key="frechet_inception_distance",
        std_key=None,
        fmt="{:.3f}",
        needs_reference=True,
        gate_flag="--max-fid",
        lower_is_better=True,
    )
)
register_metric(
    MetricSpec(
        name="isc",
        title="IS",
        description="Inception score of the samples (needs no reference)",
        key="inception_score_mean",
        std_key="inception_score_std",
        fmt="{:.3f}",
        needs_reference=False,
        gate_flag="--min-isc",
        lower_is_better=False,
    )
)
register_metric(
    MetricSpec(
        name="kid",
        title="KID",
        description="Kernel distance between sample and reference features (no metric flag: all of them)",
        key="kernel_inception_distance_mean",
        std_key="kernel_inception_distance_std",
        fmt="{:.5f}",
        needs_reference=True,
        gate_flag="--max-kid",
        lower_is_better=True,
    )
)
