"""Train the inverse-CNN decoder on (centroid grid, original image) pairs, resumably.

Inputs: tokens.h5 (train/test token grids), the codebook centroids, features.h5 (which
encoder/layers/grid made the tokens, and the standardisation stats) and the raw images. The decoder
sees each token replaced by its centroid - exactly what a GPT sample yields - and learns to output
the original image. With decoder.token_noise, a fraction of each training grid's codes is first swapped
for random ones (validation is always on the true codes).

Loss: pixel L1/MSE + perceptual_weight x MSE between the frozen encoder's standardised features of
the reconstruction and of the original (the same encoder, layers, grid and stats as extract); with
decoder.adversarial.weight > 0, plus a PatchGAN term from adversarial.start_step on (`adversarial.py`: the
discriminator trains one step after each decoder step, and its state is part of the checkpoint).

The loop is the shared skeleton (`core.training`, as the GPT's): the learning rate is set explicitly at
every step (`schedule.lr_at`), the batch order of epoch e and the token noise of step s come from
generators seeded with `derive_seed` (seed, e) and (seed, s), and after every epoch the model, optimizer,
epoch, step, history and best epoch go into one checkpoint (`core.checkpoint`), reused only by the same
params, inputs and code. So a resumed run reproduces an uninterrupted one exactly on CPU. After each epoch the
first CURVE_IMAGES val images are decoded (the curve); the saved decoder is the curve's epoch with the highest
PSNR, or with decoder.select: fid the lowest Inception FID of those reconstructions against the reference
stage's train statistics (decoder.json: best_epoch): an adversarial term buys realism with PSNR, so selecting
such a decoder by PSNR would keep the epoch before the term started.

`run_decoder` is the stage: it trains (or builds the `pixels` palette decoder), writes the decoder folder,
plots/decoder_loss.csv and plots/reconstructions.png, and returns the metrics the stage writes.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from pipeline.core.atomic import write_json
from pipeline.core.checkpoint import Checkpoint, run_fingerprint
from pipeline.core.errors import PipelineError
from pipeline.core.hashing import sha256_file
from pipeline.core.images import tile_rows, to_float_nchw, write_png
from pipeline.core.plots import write_csv
from pipeline.core.progress import Eta
from pipeline.core.results import Results, minutes
from pipeline.core.runtime import adamw, grad_scaler
from pipeline.core.schedule import lr_at
from pipeline.core.training import Run, Selection, derive_seed, fit, resume, set_lr, train_step
from pipeline.data import cifar10
from pipeline.evaluation import inception
from pipeline.evaluation.reconstruction import pixel_metrics, psnr
from pipeline.evaluation.reference import fid_to, read_reference
from pipeline.features.encoders import Encoder, build_encoder
from pipeline.features.extract import GridSpec, fuse_conv_bn, grid_features
from pipeline.features.files import read_feature_info
from pipeline.params import DecoderParams
from pipeline.tokenizer import files as token_io
from pipeline.tokenizer.adversarial import Adversary, decoder_loss_with
from pipeline.tokenizer.decoder import DecoderConfig, InverseCNN
from pipeline.tokenizer.decoding import TokenDecoder, load_token_decoder, save_cnn_decoder, save_palette_decoder
from pipeline.tokenizer.palette import palette_decode

log = logging.getLogger(__name__)

CURVE_IMAGES = 1000  # validation images decoded after each epoch for the curve (PSNR, and FID when selected by it)
POSTFIX_EVERY = 10  # reading the loss synchronises a GPU: only now and then
SELECTIONS = {  # decoder.select -> the curve value that picks the saved epoch
    "psnr": Selection("val_psnr_db", higher_is_better=True),
    "fid": Selection("val_fid_inception", higher_is_better=False),
}
# derive_seed streams: the batch order per epoch, the token noise per step, the discriminator's initial weights
ORDER_STREAM, NOISE_STREAM, ADVERSARY_STREAM = 0, 1, 2


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
        return is_palette(self.encoder, self.centroids.shape[1])


def is_palette(encoder: str, dim: int) -> bool:
    """One RGB colour per token (the classic demo): decoded by lookup, nothing to train. Pixel patches
    (encoder `pixels` folded to a coarser grid, e.g. 4x4x3 = 48 dims) train the inverse CNN like features."""
    return encoder == "pixels" and dim == 3


def load_inputs(tokens_path: Path, codebook_path: Path, features_path: Path, raw_path: Path) -> DecoderInputs:
    """Read every input and check they belong together (codebook, grid, dims, k, encoder, image order)."""
    meta = token_io.read_meta(tokens_path)
    centroids = token_io.load_codebook(codebook_path)
    info = read_feature_info(features_path)
    mean = info.mean
    fix = "the inputs come from different runs: re-run extract and codebook (dvc repro codebook)"
    grid = info.layout.grid_h
    checks = [
        (
            meta.grid_h == meta.grid_w == grid,
            f"{tokens_path} grid {meta.grid_h}x{meta.grid_w} vs {features_path} grid {grid}",
        ),
        (meta.k == len(centroids), f"{tokens_path} k={meta.k} vs {codebook_path} {len(centroids)} centroids"),
        (
            meta.feature_dim == centroids.shape[1],
            f"{tokens_path} feature_dim={meta.feature_dim} vs {codebook_path} dim {centroids.shape[1]}",
        ),
        (
            meta.encoder == info.layout.encoder,
            f"{tokens_path} encoder {meta.encoder!r} vs {features_path} encoder {info.layout.encoder!r}",
        ),
        (
            mean is None or len(mean) == centroids.shape[1],
            f"{features_path} stats have {0 if mean is None else len(mean)} channels vs {codebook_path} dim {centroids.shape[1]}",
        ),
    ]
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
        centroids=torch.from_numpy(centroids).float(),
        codebook_sha256=meta.codebook_sha256,
        encoder=meta.encoder,
        layers=info.layers,
        grid=grid,
        codes_per_cell=meta.codes_per_cell,
        feature_attrs=info.attrs,
        mean=mean,
        std=info.std,
        train_tokens=splits["train"][0],
        train_images=splits["train"][1].images,
        val_tokens=splits["val"][0],
        val_images=splits["val"][1].images,
        val_labels=splits["val"][1].labels,
        input_hashes={str(p): sha256_file(p) for p in (tokens_path, codebook_path, raw_path)},
    )


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


def frozen_features(encoder: Encoder, spec: GridSpec) -> GridFeatures:
    """GridFeatures through a copy of the frozen `encoder` with its batch norms folded into its convolutions
    (extract's `fuse_conv_bn`): the same function of the image, to rounding, in fewer operations forward and
    backward (bench/bench_decoder.py times the decoder step both ways)."""
    return GridFeatures(fuse_conv_bn(encoder), spec)


def feature_loss(
    encoder: str, layers: list[str], grid: int, attrs: dict, mean, std, device: torch.device
) -> FeatureLoss:
    """The perceptual loss through the encoder, layers, grid, input size, pooling and stats that made features.h5."""
    spec = GridSpec(tuple(layers), grid, int(attrs["input_size"]), str(attrs["pool"]))
    return FeatureLoss(frozen_features(build_encoder(encoder), spec), mean, std).to(device)


def build_feature_loss(inputs: DecoderInputs, device: torch.device) -> FeatureLoss:
    return feature_loss(
        inputs.encoder, inputs.layers, inputs.grid, inputs.feature_attrs, inputs.mean, inputs.std, device
    )


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
    return torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(seed, epoch, ORDER_STREAM)))


def perturb_tokens(
    tokens: torch.Tensor, fraction: float, k: int, seed: int, step: int, codes_per_cell: int = 1
) -> torch.Tensor:
    """`tokens` with each code, with probability `fraction`, swapped for one drawn uniformly from its level's
    k / codes_per_cell codes (decoder.token_noise): a decoder trained on such grids learns not to trust every
    code, as a GPT sample has wrong ones. Drawn from a generator seeded by (seed, step), so a resumed run draws
    the same noise."""
    if fraction == 0:
        return tokens
    g = torch.Generator(device=tokens.device).manual_seed(derive_seed(seed, step, NOISE_STREAM))
    swap = torch.rand(tokens.shape, generator=g, device=tokens.device) < fraction
    level_k = k // codes_per_cell
    drawn = torch.randint(0, level_k, tokens.shape, generator=g, device=tokens.device)
    if codes_per_cell > 1:  # a cell's codes are adjacent: position t holds level t % D, ids from level * level_k
        drawn += (torch.arange(tokens.shape[1], device=tokens.device) % codes_per_cell) * level_k
    return torch.where(swap, drawn, tokens)


def fit_decoder(
    p: DecoderParams,
    model: InverseCNN,
    n: int,
    batch: Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]],
    validate: Callable[[], dict],
    checkpoint: Checkpoint | None,
    device: torch.device,
    precision: str,
    loss_fn: Callable,
    *,
    slow_hint: str = "",
    on_epoch_end: Callable[[int], None] | None = None,
) -> Run:
    """The decoder's loop on any input grids (the stage's centroid grids, tokenizer_ceiling's features):
    p.epochs over `n` training pairs in `epoch_order`, lr = p.lr x warm-up + cosine to 0, the best epoch by
    `validate()`'s value of SELECTIONS[p.select] kept (core.training.fit). `batch(idx, step)` -> (input grids
    (N, C, g, g), original images float NCHW) of the pairs `idx`. `checkpoint` None: no resume and no saving."""
    if p.batch_size > n:  # as train.batch_size: a batch cut to the data would be another run than asked for
        raise PipelineError(f"decoder.batch_size = {p.batch_size} exceeds the {n} training images; lower it")
    optimizer = adamw(model.parameters(), device, lr=p.lr, weight_decay=p.weight_decay)
    adversary = None
    if p.adversarial.weight > 0:
        adversary = Adversary(p.adversarial, device, precision, derive_seed(p.seed, 0, ADVERSARY_STREAM))
    run = Run(model, optimizer, grad_scaler(device, precision), extras={"adversary": adversary} if adversary else {})
    if checkpoint is not None:
        resume(run, checkpoint)
    steps_per_epoch = math.ceil(n / p.batch_size)
    total_steps = steps_per_epoch * p.epochs
    eta = Eta("decoder", total_steps - run.step, "steps", slow_minutes=15, slow_hint=slow_hint)

    objective = decoder_loss_with(adversary, loss_fn)
    latest = []  # the step's reconstructions, which the discriminator's step then sees

    def loss_of(grid: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        latest[:] = [model(grid).float()]
        return objective(latest[0], target, model.last_layer, run.step)

    def train_epoch(epoch: int) -> dict:
        model.train()
        order = epoch_order(n, p.seed, epoch).to(device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        d_sum = torch.zeros((), dtype=torch.float64, device=device)
        bar = tqdm(range(steps_per_epoch), desc=f"decoder epoch {epoch + 1}/{p.epochs}", unit="batch", leave=False)
        for i in bar:
            schedule = lr_at(run.step, total_steps, p.warmup_steps, 1.0, 0.0)  # warm-up, cosine to 0
            set_lr(optimizer, p.lr * schedule)
            idx = order[i * p.batch_size : (i + 1) * p.batch_size]
            grid, target = batch(idx, run.step)
            loss = train_step(loss_of, (grid, target), optimizer, run.scaler, device, precision)
            if adversary is not None and adversary.active(run.step):
                d_sum += adversary.step(target, latest[0], schedule).double() * len(idx)
            run.step += 1
            loss_sum += loss.double() * len(idx)
            if i % POSTFIX_EVERY == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{p.lr * schedule:.2e}")
            eta.update(1)
        record = {"train_loss": loss_sum.item() / n}
        if adversary is not None:  # the discriminator's mean loss (0 before it starts) and the latest lambda x weight
            record |= {"d_loss": d_sum.item() / n, "adversarial_weight": adversary.last_weight}
        return record

    def describe(r: dict, seconds: float) -> str:
        adversarial = (
            f", D loss {r['d_loss']:.3f}, adversarial weight {r['adversarial_weight']:.3g}" if adversary else ""
        )
        fid = f", val FID {r['val_fid_inception']:.2f}" if "val_fid_inception" in r else ""
        return f"train loss {r['train_loss']:.4f}{adversarial}, val PSNR {r['val_psnr_db']:.2f} dB{fid}"

    return fit(
        run,
        checkpoint,
        p.epochs,
        train_epoch,
        validate,
        SELECTIONS[p.select],
        describe=describe,
        on_epoch_end=on_epoch_end,
    )


class CurveFID:
    """The realism the decoder is selected by (decoder.select: fid): Inception FID of the curve's val reconstructions
    against the train statistics of the reference stage's file, under its protocol and precision. Validation
    images against train statistics: the test split stays out of model selection."""

    def __init__(self, reference: Path, device: torch.device, batch_size: int):
        ref = read_reference(reference)
        self.train, self.precision = ref.train, ref.precision
        self.model, self.device, self.batch_size = inception.load_inception(), device, batch_size

    def score(self, reconstructions: np.ndarray) -> dict:
        features = inception.inception_features(
            self.model, reconstructions, self.batch_size, self.device, self.precision
        )
        return {"val_fid_inception": fid_to(features, self.train)}


def curve_realism(p: DecoderParams, reference: Path, device: torch.device) -> CurveFID | None:
    """The scorer decoder.select needs beside the PSNR curve: CurveFID for `fid`, none for `psnr`."""
    return CurveFID(reference, device, p.batch_size) if p.select == "fid" else None


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
    realism: CurveFID | None = None,
) -> Run:
    """Train (or resume) the decoder on the centroid grids of `inputs` for p.epochs; checkpoint after every
    epoch; run.model ends as the curve's best epoch (p.select; `realism` scores the curve for select: fid).
    `precision` is p.precision resolved for `device` (`runtime.resolve_precision`). `code` identifies the
    training code (hashing.code_sha256): a checkpoint written by other code is not resumed."""
    config = DecoderConfig(
        in_channels=inputs.centroids.shape[1],
        grid=inputs.grid,
        k=len(inputs.centroids),
        channels=p.channels,
        res_blocks=p.res_blocks,
        codes_per_cell=inputs.codes_per_cell,
    )
    with torch.random.fork_rng(devices=[]):  # seeded initial weights, the caller's RNG untouched
        torch.manual_seed(p.seed)
        model = InverseCNN(config, inputs.centroids).to(device)
    params = p.model_dump(exclude={"device"}) | {"precision": precision}  # as resolved on this device
    ckpt = Checkpoint(checkpoint_dir, run_fingerprint(params, inputs.input_hashes, code), "decoder")
    tokens = torch.from_numpy(inputs.train_tokens.astype(np.int64)).to(device)
    images = torch.from_numpy(inputs.train_images).to(device)  # uint8 NHWC; converted per batch
    if (p.select == "fid") != (realism is not None):
        raise ValueError(f"decoder.select = {p.select!r} with realism={realism!r}: pass curve_realism(p, ...)")
    curve_tokens, curve_images = inputs.val_tokens[:CURVE_IMAGES], inputs.val_images[:CURVE_IMAGES]
    use_features = feature_loss is not None and p.perceptual_weight > 0
    log.info(
        "decoder: %s, %.2f M params, %d epochs x %d steps on %s (%s), loss %s%s; val PSNR on the first %d val images",
        config,
        sum(q.numel() for q in model.parameters()) / 1e6,
        p.epochs,
        math.ceil(len(tokens) / p.batch_size),
        device,
        precision,
        p.pixel_loss,
        f" + {p.perceptual_weight} x perceptual" if use_features else "",
        len(curve_images),
    )

    def batch(idx: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        noisy = perturb_tokens(tokens[idx], p.token_noise, config.k, p.seed, step, config.codes_per_cell)
        return model.embed(noisy), to_float_nchw(images[idx], device)

    def validate() -> dict:
        decoder = TokenDecoder("cnn", config.grid, config.k, model=model)
        reconstructions = decoder.decode(curve_tokens, p.batch_size, device, precision)
        return {"val_psnr_db": psnr(curve_images, reconstructions)} | (
            realism.score(reconstructions) if realism else {}
        )

    return fit_decoder(
        p,
        model,
        len(tokens),
        batch,
        validate,
        ckpt,
        device,
        precision,
        training_loss(p, feature_loss),
        slow_hint=slow_hint,
        on_epoch_end=on_epoch_end,
    )


@dataclass(frozen=True)
class DecoderPaths:
    tokens: Path
    codebook: Path
    features: Path
    raw: Path
    reference: Path  # the reference stage's Inception statistics (decoder.select: fid)
    model_dir: Path
    checkpoints: Path
    loss_csv: Path  # plots/decoder_loss.csv
    grid_png: Path  # plots/reconstructions.png


def run_decoder(
    p: DecoderParams, paths: DecoderPaths, device: torch.device, precision: str, *, code: str, slow_hint: str = ""
) -> Results:
    """The decoder stage: train the inverse CNN (or build the palette decoder), write the decoder folder, the
    per-epoch curve and the reconstructions grid; returns the validation results (metrics/decoder.json)."""
    inputs = load_inputs(paths.tokens, paths.codebook, paths.features, paths.raw)
    extra = {"encoder": inputs.encoder, "layers": inputs.layers, "codebook_sha256": inputs.codebook_sha256}
    history, train_seconds, best_epoch = [], 0.0, 0
    if inputs.is_palette:
        save_palette_decoder(palette_colours(inputs), paths.model_dir, extra)
        # The checkpoint folder is a declared (persist) output: say why it holds no checkpoint.
        write_json(paths.checkpoints / "palette.json", {"kind": "palette", "note": "no training, no checkpoint"})
    else:
        feature_loss = build_feature_loss(inputs, device) if p.perceptual_weight > 0 else None
        realism = curve_realism(p, paths.reference, device)
        run = train_decoder(
            p, inputs, paths.checkpoints, device, precision, code, feature_loss, slow_hint=slow_hint, realism=realism
        )
        save_cnn_decoder(run.model.cpu(), paths.model_dir, extra | {"precision": precision})
        history, train_seconds, best_epoch = run.history, run.seconds, run.best["epoch"]
    write_history_csv(history, paths.loss_csv)

    t0 = time.perf_counter()
    token_decoder = load_token_decoder(paths.model_dir)
    reconstructions = token_decoder.decode(inputs.val_tokens, p.batch_size, device)
    # classifier scores and rFID: the reconstruct stage, on test
    metrics = {f"val_{k}": v for k, v in pixel_metrics(inputs.val_images, reconstructions).items()}
    if history and "val_fid_inception" in history[0]:  # the kept epoch's, on the curve's CURVE_IMAGES val images
        metrics["val_curve_fid"] = history[best_epoch - 1]["val_fid_inception"]
    metrics |= {"decoder_best_epoch": best_epoch, "decoder_minutes": minutes(train_seconds)}
    info = {
        "split": "val",
        "n_images": len(reconstructions),
        "curve_images": min(CURVE_IMAGES, len(inputs.val_images)),
        "select": p.select,
        "kind": token_decoder.kind,
        "encoder": inputs.encoder,
        "tokens_per_image": int(inputs.val_tokens.shape[1]),
        "k": token_decoder.k,
        "epochs": len(history),
        "eval_minutes": minutes(time.perf_counter() - t0),
        "device": str(device),
        "precision": precision,
    }
    write_png(reconstruction_grid(inputs.val_images, reconstructions), paths.grid_png)
    return Results(metrics, info)


def reconstruction_grid(
    originals: np.ndarray, reconstructions: np.ndarray, columns: int = 16, pairs: int = 2
) -> np.ndarray:
    """uint8 image: `pairs` x (a row of originals above the row of their reconstructions)."""
    n = min(len(originals), columns * pairs)
    rows = [src[r : min(r + columns, n)] for r in range(0, n, columns) for src in (originals, reconstructions)]
    return tile_rows(rows, columns)


def write_history_csv(history: list[dict], target: Path) -> None:
    """The per-epoch curve: train loss and val PSNR, the val FID when selected by it, and the discriminator's
    loss when there is one."""
    optional = [c for c in ("val_fid_inception", "d_loss") if history and c in history[0]]
    columns = ["epoch", "train_loss", "val_psnr_db", *optional]
    formats = {"epoch": "{}", "train_loss": "{:.6f}", "val_psnr_db": "{:.4f}", "val_fid_inception": "{:.4f}"}
    formats["d_loss"] = "{:.6f}"
    write_csv(target, columns, [[formats[c].format(h[c]) for c in columns] for h in history])
