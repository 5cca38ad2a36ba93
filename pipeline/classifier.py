"""Batched CIFAR-10 classification of uint8 images with a model that takes float RGB in [0, 1]."""

from __future__ import annotations

import numpy as np
import torch


def to_float_nchw(images_uint8_nhwc: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW in [0, 1] on `device` (the transfer stays uint8: 4x fewer bytes)."""
    x = torch.as_tensor(images_uint8_nhwc).to(device, non_blocking=True)
    return x.permute(0, 3, 1, 2).float().div_(255.0)


@torch.inference_mode()
def classify(model: torch.nn.Module, images_uint8_nhwc: np.ndarray, batch_size: int, device: str | torch.device) -> np.ndarray:
    """Predicted labels (int64, (N,)) of `model` on uint8 (N, H, W, 3) images, in batches."""
    device = torch.device(device)
    model = model.to(device).eval()
    preds = []
    for start in range(0, len(images_uint8_nhwc), batch_size):
        x = to_float_nchw(images_uint8_nhwc[start : start + batch_size], device)
        preds.append(model(x).argmax(1).cpu())
    return torch.cat(preds).numpy() if preds else np.zeros(0, dtype=np.int64)
