"""Residual quantisation: several codes per grid cell (codebook.codes_per_cell = D), each quantising what
the codes before it left of the cell's feature vector, so the cell is the sum of D centroids.

Level 1 is the codebook stage's k-means (in its search space: layer weights, PCA). Level l > 1 is another
k-means with the same k, fitted on the sampled cells' residuals after levels 1..l-1, in the feature space:
a residual has no mean to centre and its variance is spread differently from the features', so the
first level's weights and PCA do not describe it.

One token vocabulary of D * k ids: code c of level l is token l * k + c, so a token says its level and the
decoder needs one lookup table, the levels' centroids stacked (D * k, C). A cell's D tokens are adjacent
in the sequence (cell-major raster order): the GPT predicts a cell's finer code right after its coarse one.
"""

from __future__ import annotations

import numpy as np

from pipeline.tokenizer import kmeans as cb


def fit_levels(
    sample: np.ndarray,
    first: np.ndarray,
    space: cb.SearchSpace,
    codes_per_cell: int,
    k: int,
    niter: int,
    seed: int,
    max_points_per_centroid: int,
    gpu: bool,
    init: str,
) -> list[np.ndarray]:
    """[first, level 2, ...]: the codebooks (k, C) of the D levels, each after the first fitted by FAISS
    k-means (with the first's settings) on the `sample` cells' residuals after the levels before it."""
    levels = [first]
    if codes_per_cell == 1:
        return levels
    residual = sample - first[cb.nearest(space(sample), space(first), gpu)]
    for _ in range(1, codes_per_cell):
        fit = cb.fit_kmeans(residual, k, niter, seed, max_points_per_centroid, gpu, init)
        levels.append(fit.centroids)
        residual = residual - fit.centroids[cb.nearest(residual, fit.centroids, gpu)]
    return levels


def assign_levels(
    features, levels: list[np.ndarray], space: cb.SearchSpace, gpu: bool = False, desc: str = ""
) -> tuple[cb.Assignment, cb.Assignment]:
    """Every cell of an (N, H, W, C) array or h5 dataset coded by all levels -> (the cells' D codes as
    tokens (N, H*W*D) with the errors of the sum of their centroids, the first level's own Assignment)."""
    parts = [cb.assign(features, levels[0], gpu, desc, space)]
    for level, centroids in enumerate(levels[1:], start=1):
        previous = [(c, a.tokens) for c, a in zip(levels, parts)]
        parts.append(cb.assign(features, centroids, gpu, f"{desc} code {level + 1}" if desc else "", previous=previous))
    if len(parts) == 1:
        return parts[0], parts[0]
    tokens = interleave([a.tokens for a in parts], len(levels[0]))
    last = parts[-1]
    return cb.Assignment(tokens, last.channel_sse, last.channel_sst, sum(a.seconds for a in parts)), parts[0]


def interleave(level_tokens: list[np.ndarray], k: int) -> np.ndarray:
    """D arrays of level codes (N, H*W) in 0..k-1 -> uint16 tokens (N, H*W*D): cell by cell, code l + l * k."""
    stacked = np.stack([t.astype(np.int64) + level * k for level, t in enumerate(level_tokens)], axis=-1)
    return stacked.reshape(len(stacked), -1).astype(np.uint16)


def stacked(levels: list[np.ndarray]) -> np.ndarray:
    """The token vocabulary's centroids, float32 (D * k, C): token l * k + c is level l's centroid c."""
    return np.ascontiguousarray(np.concatenate(levels), dtype=np.float32)
