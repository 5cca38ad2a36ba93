"""Train the inverse-CNN decoder on (centroid grid, original image) pairs, resumably; evaluate it.

Inputs: tokens.h5 (train/test token grids), the codebook centroids, features.h5's attrs (which
encoder/layers/grid made the tokens, and the standardisation stats) and the raw images. The decoder
sees each token replaced by its centroid - exactly what a GPT sample yields - and learns to output
the original image.

Loss: pixel L1/MSE + perceptual_weight x MSE between the frozen encoder's standardised features of
the reconstruction and of the original (the same encoder, layers, grid and stats as extract).

Resume: after every epoch the model, optimizer, scheduler, RNG states, epoch, history and elapsed
time go atomically into checkpoint_dir/last.pt. A rerun with the same params and inputs continues
from it; the batch order of epoch e is drawn from a generator seeded with (seed, e), so a resumed run
reproduces an uninterrupted one exactly on CPU. A checkpoint from other params/inputs is ignored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from pipeline import cifar10, tokens as token_io
from pipeline.atomic import atomic_path
from pipeline.classifier import to_float_nchw
from pipeline.codebook import load_codebook, palette_decode
from pipeline.decoder import DecoderConfig, InverseCNN
from pipeline.encoders import build_encoder
from pipeline.errors import PipelineError
from pipeline.features import GridSpec, grid_features
from pipeline.hashing import sha256_file
from pipeline.image_metrics import psnr
from pipeline.params import CPU_PRESET, CPU_PRESET_COMMAND, DecoderParams
from pipeline.plots import write_csv
from pipeline.runtime import autocast, resolve_device, seed_everything
from pipeline.schedule import lr_at
from pipeline.token_decoding import TokenDecoder

log = logging.getLogger(__name__)

CHECKPOINT = "last.pt"
CURVE_IMAGES = 1000  # test images decoded after each epoch for the PSNR curve
ESTIMATE_AFTER = 10  # batches timed before the up-front total-time estimate
SLOW_MINUTES = 15  # estimates above this on CPU point at the CPU preset


@dataclass
class DecoderInputs:
    centroids: torch.Tensor  # float32 (K, C), standardised feature space
    encoder: str
    layers: list[str]
    grid: int
    feature_attrs: dict  # features.h5 attrs (encoder, layers, grid, input_size, normalization, ...)
    mean: np.ndarray | None  # features.h5 stats (C,), None when not standardised
    std: np.ndarray | None
    train_tokens: np.ndarray  # uint16 (N, g*g)
    train_images: np.ndarray  # uint8 (N, 32, 32, 3)
    test_tokens: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    fingerprint: str  # identifies the inputs: a checkpoint from other inputs is not resumed

    @property
    def is_pixels(self) -> bool:
        return self.encoder == "pixels"


def _read_feature_attrs(path: Path) -> tuple[dict, np.ndarray | None, np.ndarray | None]:
    if not path.is_file():
        raise PipelineError(f"{path}: features not found; run the extract stage (dvc repro extract)")
    with h5py.File(path, "r") as f:
        attrs = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in f.attrs.items()}
        missing = [a for a in ("encoder", "layers", "grid", "standardized") if a not in attrs]
        if missing:
            raise PipelineError(f"{path}: attrs {missing} missing; re-run the extract stage")
        mean = std = None
        if attrs["standardized"]:
            if "stats/mean" not in f or "stats/std" not in f:
                raise PipelineError(f"{path}: standardized but no stats/mean, stats/std; re-run the extract stage")
            mean, std = f["stats/mean"][()].astype(np.float32), f["stats/std"][()].astype(np.float32)
    attrs["layers"] = [str(x) for x in np.atleast_1d(attrs["layers"])]
    return attrs, mean, std


def load_inputs(tokens_path: Path, codebook_path: Path, features_path: Path, raw_path: Path) -> DecoderInputs:
    """Read every input and check they belong together (grid, dims, k, encoder, image order)."""
    meta = token_io.read_meta(tokens_path)
    centroids = torch.from_numpy(load_codebook(codebook_path)).float()
    attrs, mean, std = _read_feature_attrs(features_path)
    fix = "the inputs come from different runs: re-run extract and codebook (dvc repro codebook)"
    grid = int(attrs["grid"])
    checks = [
        (meta.grid_h == meta.grid_w == grid, f"{tokens_path} grid {meta.grid_h}x{meta.grid_w} vs {features_path} grid {grid}"),
        (meta.k == len(centroids), f"{tokens_path} k={meta.k} vs {codebook_path} {len(centroids)} centroids"),
        (meta.feature_dim == centroids.shape[1], f"{tokens_path} feature_dim={meta.feature_dim} vs {codebook_path} dim {centroids.shape[1]}"),
        (meta.encoder == str(attrs["encoder"]), f"{tokens_path} encoder {meta.encoder!r} vs {features_path} encoder {attrs['encoder']!r}"),
        (mean is None or len(mean) == centroids.shape[1], f"{features_path} stats have {0 if mean is None else len(mean)} channels vs {codebook_path} dim {centroids.shape[1]}"),
    ]  # fmt: skip
    for ok, what in checks:
        if not ok:
            raise PipelineError(f"decoder inputs disagree: {what}; {fix}")
    splits = {}
    for split in ("train", "test"):
        toks = token_io.read_split(tokens_path, split, meta)
        raw = cifar10.read_split(raw_path, split)
        token_io.check_aligned(toks, raw.images, raw.labels, tokens_path, raw_path, split)
        splits[split] = (toks.tokens.numpy().astype(np.uint16), raw)
    digest = hashlib.sha256()
    for path in (tokens_path, codebook_path, raw_path):
        digest.update(sha256_file(path).encode())
    return DecoderInputs(
        centroids=centroids, encoder=meta.encoder, layers=attrs["layers"], grid=grid, feature_attrs=attrs,
        mean=mean, std=std, train_tokens=splits["train"][0], train_images=splits["train"][1].images,
        test_tokens=splits["test"][0], test_images=splits["test"][1].images, test_labels=splits["test"][1].labels,
        fingerprint=digest.hexdigest(),
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


def build_feature_loss(inputs: DecoderInputs, device: torch.device) -> FeatureLoss:
    attrs = inputs.feature_attrs
    spec = GridSpec(tuple(inputs.layers), inputs.grid, int(attrs["input_size"]), str(attrs.get("pool", "avg")))
    features = GridFeatures(build_encoder(inputs.encoder), spec)
    return FeatureLoss(features, inputs.mean, inputs.std).to(device)


def run_fingerprint(p: DecoderParams, inputs: DecoderInputs) -> str:
    blob = json.dumps({"params": p.model_dump(), "inputs": inputs.fingerprint}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss, "cached": cached},
        "python": random.getstate(),
    }


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    n = s["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    random.setstate(s["python"])


@dataclass
class TrainResult:
    model: InverseCNN
    history: list[dict] = field(default_factory=list)  # per epoch: epoch, train_loss, test_psnr_db
    train_seconds: float = 0.0


def _pixel_loss(kind: str) -> Callable:
    return F.l1_loss if kind == "l1" else F.mse_loss


def train_decoder(
    p: DecoderParams,
    inputs: DecoderInputs,
    checkpoint_dir: Path,
    feature_loss: nn.Module | None = None,
    on_epoch_end: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train (or resume) the decoder for p.epochs; checkpoint after every epoch."""
    device = resolve_device(p.device)
    # bf16 autocast only pays off on GPU; on CPU it is slower and would break bitwise determinism.
    precision = p.precision if device.type == "cuda" else "fp32"
    seed_everything(p.seed)
    config = DecoderConfig(
        in_channels=inputs.centroids.shape[1], grid=inputs.grid, k=len(inputs.centroids),
        channels=p.channels, res_blocks=p.res_blocks,
    )  # fmt: skip
    model = InverseCNN(config, inputs.centroids).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    n = len(inputs.train_tokens)
    steps_per_epoch = math.ceil(n / p.batch_size)
    # LambdaLR scales p.lr by this factor: warm-up, then cosine to 0. partial binds the values now (a
    # lambda would read `total` at call time, and the loop below reuses that name for the loss sum).
    factor = partial(lr_at, total=steps_per_epoch * p.epochs, warmup_steps=p.warmup_steps, lr=1.0, min_lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    fingerprint = run_fingerprint(p, inputs)
    result = TrainResult(model)
    start_epoch = _resume(checkpoint_dir / CHECKPOINT, fingerprint, model, optimizer, scheduler, result)

    tokens = torch.from_numpy(inputs.train_tokens.astype(np.int64)).to(device)
    images = torch.from_numpy(inputs.train_images).to(device)  # uint8 NHWC; converted per batch
    curve_tokens, curve_images = inputs.test_tokens[:CURVE_IMAGES], inputs.test_images[:CURVE_IMAGES]
    pixel_loss = _pixel_loss(p.pixel_loss)
    use_features = feature_loss is not None and p.perceptual_weight > 0
    log.info(
        "decoder: %s, %.2f M params, %d epochs x %d steps on %s (%s), loss %s%s",
        config, sum(q.numel() for q in model.parameters()) / 1e6, p.epochs, steps_per_epoch, device, precision,
        p.pixel_loss, f" + {p.perceptual_weight} x perceptual" if use_features else "",
    )  # fmt: skip
    for epoch in range(start_epoch, p.epochs):
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(n, generator=torch.Generator().manual_seed(p.seed * 100_003 + epoch)).to(device)
        total, seen = 0.0, 0
        bar = tqdm(range(steps_per_epoch), desc=f"decoder epoch {epoch + 1}/{p.epochs}", unit="batch", leave=False)
        for step in bar:
            idx = order[step * p.batch_size : (step + 1) * p.batch_size]
            target = to_float_nchw(images[idx], device)
            with autocast(device, precision):
                out = model(model.embed(tokens[idx])).float()
                loss = pixel_loss(out, target)
                if use_features:
                    loss = loss + p.perceptual_weight * feature_loss(out, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
            bar.set_postfix(loss=f"{total / seen:.4f}")
            if epoch == start_epoch and step + 1 == ESTIMATE_AFTER:
                _log_estimate((time.perf_counter() - t0) / ESTIMATE_AFTER, steps_per_epoch * (p.epochs - epoch), device)
        test_psnr = psnr(curve_images, TokenDecoder("cnn", config.grid, config.k, model=model).decode(
            curve_tokens, p.batch_size, device, precision))
        result.train_seconds += time.perf_counter() - t0
        result.history.append({"epoch": epoch + 1, "train_loss": total / seen, "test_psnr_db": test_psnr})
        log.info("decoder epoch %d/%d: train loss %.4f, test PSNR %.2f dB (first %d test images)",
                 epoch + 1, p.epochs, total / seen, test_psnr, len(curve_images))  # fmt: skip
        _save_checkpoint(checkpoint_dir / CHECKPOINT, fingerprint, epoch + 1, model, optimizer, scheduler, result)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1)
    return result


def _log_estimate(seconds_per_step: float, steps_left: int, device: torch.device) -> None:
    minutes = seconds_per_step * steps_left / 60
    log.info("decoder: %.3f s/batch -> about %.1f min for the remaining %d batches", seconds_per_step, minutes, steps_left)
    if device.type == "cpu" and minutes > SLOW_MINUTES:
        log.warning(
            "decoder: ~%.0f min of training on CPU with these (GPU-sized) params; for a CPU run use the CPU "
            "preset %s (smaller decoder, fewer epochs): %s", minutes, CPU_PRESET, CPU_PRESET_COMMAND,
        )  # fmt: skip


def _save_checkpoint(path: Path, fingerprint: str, epoch: int, model, optimizer, scheduler, result: TrainResult) -> None:
    state = {
        "fingerprint": fingerprint,
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": _rng_state(),
        "history": result.history,
        "train_seconds": result.train_seconds,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _resume(path: Path, fingerprint: str, model, optimizer, scheduler, result: TrainResult) -> int:
    """Load a matching checkpoint into the objects; return the epoch to start from."""
    if not path.is_file():
        return 0
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt checkpoint must not block a fresh run
        log.warning("decoder: ignoring unreadable checkpoint %s (%s); training from scratch", path, e)
        return 0
    if state.get("fingerprint") != fingerprint:
        log.info("decoder: checkpoint %s is from other params or inputs; training from scratch", path)
        return 0
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"])
    result.history = list(state["history"])
    result.train_seconds = float(state["train_seconds"])
    log.info("decoder: resuming from %s after epoch %d", path, state["epoch"])
    return int(state["epoch"])


def reconstruction_grid(originals: np.ndarray, reconstructions: np.ndarray, columns: int = 16, pairs: int = 2) -> np.ndarray:
    """uint8 image: `pairs` x (a row of originals above the row of their reconstructions), 1 px gaps."""
    n = min(len(originals), columns * pairs)
    rows = []
    for r in range(0, n, columns):
        for src in (originals, reconstructions):
            row = np.full((34, columns * 34, 3), 255, np.uint8)
            for c, img in enumerate(src[r : min(r + columns, n)]):
                row[1:33, c * 34 + 1 : c * 34 + 33] = img
            rows.append(row)
    return np.concatenate(rows)


def write_png(image: np.ndarray, target: Path) -> None:
    from PIL import Image

    with atomic_path(target) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def write_history_csv(history: list[dict], target: Path) -> None:
    rows = [(h["epoch"], f"{h['train_loss']:.6f}", f"{h['test_psnr_db']:.4f}") for h in history]
    write_csv(target, ("epoch", "train_loss", "test_psnr_db"), rows)
