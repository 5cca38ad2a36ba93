"""One row of samples per run, to compare studies by eye: PNG with the run names on the left.

    python studies/sample_rows.py RUN.npz|samples.h5 [...] --png docs/study_samples.png [--per-class 1]

Each run is read as studies/score_samples.py reads it; a row shows the first `--per-class` samples of every
class, in class order (unconditional runs: the first samples), decoded by this checkout's decoder
(data/models/decoder). Every run's samples come from the same sample.seed, so rows differ by the model only.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from pipeline.core.images import tile_rows
from pipeline.core.plots import save_png
from pipeline.gpt.sampling import GAP, grid_rows, read_token_grids, sample_set_name
from pipeline.paths import DECODER_DIR
from pipeline.tokenizer.decoding import load_token_decoder

N_CLASSES = 10


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--png", type=Path, required=True)
    ap.add_argument("--per-class", type=int, default=1)
    args = ap.parse_args()
    from matplotlib.figure import Figure

    decoder = load_token_decoder(DECODER_DIR)
    rows, columns = [], N_CLASSES * args.per_class
    for run in args.runs:
        tokens, labels = read_token_grids(run)
        if labels is None:  # unconditional: the first samples
            picked = np.arange(min(len(tokens), columns))
        else:
            picked = np.concatenate(grid_rows(labels, True, N_CLASSES, args.per_class))
        rows.append(decoder.decode(tokens[picked]))
    image = tile_rows(rows, columns, GAP)
    fig = Figure(figsize=(image.shape[1] / 50 + 2, image.shape[0] / 50))
    ax = fig.add_subplot()
    ax.imshow(image, interpolation="nearest")
    tile = rows[0].shape[1] + GAP
    ax.set_yticks([GAP + r * tile + tile / 2 for r in range(len(rows))], [sample_set_name(run) for run in args.runs])
    ax.set_xticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    save_png(fig, args.png)
    print(f"wrote {args.png}: {len(rows)} rows of {columns} samples")


if __name__ == "__main__":
    main()
