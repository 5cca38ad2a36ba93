"""Image tensors and image files: uint8 NHWC (how every stage stores images) <-> float NCHW in [0, 1]."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.core.atomic import atomic_path


def to_float_nchw(images_uint8_nhwc: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW in [0, 1] on `device` (the transfer stays uint8: 4x fewer bytes)."""
    x = torch.as_tensor(np.ascontiguousarray(images_uint8_nhwc)).to(device, non_blocking=True)
    return x.permute(0, 3, 1, 2).float().div_(255.0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float (N, 3, H, W) in [0, 1] -> uint8 (N, H, W, 3), rounded."""
    return images.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def tile_rows(rows: list[np.ndarray], columns: int, gap: int = 1) -> np.ndarray:
    """uint8 (H', W', 3) mosaic: one row of tiles per uint8 NHWC array in `rows` (shorter rows padded
    white, longer ones cut to `columns`), `gap` white pixels around every tile."""
    h, w, c = rows[0].shape[1:]
    mosaic = np.full((len(rows) * (h + gap) + gap, columns * (w + gap) + gap, c), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, tile in enumerate(row[:columns]):
            top, left = gap + i * (h + gap), gap + j * (w + gap)
            mosaic[top : top + h, left : left + w] = tile
    return mosaic


def write_png(image_uint8_hwc: np.ndarray, target: str | Path) -> None:
    from PIL import Image

    with atomic_path(target) as tmp:
        Image.fromarray(image_uint8_hwc).save(tmp, format="PNG")
