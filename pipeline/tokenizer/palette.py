"""The classic demo's pixel-palette decoder: token i of a grid is the colour of pixel i."""

from __future__ import annotations

import numpy as np


def palette_decode(
    tokens: np.ndarray,
    centroids: np.ndarray,
    grid: int,
    mean: np.ndarray | None = None,
    std: np.ndarray | None = None,
) -> np.ndarray:
    """Pixel-palette decoder: tokens (N, grid*grid) -> uint8 RGB images (N, grid, grid, 3).

    For extract.encoder = pixels the centroids are colours in [0, 1] (standardised ones when the
    features were: pass stats/mean and stats/std from features.h5 to undo it).
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or tokens.shape[1] != grid * grid:
        raise ValueError(f"tokens must be (N, {grid * grid}) for grid {grid}, got {tokens.shape}")
    if centroids.ndim != 2 or centroids.shape[1] != 3:
        raise ValueError(f"palette decoding needs RGB centroids (K, 3), got {centroids.shape}")
    colours = centroids.astype(np.float32)
    if std is not None:
        colours = colours * np.asarray(std, dtype=np.float32)
    if mean is not None:
        colours = colours + np.asarray(mean, dtype=np.float32)
    palette = np.clip(np.rint(colours * 255.0), 0, 255).astype(np.uint8)
    return palette[tokens].reshape(len(tokens), grid, grid, 3)
