"""Matplotlib figures rendered off-screen to PNG bytes, with their metadata: shared by curves and attention maps.

matplotlib is imported only inside these functions (it takes ~0.5 s), so `sagan --help` and
`sagan sample` never pay for it. Figures are built with `matplotlib.figure.Figure` and the Agg
canvas directly: no pyplot, no global figure registry, no display needed.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Ten colours that stay apart from each other and from the heat maps (tab10 without its grey).
QUERY_COLOURS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#bcbd22",
    "#17becf",
    "#7f7f7f",
)


def new_figure(width: float, height: float) -> Figure:
    """An off-screen figure of width x height inches, drawn by the Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def figure_png(figure: Figure, metadata: dict[str, str]) -> bytes:
    """The figure as PNG bytes; each metadata key becomes a PNG text chunk (`Image.open(p).text`)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": "sagan", **metadata})
    return buffer.getvalue()
