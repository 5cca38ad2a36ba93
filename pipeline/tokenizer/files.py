"""The codebook stage's outputs, tokens.h5 and codebook.safetensors: their contracts, writers and readers.

tokens.h5: `train/tokens` uint16 (N, H*W*D) raster order, the D codes of a cell adjacent, `train/labels` uint8
(N,), the same under `val/`, `test/` and (with extract.flip) `train_flip/` (the mirrored train images, row for
row); attrs `k` (the token vocabulary), `codes_per_cell` (D; absent: 1), `grid_h`, `grid_w`, `n_classes`,
`classes`, `encoder`, `feature_dim`, `codebook_sha256`. D > 1 is residual quantisation (tokenizer/residual.py).
codebook.safetensors: tensor `centroids` float32 (K, C) in the (standardised) feature space, token i's vector
(a cell is the sum of its D tokens' vectors); metadata `codebook`: a JSON object saying how it was made.

`codebook_sha256` (of the centroids' values, see `centroids_sha256`) is carried by everything made from
a codebook (tokens, decoder, GPT), so artifacts from different codebooks are never silently combined.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from pipeline.core.artifacts import open_h5, read_tensors, rerun
from pipeline.core.atomic import atomic_path
from pipeline.core.errors import PipelineError

REQUIRED_ATTRS = ("k", "grid_h", "grid_w", "n_classes", "classes", "encoder", "feature_dim", "codebook_sha256")
FIX = rerun("codebook")
FLIP = "train_flip"  # the mirrored train images' tokens (features/files.py FLIP)


@dataclass(frozen=True)
class TokenMeta:
    k: int
    grid_h: int
    grid_w: int
    n_classes: int
    classes: tuple[str, ...]
    encoder: str
    feature_dim: int
    codebook_sha256: str
    codes_per_cell: int = 1

    @property
    def row_len(self) -> int:
        """Tokens per grid row: the GPT's grid is grid_h x row_len."""
        return self.grid_w * self.codes_per_cell

    @property
    def seq_len(self) -> int:
        return self.grid_h * self.row_len


@dataclass(frozen=True)
class TokenSplit:
    tokens: torch.Tensor  # int64 (N, H*W)
    labels: torch.Tensor  # int64 (N,)


def read_meta(path: str | Path) -> TokenMeta:
    path = Path(path)
    with open_h5(path, "codebook", "token file") as f:
        missing = [a for a in REQUIRED_ATTRS if a not in f.attrs]
        if missing:
            raise PipelineError(f"{path}: attrs {missing} missing; {FIX}")
        a = f.attrs
        classes = tuple(c.decode() if isinstance(c, bytes) else str(c) for c in np.atleast_1d(a["classes"]))
        meta = TokenMeta(
            int(a["k"]),
            int(a["grid_h"]),
            int(a["grid_w"]),
            int(a["n_classes"]),
            classes,
            str(a["encoder"]),
            int(a["feature_dim"]),
            str(a["codebook_sha256"]),
            int(a.get("codes_per_cell", 1)),
        )
    if min(meta.k, meta.grid_h, meta.grid_w, meta.n_classes, meta.codes_per_cell) < 1:
        raise PipelineError(f"{path}: attrs k/grid_h/grid_w/n_classes/codes_per_cell must be >= 1, got {meta}; {FIX}")
    return meta


def read_split(path: str | Path, split: str, meta: TokenMeta | None = None) -> TokenSplit:
    """Load one split fully (50,000 x 64 tokens is 25 MB as int64) and check it against the attrs."""
    path = Path(path)
    meta = meta or read_meta(path)
    with open_h5(path, "codebook", "token file") as f:
        if f"{split}/tokens" not in f or f"{split}/labels" not in f:
            raise PipelineError(f"{path}: datasets {split}/tokens and {split}/labels required; {FIX}")
        tokens, labels = f[f"{split}/tokens"][()], f[f"{split}/labels"][()]
    where = f"{path}:{split}"
    if tokens.dtype != np.uint16 or tokens.ndim != 2 or tokens.shape[1] != meta.seq_len:
        raise PipelineError(
            f"{where}/tokens: expected uint16 (N, {meta.seq_len}) for grid {meta.grid_h}x{meta.grid_w} x "
            f"{meta.codes_per_cell} code(s) per cell, "
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
    want = {"k": meta.k, "grid_h": meta.grid_h, "grid_w": meta.row_len, "n_classes": meta.n_classes}
    got = {key: getattr(cfg, key) for key in want}
    if got != want:
        diff = ", ".join(f"{k}: model {got[k]} vs tokens {want[k]}" for k in want if got[k] != want[k])
        raise PipelineError(
            f"{model_source} does not match {tokens_source} ({diff}); the tokens changed since the model "
            "was trained: re-run the train stage (dvc repro train)"
        )


def check_same_codebook(made_from: dict[str, str], tokens_source: str, meta: TokenMeta) -> None:
    """Every artifact in `made_from` (source -> its recorded codebook_sha256) must come from the codebook
    of the token file: otherwise its codes mean other things."""
    for source, sha in made_from.items():
        if sha != meta.codebook_sha256:
            raise PipelineError(
                f"{source} was made from codebook {str(sha)[:12]}, but {tokens_source} from codebook "
                f"{meta.codebook_sha256[:12]}: they come from different codebook runs; re-run what depends "
                "on the codebook (dvc repro)"
            )


# ---- codebook.safetensors ----


def centroids_sha256(centroids: np.ndarray) -> str:
    """sha256 of the centroids' float32 values (C order) and shape: the codebook's identity."""
    c = np.ascontiguousarray(centroids, dtype=np.float32)
    return hashlib.sha256(f"{c.shape}".encode() + c.tobytes()).hexdigest()


def write_codebook(path: str | Path, centroids: np.ndarray, metadata: dict) -> None:
    """codebook.safetensors. The metadata is one sorted JSON string: safetensors writes a metadata
    mapping in a per-process hash order, which would change the file's bytes from run to run."""
    from safetensors.torch import save_file

    tensor = torch.from_numpy(np.ascontiguousarray(centroids, dtype=np.float32))
    with atomic_path(path) as tmp:
        save_file({"centroids": tensor}, str(tmp), metadata={"codebook": json.dumps(metadata, sort_keys=True)})
        tmp.chmod(0o644)  # safetensors creates files owner-only


def load_codebook(path: str | Path) -> np.ndarray:
    """The centroids float32 (K, C) of a codebook.safetensors."""
    tensors = read_tensors(path, "codebook", "codebook")
    if "centroids" not in tensors or tensors["centroids"].ndim != 2:
        raise PipelineError(f"{path}: expected a tensor 'centroids' (K, C); {FIX}")
    return tensors["centroids"].numpy()


def write_tokens(path: str | Path, splits: dict[str, tuple[np.ndarray, np.ndarray]], attrs: dict) -> None:
    """tokens.h5: <split>/tokens uint16 (N, H*W*D) raster order and <split>/labels uint8, plus attrs."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for split, (tokens, labels) in splits.items():
            g = f.create_group(split)
            g.create_dataset("tokens", data=tokens.astype(np.uint16), chunks=(min(len(tokens), 1024), tokens.shape[1]))
            g.create_dataset("labels", data=labels.astype(np.uint8))
        for key, value in attrs.items():
            f.attrs[key] = value
