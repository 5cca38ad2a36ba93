"""The one way a stage opens what another stage wrote, and writes model folders.

Every reader here turns a missing, truncated or corrupt file into a PipelineError that names the
file and the stage to re-run (exit status 2 from the CLI), instead of a library traceback.

A model folder (data/models/gpt, data/models/decoder) holds `config.json` (what the weights are, and
how they were made) and `model.safetensors` (the tensors), written together atomically.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pipeline.core.atomic import atomic_path
from pipeline.core.errors import PipelineError

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


def rerun(stage: str) -> str:
    return f"re-run the {stage} stage (dvc repro {stage})"


def damaged(path: str | Path, stage: str, why: object) -> PipelineError:
    return PipelineError(f"{path}: unreadable, truncated or corrupt ({why}); {rerun(stage)}")


def require_file(path: str | Path, stage: str, what: str = "file") -> Path:
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: {what} not found; run the {stage} stage (dvc repro {stage})")
    return path


@contextmanager
def open_h5(path: str | Path, stage: str, what: str = "file") -> Iterator[h5py.File]:
    """An HDF5 file written by `stage`, open for reading; any HDF5 read error names the file."""
    path = require_file(path, stage, what)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise damaged(path, stage, e) from None
    try:
        with f:
            yield f
    except (OSError, KeyError) as e:  # a chunk that cannot be read, a dataset cut off
        raise damaged(path, stage, e) from None


def read_tensors(path: str | Path, stage: str, what: str = "file") -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file written by `stage`."""
    path = require_file(path, stage, what)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise damaged(path, stage, e) from None


def write_model_folder(folder: str | Path, config: dict, tensors: dict[str, torch.Tensor]) -> None:
    """config.json + model.safetensors as one folder, atomically."""
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / WEIGHTS_FILE))
        (tmp / WEIGHTS_FILE).chmod(0o644)
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def read_model_config(folder: str | Path, stage: str) -> dict:
    path = require_file(Path(folder) / CONFIG_FILE, stage, "model config")
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise damaged(path, stage, e) from None
    if not isinstance(config, dict):
        raise damaged(path, stage, "not a JSON object")
    return config


def read_model_folder(folder: str | Path, stage: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config, tensors) of a model folder written by `stage`."""
    config = read_model_config(folder, stage)
    return config, read_tensors(Path(folder) / WEIGHTS_FILE, stage, "model weights")
