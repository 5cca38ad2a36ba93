"""DVC's experiments as records to compare: what `dvc exp show` holds, read through `dvc.api.exp_show`.

An `Experiment` is one row of `dvc exp show` that finished (the workspace, a commit or a `dvc exp run`):
its name, its revision, its params as dotted keys (`train.n_layer`) and its metrics by their names in the
metrics files (`sample_fid`; those files hold numbers only, under names unique across stages: see
`core/results.py`). `read_file` reads an output of an experiment from the DVC cache (a curve, the samples).
The readable comparison (`compare.py`) and the study runner (`studies/study.py`) are built on these.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.results import is_number

# How the numbers people compare print (compare.py, the study tables); any other metric: 4 significant digits.
FORMATS = {
    "val_bits_per_image": "{:.1f}",
    "test_bits_per_image": "{:.1f}",
    "sample_fid": "{:.2f}",
    "floor_fid": "{:.2f}",
    "sample_kid": "{:.4f}",
    "sample_precision": "{:.3f}",
    "sample_recall": "{:.3f}",
    "class_agreement": "{:.3f}",
    "rfid": "{:.2f}",
    "val_psnr_db": "{:.2f}",
    "test_psnr_db": "{:.2f}",
    "decoder_minutes": "{:.1f}",
    "train_minutes": "{:.1f}",
}


def formatted(metric: str, value: float) -> str:
    return FORMATS.get(metric, "{:.4g}").format(value)


@dataclass(frozen=True)
class Experiment:
    name: str  # the experiment's name, or "workspace" / the branch for rows that are not experiments
    rev: str  # the git revision DVC stored it under ("workspace" for the working tree)
    params: dict[str, object]  # "section.key" -> value, from params.yaml
    metrics: dict[str, float]  # metric name -> value, from the metrics files

    def differs(self, other: Experiment) -> bool:
        return self.params != other.params or self.metrics != other.metrics


ROW_FIELDS = {"Experiment", "rev", "typ", "Created", "parent", "State", "Executor"}  # not a param or metric


def _metrics(row: dict, params: dict) -> dict[str, float]:
    """The metrics of dvc.api.exp_show's flat row: its numbers that are not params. DVC names a column `key`, or
    `file:key` when another file has the same key; a param's key is dotted (`train.n_layer`), as in `params`."""
    out = {}
    for column, value in row.items():
        key = column.rpartition(":")[2]
        if column not in ROW_FIELDS and key not in params and is_number(value):
            out[key] = float(value)
    return out


def _dotted_params(repo: Path | str, rev: str) -> dict[str, object]:
    """params.yaml at `rev` as dotted keys (dvc.api's rows name a param by its last key only)."""
    import dvc.api

    return dict(_flatten(dvc.api.params_show(repo=str(repo), rev=None if rev == "workspace" else rev)))


def _flatten(d: dict, prefix: str = ""):
    for key, value in d.items():
        if isinstance(value, dict) and value:
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def read_experiments(repo: Path | str = ".", *, all_commits: bool = False) -> list[Experiment]:
    """The finished rows of `dvc exp show` in `repo` (HEAD and its experiments; all_commits: every commit's).
    Queued, running and failed experiments have no results yet and are left out; the workspace is left out
    when it holds the same params and metrics as a run that is shown."""
    import dvc.api

    rows = dvc.api.exp_show(repo=str(repo), num=-1 if all_commits else 1)
    out: list[Experiment] = []
    for row in rows:
        if row.get("State") not in (None, "", "Success") and row.get("typ") not in ("baseline", "workspace"):
            continue
        rev = row.get("rev") or "workspace"
        params = _dotted_params(repo, rev)
        metrics = _metrics(row, params)
        if metrics:
            out.append(Experiment(row.get("Experiment") or rev, rev, params, metrics))
    if out and out[0].rev == "workspace" and any(not out[0].differs(other) for other in out[1:]):
        out = out[1:]  # the results of a run shown below (dvc exp run leaves them in the workspace)
    return out


def read_file(repo: Path | str, path: str, rev: str) -> bytes:
    """An output file of the experiment at `rev` (a file of a directory output too), from the DVC cache."""
    import dvc.api

    with dvc.api.open(path, repo=str(repo), rev=None if rev == "workspace" else rev, mode="rb") as f:
        return f.read()


def read_csv_rows(repo: Path | str, path: str, rev: str) -> list[dict[str, str]]:
    import csv

    return list(csv.DictReader(io.StringIO(read_file(repo, path, rev).decode())))
