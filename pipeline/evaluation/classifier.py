"""The evaluator: a pre-trained CIFAR-10 classifier that scores images, and batched classification.

The evaluator is chosen by one param, `evaluate.evaluator` (a CIFAR ResNet of the encoder registry).
It must be independent of the tokenizer: params.py refuses the network that is `extract.encoder`,
whose features are the tokens and, through the decoder's perceptual loss, its training target. It
takes float RGB in [0, 1].
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.core.images import to_float_nchw
from pipeline.features.encoders.cifar_resnet import CifarResNet, load_cifar_resnet

REGISTRY_PREFIX = "cifar_"  # evaluate.evaluator names the encoder registry's cifar_resnet<depth>


def evaluator_label(name: str) -> str:
    """The evaluator's short name in metric keys: cifar_resnet56 -> resnet56 (fid_resnet56, ...)."""
    return name.removeprefix(REGISTRY_PREFIX)


def load_evaluator(name: str) -> CifarResNet:
    """The pre-trained classifier `name` (cifar_resnet20/32/44/56), eval mode, frozen."""
    return load_cifar_resnet(int(evaluator_label(name).removeprefix("resnet")))


@torch.inference_mode()
def classify(
    model: torch.nn.Module, images_uint8_nhwc: np.ndarray, batch_size: int, device: str | torch.device
) -> np.ndarray:
    """Predicted labels (int64, (N,)) of `model` on uint8 (N, H, W, 3) images, in batches."""
    device = torch.device(device)
    model = model.to(device).eval()
    preds = []
    for start in range(0, len(images_uint8_nhwc), batch_size):
        x = to_float_nchw(images_uint8_nhwc[start : start + batch_size], device)
        preds.append(model(x).argmax(1).cpu())
    return torch.cat(preds).numpy() if preds else np.zeros(0, dtype=np.int64)


def classifier_accuracy(
    model: torch.nn.Module,
    originals: np.ndarray,
    reconstructions: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    device: torch.device,
) -> dict[str, float]:
    """`model`'s top-1 accuracy on originals and on their reconstructions, and how often its prediction
    on a reconstruction equals its prediction on the original."""
    pred_orig = classify(model, originals, batch_size, device)
    pred_rec = classify(model, reconstructions, batch_size, device)
    return {
        "accuracy_originals": float(np.mean(pred_orig == labels)),
        "accuracy_reconstructions": float(np.mean(pred_rec == labels)),
        "prediction_agreement": float(np.mean(pred_rec == pred_orig)),
    }
