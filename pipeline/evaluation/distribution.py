"""How close generated images are to the real ones, as a set: Inception FID/KID against the reference,
the floor, class agreement and a fast proxy in the evaluator's own features.

Inception (the field's units): FID and KID of n samples against the train statistics of the reference
file, and the floor, n reference test images scored the same way (what a perfect generator would get
with n images). Proxy: Fréchet distance and KID in the global-average-pooled last stage of the
evaluator (`fid_<evaluator>`), samples and n train images against the test images; handy for quick
comparisons, not comparable to anything published.

`SampleScorer` loads what scoring reads once (the reference stage's file, the raw images, the evaluator)
and scores any set of generated images this way: the evaluate stage's samples (pipeline/gpt/evaluate.py)
and sample sets made elsewhere (studies/score_samples.py), so their numbers compare. It takes images: a
caller holding token grids decodes them first (`pipeline.gpt.evaluate.score_token_grids`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.core.errors import PipelineError
from pipeline.core.results import Results
from pipeline.core.runtime import resolve_device
from pipeline.data import cifar10
from pipeline.evaluation import inception
from pipeline.evaluation.classifier import classify, evaluator_label, load_evaluator
from pipeline.evaluation.feature_stats import frechet_distance, gaussian, kid
from pipeline.evaluation.reference import KID_SUBSETS, Reference, description, pick, read_reference, scores_vs_train
from pipeline.features.encoders.cifar_resnet import CifarResNet
from pipeline.params import EvaluateParams


@torch.inference_mode()
def pooled_features(images: np.ndarray, resnet: CifarResNet, batch_size: int, device: torch.device) -> np.ndarray:
    """uint8 NHWC images -> the CIFAR ResNet's pooled last-stage features, float32 (N, 64)."""
    resnet = resnet.to(device).eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.as_tensor(images[start : start + batch_size]).to(device).permute(0, 3, 1, 2).float() / 255.0
        out.append(torch.flatten(F.adaptive_avg_pool2d(resnet.stages(x)["layer3"], 1), 1).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, resnet.linear.in_features), np.float32)


def proxy_distances(
    real: np.ndarray, fake: np.ndarray, label: str, *, kid_subset_size: int, seed: int
) -> dict[str, float]:
    """Fréchet distance and KID between two evaluator feature sets, keyed by the evaluator's label."""
    kid_mean, kid_std = kid(real, fake, subsets=KID_SUBSETS, subset_size=kid_subset_size, seed=seed)
    fd = frechet_distance(gaussian(real), gaussian(fake))
    return {f"fid_{label}": fd, f"kid_{label}_mean": kid_mean, f"kid_{label}_std": kid_std}


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


def sample_quality(
    samples: np.ndarray,
    sample_labels: np.ndarray | None,
    test_images: np.ndarray,
    train_images: np.ndarray,
    ref: Reference,
    *,
    evaluator: CifarResNet,
    evaluator_name: str,
    n: int,
    batch_size: int,
    kid_subset_size: int,
    device: torch.device,
    seed: int,
) -> tuple[dict, list[dict]]:
    """Scores of n samples (a seeded subset) and of the reference points, each with n images (or all there are).

    Returns ({"samples": ..., "floor_test_images": ..., "reference_train_images": ...}, per-class table)."""
    if len(samples) < n:
        raise PipelineError(
            f"evaluate.n_samples = {n} but data/samples holds {len(samples)} images; raise sample.n_per_class "
            f"to at least {-(-n // 10)} (10 classes) or lower evaluate.n_samples"
        )
    rng = np.random.default_rng(seed)
    chosen = pick(len(samples), n, rng)
    images, labels = samples[chosen], None if sample_labels is None else sample_labels[chosen]
    kid_args = {"kid_subset_size": kid_subset_size, "seed": seed}

    net = inception.load_inception()
    sample_f = inception.inception_features(net, images, batch_size, device, ref.precision)
    # The floor has n images too, unless the reference holds fewer test images (then its n says so).
    floor_f = ref.test_features[pick(len(ref.test_features), n, rng)]

    label = evaluator_label(evaluator_name)
    test_p = pooled_features(test_images, evaluator, batch_size, device)
    train_p = pooled_features(train_images[pick(len(train_images), n, rng)], evaluator, batch_size, device)
    predicted = classify(evaluator, images, batch_size, device)
    result = {
        "samples": {
            "n": n,
            **scores_vs_train(sample_f, ref, **kid_args),
            **proxy_distances(test_p, pooled_features(images, evaluator, batch_size, device), label, **kid_args),
            "class_agreement": None if labels is None else float(np.mean(predicted == labels)),
        },
        "floor_test_images": {"n": len(floor_f), **scores_vs_train(floor_f, ref, **kid_args)},
        "reference_train_images": {"n": len(train_p), **proxy_distances(test_p, train_p, label, **kid_args)},
    }
    return result, class_table(predicted, labels, evaluator.linear.out_features)


