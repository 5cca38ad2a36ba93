"""Plot outputs: DVC plot data (CSV) and matplotlib PNGs, both written atomically.

Figures are built with matplotlib's object API (`Figure`, rendered by Agg), so no GUI backend or
pyplot global state is involved and stages can run headless.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from pathlib import Path

from matplotlib.figure import Figure

from pipeline.core.atomic import atomic_path


def write_csv(target: str | Path, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    """A CSV with a header row (the shape `dvc plots` reads), written atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    with atomic_path(target) as tmp:
        tmp.write_text(buf.getvalue())


def labelled_rows_figure(image, tile: int, labels: Sequence[str] | None, gap: int, extra_width: float = 0) -> Figure:
    """A mosaic of image rows (`core.images.tile_rows`: rows of `tile`-pixel tiles, `gap` pixels around each)
    at 50 pixels per inch, each row named on its left by `labels` (None: unnamed), without axes."""
    fig = Figure(figsize=(image.shape[1] / 50 + extra_width, image.shape[0] / 50))
    ax = fig.add_subplot()
    ax.imshow(image, interpolation="nearest")
    ax.set_xticks([])
    step = tile + gap
    ax.set_yticks([gap + r * step + step / 2 for r in range(len(labels))] if labels else [], labels or [])
    for side in ax.spines.values():
        side.set_visible(False)
    return fig


def save_png(fig: Figure, target: str | Path, dpi: int = 120) -> None:
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
