"""The evaluator network, chosen here and nowhere else, and batched classification of uint8 images.

The evaluator scores every image set of the pipeline (accuracy on reconstructions, class agreement and
Fréchet distances of samples). It is a pre-trained CIFAR ResNet that takes float RGB in [0, 1].
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.core.images import to_float_nchw
from pipeline.features.encoders.cifar_resnet import CifarResNet, load_cifar_resnet

EVALUATOR_DEPTH = 20
EVALUATOR_NAME = f"resnet{EVALUATOR_DEPTH}"  # in metric names: fid_resnet20, ...


def load_evaluator() -> CifarResNet:
    return load_cifar_resnet(EVALUATOR_DEPTH)



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
