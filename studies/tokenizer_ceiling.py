"""The quantisation lever's ceiling: the decoder trained on the features themselves instead of their centroids.

    python studies/tokenizer_ceiling.py [--params params.yaml]

Run from the project root after `dvc repro decoder` (with the params under study, e.g. after the CPU preset's
`dvc exp run`). It reads data/features/features.h5 (train and val), data/raw/cifar10.h5 and the decoder
section of the params, and trains the decoder stage's InverseCNN with the stage's loss, schedule, batch order,
step and best-epoch selection (`decoder_training.fit_decoder`, the `core.training` skeleton) on the
standardised (C, 8, 8) feature grids, i.e. a codebook with no quantisation error. It prints the validation
PSNR of the best epoch (all val images, as metrics/decoder.json): next to
the decoder stage's PSNR at the same params, what any codebook on these features could gain at most with
this decoder, and so whether the codebook or the features and decoder limit PSNR. (A second code per cell,
residual quantisation, is a pipeline param: codebook.codes_per_cell.)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from pipeline.core.images import to_float_nchw, to_uint8
from pipeline.core.runtime import resolve_device, resolve_precision
from pipeline.data import cifar10
from pipeline.evaluation.reconstruction import pixel_metrics, psnr
from pipeline.features.files import read_feature_info
from pipeline.params import DEFAULT_PARAMS, load_params
from pipeline.paths import FEATURES, RAW
from pipeline.tokenizer import decoder_training as dt
from pipeline.tokenizer.decoder import DecoderConfig, InverseCNN


def grids(features: np.ndarray, idx, device: torch.device) -> torch.Tensor:
    """float16 (N, g, g, C) rows -> float32 (n, C, g, g) on device."""
    return torch.from_numpy(features[idx]).to(device).permute(0, 3, 1, 2).float()


def reconstruct(model: InverseCNN, features: np.ndarray, batch_size: int, device: torch.device) -> np.ndarray:
    """uint8 (N, 32, 32, 3) images the decoder makes of feature grids (N, g, g, C)."""
    model.eval()
    with torch.no_grad():
        out = [
            to_uint8(model(grids(features, slice(i, i + batch_size), device)))
            for i in range(0, len(features), batch_size)
        ]
    return np.concatenate(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=Path, default=DEFAULT_PARAMS)
    args = ap.parse_args()
    params = load_params(args.params)
    p = params.decoder.model_copy(update={"select": "psnr"})  # the ceiling's curve is PSNR only
    device = resolve_device(p.device)
    precision = resolve_precision(p.precision, device, "decoder.precision")
    info = read_feature_info(FEATURES)
    with h5py.File(FEATURES, "r") as f:
        train_x, val_x = f["train/features"][:], f["val/features"][:]
    train, val = cifar10.read_split(RAW, "train"), cifar10.read_split(RAW, "val")
    grid, dim = info.layout.grid_h, info.layout.dim
    print(
        f"{FEATURES}: {info.layout.encoder} {info.layers}, {dim} dims on a {grid}x{grid} grid; "
        f"decoder {p.channels} ch, {p.res_blocks} blocks, {p.epochs} epoch(s), {precision} on {device}"
    )

    config = DecoderConfig(in_channels=dim, grid=grid, k=1, channels=p.channels, res_blocks=p.res_blocks)
    with torch.random.fork_rng(devices=[]):  # the stage's seeded initial weights
        torch.manual_seed(p.seed)
        model = InverseCNN(config).to(device)
    perceptual = None
    if p.perceptual_weight > 0:
        perceptual = dt.feature_loss(info.layout.encoder, info.layers, grid, info.attrs, info.mean, info.std, device)

    def batch(idx: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = idx.cpu().numpy()
        return grids(train_x, idx, device), to_float_nchw(train.images[idx], device)

    curve = slice(0, dt.CURVE_IMAGES)  # the stage's PSNR curve, on the features of the same val images
    t0 = time.perf_counter()
    run = dt.fit_decoder(
        p,
        model,
        len(train_x),
        batch,
        lambda: {"val_psnr_db": psnr(val.images[curve], reconstruct(model, val_x[curve], p.batch_size, device))},
        None,
        device,
        precision,
        dt.training_loss(p, perceptual),
    )
    ceiling = pixel_metrics(val.images, reconstruct(run.model, val_x, p.batch_size, device))
    print(f"trained in {time.perf_counter() - t0:.0f} s; best epoch {run.best['epoch']} of {run.epoch}")
    print(f"val PSNR from the features (no quantisation): {ceiling['psnr_db']:.2f} dB, SSIM {ceiling['ssim']:.3f}")
    print("compare: val_psnr_db of metrics/decoder.json from the same extract and decoder params (dvc metrics show)")


if __name__ == "__main__":
    main()
