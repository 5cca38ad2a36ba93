"""Read and validate tokens.h5 (the codebook stage's output) for the GPT stages.

Contract: `train/tokens` uint16 (N, H*W) raster order, `train/labels` uint8 (N,), same under
`test/`; attrs `k`, `grid_h`, `grid_w`, `n_classes`, `classes`, `encoder`, `feature_dim`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from pipeline.errors import PipelineError

REQUIRED_ATTRS = ("k", "grid_h", "grid_w", "n_classes", "classes", "encoder", "feature_dim")
FIX = "re-run the codebook stage (dvc repro codebook)"


@dataclass(frozen=True)
class TokenMeta:
    k: int
    grid_h: int
    grid_w: int
    n_classes: int
    classes: tuple[str, ...]
    encoder: str
    feature_dim: int

    @property
    def seq_len(self) -> int:
        return self.grid_h * self.grid_w


@dataclass(frozen=True)
class TokenSplit:
    tokens: torch.Tensor  # int64 (N, H*W)
    labels: torch.Tensor  # int64 (N,)


def _open(path: Path) -> h5py.File:
    if not path.is_file():
        raise PipelineError(f"{path}: token file not found; {FIX}")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise PipelineError(f"{path}: not a readable HDF5 file ({e}); {FIX}") from None


def read_meta(path: str | Path) -> TokenMeta:
    path = Path(path)
    with _open(path) as f:
        missing = [a for a in REQUIRED_ATTRS if a not in f.attrs]
        if missing:
            raise PipelineError(f"{path}: attrs {missing} missing; {FIX}")
        a = f.attrs
        classes = tuple(c.decode() if isinstance(c, bytes) else str(c) for c in np.atleast_1d(a["classes"]))
        meta = TokenMeta(
            int(a["k"]), int(a["grid_h"]), int(a["grid_w"]), int(a["n_classes"]), classes, str(a["encoder"]),
            int(a["feature_dim"]),
        )
    if min(meta.k, meta.grid_h, meta.grid_w, meta.n_classes) < 1:
        raise PipelineError(f"{path}: attrs k/grid_h/grid_w/n_classes must be >= 1, got {meta}; {FIX}")
    return meta


def read_split(path: str | Path, split: str, meta: TokenMeta | None = None) -> TokenSplit:
    """Load one split fully (50,000 x 64 tokens is 25 MB as int64) and check it against the attrs."""
    path = Path(path)
    meta = meta or read_meta(path)
    with _open(path) as f:
        if f"{split}/tokens" not in f or f"{split}/labels" not in f:
            raise PipelineError(f"{path}: datasets {split}/tokens and {split}/labels required; {FIX}")
        tokens, labels = f[f"{split}/tokens"][()], f[f"{split}/labels"][()]
    where = f"{path}:{split}"
    if tokens.dtype != np.uint16 or tokens.ndim != 2 or tokens.shape[1] != meta.seq_len:
        raise PipelineError(
            f"{where}/tokens: expected uint16 (N, {meta.seq_len}) for grid {meta.grid_h}x{meta.grid_w}, "
            f"got {tokens.dtype} {tokens.shape}; {FIX}"
        )
    if labels.shape != (len(tokens),):
        raise PipelineError(f"{where}/labels: shape {labels.shape} does not match {len(tokens)} token rows; {FIX}")
    if len(tokens) == 0:
        raise PipelineError(f"{where}: no sequences; {FIX}")
    if tokens.max() >= meta.k:
        raise PipelineError(f"{where}/tokens: code {int(tokens.max())} >= k={meta.k}; {FIX}")
    if labels.max() >= meta.n_classes:
        raise PipelineError(f"{where}/labels: label {int(labels.max())} >= n_classes={meta.n_classes}; {FIX}")
    return TokenSplit(torch.from_numpy(tokens.astype(np.int64)), torch.from_numpy(labels.astype(np.int64)))


def check_aligned(split: TokenSplit, images: np.ndarray, labels: np.ndarray, tokens_path, raw_path, what: str) -> None:
    """The token grids of `split` must be the raw images (`images`, `labels`) in the same order."""
    if len(images) != len(split.tokens) or not np.array_equal(labels, split.labels.numpy()):
        raise PipelineError(
            f"{tokens_path} {what}: {len(split.tokens)} token grids do not line up with the {len(images)} images of "
            f"{raw_path} (counts or labels differ); re-run extract and codebook on this raw file"
        )


def check_compatible(cfg, meta: TokenMeta, model_source: str, tokens_source: str) -> None:
    """A model (GPTConfig) must share the token file's vocabulary and grid."""
    want = {"k": meta.k, "grid_h": meta.grid_h, "grid_w": meta.grid_w, "n_classes": meta.n_classes}
    got = {key: getattr(cfg, key) for key in want}
    if got != want:
        diff = ", ".join(f"{k}: model {got[k]} vs tokens {want[k]}" for k in want if got[k] != want[k])
        raise PipelineError(
            f"{model_source} does not match {tokens_source} ({diff}); the tokens changed since the model "
            "was trained: re-run the train stage (dvc repro train)"
        )
