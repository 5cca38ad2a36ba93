"""Compare runs in a normal terminal: the dozen numbers people compare, one column per experiment.

    python compare.py [NAME ...] [--all-commits] [--csv] [--width 80]      (make compare)

Reads what `dvc exp show` holds (HEAD, the workspace when it differs, and every experiment of HEAD; NAME
picks some by name or revision) and prints them transposed, a row per quantity and a column per run, so two
to five runs fit 80 columns (more runs continue in a second block): validation and test NLL in bits/image,
sample FID/KID next to the floor, precision/recall, class agreement, rFID, validation PSNR, the minutes the
decoder and the GPT trained, then the params that differ between the runs. A quantity a run lacks (a stage
it did not run) shows as "-". `--csv` prints every metric and every differing param instead.

DVC's own table of the same numbers is about 200 columns wide (a row per run; without the params):
    dvc exp show --drop '.*' --keep 'Experiment|(val|test)_bits_per_image|(sample|floor)_fid$|sample_kid$|sample_(precision|recall)|class_agreement|rfid|val_psnr_db|(decoder|train)_minutes'
"""

from __future__ import annotations

import argparse
import csv
import json
import sys

from pipeline.core.experiments import Experiment, formatted, read_experiments

# (row label, metric name): the numbers of metrics/*.json that a comparison of two runs turns on
QUANTITIES = [
    ("val NLL bits/img", "val_bits_per_image"),
    ("test NLL bits/img", "test_bits_per_image"),
    ("sample FID", "sample_fid"),
    ("  floor FID", "floor_fid"),
    ("sample KID", "sample_kid"),
    ("precision", "sample_precision"),
    ("recall", "sample_recall"),
    ("class agreement", "class_agreement"),
    ("rFID", "rfid"),
    ("val PSNR dB", "val_psnr_db"),
    ("decoder minutes", "decoder_minutes"),
    ("train minutes", "train_minutes"),
]


def changed_params(runs: list[Experiment]) -> list[str]:
    """The params keys whose values are not the same in every run, in params.yaml's order."""
    keys = list(dict.fromkeys(k for r in runs for k in r.params))
    return [k for k in keys if len({json.dumps(r.params.get(k), sort_keys=True) for r in runs}) > 1]


def shown(value: object) -> str:
    return "-" if value is None else value if isinstance(value, str) else json.dumps(value)


def fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "~"


def fit_name(name: str, width: int) -> str:
    """A run's name in `width` characters: its end, where names of one study differ (tiny-l1-s0, tiny-l2-s0)."""
    return name if len(name) <= width else "~" + name[len(name) - width + 1 :]


def table(runs: list[Experiment], width: int) -> str:
    """The transposed table: labels on the left, a column per run, blocks of as many runs as fit `width`."""
    rows = [
        (label, [formatted(key, r.metrics[key]) if key in r.metrics else "-" for r in runs])
        for label, key in QUANTITIES
    ]
    params = changed_params(runs)
    rows += [(key, [shown(r.params.get(key)) for r in runs]) for key in params]
    label_w = max(len(label) for label, _ in rows) + 1
    col_w = max(len(r.name) for r in runs) + 1  # whole names when the runs fit, else narrower columns
    if label_w + col_w * len(runs) > width:
        col_w = max(12, min(col_w, (width - label_w) // len(runs)))
    per_block = max(1, (width - label_w) // col_w)
    out = []
    for start in range(0, len(runs), per_block):
        block = slice(start, start + per_block)
        head = "".join(fit_name(r.name, col_w - 1).rjust(col_w) for r in runs[block])
        out.append(" " * label_w + head)
        for i, (label, cells) in enumerate(rows):
            if i == len(QUANTITIES) and params:
                out.append("params that differ:")
            out.append(
                fit(label, label_w - 1).ljust(label_w) + "".join(fit(c, col_w - 1).rjust(col_w) for c in cells[block])
            )
        out.append("")
    if not params:
        out.append("(the runs' params are the same)")
    return "\n".join(out).rstrip() + "\n"


def write_csv(runs: list[Experiment], stream) -> None:
    metrics = list(dict.fromkeys(k for r in runs for k in r.metrics))
    params = changed_params(runs)
    w = csv.writer(stream)
    w.writerow(["experiment", "rev", *metrics, *params])
    for r in runs:
        w.writerow([r.name, r.rev, *(r.metrics.get(k, "") for k in metrics), *(shown(r.params.get(k)) for k in params)])


def pick(runs: list[Experiment], names: list[str]) -> list[Experiment]:
    chosen = [r for r in runs if not names or r.name in names or any(r.rev.startswith(n) for n in names)]
    missing = [n for n in names if not any(r.name == n or r.rev.startswith(n) for r in runs)]
    if missing:
        known = ", ".join(r.name for r in runs) or "none"
        sys.exit(f"error: no finished experiment named {', '.join(missing)} (finished: {known}); see dvc exp show")
    return chosen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="experiments to show, by name or revision (default: all)")
    ap.add_argument("--all-commits", action="store_true", help="experiments of every commit, not only HEAD's")
    ap.add_argument("--csv", action="store_true", help="every metric and differing param as CSV")
    ap.add_argument("--width", type=int, default=80, help="terminal columns (default 80)")
    args = ap.parse_args()
    runs = pick(read_experiments(all_commits=args.all_commits), args.names)
    if not runs:
        sys.exit("error: no finished run to compare: run the pipeline (make repro) or an experiment (dvc exp run)")
    if args.csv:
        write_csv(runs, sys.stdout)
    else:
        print(table(runs, args.width), end="")


if __name__ == "__main__":
    main()
