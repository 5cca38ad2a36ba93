"""Distances between generated images and the test set, in the CIFAR ResNet's pooled feature space.

Fréchet distance and KID are computed by torchmetrics with a custom feature extractor: the global
average-pooled layer3 output (64 dims) of the pre-trained CIFAR ResNet. The numbers are therefore named
`fid_resnet<depth>` / `kid_resnet<depth>`; they are NOT comparable to published Inception FIDs. Inception
FID is added only when torch-fidelity and its Inception weights are available locally; otherwise the
metric is recorded as absent with the reason.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.evaluation.classifier import EVALUATOR_NAME, classify, load_evaluator
from pipeline.core.errors import PipelineError

INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"  # the file torch-fidelity fetches


class PooledResNetFeatures(nn.Module):
    """uint8 (N, 3, H, W) images -> pooled layer3 features (N, 64) of a CIFAR ResNet."""

    def __init__(self, resnet: nn.Module) -> None:
        super().__init__()
        self.resnet = resnet
        self.num_features = resnet.linear.in_features

    def forward(self, images_uint8: torch.Tensor) -> torch.Tensor:
        x = images_uint8.float() / 255.0
        return torch.flatten(F.adaptive_avg_pool2d(self.resnet.stages(x)["layer3"], 1), 1).double()


def _batches(images_nhwc: np.ndarray, batch_size: int, device: torch.device):
    for start in range(0, len(images_nhwc), batch_size):
        yield torch.as_tensor(images_nhwc[start : start + batch_size]).to(device).permute(0, 3, 1, 2)


@torch.inference_mode()
def resnet_features(images: np.ndarray, resnet: nn.Module, batch_size: int, device: torch.device) -> torch.Tensor:
    """uint8 NHWC images -> pooled features float64 (N, 64) on the CPU (computed once per set)."""
    features = PooledResNetFeatures(resnet.to(device).eval())
    out = [features(batch).cpu() for batch in _batches(images, batch_size, device)]
    return torch.cat(out) if out else torch.zeros(0, features.num_features, dtype=torch.float64)


class _Precomputed(nn.Module):
    """Feature "extractor" for features already extracted: torchmetrics then only does the statistics."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def feature_distances(real: torch.Tensor, fake: torch.Tensor, *, kid_subset_size: int, seed: int) -> dict[str, float]:
    """Fréchet distance and KID (mean, std over 100 subsets) between two (N, D) feature sets."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    if min(len(real), len(fake)) < 2:
        raise ValueError(f"Fréchet distance needs >= 2 images per set, got {len(real)} and {len(fake)}")
    extractor = _Precomputed(real.shape[1])
    fid = FrechetInceptionDistance(feature=extractor)
    with warnings.catch_warnings():  # "will save all extracted features": 64 floats per image here
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(feature=extractor, subset_size=min(kid_subset_size, len(real), len(fake)))
    for metric in (fid, kid):
        metric.update(real, real=True)
        metric.update(fake, real=False)
    with torch.random.fork_rng(devices=[]):  # KID draws random subsets; leave the global RNG alone
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    return {"fid": float(fid.compute()), "kid_mean": float(kid_mean), "kid_std": float(kid_std)}


def class_table(predicted: np.ndarray, labels: np.ndarray | None, n_classes: int) -> list[dict]:
    """Per class: the share of images the classifier puts in it and, when every image was generated for
    a class (labels given), the fraction of that class's images it recognises."""
    rows = []
    for c in range(n_classes):
        row = {"class": c, "share": float(np.mean(predicted == c)) if len(predicted) else 0.0}
        if labels is not None:
            mine = labels == c
            row["agreement"] = float(np.mean(predicted[mine] == c)) if mine.any() else float("nan")
        rows.append(row)
    return rows


def subset(n_total: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """n sorted indices drawn without replacement from range(n_total)."""
    return np.sort(rng.choice(n_total, n, replace=False))


def sample_quality(
    samples: np.ndarray,
    sample_labels: np.ndarray | None,
    test_images: np.ndarray,
    references: dict[str, np.ndarray],
    *,
    n: int,
    batch_size: int,
    kid_subset_size: int,
    device: torch.device,
    seed: int,
) -> tuple[dict, list[dict]]:
    """Distances of n samples (a seeded subset) to the test set, of n images of each reference set
    (e.g. test reconstructions, train images) for scale, class agreement of conditional samples, and
    Inception FID of the samples when available.

    Returns ({"samples": {...}, "reference_<name>": {...}}, per-class table)."""
    if len(samples) < n:
        raise PipelineError(
            f"evaluate.n_samples = {n} but data/samples holds {len(samples)} images; raise sample.n_per_class "
            f"to at least {-(-n // 10)} (10 classes) or lower evaluate.n_samples"
        )
    rng = np.random.default_rng(seed)
    resnet, name = load_evaluator(), EVALUATOR_NAME
    test_f = resnet_features(test_images, resnet, batch_size, device)

    def distances(images: np.ndarray) -> dict[str, float]:
        d = feature_distances(test_f, resnet_features(images, resnet, batch_size, device),
                              kid_subset_size=kid_subset_size, seed=seed)  # fmt: skip
        return {f"fid_{name}": d["fid"], f"kid_{name}_mean": d["kid_mean"], f"kid_{name}_std": d["kid_std"]}

    pick = subset(len(samples), n, rng)
    images, labels = samples[pick], None if sample_labels is None else sample_labels[pick]
    predicted = classify(resnet, images, batch_size, device)
    result = {"samples": {"n": n, **distances(images)}}
    result["samples"]["class_agreement"] = None if labels is None else float(np.mean(predicted == labels))
    result["samples"].update(inception_fid(test_images, images, batch_size, device))
    for ref, ref_images in references.items():
        if len(ref_images) < n:
            raise PipelineError(f"reference set {ref!r} has {len(ref_images)} images, fewer than evaluate.n_samples = {n}")
        result[f"reference_{ref}"] = {"n": n, **distances(ref_images[subset(len(ref_images), n, rng)])}
    n_classes = resnet.linear.out_features
    return result, class_table(predicted, labels, n_classes)


def inception_fid(real: np.ndarray, fake: np.ndarray, batch_size: int, device: torch.device) -> dict:
    """Standard Inception-v3 FID when its weights are available locally, else absent with the reason."""
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        return {"fid_inception": None, "fid_inception_absent": "torch-fidelity is not installed"}
    hub = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints"
    if not (hub / INCEPTION_WEIGHTS).is_file():
        return {"fid_inception": None, "fid_inception_absent": f"Inception weights not found at {hub / INCEPTION_WEIGHTS}"}
    from torchmetrics.image.fid import FrechetInceptionDistance

    fid = FrechetInceptionDistance(feature=2048).to(device)
    with torch.inference_mode():
        for images, real_flag in ((real, True), (fake, False)):
            for batch in _batches(images, batch_size, device):
                fid.update(batch, real=real_flag)
    return {"fid_inception": float(fid.compute())}
