"""The Inception reference of the real images (the reference stage's file) and the FID/KID read against it.

The file holds, for a seeded subset of each split (all images by default): the mean and covariance of
the train features (what sample FIDs compare with), a seeded subset of the train features (for KID),
the test features with their indices, mean and covariance (rFID and the floor), and how they were made
(protocol, weights, precision). Downstream stages compute features of their own images with the same
precision and compare; a file made under another protocol is refused. `compute_reference` is the
reference stage: it makes the file and returns its metrics, the floor among them (FID of the test
images against the train statistics).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from pipeline.core.artifacts import damaged, open_h5
from pipeline.core.atomic import atomic_path
from pipeline.core.errors import PipelineError
from pipeline.core.progress import Eta
from pipeline.core.results import Results, minutes
from pipeline.core.runtime import describe_cpu, native, resolve_device, resolve_feature_precision
from pipeline.data import cifar10
from pipeline.evaluation import inception
from pipeline.evaluation.feature_stats import Gaussian, frechet_distance, gaussian, kid, precision_recall
from pipeline.hints import slow_cpu_hint
from pipeline.params import ReferenceParams

STAGE = "reference"
KID_SUBSETS = 100  # as torch-fidelity and clean-fid
SLOW_MINUTES = 30  # the reference stage's up-front estimate warns above this


@dataclass(frozen=True)
class Reference:
    train: Gaussian  # statistics of the train features
    train_kid: np.ndarray  # (kid_images, 2048) float32: a seeded subset of the train features
    test: Gaussian
    test_features: np.ndarray  # (n_test, 2048) float32, in the order of test_indices
    test_indices: np.ndarray  # which test images (int64, ascending)
    precision: str
    protocol: str = inception.PROTOCOL


def pick(n_total: int, n: int | None, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of a seeded subset of n of range(n_total) (all of them when n is None)."""
    if n is None or n >= n_total:
        return np.arange(n_total)
    return np.sort(rng.choice(n_total, n, replace=False))


def build_reference(
    model: inception.InceptionV3,
    train_images: np.ndarray,
    test_images: np.ndarray,
    *,
    n_train: int | None,
    n_test: int | None,
    kid_images: int,
    batch_size: int,
    precision: str,
    device: torch.device,
    seed: int,
    progress: Callable[[int], None] | None = None,
) -> Reference:
    """Inception features of seeded subsets of both splits, reduced to what the file keeps."""
    rng = np.random.default_rng(seed)
    train_idx, test_idx = pick(len(train_images), n_train, rng), pick(len(test_images), n_test, rng)
    if min(len(train_idx), len(test_idx)) < 2:
        raise PipelineError(f"the reference needs >= 2 train and test images, got {len(train_idx)} and {len(test_idx)}")
    test_f = inception.inception_features(model, test_images[test_idx], batch_size, device, precision, progress)
    train_f = inception.inception_features(model, train_images[train_idx], batch_size, device, precision, progress)
    return Reference(
        train=gaussian(train_f),
        train_kid=train_f[pick(len(train_f), kid_images, rng)],
        test=gaussian(test_f),
        test_features=test_f,
        test_indices=test_idx,
        precision=precision,
    )


def compute_reference(p: ReferenceParams, raw: str | Path, target: str | Path) -> Results:
    """The reference stage: Inception features of the raw file's train and test images (seeded subsets of
    p.n_train and p.n_test) reduced to `target`; returns the stage's results, the floor among them (FID of
    the test images against the train statistics)."""
    device = resolve_device(p.device)
    model = inception.load_inception()
    train, test = cifar10.read_source_train(raw), cifar10.read_split(raw, "test")
    total = sum(min(n or len(split.images), len(split.images)) for n, split in ((p.n_train, train), (p.n_test, test)))
    precision = resolve_feature_precision(p.precision, device)  # reconstruct and evaluate reuse it
    hint = ""
    if device.type == "cpu":
        emulated = precision == "bf16" and not native(device, "bf16")  # or slower than fp32 in hardware
        hint = (
            f"reference.precision = bf16 is slower than fp32 on this CPU ({describe_cpu()}): set it to auto or fp32"
            if emulated
            else slow_cpu_hint("reference", p, precision)
        )
    eta = Eta("reference (Inception features)", total, "images", slow_minutes=SLOW_MINUTES, slow_hint=hint)
    t0 = time.perf_counter()
    sizes = p.model_dump(include={"n_train", "n_test", "kid_images", "batch_size", "seed"})
    ref = build_reference(
        model, train.images, test.images, precision=precision, device=device, progress=eta.update, **sizes
    )
    seconds = time.perf_counter() - t0
    write_reference(ref, target)
    return Results(
        {
            "fid_test_vs_train": fid_to(ref.test_features, ref.train),
            "reference_images_per_s": round(total / seconds, 2),
            "reference_minutes": minutes(seconds),
        },
        {**description(ref), "device": str(device)},
    )


