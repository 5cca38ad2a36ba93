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
from pipeline.core.plots import labelled_rows_figure, save_png
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
    names = [sample_set_name(run) for run in args.runs]
    save_png(labelled_rows_figure(image, rows[0].shape[1], names, GAP, extra_width=2), args.png)
    print(f"wrote {args.png}: {len(rows)} rows of {columns} samples")


if __name__ == "__main__":
    main()
