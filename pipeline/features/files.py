"""features.h5, the extract stage's output: its contract and its one reader.

Layout:
    train/features  float16 (N, grid, grid, C), chunked    train/labels uint8 (N,)
    val/features, val/labels; test/features, test/labels   the same, for the raw file's other splits
    train_flip/features, train_flip/labels                 optional (extract.flip): the train images
                                                           mirrored left-right, in train's order
    stats/mean, stats/std  float32 (C,)                    only when standardized (fitted on train)
    attrs: encoder, layers, layer_channels (each layer's share of C, in the order of layers), grid,
           input_size, pool, standardized, weights_sha256, normalization, and how the numbers were
           computed (precision, device type, conv-bn fusion, channels, torch version)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from pipeline.core.artifacts import open_h5, rerun
from pipeline.core.errors import PipelineError

SPLITS = ("train", "val", "test")
FLIP = "train_flip"  # optional: the mirrored train images (augmentation)
FEATURE_DTYPES = (np.float16, np.float32)
REQUIRED_ATTRS = ("encoder", "layers", "grid", "input_size", "pool", "standardized")


@dataclass(frozen=True)
class FeatureLayout:
    encoder: str
    grid_h: int
    grid_w: int
    dim: int
    counts: dict[str, int]  # images per split


def present_splits(f: h5py.File) -> tuple[str, ...]:
    """The splits an open features.h5 holds: SPLITS, plus FLIP when extract.flip wrote it."""
    return SPLITS + ((FLIP,) if FLIP in f else ())


def check_features(f: h5py.File, path: str | Path) -> FeatureLayout:
    """Validate an open features.h5 against the contract; a mismatch names the file and the fix."""
    fix = rerun("extract")

    def bad(problem: str) -> PipelineError:
        return PipelineError(f"{path}: {problem}; {fix}")

    shapes = {}
    for split in present_splits(f):
        for name in ("features", "labels"):
            if f"{split}/{name}" not in f:
                raise bad(f"missing dataset {split}/{name} (expected features and labels of {', '.join(SPLITS)})")
        feats, labels = f[f"{split}/features"], f[f"{split}/labels"]
        if feats.ndim != 4 or feats.shape[0] == 0:
            raise bad(f"{split}/features has shape {feats.shape}, expected a non-empty (N, H, W, C) grid")
        if feats.dtype not in FEATURE_DTYPES:
            raise bad(f"{split}/features has dtype {feats.dtype}, expected float16 (or float32)")
        if labels.shape != feats.shape[:1] or labels.dtype != np.uint8:
            raise bad(f"{split}/labels is {labels.dtype} {labels.shape}, expected uint8 ({feats.shape[0]},)")
        shapes[split] = feats.shape
    for split, shape in shapes.items():
        if shape[1:] != shapes["train"][1:]:
            raise bad(f"train features are (H, W, C) = {shapes['train'][1:]} but {split} are {shape[1:]}")
    if FLIP in shapes and shapes[FLIP][0] != shapes["train"][0]:
        raise bad(f"{FLIP} holds {shapes[FLIP][0]} images, train {shapes['train'][0]}; they must pair up")
    _, h, w, c = shapes["train"]
    missing = [a for a in REQUIRED_ATTRS if a not in f.attrs]
    if missing:
        raise bad(f"attributes {missing} missing")
    grid = f.attrs.get("grid")
    if grid is None or not (int(grid) == h == w):
        raise bad(f"attribute grid = {grid} does not match the feature grid {h} x {w}")
    return FeatureLayout(str(f.attrs["encoder"]), h, w, c, {s: n[0] for s, n in shapes.items()})


def layer_slices(f: h5py.File, path: str | Path) -> dict[str, slice]:
    """Each layer's channels in the concatenated feature vector, from the layers and layer_channels attributes."""
    layers = [str(x) for x in np.atleast_1d(f.attrs["layers"])]
    if "layer_channels" not in f.attrs:
        raise PipelineError(f"{path}: no layer_channels attribute (made by an older extract); {rerun('extract')}")
    counts = [int(n) for n in np.atleast_1d(f.attrs["layer_channels"])]
    ends = np.cumsum(counts)
    return {name: slice(int(end - n), int(end)) for name, n, end in zip(layers, counts, ends)}


@dataclass(frozen=True)
class FeatureInfo:
    """What a decoder needs to know of features.h5: how the features were made, and their statistics."""

    layout: FeatureLayout
    attrs: dict
    layers: list[str]
    mean: np.ndarray | None  # stats/mean (C,), None when not standardised
    std: np.ndarray | None


def read_feature_info(path: str | Path) -> FeatureInfo:
    with open_h5(path, "extract", "features") as f:
        layout = check_features(f, path)
        attrs = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in f.attrs.items()}
        mean = std = None
        if attrs["standardized"]:
            if "stats/mean" not in f or "stats/std" not in f:
                raise PipelineError(f"{path}: standardized but no stats/mean, stats/std; {rerun('extract')}")
            mean, std = f["stats/mean"][()].astype(np.float32), f["stats/std"][()].astype(np.float32)
    layers = [str(x) for x in np.atleast_1d(attrs["layers"])]
    return FeatureInfo(layout, attrs, layers, mean, std)