@dataclass
class SampleScorer:
    """This checkout's Inception reference, raw images and evaluator, loaded once: scores any set of
    generated images exactly as the evaluate stage scores the sample stage's."""

    p: EvaluateParams
    device: torch.device
    ref: Reference
    evaluator: CifarResNet
    raw_train: np.ndarray  # uint8 NHWC, the raw file's train split
    raw_test: np.ndarray

    @classmethod
    def load(cls, p: EvaluateParams, raw: str | Path, reference: str | Path) -> SampleScorer:
        """The raw CIFAR-10 file (download stage), the reference file (reference stage), p.evaluator."""
        raw_train, raw_test = cifar10.read_split(raw, "train"), cifar10.read_split(raw, "test")
        return cls(
            p,
            resolve_device(p.device),
            read_reference(reference),
            load_evaluator(p.evaluator),
            raw_train.images,
            raw_test.images,
        )

    def score(self, images: np.ndarray, labels: np.ndarray | None, n: int | None = None) -> tuple[dict, list[dict]]:
        """`sample_quality` of n of the uint8 NHWC `images` (default evaluate.n_samples), generated for `labels`
        (None: unconditional), with how the reference was made and the evaluator's name.

        Returns ({"samples", "floor_test_images", "reference_train_images", "inception", "evaluator"}, per-class table)."""
        p = self.p
        n = p.n_samples if n is None else n
        quality, per_class = sample_quality(
            images,
            labels,
            self.raw_test,
            self.raw_train,
            self.ref,
            evaluator=self.evaluator,
            evaluator_name=p.evaluator,
            n=n,
            batch_size=p.batch_size,
            kid_subset_size=p.kid_subset_size,
            device=self.device,
            seed=p.seed,
        )
        return {**quality, "inception": description(self.ref, n, "train"), "evaluator": p.evaluator}, per_class


def sample_results(scores: dict) -> Results:
    """`SampleScorer.score`'s nested scores under the flat names of metrics/eval.json (the proxy under
    `_evaluator`, whichever network evaluate.evaluator names), and the counts and protocol as info."""
    s, floor, train = scores["samples"], scores["floor_test_images"], scores["reference_train_images"]
    label = evaluator_label(scores["evaluator"])
    metrics = {
        "sample_fid": s["fid_inception"],
        "sample_kid": s["kid_inception_mean"],
        "sample_kid_std": s["kid_inception_std"],
        "sample_precision": s["precision_inception"],
        "sample_recall": s["recall_inception"],
        **({} if s["class_agreement"] is None else {"class_agreement": s["class_agreement"]}),
        "floor_fid": floor["fid_inception"],
        "floor_kid": floor["kid_inception_mean"],
        "floor_precision": floor["precision_inception"],
        "floor_recall": floor["recall_inception"],
        "sample_fid_evaluator": s[f"fid_{label}"],
        "sample_kid_evaluator": s[f"kid_{label}_mean"],
        "floor_fid_evaluator": train[f"fid_{label}"],  # n train images against the test images
    }
    info = {
        "samples": s["n"],
        "floor_test_images": floor["n"],
        "evaluator": scores["evaluator"],
        "evaluator_floor_train_images": train["n"],
        "inception": scores["inception"],
    }
    return Results(metrics, info)


def score_summary(scores: dict) -> str:
    """One line of `SampleScorer.score`'s scores: FID next to its floor, KID, class agreement."""
    s, floor = scores["samples"], scores["floor_test_images"]
    agreement = "n/a" if s["class_agreement"] is None else f"{100 * s['class_agreement']:.1f} %"
    return (
        f"{s['n']} samples, Inception FID {s['fid_inception']:.2f} (floor {floor['fid_inception']:.2f} "
        f"at {floor['n']}), KID {s['kid_inception_mean']:.4f}, class agreement {agreement}"
    )
