"""The quantisation lever's ceiling: the decoder trained on the features themselves instead of their centroids,
or on a two-code residual quantisation of them (128 tokens per image at the 8x8 grid).

    python bench/bench_tokenizer_ceiling.py [--params params.yaml] [--residual-k K]

Run from the project root after `dvc repro decoder` (with the params under study, e.g. after the CPU preset's
`dvc exp run`). It reads data/features/features.h5 (train and val), data/raw/cifar10.h5 and the decoder
section of the params, and trains the decoder stage's InverseCNN with the stage's loss, schedule, batch order
and step (`decoder_training.training_step`) on the standardised (C, 8, 8) feature grids, i.e. a codebook
with no quantisation error. It prints the validation PSNR (all val images, as metrics/decoder.json): next to
the decoder stage's PSNR at the same params, what any codebook on these features could gain at most with
this decoder, and so whether the codebook or the features and decoder limit PSNR.

With --residual-k K it measures residual quantisation instead: each cell's error to its centroid (the codebook
stage's data/tokens/codebook.safetensors and tokens.h5) is quantised again by a second FAISS k-means with K codes,
fitted like the codebook stage's (its sample_size, niter, seed, max_points_per_centroid, init), so a cell is
the sum of two centroids. It prints the relative quantisation error on val of one and of two codes, and the
decoder's val PSNR on the two-code grids: what a second token per cell would buy before any GPT has to model
128 tokens.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from the project root

from pipeline.core.images import to_float_nchw, to_uint8  # noqa: E402
from pipeline.core.runtime import adamw, grad_scaler, resolve_device, resolve_precision  # noqa: E402
from pipeline.core.schedule import lr_at  # noqa: E402
from pipeline.data import cifar10  # noqa: E402
from pipeline.evaluation.reconstruction import pixel_metrics  # noqa: E402
from pipeline.features.files import read_feature_info  # noqa: E402
from pipeline.params import DEFAULT_PARAMS, load_params  # noqa: E402
from pipeline.tokenizer import decoder_training as dt, files as token_files, kmeans as cb  # noqa: E402
from pipeline.tokenizer.decoder import DecoderConfig, InverseCNN  # noqa: E402
from stages.paths import CODEBOOK, FEATURES, RAW, TOKENS  # noqa: E402


def grids(features: np.ndarray, idx, device: torch.device) -> torch.Tensor:
    """float16 (N, g, g, C) rows -> float32 (n, C, g, g) on device."""
    return torch.from_numpy(features[idx]).to(device).permute(0, 3, 1, 2).float()


def residual_grids(features: dict[str, np.ndarray], k2: int, params) -> dict[str, np.ndarray]:
    """{split: (N, g, g, C) features} -> the same as the sum of the codebook stage's centroid and a second
    k-means's centroid of the residual (float16, like the features); prints both relative errors on val."""
    p = params.codebook
    centroids = token_files.load_codebook(CODEBOOK)
    meta = token_files.read_meta(TOKENS)
    token_files.check_same_codebook({str(CODEBOOK): token_files.centroids_sha256(centroids)}, str(TOKENS), meta)
    first = {s: centroids[token_files.read_split(TOKENS, s, meta).tokens.numpy()].reshape(x.shape) for s, x in features.items()}
    residual = {s: features[s].astype(np.float32) - first[s] for s in features}
    sample = cb.sample_vectors(residual["train"], p.sample_size, p.seed)
    fit = cb.fit_kmeans(sample, k2, p.niter, p.seed, p.max_points_per_centroid, init=p.init)
    one = cb.assign(features["val"], centroids)
    two = cb.assign(residual["val"], fit.centroids)
    print(f"val relative quantisation error: one code (K = {len(centroids)}) {one.relative_error:.4f}, "
          f"two codes (+ K = {k2} on the residual) {cb.relative(two.sse, one.channel_sst.sum()):.4f}")
    out = {}
    for split, r in residual.items():
        codes = two.tokens if split == "val" else cb.assign(r, fit.centroids, desc=f"assign {split}").tokens
        out[split] = (first[split] + fit.centroids[codes].reshape(r.shape)).astype(np.float16)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=Path, default=DEFAULT_PARAMS)
    ap.add_argument("--residual-k", type=int, default=0, help="codes of a second, residual k-means (0: no quantisation)")
    args = ap.parse_args()
    params = load_params(args.params)
    p = params.decoder
    device = resolve_device(p.device)
    precision = resolve_precision(p.precision, device, "decoder.precision")
    info = read_feature_info(FEATURES)
    with h5py.File(FEATURES, "r") as f:
        train_x, val_x = f["train/features"][:], f["val/features"][:]
    if args.residual_k:
        quantised = residual_grids({"train": train_x, "val": val_x}, args.residual_k, params)
        train_x, val_x = quantised["train"], quantised["val"]
    train, val = cifar10.read_split(RAW, "train"), cifar10.read_split(RAW, "val")
    grid, dim = info.layout.grid_h, info.layout.dim
    print(f"{FEATURES}: {info.layout.encoder} {info.layers}, {dim} dims on a {grid}x{grid} grid; "
          f"decoder {p.channels} ch, {p.res_blocks} blocks, {p.epochs} epoch(s), {precision} on {device}")  # fmt: skip

    config = DecoderConfig(in_channels=dim, grid=grid, k=1, channels=p.channels, res_blocks=p.res_blocks)
    with torch.random.fork_rng(devices=[]):  # the stage's seeded initial weights
        torch.manual_seed(p.seed)
        model = InverseCNN(config).to(device)
    optimizer = adamw(model.parameters(), device, lr=p.lr, weight_decay=p.weight_decay)
    scaler = grad_scaler(device, precision)
    perceptual = None
    if p.perceptual_weight > 0:
        perceptual = dt.feature_loss(info.layout.encoder, info.layers, grid, info.attrs, info.mean, info.std, device)
    loss_fn = dt.training_loss(p, perceptual)
    n, steps = len(train_x), math.ceil(len(train_x) / p.batch_size)
    t0, step = time.perf_counter(), 0
    for epoch in range(p.epochs):
        model.train()
        order = dt.epoch_order(n, p.seed, epoch).numpy()
        for i in tqdm(range(steps), desc=f"features -> images, epoch {epoch + 1}/{p.epochs}", unit="batch"):
            for group in optimizer.param_groups:
                group["lr"] = p.lr * lr_at(step, steps * p.epochs, p.warmup_steps, 1.0, 0.0)
            idx = np.sort(order[i * p.batch_size : (i + 1) * p.batch_size])
            dt.training_step(model, optimizer, scaler, grids(train_x, idx, device),
                             to_float_nchw(train.images[idx], device), loss_fn, precision)  # fmt: skip
            step += 1
    model.eval()
    with torch.no_grad():
        out = [to_uint8(model(grids(val_x, slice(i, i + p.batch_size), device))) for i in range(0, len(val_x), p.batch_size)]
    ceiling = pixel_metrics(val.images, np.concatenate(out))
    print(f"trained in {time.perf_counter() - t0:.0f} s")
    source = f"two codes per cell (K = {params.codebook.k} + {args.residual_k})" if args.residual_k else "the features (no quantisation)"
    print(f"val PSNR from {source}: {ceiling['psnr_db']:.2f} dB, SSIM {ceiling['ssim']:.3f}")
    print("compare: psnr_db of metrics/decoder.json from the same extract and decoder params (dvc metrics show)")


if __name__ == "__main__":
    main()
