"""Atomic outputs: write to a temporary sibling, then rename into place.

A stage killed half-way leaves either the previous artifact or nothing, never a half-written file
that DVC would cache. os.replace is atomic on POSIX when source and target share a filesystem, which
a sibling temp path guarantees.

The temporary sibling of `name` is `.<name>.<pid>.tmp`. A process killed with SIGKILL cannot remove
its own, so every atomic write first removes the temporaries in its folder whose process is gone
(`remove_stale_temps`), a training run does the same for its checkpoint folder when it opens it, and
every stage starts by sweeping the pipeline's output folders (stages/__init__.py). `.dvcignore` keeps
DVC from ever hashing or caching one, also while its writer still runs.

DVC's own temporaries (`<prefix>.<22 url-safe characters>.tmp`, dvc_objects' `tmp_fname`, written while it
restores an output from its cache) carry no pid; one left in an output folder is always a killed DVC's,
since DVC writes them only under its repository lock, which a running stage's `dvc repro` holds. The same
sweeps remove them, and `.dvcignore` hides them too.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.core.errors import PipelineError

TEMP_NAME = re.compile(r"^\..+\.(?P<pid>\d+)\.tmp$")  # .<name>.<pid>.tmp (the .dvcignore pattern)
DVC_TEMP_NAME = re.compile(r"^.*\.[A-Za-z0-9_-]{22}\.tmp$")  # dvc_objects.fs.utils.tmp_fname: token_urlsafe(16)


def temp_path(target: Path, pid: int | None = None) -> Path:
    """The temporary sibling that process `pid` (default: this one) writes `target` through."""
    return target.with_name(f".{target.name}.{os.getpid() if pid is None else pid}.tmp")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Remove the temporaries in `folder` of processes that no longer run (a killed stage's, a killed DVC's);
    return them.

    Temporaries of live processes (a concurrent writer) are left alone. Pids are this machine's: run
    one pipeline per checkout, not one per machine on a shared filesystem.
    """
    folder, removed = Path(folder), []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        match = TEMP_NAME.match(entry.name)
        if (
            match
            and int(match["pid"]) != os.getpid()
            and not _alive(int(match["pid"]))
            or (not match and DVC_TEMP_NAME.match(entry.name))
        ):
            _remove(entry)
            removed.append(entry)
    return removed


def remove_stale_temps_under(*roots: str | Path) -> list[Path]:
    """`remove_stale_temps` in every folder under `roots`: what killed stages left anywhere there."""
    removed = []
    for root in roots:
        for folder, subfolders, _ in os.walk(root):
            gone = remove_stale_temps(folder)
            subfolders[:] = [d for d in subfolders if Path(folder, d) not in gone]
            removed += gone
    return removed


def writable_folder(folder: Path) -> Path:
    """Create `folder` if needed; one that cannot be created or written is a PipelineError naming it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except PermissionError as e:
        parent = Path(e.filename or folder).parent
        raise PipelineError(
            f"{folder}: cannot create this folder, {parent} is not writable; make it writable "
            f"(chmod u+w {parent}) or run from a checkout you own"
        ) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PipelineError(
            f"{folder}: folder is not writable; make it writable (chmod u+w {folder}) or run from a checkout you own"
        )
    return folder


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `target`; on success rename it to `target`.

    Works for files and directories. On any exception the temporary path is removed and `target`
    is left untouched. Stale temporaries of killed processes in the same folder are removed first.
    """
    target = Path(target)
    remove_stale_temps(writable_folder(target.parent))
    tmp = temp_path(target)
    _remove(tmp)
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"nothing was written to {tmp} for {target}")
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def write_json(target: str | Path, obj) -> None:
    """Write `obj` as pretty JSON, atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_bytes(target: str | Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
