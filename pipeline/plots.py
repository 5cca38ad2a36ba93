"""Plot outputs: DVC plot data (CSV) and matplotlib PNGs, both written atomically.

Figures are built with matplotlib's object API (`Figure`, rendered by Agg), so no GUI backend or
pyplot global state is involved and stages can run headless.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from matplotlib.figure import Figure

from pipeline.atomic import atomic_path


def write_csv(target: str | Path, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    """A CSV with a header row (the shape `dvc plots` reads), written atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    with atomic_path(target) as tmp:
        tmp.write_text(buf.getvalue())


def save_png(fig: Figure, target: str | Path, dpi: int = 120) -> None:
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")


def rank_figure(
    values: np.ndarray, title: str, xlabel: str, ylabel: str, log_y: bool = True, reference: str | None = None
) -> Figure:
    """Values sorted descending against their rank, e.g. how often each code is used.

    `reference` labels a dashed line at the mean value (e.g. "uniform usage").
    """
    values = np.sort(np.asarray(values))[::-1]
    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot()
    shown = values[values > 0] if log_y else values  # zeros (e.g. dead codes) have no place on a log axis
    ax.plot(np.arange(len(shown)), shown, lw=1.2)
    ax.set_xlim(0, max(len(values) - 1, 1))
    if reference:
        ax.axhline(values.mean(), color="grey", ls="--", lw=1, label=reference)
        ax.legend()
    if log_y:
        ax.set_yscale("log")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(True, alpha=0.3)
    return fig
