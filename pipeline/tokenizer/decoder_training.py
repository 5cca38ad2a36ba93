"""Train the inverse-CNN decoder on (centroid grid, original image) pairs, resumably.

Inputs: tokens.h5 (train/test token grids), the codebook centroids, features.h5 (which
encoder/layers/grid made the tokens, and the standardisation stats) and the raw images. The decoder
sees each token replaced by its centroid - exactly what a GPT sample yields - and learns to output
the original image. With decoder.token_noise, a fraction of each training grid's codes is first swapped
for random ones (validation is always on the true codes).

Loss: pixel L1/MSE + perceptual_weight x MSE between the frozen encoder's standardised features of
the reconstruction and of the original (the same encoder, layers, grid and stats as extract).

The loop is the GPT trainer's convention: the learning rate is set explicitly at every step
(`schedule.lr_at`), the batch order of epoch e comes from a generator seeded with (seed, e), and after
every epoch the model, optimizer, epoch, step and history go into one checkpoint
(`core.checkpoint`), reused only by the same params, inputs and code. So a resumed run reproduces an
uninterrupted one exactly on CPU.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from pipeline.core.checkpoint import Checkpoint, run_fingerprint
from pipeline.core.errors import PipelineError
from pipeline.core.hashing import sha256_file
from pipeline.core.images import tile_rows, to_float_nchw
from pipeline.core.plots import write_csv
from pipeline.core.progress import Eta
from pipeline.core.runtime import adamw, autocast, grad_scaler
from pipeline.core.schedule import lr_at
from pipeline.data import cifar10
from pipeline.evaluation.reconstruction import psnr
from pipeline.features.encoders import build_encoder
from pipeline.features.extract import GridSpec, grid_features
from pipeline.features.files import read_feature_info
from pipeline.params import DecoderParams
from pipeline.tokenizer import files as token_io
from pipeline.tokenizer.decoder import DecoderConfig, InverseCNN
from pipeline.tokenizer.decoding import TokenDecoder
from pipeline.tokenizer.palette import palette_decode

log = logging.getLogger(__name__)

CURVE_IMAGES = 1000  # validation images decoded after each epoch for the PSNR curve
POSTFIX_EVERY = 10  # reading the loss synchronises a GPU: only now and then


@dataclass
class DecoderInputs:
    centroids: torch.Tensor  # float32 (K, C), standardised feature space
    codebook_sha256: str
    encoder: str
    layers: list[str]
    grid: int
    codes_per_cell: int  # D tokens per grid cell (tokens.h5)
    feature_attrs: dict  # features.h5 attrs (encoder, layers, grid, input_size, pool, ...)
    mean: np.ndarray | None  # features.h5 stats (C,), None when not standardised
    std: np.ndarray | None
    train_tokens: np.ndarray  # uint16 (N, g*g*D)
    train_images: np.ndarray  # uint8 (N, 32, 32, 3)
    val_tokens: np.ndarray  # the validation split: per-epoch curve and the stage's metrics
    val_images: np.ndarray
    val_labels: np.ndarray
    input_hashes: dict[str, str]  # file -> sha256: a checkpoint from other inputs is not resumed

    @property
    def is_palette(self) -> bool:
        """One RGB colour per token (the classic demo): decoded by lookup, nothing to train. Pixel patches
        (encoder `pixels` folded to a coarser grid, e.g. 4x4x3 = 48 dims) train the inverse CNN like features."""
        return self.encoder == "pixels" and self.centroids.shape[1] == 3


def load_inputs(tokens_path: Path, codebook_path: Path, features_path: Path, raw_path: Path) -> DecoderInputs:
    """Read every input and check they belong together (codebook, grid, dims, k, encoder, image order)."""
    meta = token_io.read_meta(tokens_path)
    centroids = token_io.load_codebook(codebook_path)
    info = read_feature_info(features_path)
    mean = info.mean
    fix = "the inputs come from different runs: re-run extract and codebook (dvc repro codebook)"
    grid = info.layout.grid_h
    checks = [
        (meta.grid_h == meta.grid_w == grid, f"{tokens_path} grid {meta.grid_h}x{meta.grid_w} vs {features_path} grid {grid}"),
        (meta.k == len(centroids), f"{tokens_path} k={meta.k} vs {codebook_path} {len(centroids)} centroids"),
        (meta.feature_dim == centroids.shape[1], f"{tokens_path} feature_dim={meta.feature_dim} vs {codebook_path} dim {centroids.shape[1]}"),
        (meta.encoder == info.layout.encoder, f"{tokens_path} encoder {meta.encoder!r} vs {features_path} encoder {info.layout.encoder!r}"),
        (mean is None or len(mean) == centroids.shape[1], f"{features_path} stats have {0 if mean is None else len(mean)} channels vs {codebook_path} dim {centroids.shape[1]}"),
    ]  # fmt: skip
    for ok, what in checks:
        if not ok:
            raise PipelineError(f"decoder inputs disagree: {what}; {fix}")
    token_io.check_same_codebook({str(codebook_path): token_io.centroids_sha256(centroids)}, str(tokens_path), meta)
    splits = {}
    for split in ("train", "val"):
        toks = token_io.read_split(tokens_path, split, meta)
        raw = cifar10.read_split(raw_path, split)
        token_io.check_aligned(toks, raw.images, raw.labels, tokens_path, raw_path, split)
        splits[split] = (toks.tokens.numpy().astype(np.uint16), raw)
    return DecoderInputs(
        centroids=torch.from_numpy(centroids).float(), codebook_sha256=meta.codebook_sha256,
        encoder=meta.encoder, layers=info.layers, grid=grid, codes_per_cell=meta.codes_per_cell, feature_attrs=info.attrs,
        mean=mean, std=info.std, train_tokens=splits["train"][0], train_images=splits["train"][1].images,
        val_tokens=splits["val"][0], val_images=splits["val"][1].images, val_labels=splits["val"][1].labels,
        input_hashes={str(p): sha256_file(p) for p in (tokens_path, codebook_path, raw_path)},
    )  # fmt: skip


def palette_colours(inputs: DecoderInputs) -> torch.Tensor:
    """The pixel tokenizer's palette as RGB in [0, 1] (centroids with the standardisation undone)."""
    c = inputs.centroids.numpy()
    if c.shape[1] != 3:
        raise PipelineError(f"encoder 'pixels' needs RGB centroids (K, 3), got {c.shape}; re-run the codebook stage")
    # palette_decode on the identity "image" 0..K-1 gives each code's colour, de-standardised.
    rgb = palette_decode(np.arange(len(c))[:, None], c, 1, inputs.mean, inputs.std).reshape(len(c), 3)
    return torch.from_numpy(rgb.astype(np.float32) / 255.0)


