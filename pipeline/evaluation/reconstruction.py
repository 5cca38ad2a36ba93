"""Pixel fidelity of reconstructions against originals: PSNR and SSIM (no network involved).

All functions take uint8 NHWC arrays (what every stage stores). PSNR is the mean over images of the
per-image PSNR of the images scaled to [0, 1] (data range 1, the protocol of the tokenizer papers the
docs/evaluation.md compares with); identical images give +inf. SSIM is torchmetrics' Gaussian SSIM (11x11,
sigma 1.5) on [0, 1], averaged over images.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.core.errors import PipelineError
from pipeline.core.images import to_float_nchw

METRIC_BATCH = 1000


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape or a.ndim != 4 or a.shape[-1] != 3:
        raise PipelineError(f"image sets must both be (N, H, W, 3) and equal in shape, got {a.shape} and {b.shape}")
    if a.dtype != np.uint8 or b.dtype != np.uint8:
        raise PipelineError(f"images must be uint8, got {a.dtype} and {b.dtype}")


def to_float(images: np.ndarray) -> torch.Tensor:
    return to_float_nchw(np.ascontiguousarray(images), torch.device("cpu"))


def psnr(originals: np.ndarray, reconstructions: np.ndarray) -> float:
    """Mean per-image PSNR in dB (inf when every pair is identical)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio  # slow to import (torchvision): only here

    _check_pair(originals, reconstructions)
    values = []
    for i in range(0, len(originals), METRIC_BATCH):
        a, b = to_float(originals[i : i + METRIC_BATCH]), to_float(reconstructions[i : i + METRIC_BATCH])
        values.append(peak_signal_noise_ratio(b, a, data_range=1.0, reduction="none", dim=(1, 2, 3)).double())
    return float(torch.cat(values).mean())


def ssim(originals: np.ndarray, reconstructions: np.ndarray) -> float:
    """Mean SSIM over images (1.0 for identical images)."""
    from torchmetrics.functional.image import structural_similarity_index_measure  # slow to import: only here

    _check_pair(originals, reconstructions)
    total = 0.0
    for i in range(0, len(originals), METRIC_BATCH):
        a, b = to_float(originals[i : i + METRIC_BATCH]), to_float(reconstructions[i : i + METRIC_BATCH])
        total += float(structural_similarity_index_measure(b, a, data_range=1.0, reduction="sum"))
    return total / len(originals)


def pixel_metrics(originals: np.ndarray, reconstructions: np.ndarray) -> dict[str, float]:
    """PSNR and SSIM in one dict (the metrics files' numbers)."""
    return {"psnr_db": psnr(originals, reconstructions), "ssim": ssim(originals, reconstructions)}