def write_reference(ref: Reference, target: str | Path) -> None:
    with atomic_path(target) as tmp, h5py.File(tmp, "w") as f:
        for split, g in (("train", ref.train), ("test", ref.test)):
            f[f"{split}/mean"], f[f"{split}/cov"] = g.mean, g.cov
            f[split].attrs["n"] = g.n
        f["train/kid_features"] = ref.train_kid
        f["test/features"], f["test/indices"] = ref.test_features, ref.test_indices
        f.attrs.update(protocol=ref.protocol, precision=ref.precision, weights_sha256=inception.WEIGHTS_SHA256)


def read_reference(path: str | Path) -> Reference:
    """The reference file written by the reference stage; one made under another protocol is refused."""
    with open_h5(path, STAGE, "Inception reference") as f:
        protocol = str(f.attrs.get("protocol", ""))
        if protocol != inception.PROTOCOL:
            raise PipelineError(
                f"{path}: made under another Inception protocol ({protocol or 'none recorded'}); "
                f"re-run the {STAGE} stage (dvc repro {STAGE})"
            )
        try:
            stats = {s: Gaussian(f[f"{s}/mean"][:], f[f"{s}/cov"][:], int(f[s].attrs["n"])) for s in ("train", "test")}
            return Reference(
                train=stats["train"],
                train_kid=f["train/kid_features"][:],
                test=stats["test"],
                test_features=f["test/features"][:],
                test_indices=f["test/indices"][:],
                precision=str(f.attrs["precision"]),
                protocol=protocol,
            )
        except KeyError as e:
            raise damaged(path, STAGE, e) from None


def fid_to(features: np.ndarray, target: Gaussian) -> float:
    """Inception FID of an (N, 2048) feature set against reference statistics."""
    return frechet_distance(gaussian(features), target)


def scores_vs_train(features: np.ndarray, ref: Reference, *, kid_subset_size: int, seed: int) -> dict[str, float]:
    """FID against the train statistics; KID, precision and recall against the kept train features (for
    precision/recall as many as `features` has, a seeded subset: the k-NN radii depend on the set size)."""
    kid_mean, kid_std = kid(features, ref.train_kid, subsets=KID_SUBSETS, subset_size=kid_subset_size, seed=seed)
    real = ref.train_kid[pick(len(ref.train_kid), len(features), np.random.default_rng(seed))]
    precision, recall = precision_recall(real, features)
    return {
        "fid_inception": fid_to(features, ref.train),
        "kid_inception_mean": kid_mean,
        "kid_inception_std": kid_std,
        "precision_inception": precision,
        "recall_inception": recall,
    }


# The image counts of published CIFAR-10 numbers: generator FIDs score this many samples against the
# whole training set; rFIDs reconstruct the whole test set and compare with it.
PUBLISHED = {"samples": 50_000, "train": 50_000, "test": 10_000}


def description(ref: Reference, scored: int | None = None, against: str = "train") -> dict:
    """How the reference was made, for the metrics files (every FID in them reads against it); with
    `scored` (images whose FID is reported against the `against` split), whether the counts are the
    published ones and, when not, what that means."""
    out = {
        "protocol": ref.protocol,
        "precision": ref.precision,
        "reference_train_images": ref.train.n,
        "reference_test_images": ref.test.n,
        "kid_reference_images": len(ref.train_kid),
    }
    if scored is not None:
        wanted = (PUBLISHED["samples"], PUBLISHED["train"]) if against == "train" else (PUBLISHED["test"],) * 2
        got = (scored, ref.train.n if against == "train" else ref.test.n)
        out["published_counts"] = got == wanted
        if got != wanted:
            out["counts_note"] = (
                f"{got[0]} images against {got[1]} {against} images; published CIFAR-10 numbers use {wanted[0]} "
                f"against {wanted[1]}. FID grows as the counts shrink: compare only with FIDs at the same counts"
            )
    return out
