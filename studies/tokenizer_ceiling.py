"""The quantisation lever's ceiling: the decoder trained on the features themselves instead of their centroids.

    python studies/tokenizer_ceiling.py [--params params.yaml]

Run from the project root after `dvc repro decoder` (with the params under study, e.g. after the CPU preset's
`dvc exp run`). It reads data/features/features.h5 (train and val), data/raw/cifar10.h5 and the decoder
section of the params, and trains the decoder stage's InverseCNN with the stage's loss, schedule, batch order
and step (`decoder_training.training_step`) on the standardised (C, 8, 8) feature grids, i.e. a codebook
with no quantisation error. It prints the validation PSNR (all val images, as metrics/decoder.json): next to
the decoder stage's PSNR at the same params, what any codebook on these features could gain at most with
this decoder, and so whether the codebook or the features and decoder limit PSNR. (A second code per cell,
residual quantisation, is a pipeline param: codebook.codes_per_cell.)
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


from pipeline.core.images import to_float_nchw, to_uint8
from pipeline.core.runtime import adamw, grad_scaler, resolve_device, resolve_precision
from pipeline.core.schedule import lr_at
from pipeline.data import cifar10
from pipeline.evaluation.reconstruction import pixel_metrics
from pipeline.features.files import read_feature_info
from pipeline.params import DEFAULT_PARAMS, load_params
from pipeline.tokenizer import decoder_training as dt
from pipeline.tokenizer.decoder import DecoderConfig, InverseCNN
from pipeline.paths import FEATURES, RAW


def grids(features: np.ndarray, idx, device: torch.device) -> torch.Tensor:
    """float16 (N, g, g, C) rows -> float32 (n, C, g, g) on device."""
    return torch.from_numpy(features[idx]).to(device).permute(0, 3, 1, 2).float()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=Path, default=DEFAULT_PARAMS)
    args = ap.parse_args()
    params = load_params(args.params)
    p = params.decoder
    device = resolve_device(p.device)
    precision = resolve_precision(p.precision, device, "decoder.precision")
    info = read_feature_info(FEATURES)
    with h5py.File(FEATURES, "r") as f:
        train_x, val_x = f["train/features"][:], f["val/features"][:]
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
    print(f"val PSNR from the features (no quantisation): {ceiling['psnr_db']:.2f} dB, SSIM {ceiling['ssim']:.3f}")
    print("compare: psnr_db of metrics/decoder.json from the same extract and decoder params (dvc metrics show)")


if __name__ == "__main__":
    main()
