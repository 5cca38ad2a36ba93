"""Extract speed: the product path vs a plain fp32 loop, side by side in one run, on all 60,000 images.

    TORCH_HOME=../shared/torch-home .venv/bin/python bench/bench_extract.py [--limit N]

product:  pipeline.features.extract.write_stage_features, the stage's own call (conv-bn folded, channels_last, its
          precision resolved as the stage resolves it, batch extract.batch_size, HDF5 writes on a background thread)
baseline: the plain loop - unfused encoder, fp32, batch 500, no channels_last, synchronous writes
Both write the same standardised features.h5 (the extract params of params.yaml, as the stage reads them).
Also prints ResNet-20 test accuracy fp32 vs the fast path and the feature differences.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.fx.experimental.optimization import fuse

from pipeline.core.atomic import atomic_path
from pipeline.core.runtime import autocast, resolve_device, resolve_precision
from pipeline.data import cifar10
from pipeline.evaluation.classifier import classify
from pipeline.features.encoders import build_encoder
from pipeline.features.encoders.cifar_resnet import load_cifar_resnet
from pipeline.features.extract import (
    GridSpec,
    RunningStats,
    _standardize_in_place,
    encode_batch,
    extract_spec,
    has_convs,
    prepare_encoder,
    write_stage_features,
)
from pipeline.params import load_params
from pipeline.paths import RAW
from stages import setup_logging


def baseline(target: Path, encoder, splits, spec: GridSpec, device, batch_size: int = 500) -> None:
    """The plain loop: fp32, no fusion, no channels_last, each batch written before the next runs."""
    encoder = encoder.to(device)
    with atomic_path(target) as tmp, h5py.File(tmp, "w") as f, torch.inference_mode():
        mean = std = None
        for split in ("train", "test"):
            images = splits[split].images
            stats, dset = RunningStats(), None
            for start in range(0, len(images), batch_size):
                feats = encode_batch(encoder, images[start : start + batch_size], spec, device, "fp32", False)
                if dset is None:
                    dset = f.create_dataset(
                        f"{split}/features", (len(images), *feats.shape[1:]), np.float16, chunks=(73, *feats.shape[1:])
                    )
                if split == "train":
                    stats.update(feats)
                else:
                    feats = (feats - torch.from_numpy(mean).to(device)) / torch.from_numpy(std).to(device)
                dset[start : start + len(feats)] = feats.half().cpu().numpy()
            if split == "train":
                mean, std = stats.mean_std()
                _standardize_in_place(dset, mean, std)
            f.create_dataset(f"{split}/labels", data=splits[split].labels)


def compare(a: Path, b: Path, block: int = 5000) -> tuple[float, float]:
    """Max and mean absolute difference of all stored features of two files."""
    worst, total, count = 0.0, 0.0, 0
    with h5py.File(a) as fa, h5py.File(b) as fb:
        for split in ("train", "test"):
            for s in range(0, len(fa[f"{split}/features"]), block):
                d = np.abs(
                    fa[f"{split}/features"][s : s + block].astype(np.float32)
                    - fb[f"{split}/features"][s : s + block].astype(np.float32)
                )
                worst, total, count = max(worst, float(d.max())), total + float(d.sum(dtype=np.float64)), count + d.size
    return worst, total / count


def interleaved(
    encoder, images: np.ndarray, spec: GridSpec, device, p, precision: str, rounds: int = 8
) -> tuple[float, float]:
    """Encoder-step images/s of both paths, alternating on the same images round by round.

    The whole-file timings above run one after the other, so on a shared machine a change of load
    between them skews their ratio; alternating exposes both paths to the same load.
    """
    fast = prepare_encoder(encoder, device, has_convs(encoder))
    plain = encoder.to(device)
    x = images[: p.batch_size]
    paths = {
        "plain": lambda: [
            encode_batch(plain, x[i : i + 500], spec, device, "fp32", False) for i in range(0, len(x), 500)
        ],
        "product": lambda: encode_batch(fast, x, spec, device, precision, has_convs(encoder)),
    }
    seconds = {"plain": 0.0, "product": 0.0}
    with torch.inference_mode():
        for fn in paths.values():
            fn()  # warm-up
        for r in range(rounds):
            for name in ("plain", "product") if r % 2 else ("product", "plain"):
                t = time.perf_counter()
                paths[name]()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                seconds[name] += time.perf_counter() - t
    return rounds * len(x) / seconds["plain"], rounds * len(x) / seconds["product"]


def accuracy(x: np.ndarray, y: np.ndarray, device, fast: bool, precision: str) -> float:
    model = load_cifar_resnet(20)
    if fast:
        model = fuse(model).to(device).to(memory_format=torch.channels_last)
    with autocast(device, precision if fast else "fp32"):
        return float((classify(model, x, 1000, device) == y).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=None, help="images per split (default: all)")
    args = ap.parse_args()
    setup_logging()
    p = load_params().extract
    device = resolve_device(p.device)
    precision = resolve_precision(p.precision, device, "extract.precision")  # what the extract stage runs
    splits = {s: cifar10.read_split(RAW, s) for s in cifar10.SPLITS}
    if args.limit:
        splits = {s: cifar10.Split(v.images[: args.limit], v.labels[: args.limit]) for s, v in splits.items()}
    n = sum(len(v.images) for v in splits.values())
    encoder = build_encoder(p.encoder)
    spec = extract_spec(p, encoder)  # exactly what the extract stage computes
    print(
        f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}), "
        f"{torch.get_num_threads()} threads, {n} images, {p.encoder} {list(spec.layers)} grid {p.grid} ({p.pool})"
    )
    with tempfile.TemporaryDirectory(dir="data") as tmp:
        fast_h5, plain_h5 = Path(tmp, "product.h5"), Path(tmp, "baseline.h5")
        t = time.perf_counter()
        write_stage_features(p, fast_h5, encoder, splits, spec, device, precision)
        fast_s = time.perf_counter() - t
        t = time.perf_counter()
        baseline(plain_h5, encoder, splits, spec, device)
        plain_s = time.perf_counter() - t
        worst, mean_diff = compare(fast_h5, plain_h5)
    print(f"baseline fp32 batch 500: {n / plain_s:8.0f} images/s ({plain_s:.1f} s)")
    print(f"product {precision} batch {p.batch_size}: {n / fast_s:8.0f} images/s ({fast_s:.1f} s)")
    print(f"speed-up: {plain_s / fast_s:.2f}x")
    print(f"standardised features, product vs baseline: max |diff| {worst:.4f}, mean |diff| {mean_diff:.5f}")
    plain_rate, fast_rate = interleaved(encoder, splits["test"].images, spec, device, p, precision)
    print(
        f"encoder step alternated round by round: baseline {plain_rate:.0f} images/s, "
        f"product {fast_rate:.0f} images/s, speed-up {fast_rate / plain_rate:.2f}x"
    )
    test = splits["test"]
    print(
        f"ResNet-20 test accuracy: fp32 {accuracy(test.images, test.labels, device, False, precision):.4f}, "
        f"{precision} fast path {accuracy(test.images, test.labels, device, True, precision):.4f}"
    )


if __name__ == "__main__":
    main()
