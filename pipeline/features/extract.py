"""Encoder feature grids for whole data sets, streamed to features.h5 (contract: features/files.py).

Each requested layer is average-pooled (or bilinearly resized, when smaller) to grid x grid and the
layers are concatenated on channels in the order given. With standardisation the stored features are
(x - mean) / std with mean/std fitted on the train features in float64; train is first streamed raw
to the file and then standardised in place (the extra fp16 rounding is below bf16 compute noise),
so the encoder runs once and memory stays at one batch.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch.fx.experimental.optimization import fuse
from tqdm import tqdm

from pipeline.core.atomic import atomic_path
from pipeline.core.errors import PipelineError
from pipeline.core.images import to_float_nchw
from pipeline.core.progress import Eta
from pipeline.core.runtime import autocast, resolve_device, resolve_precision
from pipeline.data import cifar10
from pipeline.features.encoders import Encoder, build_encoder, check_layers, default_layers
from pipeline.features.files import FLIP
from pipeline.params import ExtractParams

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20  # ~1 MiB HDF5 chunks
STANDARDIZE_BLOCK = 4096  # images per read-modify-write block of the in-place standardisation
MIN_STD = 1e-6  # dead channels (e.g. always-zero ReLUs) keep std 1 instead of dividing by ~0


@dataclass(frozen=True)
class GridSpec:
    layers: tuple[str, ...]
    grid: int
    input_size: int
    pool: str = "avg"  # "avg" or "unshuffle" (space-to-depth keeps every value of a larger map)


def fuse_conv_bn(encoder: Encoder) -> Encoder:
    """A copy of `encoder` with every conv+BatchNorm pair folded into one conv (eval-mode exact).

    Folding is traced per piece with torch.fx, so only pairs that really run back to back are fused;
    a piece that cannot be traced is kept as it is.
    """
    fused = copy.deepcopy(encoder)
    for name, piece in fused.pieces.items():
        try:
            fused.pieces[name] = fuse(piece)
        except Exception as e:  # noqa: BLE001 - fx raises many types; unfused is still correct
            log.debug("conv-bn fusion skipped for %s.%s: %s", encoder.name, name, e)
    return fused.eval().requires_grad_(False)


def prepare_encoder(encoder: Encoder, device: torch.device, channels_last: bool) -> Encoder:
    """The fast inference form: conv-bn folded, on `device`, optionally channels_last."""
    enc = fuse_conv_bn(encoder).to(device)
    return enc.to(memory_format=torch.channels_last) if channels_last else enc


def to_grid(maps: dict[str, torch.Tensor], grid: int, pool: str = "avg") -> torch.Tensor:
    """Bring each (N, C_i, h, w) map to grid x grid, concatenate on channels -> float32 (N, grid, grid, C).

    A map larger than the grid is average-pooled ("avg") or, with "unshuffle", folded space-to-depth
    (C_i * s^2 channels for an s-times larger map): the colour and layout inside each cell survive,
    which is what a decoder needs to rebuild pixels from shallow layers. A smaller map is resized.
    """
    cells = []
    for name, fmap in maps.items():
        h, w = fmap.shape[-2:]
        if (h, w) != (grid, grid):
            if min(h, w) < grid:
                fmap = F.interpolate(fmap.float(), size=(grid, grid), mode="bilinear", align_corners=False)
            elif pool == "unshuffle":
                if h != w or h % grid:
                    raise PipelineError(
                        f"extract.pool = 'unshuffle' needs layer {name!r} ({h}x{w}) to be a multiple "
                        f"of extract.grid ({grid}); use pool 'avg' or another grid"
                    )
                fmap = F.pixel_unshuffle(fmap, h // grid)
            else:
                # Pooling kernels accumulate in float32 even for bf16 input; converting after pooling
                # touches far fewer values.
                fmap = F.adaptive_avg_pool2d(fmap, grid)
        cells.append(fmap.float())
    return torch.cat(cells, dim=1).permute(0, 2, 3, 1).contiguous()


def layer_channels(encoder: Encoder, spec: GridSpec) -> list[int]:
    """Channels each layer adds to a grid cell, in concatenation order (one blank image through the encoder)."""
    with torch.no_grad():
        maps = encoder(torch.zeros(1, 3, spec.input_size, spec.input_size, device=encoder.mean.device), spec.layers)
    return [int(to_grid({name: fmap}, spec.grid, spec.pool).shape[-1]) for name, fmap in maps.items()]


def grid_features(encoder: Encoder, x: torch.Tensor, spec: GridSpec) -> torch.Tensor:
    """float RGB [0, 1] (B, 3, H, W) -> (B, grid, grid, C): resize to input_size, encoder layers, to_grid."""
    if spec.input_size != x.shape[-1]:
        x = F.interpolate(
            x,
            size=(spec.input_size, spec.input_size),
            mode="bilinear",
            align_corners=False,
            antialias=spec.input_size < x.shape[-1],
        )
    return to_grid(encoder(x, spec.layers), spec.grid, spec.pool)


def encode_batch(
    encoder: Encoder, images_uint8_nhwc, spec: GridSpec, device: torch.device, precision: str, channels_last: bool
) -> torch.Tensor:
    """float32 (B, grid, grid, C) features of one uint8 NHWC batch, on `device`."""
    x = to_float_nchw(images_uint8_nhwc, device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(device, precision):
        return grid_features(encoder, x, spec)


@torch.inference_mode()
def iter_features(
    encoder: Encoder,
    images: np.ndarray,
    spec: GridSpec,
    batch_size: int,
    device: torch.device,
    precision: str,
    channels_last: bool,
    progress: tqdm | None = None,
) -> Iterator[torch.Tensor]:
    """Feature batches (float32 on `device`) for `images`, in order."""
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        feats = encode_batch(encoder, batch, spec, device, precision, channels_last)
        if progress is not None:
            progress.update(len(batch))
        yield feats


class RunningStats:
    """Per-channel mean/std over (N, H, W) of NHWC batches, accumulated in float64."""

    def __init__(self) -> None:
        self.n = 0
        self.sum: torch.Tensor | None = None
        self.sumsq: torch.Tensor | None = None

    def update(self, feats: torch.Tensor) -> None:
        x = feats.reshape(-1, feats.shape[-1])
        # float64 accumulation without a float64 copy of the batch
        s, sq = x.sum(0, dtype=torch.float64), (x * x).sum(0, dtype=torch.float64)
        self.sum = s if self.sum is None else self.sum + s
        self.sumsq = sq if self.sumsq is None else self.sumsq + sq
        self.n += x.shape[0]

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.n:
            raise PipelineError("no train images to fit extract.standardize on; the train split is empty")
        mean = self.sum / self.n
        var = (self.sumsq / self.n - mean * mean).clamp_min(0)
        std = var.sqrt()
        std = torch.where(std < MIN_STD, torch.ones_like(std), std)
        return mean.float().cpu().numpy(), std.float().cpu().numpy()


class _Writer:
    """Writes batches to an HDF5 dataset on one background thread while the encoder runs ahead."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.pending: Future | None = None

    def write(self, dset: h5py.Dataset, start: int, array: np.ndarray) -> None:
        self.wait()  # at most one batch in flight: bounded memory
        self.pending = self.pool.submit(dset.__setitem__, slice(start, start + len(array)), array)

    def wait(self) -> None:
        if self.pending is not None:
            self.pending.result()
            self.pending = None

    def close(self) -> None:
        self.wait()
        self.pool.shutdown()


