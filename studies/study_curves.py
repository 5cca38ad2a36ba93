"""Collect the validation curves of several train-stage runs into one CSV and one PNG (one line per run).

    python studies/study_curves.py RUN_DIR [RUN_DIR ...] --csv docs/study.csv --png docs/study.png [--title T]

Each RUN_DIR is a project folder the train stage ran in (plots/train_loss.csv, metrics/train.json), e.g.
the runs of a study made on a lent GPU with the train stage and per-run params.yaml; its name labels the
line. For experiments kept by DVC, `dvc plots diff $(dvc exp ls --names-only) --targets plots/train_loss.csv`
draws the same plot.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path

from pipeline.core.atomic import write_bytes
from pipeline.core.plots import save_png


def read_curve(run: Path) -> list[dict]:
    with open(run / "plots" / "train_loss.csv", newline="") as f:
        return list(csv.DictReader(f))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--csv", type=Path, required=True)
    ap.add_argument("--png", type=Path, required=True)
    ap.add_argument("--title", default="validation NLL per epoch")
    args = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["run", "epoch", "train_loss", "val_loss"])
    fig, ax = plt.subplots(figsize=(8, 5))
    for run in args.runs:
        curve = read_curve(run)
        best = json.loads((run / "metrics" / "train.json").read_text())["val_nll"]
        for row in curve:
            writer.writerow(
                [run.name, row["epoch"], f"{float(row['train_loss']):.4f}", f"{float(row['val_loss']):.4f}"]
            )
        epochs = [int(r["epoch"]) for r in curve][1:]  # epoch 1 is off the scale of the rest
        ax.plot(epochs, [float(r["val_loss"]) for r in curve][1:], label=f"{run.name} ({best:.4f})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation NLL (nats/token)")
    ax.set_title(args.title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    write_bytes(args.csv, out.getvalue().encode())
    save_png(fig, args.png)
    print(f"wrote {args.csv} and {args.png} ({len(args.runs)} runs)")


if __name__ == "__main__":
    main()
