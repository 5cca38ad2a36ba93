"""DVC's record of what made each output (dvc.lock), checked before `make repro` hands over to DVC.

DVC rewrites dvc.lock in place, not through a temporary file, so a `dvc repro` killed at that moment leaves
it empty or cut short, and every later `dvc repro` stops with "'./dvc.lock' validation failed" (DVC 3.67.1).
The file holds nothing that cannot be recovered: DVC's run cache still knows every stage it ran, so moving
the damaged file aside lets the next `dvc repro` restore up-to-date outputs instead of recomputing them.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml


def lock_problem(path: Path) -> str | None:
    """Why `path` (a dvc.lock) cannot be read by DVC, or None when it is absent or well-formed."""
    if not path.is_file():
        return None
    text = path.read_text(errors="replace")
    if not text.strip():
        return "it is empty"
    try:
        lock = yaml.safe_load(text)
    except yaml.YAMLError as e:
        return f"it is not valid YAML ({str(e).splitlines()[0]})"
    if not isinstance(lock, dict) or "schema" not in lock or not isinstance(lock.get("stages"), dict):
        return "it lacks DVC's `schema` and `stages` keys"
    return None


def set_aside_damaged_lock(path: Path) -> str | None:
    """Move a damaged dvc.lock to dvc.lock.broken (replacing an older one); return what was done, or None."""
    problem = lock_problem(path)
    if problem is None:
        return None
    aside = path.with_name(path.name + ".broken")
    os.replace(path, aside)
    return (
        f"{path}: {problem}, as a DVC killed while rewriting it leaves it; moved it to {aside}. "
        "DVC restores the outputs of stages it already ran from its run cache (the training stages resume "
        "from their checkpoints)."
    )