def _chunk_rows(grid: int, channels: int) -> int:
    return max(1, CHUNK_BYTES // (grid * grid * channels * 2))


def _standardize_in_place(dset: h5py.Dataset, mean: np.ndarray, std: np.ndarray) -> None:
    mean_t, std_t = torch.from_numpy(mean), torch.from_numpy(std)
    for start in range(0, len(dset), STANDARDIZE_BLOCK):
        block = torch.from_numpy(dset[start : start + STANDARDIZE_BLOCK]).float()  # torch: multi-threaded
        dset[start : start + len(block)] = block.sub_(mean_t).div_(std_t).half().numpy()


def _check_finite(feats: torch.Tensor, split: str) -> None:
    # float16 tops out at 65504; an encoder with larger activations must be standardised on the fly.
    # One pass (cheaper than isfinite + abs().max()): NaN propagates into min/max and fails the test.
    low, high = torch.aminmax(feats)
    if not -60000 <= low.item() <= high.item() <= 60000:
        raise PipelineError(f"{split}: encoder features are non-finite or exceed the float16 range of features.h5")


def write_features(
    target: str | Path,
    encoder: Encoder,
    splits: dict,
    spec: GridSpec,
    *,
    batch_size: int,
    device: torch.device,
    precision: str,
    standardize: bool,
    channels_last: bool,
) -> dict:
    """Encode every split (dict name -> cifar10.Split) into `target` atomically; return a summary."""
    if standardize and "train" not in splits:
        raise PipelineError("extract.standardize needs a train split to fit the statistics on")
    for split, data in splits.items():
        if not len(data.images):
            raise PipelineError(f"the raw data's {split} split is empty; re-run the download stage")
    order = sorted(splits, key=lambda s: s != "train")  # train first: its stats standardise the rest
    run = _SplitRun(
        encoder=prepare_encoder(encoder, device, channels_last),
        spec=spec,
        batch_size=batch_size,
        device=device,
        precision=precision,
        channels_last=channels_last,
        total=sum(len(splits[s].images) for s in order),
    )
    run.eta = Eta("extract", run.total, "images", warmup=1, measure=2)
    with atomic_path(target) as tmp, h5py.File(tmp, "w", rdcc_nbytes=64 << 20) as f:
        with tqdm(total=run.total, unit="img", desc=f"extract {encoder.name}", mininterval=2) as run.bar:
            for split in order:
                fit = standardize and split == "train"
                dset = run.encode_split(f, split, splits[split].images, fit_stats=fit)
                f.create_dataset(f"{split}/labels", data=np.asarray(splits[split].labels, dtype=np.uint8))
                if fit:
                    mean, std = run.fit_norm()
                    log.info("standardising train features in place (mean/std fitted on %d vectors)", run.stats.n)
                    _standardize_in_place(dset, mean, std)
                    f.create_dataset("stats/mean", data=mean)
                    f.create_dataset("stats/std", data=std)
        channels = int(f[f"{order[0]}/features"].shape[-1])
        per_layer = layer_channels(encoder, spec)
        if sum(per_layer) != channels:
            raise PipelineError(
                f"extract: layers {list(spec.layers)} add up to {per_layer} channels, features have {channels}"
            )
        f.attrs.update(_attrs(encoder, spec, standardize, precision, device, channels_last, channels, per_layer))
    seconds = time.perf_counter() - run.t0
    return {
        "channels": channels,
        "images": run.total,
        "seconds": seconds,
        "images_per_s": run.total / seconds,
        "precision": precision,
    }


@dataclass
class _SplitRun:
    """State shared by the splits of one extraction: the prepared encoder, progress, train statistics."""

    encoder: Encoder
    spec: GridSpec
    batch_size: int
    device: torch.device
    precision: str
    channels_last: bool
    total: int
    bar: tqdm | None = None
    stats: RunningStats | None = None
    norm: tuple[torch.Tensor, torch.Tensor] | None = None  # (mean, std) on device once fitted
    t0: float = field(default_factory=time.perf_counter)
    eta: Eta | None = None

    def encode_split(self, f: h5py.File, split: str, images: np.ndarray, fit_stats: bool) -> h5py.Dataset:
        """Stream `images`' features into `split/features` (standardised when stats are fitted already)."""
        self.stats = RunningStats() if fit_stats else None
        dset, writer = None, _Writer()
        try:
            batches = iter_features(
                self.encoder,
                images,
                self.spec,
                self.batch_size,
                self.device,
                self.precision,
                self.channels_last,
                self.bar,
            )
            for i, feats in enumerate(batches):
                _check_finite(feats, split)
                if dset is None:
                    shape = (len(images), *feats.shape[1:])
                    chunks = (min(len(images), _chunk_rows(self.spec.grid, feats.shape[-1])), *feats.shape[1:])
                    dset = f.create_dataset(f"{split}/features", shape=shape, dtype=np.float16, chunks=chunks)
                if self.stats is not None:
                    self.stats.update(feats)
                elif self.norm is not None:
                    feats = (feats - self.norm[0]) / self.norm[1]
                writer.write(dset, i * self.batch_size, feats.half().cpu().numpy())
                self.eta.update(len(feats))
        finally:
            writer.close()
        return dset

    def fit_norm(self) -> tuple[np.ndarray, np.ndarray]:
        mean, std = self.stats.mean_std()
        self.norm = (torch.from_numpy(mean).to(self.device), torch.from_numpy(std).to(self.device))
        return mean, std


def _attrs(
    encoder: Encoder,
    spec: GridSpec,
    standardize: bool,
    precision: str,
    device: torch.device,
    channels_last: bool,
    channels: int,
    per_layer: list[int],
) -> dict:
    return {
        "encoder": encoder.name,
        "layers": np.array(spec.layers, dtype=h5py.string_dtype()),
        "grid": spec.grid,
        "input_size": spec.input_size,
        "standardized": standardize,
        "weights_sha256": encoder.weights_sha256,
        "normalization": encoder.normalization,
        "pool": spec.pool,
        "pooling": f"{spec.pool} to grid (bilinear resize when a layer is smaller), concat on channels",
        "channels": channels,
        "layer_channels": np.array(per_layer, dtype=np.int64),  # in the order of `layers`
        "precision": precision,
        "device_type": device.type,
        "channels_last": channels_last,
        "fused_conv_bn": True,
        "torch_version": str(torch.__version__),  # a str subclass h5py cannot store as is
    }


def has_convs(encoder: Encoder) -> bool:
    """channels_last only pays off for convolutions (the identity `pixels` encoder has none)."""
    return any(isinstance(m, torch.nn.Conv2d) for m in encoder.modules())


def extract_spec(p: ExtractParams, encoder: Encoder) -> GridSpec:
    """What the extract stage computes for `p`: its validated layers, grid, input size and pooling."""
    return GridSpec(tuple(check_layers(encoder, default_layers(encoder, p.layers))), p.grid, p.input_size, p.pool)


def run_extract(p: ExtractParams, raw: str | Path, target: str | Path, pretrained: bool = True) -> dict:
    """The extract stage: `p` applied to the raw CIFAR-10 file, written to `target`."""
    encoder = build_encoder(p.encoder, pretrained=pretrained)
    spec = extract_spec(p, encoder)
    if encoder.name == "pixels" and p.standardize:
        raise PipelineError("extract.standardize must be false for encoder 'pixels' (its features are RGB in [0, 1])")
    device = resolve_device(p.device)
    precision = resolve_precision(p.precision, device, "extract.precision")
    splits = {split: cifar10.read_split(raw, split) for split in cifar10.SPLITS}
    if p.flip:  # augmentation: the mirrored train images through the same encoder (grids are not flip-equivariant)
        splits[FLIP] = cifar10.Split(np.ascontiguousarray(splits["train"].images[:, :, ::-1]), splits["train"].labels)
    log.info(
        "extract: %s layers %s -> %dx%d grid at input %d px on %s (%s), %d train + %d test images",
        encoder.name,
        list(spec.layers),
        p.grid,
        p.grid,
        p.input_size,
        device,
        precision,
        len(splits["train"].images),
        len(splits["test"].images),
    )
    return write_stage_features(p, target, encoder, splits, spec, device, precision)


def write_stage_features(
    p: ExtractParams, target, encoder: Encoder, splits: dict, spec: GridSpec, device: torch.device, precision: str
) -> dict:
    """`write_features` as the extract stage calls it (p's batch size and standardisation, channels-last
    convolutions): the product path that bench/bench_extract.py times."""
    options = dict(batch_size=p.batch_size, standardize=p.standardize, channels_last=has_convs(encoder))
    return write_features(target, encoder, splits, spec, device=device, precision=precision, **options)