class FeatureLoss(nn.Module):
    """MSE between standardised encoder features of a reconstruction and of its original."""

    def __init__(self, features: Callable[[torch.Tensor], torch.Tensor], mean, std):
        super().__init__()
        self.features = features  # float [0, 1] (N, 3, 32, 32) -> (N, C, g, g), differentiable
        shape = (1, -1, 1, 1)
        self.register_buffer("mean", torch.zeros(1) if mean is None else torch.as_tensor(mean).view(shape))
        self.register_buffer("std", torch.ones(1) if std is None else torch.as_tensor(std).view(shape))

    def _standardised(self, images: torch.Tensor) -> torch.Tensor:
        return (self.features(images).float() - self.mean) / self.std

    def forward(self, reconstruction: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = self._standardised(original)
        return F.mse_loss(self._standardised(reconstruction), target)


class GridFeatures(nn.Module):
    """Differentiable twin of extract's features (same resize, encoder layers and pooling)."""

    def __init__(self, encoder: nn.Module, spec: GridSpec):
        super().__init__()
        self.encoder, self.spec = encoder, spec

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return grid_features(self.encoder, images, self.spec).permute(0, 3, 1, 2)


def feature_loss(encoder: str, layers: list[str], grid: int, attrs: dict, mean, std, device: torch.device) -> FeatureLoss:
    """The perceptual loss through the encoder, layers, grid, input size, pooling and stats that made features.h5."""
    spec = GridSpec(tuple(layers), grid, int(attrs["input_size"]), str(attrs["pool"]))
    return FeatureLoss(GridFeatures(build_encoder(encoder), spec), mean, std).to(device)


def build_feature_loss(inputs: DecoderInputs, device: torch.device) -> FeatureLoss:
    return feature_loss(inputs.encoder, inputs.layers, inputs.grid, inputs.feature_attrs, inputs.mean, inputs.std, device)


@dataclass
class TrainResult:
    model: InverseCNN
    history: list[dict] = field(default_factory=list)  # per epoch: epoch, train_loss, val_psnr_db
    train_seconds: float = 0.0


def _pixel_loss(kind: str) -> Callable:
    return F.l1_loss if kind == "l1" else F.mse_loss


def training_loss(p: DecoderParams, feature_loss: nn.Module | None) -> Callable:
    """(reconstruction, original) -> p's pixel loss, plus perceptual_weight x `feature_loss` when both are set."""
    pixel_loss = _pixel_loss(p.pixel_loss)
    if feature_loss is None or p.perceptual_weight <= 0:
        return pixel_loss
    return lambda out, target: pixel_loss(out, target) + p.perceptual_weight * feature_loss(out, target)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The decoder's batch order in epoch `epoch`: a permutation of n seeded by (seed, epoch), so resuming repeats it."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def perturb_tokens(tokens: torch.Tensor, fraction: float, k: int, seed: int, step: int, codes_per_cell: int = 1) -> torch.Tensor:
    """`tokens` with each code, with probability `fraction`, swapped for one drawn uniformly from its level's
    k / codes_per_cell codes (decoder.token_noise): a decoder trained on such grids learns not to trust every
    code, as a GPT sample has wrong ones. Drawn from a generator seeded by (seed, step), so a resumed run draws
    the same noise."""
    if fraction == 0:
        return tokens
    g = torch.Generator(device=tokens.device).manual_seed(seed * 1_000_003 + step)
    swap = torch.rand(tokens.shape, generator=g, device=tokens.device) < fraction
    level_k = k // codes_per_cell
    drawn = torch.randint(0, level_k, tokens.shape, generator=g, device=tokens.device)
    if codes_per_cell > 1:  # a cell's codes are adjacent: position t holds level t % D, ids from level * level_k
        drawn += (torch.arange(tokens.shape[1], device=tokens.device) % codes_per_cell) * level_k
    return torch.where(swap, drawn, tokens)


def training_step(model: InverseCNN, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                  grid: torch.Tensor, target: torch.Tensor, loss_fn: Callable, precision: str) -> torch.Tensor:
    """One update on a batch of input grids (N, C, g, g) and their original images (float NCHW); the detached
    loss. The stage's grids are centroids (`model.embed(tokens)`); tokenizer_ceiling's are the features."""
    with autocast(target.device, precision):
        loss = loss_fn(model(grid).float(), target)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


def train_decoder(
    p: DecoderParams,
    inputs: DecoderInputs,
    checkpoint_dir: Path,
    device: torch.device,
    precision: str,
    code: str,
    feature_loss: nn.Module | None = None,
    slow_hint: str = "",
    on_epoch_end: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train (or resume) the decoder for p.epochs; checkpoint after every epoch. `precision` is
    p.precision resolved for `device` (`runtime.resolve_precision`). `code` identifies the training code
    (hashing.code_sha256): a checkpoint written by other code is not resumed."""
    config = DecoderConfig(
        in_channels=inputs.centroids.shape[1], grid=inputs.grid, k=len(inputs.centroids),
        channels=p.channels, res_blocks=p.res_blocks, codes_per_cell=inputs.codes_per_cell,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):  # seeded initial weights, the caller's RNG untouched
        torch.manual_seed(p.seed)
        model = InverseCNN(config, inputs.centroids).to(device)
    optimizer = adamw(model.parameters(), device, lr=p.lr, weight_decay=p.weight_decay)
    scaler = grad_scaler(device, precision)
    n = len(inputs.train_tokens)
    steps_per_epoch = math.ceil(n / p.batch_size)
    total_steps = steps_per_epoch * p.epochs
    params = p.model_dump(exclude={"device"}) | {"precision": precision}  # as resolved on this device
    ckpt = Checkpoint(checkpoint_dir, run_fingerprint(params, inputs.input_hashes, code), "decoder")
    result, start_epoch, step = TrainResult(model), 0, 0
    if (state := ckpt.load()) is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler.is_enabled():
            scaler.load_state_dict(state["scaler"])
        start_epoch, step = int(state["epoch"]), int(state["step"])
        result.history, result.train_seconds = list(state["history"]), float(state["train_seconds"])

    tokens = torch.from_numpy(inputs.train_tokens.astype(np.int64)).to(device)
    images = torch.from_numpy(inputs.train_images).to(device)  # uint8 NHWC; converted per batch
    curve_tokens, curve_images = inputs.val_tokens[:CURVE_IMAGES], inputs.val_images[:CURVE_IMAGES]
    loss_fn = training_loss(p, feature_loss)
    use_features = feature_loss is not None and p.perceptual_weight > 0
    eta = Eta("decoder", total_steps - step, "steps", slow_minutes=15, slow_hint=slow_hint)
    log.info(
        "decoder: %s, %.2f M params, %d epochs x %d steps on %s (%s), loss %s%s",
        config, sum(q.numel() for q in model.parameters()) / 1e6, p.epochs, steps_per_epoch, device, precision,
        p.pixel_loss, f" + {p.perceptual_weight} x perceptual" if use_features else "",
    )  # fmt: skip
    for epoch in range(start_epoch, p.epochs):
        t0 = time.perf_counter()
        model.train()
        order = epoch_order(n, p.seed, epoch).to(device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        bar = tqdm(range(steps_per_epoch), desc=f"decoder epoch {epoch + 1}/{p.epochs}", unit="batch", leave=False)
        for i in bar:
            lr = p.lr * lr_at(step, total_steps, p.warmup_steps, 1.0, 0.0)  # warm-up, cosine to 0
            for group in optimizer.param_groups:
                group["lr"] = lr
            idx = order[i * p.batch_size : (i + 1) * p.batch_size]
            grid = model.embed(perturb_tokens(tokens[idx], p.token_noise, config.k, p.seed, step, config.codes_per_cell))
            loss = training_step(model, optimizer, scaler, grid, to_float_nchw(images[idx], device), loss_fn, precision)
            step += 1
            loss_sum += loss.double() * len(idx)
            if i % POSTFIX_EVERY == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}")
            eta.update(1)
        decoder = TokenDecoder("cnn", config.grid, config.k, model=model)
        val_psnr = psnr(curve_images, decoder.decode(curve_tokens, p.batch_size, device, precision))
        result.train_seconds += time.perf_counter() - t0
        result.history.append({"epoch": epoch + 1, "train_loss": loss_sum.item() / n, "val_psnr_db": val_psnr})
        log.info("decoder epoch %d/%d: train loss %.4f, val PSNR %.2f dB (first %d val images)",
                 epoch + 1, p.epochs, result.history[-1]["train_loss"], val_psnr, len(curve_images))  # fmt: skip
        ckpt.save({
            "epoch": epoch + 1, "step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(), "history": result.history, "train_seconds": result.train_seconds,
        })  # fmt: skip
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1)
    return result


def reconstruction_grid(originals: np.ndarray, reconstructions: np.ndarray, columns: int = 16, pairs: int = 2) -> np.ndarray:
    """uint8 image: `pairs` x (a row of originals above the row of their reconstructions)."""
    n = min(len(originals), columns * pairs)
    rows = [src[r : min(r + columns, n)] for r in range(0, n, columns) for src in (originals, reconstructions)]
    return tile_rows(rows, columns)


def write_history_csv(history: list[dict], target: Path) -> None:
    rows = [(h["epoch"], f"{h['train_loss']:.6f}", f"{h['val_psnr_db']:.4f}") for h in history]
    write_csv(target, ("epoch", "train_loss", "val_psnr_db"), rows)
