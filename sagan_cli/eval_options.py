"""What `sagan evaluate` and `sagan compare` are asked for, with the defaults their options and the API share.

Light on purpose (no torch-fidelity import): the CLI reads these defaults to build its options.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import check_seed
from .errors import UsageError
from .metric_registry import METRIC_REGISTRY
from .rundir import RUNS_ROOT
from .sampling import check_truncation


@dataclass(frozen=True)
class EvalOptions:
    """What `sagan evaluate` and `sagan compare` were asked for."""

    metrics: tuple[str, ...] = tuple(METRIC_REGISTRY)  # all of them
    num_samples: int = 10_000
    seed: int = 0  # of the latents (as `sagan sample --seed`) and of IS/KID subsets
    truncation: float = 1.0
    batch_size: int = 500  # images per generator / extractor pass
    use_ema: bool = True
    extractor: str = "auto"
    inception_weights: Path | None = None
    ref: str | None = None
    device: str = "auto"
    cache: bool = True  # keep reference features across runs
    runs: Path = RUNS_ROOT  # where `evaluate` without CKPT looks for the latest run
    grid_n: int = 8  # images per model in `compare -o`

    @property
    def needs_reference(self) -> bool:
        """FID and KID compare with a reference set; IS alone does not."""
        return any(METRIC_REGISTRY[name].needs_reference for name in self.metrics)

    def validate(self) -> EvalOptions:
        """Reject impossible values with a message naming the flag."""
        if self.num_samples < 2:
            raise UsageError(f"--num-samples must be at least 2, got {self.num_samples}")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {self.batch_size}")
        check_seed(self.seed)
        check_truncation(self.truncation)
        if self.ref is not None and not self.needs_reference:
            raise UsageError(
                f"--ref {self.ref} is only used by FID and KID, and only IS was asked for; drop --ref or add --fid / --kid"
            )
        return self


EVAL_DEFAULTS = EvalOptions()
