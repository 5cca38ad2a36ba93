"""What a stage reports, in two files: the numbers DVC compares, and the words that say how they were made.

metrics/<stage>.json holds numbers only, flat, under names unique across the stages (`val_bits_per_image`,
`sample_fid`, `rfid`, `train_minutes`): DVC declares these files as metrics, so `dvc exp show` and
`dvc metrics diff` make one short column of each. info/<stage>.json holds the rest: device, precision, the
Inception protocol, image counts and the note on them, the evaluator's name, which DVC would print as columns
thousands of characters wide. Durations are minutes (`<what>_minutes`), everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core.atomic import write_json


def is_number(value: object) -> bool:
    """A metric's value: an int or a finite float (a bool is a setting, not a measurement)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Results:
    metrics: dict[str, int | float]  # metrics/<stage>.json: numbers only
    info: dict = field(default_factory=dict)  # info/<stage>.json: how they were made

    def __post_init__(self) -> None:
        wrong = {k: v for k, v in self.metrics.items() if not is_number(v)}
        if wrong:  # a programming error: the words belong in `info`
            raise TypeError(f"metrics must be finite numbers; move these to info: {wrong}")


def minutes(seconds: float) -> float:
    return round(seconds / 60, 2)


def write_results(results: Results, paths: tuple[Path, Path]) -> tuple[Path, Path]:
    """Write the metrics and the info file (`pipeline.paths.results_paths`) atomically; returns `paths`."""
    write_json(paths[0], results.metrics)
    write_json(paths[1], results.info)
    return paths
