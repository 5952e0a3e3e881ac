"""Drawing a series as a PNG (matplotlib, Agg, no display), for ``plot.png`` on the native face.

``render_png`` is blocking CPU work: callers run it in a thread, never on the event loop. It
uses matplotlib's object API (a ``Figure`` per call, no ``pyplot`` state), as the ``plot``
alert actor does, so calls in different threads do not share a figure.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Line:
    """One line of a plot: its label, times (epoch ms) and numeric values."""

    label: str
    times: Sequence[int]
    values: Sequence[float]


def render_png(
    lines: Sequence[Line],
    *,
    title: str,
    ylabel: str,
    width: float = 8.0,
    height: float = 4.0,
    dpi: int = 100,
) -> bytes:
    """The lines on one time axis (UTC) as PNG bytes; an empty plot says there is no data."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    ax = fig.add_subplot()
    drawn = 0
    for line in lines:
        if not len(line.times):
            continue
        xs = np.array(line.times, dtype="datetime64[ms]")
        ax.plot(xs, np.array(line.values, dtype=np.float64), label=line.label, linewidth=1.2)
        drawn += 1
    if not drawn:
        ax.text(
            0.5, 0.5, "no data in this period", ha="center", va="center", transform=ax.transAxes
        )
    ax.set_title(title)
    ax.set_xlabel("time (UTC)")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if drawn > 1:
        ax.legend()
    fig.autofmt_xdate()
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()
