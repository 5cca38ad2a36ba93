"""Validation of the Inception backend: FID of the CIFAR-10 train images vs the test images, and its speed.

    python studies/fid_reference.py --source ../shared/data/cifar10/cifar10.npz [--precision fp32 bf16]
                                        [--n-train N] [--n-test M] [--batch-size B] [--cache DIR]

Computes Inception features (pipeline/evaluation/inception.py: the protocol the evaluate stage uses) of
the first N train images (default all 50,000) and the first M test images (default all 10,000), and
prints FID(train, test)
next to the published value REFERENCE_FID (pytorch-fid / TTUR protocol, the whole train set vs the test
set) and the difference. Features are kept in --cache (one .npy per chunk of images and precision,
outside the repository), so an interrupted run resumes and a second run computes nothing again.

With two precisions it also prints the FID for each on the same images and their difference: the
effect of computing the features in bf16 (subsets are enough for that: the same images either way). Speed: images/s of the feature pass (wall clock and per
CPU-second of this process, so a busy shared machine shows in the first number only).
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.core.atomic import write_bytes
from pipeline.core.runtime import resolve_device
from pipeline.data import cifar10
from pipeline.evaluation import inception
from pipeline.evaluation.feature_stats import frechet_distance, gaussian

REFERENCE_FID = 3.15  # CIFAR-10 train (50k) vs test (10k), pytorch-fid protocol (issue 11's anchor)
TOLERANCE = 0.1
CHUNK = 1000  # images per cached .npy file (an interrupted run loses at most one)


class Speed:
    def __init__(self) -> None:
        self.images, self.wall, self.cpu = 0, 0.0, 0.0

    def __str__(self) -> str:
        if not self.images:
            return "nothing computed (all features cached)"
        return (
            f"{self.images} images in {self.wall:.0f} s: {self.images / self.wall:.2f} images/s wall, "
            f"{self.images / self.cpu:.2f} images per CPU-second"
        )


def features(
    model,
    images: np.ndarray,
    folder: Path,
    split: str,
    precision: str,
    batch_size: int,
    device: torch.device,
    speed: Speed,
) -> np.ndarray:
    """(N, 2048) features of `images`, chunk by chunk from the cache or computed and cached."""
    out = []
    for start in range(0, len(images), CHUNK):
        path = folder / f"{split}-{start:05d}-{min(start + CHUNK, len(images)):05d}.npy"
        if not path.is_file():
            t, c = time.perf_counter(), time.process_time()
            chunk = inception.inception_features(model, images[start : start + CHUNK], batch_size, device, precision)
            speed.images += len(chunk)
            speed.wall += time.perf_counter() - t
            speed.cpu += time.process_time() - c
            buf = io.BytesIO()
            np.save(buf, chunk, allow_pickle=False)
            write_bytes(path, buf.getvalue())
            print(f"  {precision} {split} {start + len(chunk)}/{len(images)}: {speed}", flush=True)
        out.append(np.load(path, allow_pickle=False))
    return np.concatenate(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", required=True, help="CIFAR-10 .npz or cifar-10-batches-py folder")
    ap.add_argument("--precision", nargs="+", default=["fp32"], choices=sorted(inception.DTYPES))
    ap.add_argument("--n-train", type=int, default=50_000, help="first N train images (default: all)")
    ap.add_argument("--n-test", type=int, default=10_000, help="first M test images (default: all)")
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--cache", type=Path, default=inception.cache_dir() / "features")
    args = ap.parse_args()
    device = resolve_device(args.device)
    data = cifar10.load_source(args.source, "data/cache")
    train, test = data.train.images[: args.n_train], data.test.images[: args.n_test]
    model = inception.load_inception()
    name = (
        "cuda " + torch.cuda.get_device_name() if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    )
    print(f"device {name}; {len(train)} train vs {len(test)} test images; batch {args.batch_size}")
    print(f"protocol: {inception.PROTOCOL}")
    fids = {}
    for precision in args.precision:
        folder = args.cache / f"{Path(args.source).stem}-{precision}"
        speed = Speed()
        f_test = features(model, test, folder, "test", precision, args.batch_size, device, speed)
        f_train = features(model, train, folder, "train", precision, args.batch_size, device, speed)
        fids[precision] = frechet_distance(gaussian(f_train), gaussian(f_test))
        print(f"{precision}: FID(train {len(train)}, test {len(test)}) = {fids[precision]:.4f}; speed: {speed}")
        if (len(train), len(test)) == (50_000, 10_000):
            gap = fids[precision] - REFERENCE_FID
            verdict = "within" if abs(gap) <= TOLERANCE else "OUTSIDE"
            print(f"  published {REFERENCE_FID} -> difference {gap:+.4f} ({verdict} {TOLERANCE})")
    if len(fids) > 1:
        base = fids.get("fp32", next(iter(fids.values())))
        for precision, fid in fids.items():
            print(f"{precision} - fp32 FID on the same images: {fid - base:+.4f}")


if __name__ == "__main__":
    main()
