"""The pieces every aha report draws with: a figure in the house style, a series as a line, a figure as a data:
URI (the page needs no files beside it), and a value or text made safe and short for HTML."""

from __future__ import annotations

import base64
import io
import math
from html import escape

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

MAX_TEXT = 3000  # characters of a prompt/completion shown before cutting it

Series = tuple[list[int], list[float]]


def figure(width: float = 6.4, height: float = 3.4, nrows: int = 1, ncols: int = 1):
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat:
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
        ax.spines[["top", "right"]].set_visible(False)
    return fig, axes


def to_png(fig) -> str:
    """The figure as a data: URI, so the page needs no files next to it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def plot_line(ax, series: Series, label: str | None = None, **kw) -> None:
    steps, values = series
    # a marker keeps sparse series (eval every N steps, a 1-step run) visible
    marker = "o" if len(steps) <= 30 else None
    ax.plot(steps, values, label=label, marker=marker, markersize=3, linewidth=1.6, **kw)


def fmt(value) -> str:
    if value is None:
        return "—"  # a reward function with no opinion on this sample
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return escape(str(value))


def clip(text) -> str:
    if isinstance(text, list):  # chat messages: one "role: content" line each
        text = "\n".join(
            f"{m.get('role', '?')}: {m.get('content', '')}" if isinstance(m, dict) else str(m) for m in text
        )
    text = "" if text is None else str(text)
    return escape(text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + f"… [{len(text) - MAX_TEXT} more chars]")
