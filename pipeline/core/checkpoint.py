"""Resumable training state: one file per run, replaced atomically after every epoch.

A checkpoint is reused only by the run that wrote it: the same params, the same input files AND the
same code (the hash of every source file the stage runs, `hashing.code_sha256`). When any of them
changed, the stage says so and starts fresh; a fixed bug never hides behind an old checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch

from pipeline.core.atomic import atomic_path, remove_stale_temps

log = logging.getLogger(__name__)

NAME = "last.pt"


def run_fingerprint(params: dict, inputs: dict[str, str], code: str) -> str:
    """sha256 identifying a training run: its params, its input files' hashes and its code's hash."""
    blob = json.dumps({"params": params, "inputs": inputs, "code": code}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class Checkpoint:
    def __init__(self, directory: str | Path, fingerprint: str, what: str):
        self.path, self.fingerprint, self.what = Path(directory) / NAME, fingerprint, what

    def save(self, state: dict) -> None:
        with atomic_path(self.path) as tmp:
            torch.save({"fingerprint": self.fingerprint, **state}, tmp)

    def load(self) -> dict | None:
        """The saved state if this exact run (params, inputs, code) wrote it, else None.

        Opening the folder removes the half-written checkpoints of killed runs first: a run resumed at
        its last epoch writes no new checkpoint, and DVC caches what the (persist) folder holds."""
        for stale in remove_stale_temps(self.path.parent):
            log.info("%s: removed %s, left by a killed run", self.what, stale)
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - a damaged checkpoint must not block a fresh run
            log.warning("%s: ignoring unreadable checkpoint %s (%s); starting fresh", self.what, self.path, e)
            return None
        if not isinstance(state, dict) or state.get("fingerprint") != self.fingerprint:
            log.warning("%s: checkpoint %s is from other params, inputs or code; starting fresh", self.what, self.path)
            return None
        log.info("%s: resuming from %s after epoch %d", self.what, self.path, state["epoch"])
        return state
