"""How long the whole pipeline will take on this CPU, projected before it runs from short timed probes.

Each long stage's own work is timed for a few steps on this machine, with its threads as they are and in the
precision the stage resolves here (`runtime.resolve_precision`: the same once-per-process matrix-product probe),
then multiplied by what the params ask for: steps x seconds per step, images / images per second. The networks
get random weights (speed does not depend on them), so nothing is downloaded and no stage's output is needed.

What is not projected: process start-up and DVC's own work between stages other than hashing the feature file,
reading and writing HDF5 files other than extract's, the decoder's adversarial term and torch.compile (the probes
time the plain loss, eagerly), and a stage's time on a GPU (the probes run on the CPU only).
`make repro` prints the projection before it starts; `bench/bench_cpu_preset.py` prints it stage by stage.
"""

from __future__ import annotations

import hashlib
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.core.images import to_float_nchw
from pipeline.core.runtime import grad_scaler, resolve_feature_precision, resolve_precision
from pipeline.core.training import train_step
from pipeline.data.cifar10 import Split
from pipeline.evaluation import inception
from pipeline.evaluation.classifier import classify
from pipeline.features.encoders import build_encoder
from pipeline.features.encoders.cifar_resnet import CifarResNet
from pipeline.features.extract import extract_spec, grid_features, has_convs, write_features
from pipeline.gpt.likelihood import mean_nll
from pipeline.gpt.model import GPT, training_inputs
from pipeline.gpt.training import model_config
from pipeline.params import Params
from pipeline.tokenizer import decoder_training as dt
from pipeline.tokenizer import kmeans
from pipeline.tokenizer.decoder import DecoderConfig, InverseCNN
from pipeline.tokenizer.decoding import TokenDecoder
from pipeline.tokenizer.files import TokenMeta, TokenSplit

CPU = torch.device("cpu")
N_CIFAR_TRAIN, N_TEST = 50_000, 10_000  # what a source without expected counts is taken to hold
PROBE_IMAGES = 500  # images per timed extract / decode / classify probe
INCEPTION_BATCH = 10  # Inception is the slowest network per image: a small timed batch
HASH_PROBE_BYTES = 64 * 2**20


@dataclass(frozen=True)
class StageTime:
    stage: str
    seconds: float
    basis: str  # what was timed and how it was scaled, for the log


def timed_seconds(fn: Callable[[], object], repeats: int = 3, warmup: int = 1, budget: float = 5.0) -> float:
    """The median of `repeats` wall-clock calls of `fn` after `warmup` calls (the first pays for kernel choice):
    the fastest call would project a shared or throttled CPU's best moment, not a stage's sustained pace. Once the
    calls so far took `budget` seconds no more are made: a step that slow (the GPU default's GPT on a CPU) is timed
    by the calls already made, the warm-up's if no other."""
    seconds, spent = [], 0.0
    for call in range(warmup + repeats):
        t = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - t
        spent += elapsed
        if call >= warmup:
            seconds.append(elapsed)
        if spent >= budget:
            break
    return float(np.median(seconds or [elapsed]))


def split_sizes(p: Params) -> dict[str, int]:
    """Images per split as the download stage writes them, and what extract encodes (mirrored train too)."""
    all_train, test = p.download.expect_train or N_CIFAR_TRAIN, p.download.expect_test or N_TEST
    train, val = all_train - p.download.val_size, p.download.val_size
    return {"train": train, "val": val, "test": test, "extract": all_train + test + train * p.extract.flip}


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def _random_inception() -> torch.nn.Module:
    """Inception-v3 with random weights (unit variances, so no denormals), in its fast inference form."""
    model = inception.InceptionV3()
    with torch.no_grad():
        for name, t in model.named_parameters():
            t.copy_(torch.ones_like(t) if name.endswith(".var") else torch.randn_like(t) * 0.05)
    return model.eval().requires_grad_(False)


class Probe:
    """The timed probes for params `p`: each method times one stage's work and returns its StageTime."""

    def __init__(self, p: Params):
        self.p = p
        self.sizes = split_sizes(p)
        self.encoder = build_encoder(p.extract.encoder, pretrained=False)
        self.spec = extract_spec(p.extract, self.encoder)
        with torch.no_grad():
            self.dim = grid_features(self.encoder, torch.zeros(1, 3, 32, 32), self.spec).shape[-1]
        self._inception_rate: float | None = None
        self._nll_per_image: float | None = None

    def inception_per_s(self) -> float:
        if self._inception_rate is None:
            precision = resolve_feature_precision(self.p.reference.precision, CPU)
            fast = inception.inference_form(_random_inception(), CPU, precision)
            images = _images(INCEPTION_BATCH)
            with torch.inference_mode():
                run = lambda: inception.inception_features(fast, images, INCEPTION_BATCH, CPU, precision)  # noqa: E731
                self._inception_rate = INCEPTION_BATCH / timed_seconds(run, 2)
        return self._inception_rate

    def inception_images(self) -> dict[str, int]:
        """Images each stage passes through Inception under the params."""
        p, s = self.p, self.sizes
        train = min(p.reference.n_train or s["train"] + s["val"], s["train"] + s["val"])
        curve = min(dt.CURVE_IMAGES, s["val"]) * p.decoder.epochs if p.decoder.select == "fid" else 0
        return {
            "reference": train + min(p.reference.n_test or s["test"], s["test"]),
            "decoder": curve,
            "reconstruct": self.reconstructed(),
            "evaluate": p.evaluate.n_samples,
        }

    def reconstructed(self) -> int:
        return min(self.p.reconstruct.n_images or self.sizes["test"], self.sizes["test"])

    def extract(self) -> StageTime:
        p = self.p.extract
        precision = resolve_precision(p.precision, CPU, "extract.precision")
        n = PROBE_IMAGES
        splits = {"train": Split(_images(n), np.arange(n, dtype=np.uint8) % 10)}
        with tempfile.TemporaryDirectory() as tmp:
            run = lambda: write_features(  # noqa: E731
                Path(tmp, "f.h5"),
                self.encoder,
                splits,
                self.spec,
                batch_size=p.batch_size,
                device=CPU,
                precision=precision,
                standardize=p.standardize,
                channels_last=has_convs(self.encoder),
            )
            rate = n / timed_seconds(run, 1)
        images = self.sizes["extract"]
        # DVC then hashes the float16 feature file it caches (md5), a pass over every byte
        size = images * self.spec.grid**2 * self.dim * 2
        buffer = np.zeros(HASH_PROBE_BYTES, np.uint8)
        hashing = timed_seconds(lambda: hashlib.md5(buffer).digest(), 1) * size / HASH_PROBE_BYTES
        return StageTime(
            "extract",
            images / rate + hashing,
            f"{rate:,.0f} images/s x {images:,} images ({precision}), md5 of {size / 2**30:.1f} GiB",
        )

    def codebook(self) -> StageTime:
        p = self.p.codebook
        search_dim = p.pca_dims or self.dim
        cells = self.spec.grid**2
        n_fit = min(p.sample_size, p.k * p.max_points_per_centroid, self.sizes["train"] * cells)
        probe_n = min(n_fit, 65_536)
        x = np.random.default_rng(0).standard_normal((probe_n, search_dim), dtype=np.float32)
        fit = lambda niter: kmeans.fit_kmeans(x, p.k, niter, 0, p.max_points_per_centroid)  # noqa: E731
        # one iteration's cost: the difference of 3 and 1 iterations, without FAISS's fixed costs
        iteration = max(timed_seconds(lambda: fit(3), 2, 0) - timed_seconds(lambda: fit(1), 2, 0), 0.0) / 2
        iteration *= n_fit / probe_n
        images = max(1, kmeans.ASSIGN_BATCH_VECTORS // cells)
        features = np.random.default_rng(1).standard_normal((images, self.spec.grid, self.spec.grid, search_dim))
        features = features.astype(np.float16)  # as stored in features.h5
        centroids = x[: p.k]
        per_image = timed_seconds(lambda: kmeans.assign(features, centroids), 1) / images
        encoded = self.sizes["extract"]
        return StageTime(
            "codebook",
            iteration * p.niter + per_image * encoded * p.codes_per_cell,
            f"k-means {p.niter} x {iteration:.1f} s, assignment of {encoded:,} images",
        )

    def decoder(self) -> StageTime:
        p = self.p.decoder
        if dt.is_palette(self.p.extract.encoder, self.dim):
            return StageTime("decoder", 0.0, "the palette decoder: a colour lookup, no training")
        precision = resolve_precision(p.precision, CPU, "decoder.precision")
        model = self.decoder_model()
        step_s = timed_seconds(self.decoder_step(model, dt.frozen_features(self.encoder, self.spec), precision))
        steps = math.ceil(self.sizes["train"] / p.batch_size) * p.epochs
        decoded = min(dt.CURVE_IMAGES, self.sizes["val"]) * p.epochs + self.sizes["val"]
        decode = self._decode_per_image(model, p.batch_size, precision) * decoded
        curve_fid = self.inception_images()["decoder"] / self.inception_per_s()
        return StageTime(
            "decoder",
            steps * step_s + decode + curve_fid,
            f"{step_s:.3f} s/step x {steps:,} steps ({precision}), {decoded:,} images decoded",
        )

    def decoder_step(self, model: InverseCNN, features: dt.GridFeatures, precision: str) -> Callable[[], torch.Tensor]:
        """One decoder.* training step of `model` on a batch of random tokens and images, its perceptual loss
        through `features` (the stage's: `dt.frozen_features`)."""
        p, k, grid = self.p.decoder, self.p.codebook.k, self.p.extract.grid
        loss_fn = dt.training_loss(p, dt.FeatureLoss(features, None, None))
        optimizer = torch.optim.AdamW(model.parameters(), lr=p.lr)
        scaler = grad_scaler(CPU, precision)
        tokens = torch.from_numpy(np.random.default_rng(0).integers(0, k, (p.batch_size, grid * grid)))
        target = to_float_nchw(_images(p.batch_size), CPU)
        return lambda: train_step(  # as the stage: the centroid grid is embedded outside autocast
            lambda x, y: loss_fn(model(x).float(), y), (model.embed(tokens), target), optimizer, scaler, CPU, precision
        )

    def decoder_model(self) -> InverseCNN:
        """The decoder.* inverse CNN on random centroids of the feature grid's width."""
        p, k = self.p.decoder, self.p.codebook.k
        config = DecoderConfig(self.dim, self.p.extract.grid, k, p.channels, p.res_blocks)
        return InverseCNN(config, torch.randn(k, self.dim))

    def _decode_per_image(self, model: InverseCNN, batch: int, precision: str) -> float:
        decoder = TokenDecoder("cnn", model.config.grid, model.config.k, model=model)
        tokens = np.random.default_rng(0).integers(0, model.config.k, (PROBE_IMAGES, model.config.grid**2))
        return timed_seconds(lambda: decoder.decode(tokens, batch, CPU, precision), 1) / PROBE_IMAGES

    def _classify_per_image(self) -> float:
        net = CifarResNet(56)  # evaluate.evaluator's default; random weights
        images = _images(PROBE_IMAGES)
        return timed_seconds(lambda: classify(net, images, self.p.reconstruct.batch_size, CPU), 1) / PROBE_IMAGES

    def _gpt(self) -> tuple[GPT, object, str]:
        tr, k, grid = self.p.train, self.p.codebook.k * self.p.codebook.codes_per_cell, self.p.extract.grid
        meta = TokenMeta(k, grid, grid * self.p.codebook.codes_per_cell, 10, tuple(map(str, range(10))), "", 1, "")
        cfg = model_config(tr, meta)
        return GPT(cfg), cfg, resolve_precision(tr.precision, CPU, "train.precision")

    def _batch(self, cfg) -> tuple[torch.Tensor, torch.Tensor]:
        """A training batch of random codes: (codes, the GPT's inputs with their class tokens)."""
        batch = self.p.train.batch_size
        codes = torch.randint(0, cfg.k, (batch, cfg.block_size))
        return codes, training_inputs(codes, cfg.prefix(torch.arange(batch) % 10, batch, CPU))

    def nll_per_image(self) -> float:
        """Seconds of the GPT's likelihood pass per image (train's validation, evaluate's test NLL)."""
        if self._nll_per_image is None:
            tr = self.p.train
            model, cfg, precision = self._gpt()
            split = TokenSplit(self._batch(cfg)[0], torch.arange(tr.batch_size) % 10)
            seconds = timed_seconds(lambda: mean_nll(model, split, 2 * tr.batch_size, CPU, precision), 1)
            self._nll_per_image = seconds / tr.batch_size
        return self._nll_per_image

    def train(self) -> StageTime:
        tr = self.p.train
        model, cfg, precision = self._gpt()
        model.train()
        optimizer = torch.optim.AdamW(model.param_groups(tr.weight_decay), lr=tr.lr, betas=(tr.beta1, tr.beta2))
        scaler = grad_scaler(CPU, precision)
        codes, inputs = self._batch(cfg)
        step = lambda: train_step(  # noqa: E731
            lambda x, y: model(x, y)[1],
            (inputs, codes),
            optimizer,
            scaler,
            CPU,
            precision,
            tr.grad_clip,
            model.parameters(),
        )
        step_s = timed_seconds(step, 5)
        steps = self.sizes["train"] // tr.batch_size * tr.epochs  # flips replace images, they add no steps
        validation = self.nll_per_image() * self.sizes["val"] * tr.epochs
        return StageTime(
            "train",
            steps * step_s + validation,
            f"{step_s:.3f} s/step x {steps:,} steps ({precision}, {tr.batch_size * cfg.block_size / step_s:,.0f} "
            "tokens/s)",
        )

    def sample(self) -> StageTime:
        sp = self.p.sample
        model, cfg, _ = self._gpt()
        model.eval()
        n = cfg.n_classes * sp.n_per_class
        batch = min(sp.batch_size, n, 50)
        labels = torch.arange(batch) % cfg.n_classes if cfg.conditional else None
        with torch.no_grad():
            per = timed_seconds(lambda: model.generate(batch, labels, cfg_scale=sp.cfg_scale, seed=0), 1, 0) / batch
        return StageTime("sample", per * n, f"{n:,} samples at {1 / per:,.0f}/s")

    def inception_stage(self, stage: str, extra: float = 0.0, what: str = "") -> StageTime:
        images = self.inception_images()[stage]
        rate = self.inception_per_s()
        return StageTime(stage, images / rate + extra, f"Inception: {images:,} images at {rate:.1f}/s{what}")

    def all(self) -> list[StageTime]:
        p = self.p
        classify_s = self._classify_per_image()
        n_rec = self.reconstructed()
        decoder = self.decoder()
        rec_decode = self._decode_per_image(self.decoder_model(), p.reconstruct.batch_size, "fp32")  # as scoring.py
        return [
            self.inception_stage("reference"),
            self.extract(),
            self.codebook(),
            decoder,
            self.inception_stage("reconstruct", n_rec * (rec_decode + 2 * classify_s), ", decoding, ResNet-56"),
            self.train(),
            self.sample(),
            self.inception_stage(
                "evaluate",
                p.evaluate.n_samples * classify_s + self.sizes["test"] * self.nll_per_image(),
                ", ResNet-56, the test NLL",
            ),
        ]


def project(p: Params) -> tuple[list[StageTime], float]:
    """(each long stage's projected time on this CPU, seconds the probes took)."""
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        stages = Probe(p).all()
    return stages, time.perf_counter() - t0


def describe(stages: list[StageTime], probe_seconds: float) -> str:
    """The projection as `make repro` prints it: the total, then each stage's minutes."""
    total = sum(s.seconds for s in stages)
    parts = ", ".join(f"{s.stage} {s.seconds / 60:.1f}" for s in stages)
    return (
        f"projected on this CPU: about {total / 60:.0f} min on idle cores ({parts} min; from timed probes of each "
        f"stage's work, {probe_seconds:.0f} s; start-up and DVC's own work between stages not included)"
    )
