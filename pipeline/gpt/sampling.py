"""Sample a whole set of images: labels per class, batched KV-cache generation, decoding, samples.h5, grid.

`generate_samples` is the sample stage: it checks that the GPT, the decoder and the token file belong
together, samples, decodes and writes samples.h5 and the sample grid.

samples.h5 (`data/samples/samples.h5`): `tokens` uint16 (N, H*W) raster order, `labels` uint8 (N,)
(the class each image was generated for; NO_LABEL for an unconditional model), `images` uint8
(N, 32, 32, 3); attrs `sample_params` and `model_config` (JSON), `classes`, `conditional`, `k`,
`grid_h`, `grid_w`, `decoder_kind`, `no_label`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from matplotlib.figure import Figure
from tqdm import tqdm

from pipeline.core.artifacts import open_h5, read_model_config, rerun
from pipeline.core.atomic import atomic_path, write_bytes
from pipeline.core.errors import PipelineError
from pipeline.core.images import tile_rows
from pipeline.core.plots import labelled_rows_figure, save_png
from pipeline.core.runtime import resolve_device
from pipeline.gpt.model import GPT, GPTConfig, guide, load_gpt, sample_logits, training_inputs
from pipeline.params import SampleParams
from pipeline.tokenizer import files as tok
from pipeline.tokenizer.decoding import TokenDecoder, load_token_decoder

log = logging.getLogger(__name__)

NO_LABEL = 255  # label stored for images of an unconditional model
GRID_COLUMNS = 10  # images per row of the sample grid
GAP = 2  # white pixels between grid tiles
FIX = rerun("sample")


def sample_labels(cfg: GPTConfig, n_per_class: int) -> np.ndarray:
    """The label of every image to generate: class-major for a conditional model, NO_LABEL otherwise."""
    if cfg.conditional:
        return np.repeat(np.arange(cfg.n_classes, dtype=np.uint8), n_per_class)
    return np.full(n_per_class * cfg.n_classes, NO_LABEL, dtype=np.uint8)


def check_decoder(cfg: GPTConfig, decoder: TokenDecoder, model_source: str, decoder_source: str) -> None:
    """The decoder must read the codes the GPT writes: same vocabulary and grid (a row: cells x codes per cell)."""
    row = decoder.grid * decoder.codes_per_cell
    if decoder.k != cfg.k or not decoder.grid == cfg.grid_h or row != cfg.grid_w:
        raise PipelineError(
            f"{decoder_source} ({decoder.kind}, k={decoder.k}, grid {decoder.grid}x{row}) does not decode "
            f"the codes of {model_source} (k={cfg.k}, grid {cfg.grid_h}x{cfg.grid_w}); they come from different "
            "tokenizer runs: re-run the decoder and train stages (dvc repro)"
        )


def check_same_codebook(gpt_dir: Path, decoder_dir: Path, tokens: Path, meta: tok.TokenMeta) -> dict:
    """The GPT (train stage) and the decoder (decoder stage) must both come from the codebook of the token
    file; returns the GPT folder's config."""
    gpt_config = read_model_config(gpt_dir, "train")
    tok.check_same_codebook(
        {
            str(gpt_dir): gpt_config.get("codebook_sha256"),
            str(decoder_dir): read_model_config(decoder_dir, "decoder").get("codebook_sha256"),
        },
        str(tokens),
        meta,
    )
    return gpt_config


def sample_tokens(
    model: GPT, labels: np.ndarray, p: SampleParams, use_cache: bool = True, progress: bool = True
) -> np.ndarray:
    """Generate one code grid per label -> uint16 (N, H*W). One generator seeded with p.seed drives
    every batch, so the same params give the same tokens (on the same device)."""
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(p.seed)
    cond = model.cfg.conditional
    out = []
    starts = range(0, len(labels), p.batch_size)
    for start in tqdm(starts, desc="sampling", unit="batch", disable=not progress, leave=False):
        batch = labels[start : start + p.batch_size]
        batch_labels = torch.as_tensor(batch.astype(np.int64), device=device) if cond else None
        codes = model.generate(
            len(batch),
            batch_labels,
            temperature=p.temperature,
            top_k=p.top_k,
            top_p=p.top_p,
            cfg_scale=p.cfg_scale,
            generator=generator,
            use_cache=use_cache,
        )
        out.append(codes.cpu())
    return torch.cat(out).numpy().astype(np.uint16) if out else np.zeros((0, model.cfg.block_size), np.uint16)


@torch.no_grad()
def teacher_forced_tokens(
    model: GPT, tokens: np.ndarray, labels: np.ndarray | None, p: SampleParams, progress: bool = True
) -> np.ndarray:
    """What the sampler writes at each cell of the given grids when every cell before it is the true one:
    uint16 (N, H*W), drawn like `sample_tokens` (p's temperature, top-k, top-p and guidance; one generator
    seeded with p.seed). Where it differs from `tokens` are the GPT's own mistakes, which a decoder can be
    trained on (studies/decoder_on_gpt_grids.py). `labels`: the grids' classes (conditional models)."""
    cfg, device = model.cfg, next(model.parameters()).device
    if cfg.conditional and labels is None:
        raise ValueError("a conditional model needs the grids' labels")
    generator = torch.Generator(device=device).manual_seed(p.seed)
    guided = cfg.conditional and p.cfg_scale != 1.0
    out = []
    starts = range(0, len(tokens), p.batch_size)
    for start in tqdm(starts, desc="teacher-forced sampling", unit="batch", disable=not progress, leave=False):
        codes = torch.as_tensor(tokens[start : start + p.batch_size].astype(np.int64), device=device)
        n = len(codes)
        batch_labels = (
            torch.as_tensor(labels[start : start + n].astype(np.int64), device=device) if cfg.conditional else None
        )
        prefix = cfg.prefix(batch_labels, n, device)
        if guided:
            prefix, codes = torch.cat([prefix, cfg.prefix(None, n, device)]), torch.cat([codes, codes])
        logits = model(training_inputs(codes, prefix))[0][..., : cfg.k].float()  # never a special token
        if guided:
            logits = guide(logits, n, p.cfg_scale)
        picks = sample_logits(logits.flatten(0, 1), p.temperature, p.top_k, p.top_p, generator)
        out.append(picks.view(n, -1).cpu())
    return torch.cat(out).numpy().astype(np.uint16) if out else np.zeros((0, cfg.block_size), np.uint16)


@dataclass(frozen=True)
class Samples:
    tokens: np.ndarray  # uint16 (N, H*W)
    labels: np.ndarray  # uint8 (N,)
    images: np.ndarray  # uint8 (N, 32, 32, 3)
    conditional: bool
    classes: tuple[str, ...]
    attrs: dict


def write_samples(
    path: str | Path,
    tokens: np.ndarray,
    labels: np.ndarray,
    images: np.ndarray,
    cfg: GPTConfig,
    p: SampleParams,
    classes: tuple[str, ...],
    decoder_kind: str,
) -> None:
    attrs = {
        "sample_params": json.dumps(p.model_dump()),
        "model_config": json.dumps(asdict(cfg)),
        "classes": list(classes),
        "conditional": cfg.conditional,
        "k": cfg.k,
        "grid_h": cfg.grid_h,
        "grid_w": cfg.grid_w,
        "decoder_kind": decoder_kind,
        "no_label": NO_LABEL,
    }
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("tokens", data=tokens.astype(np.uint16))
        f.create_dataset("labels", data=labels.astype(np.uint8))
        f.create_dataset("images", data=images.astype(np.uint8), chunks=(min(len(images), 1024), 32, 32, 3))
        f.attrs.update(attrs)


def read_samples(path: str | Path) -> Samples:
    path = Path(path)
    with open_h5(path, "sample", "samples") as f:
        missing = [d for d in ("tokens", "labels", "images") if d not in f]
        if missing or "conditional" not in f.attrs:
            raise PipelineError(f"{path}: datasets {missing} or attrs missing; {FIX}")
        tokens, labels, images = f["tokens"][()], f["labels"][()], f["images"][()]
        attrs = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in f.attrs.items()}
    if (
        images.dtype != np.uint8
        or images.ndim != 4
        or images.shape[1:] != (32, 32, 3)
        or not len(images) == len(labels) == len(tokens)
    ):
        raise PipelineError(
            f"{path}: expected images uint8 (N, 32, 32, 3) with N labels and token rows, got images "
            f"{images.dtype} {images.shape}, {len(labels)} labels, {len(tokens)} token rows; {FIX}"
        )
    classes = tuple(str(c) for c in np.atleast_1d(attrs.get("classes", [])))
    return Samples(tokens, labels, images, bool(attrs["conditional"]), classes, attrs)


def read_token_grids(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Generated token grids and their class labels (None: unconditional), from the sample stage's samples.h5
    or from an .npz with `tokens` and `labels` (samples drawn on another machine, e.g. a lent GPU)."""
    path = Path(path)
    if path.suffix == ".h5":
        samples = read_samples(path)
        return samples.tokens, samples.labels if samples.conditional else None
    with np.load(path, allow_pickle=False) as f:
        return f["tokens"], f["labels"] if "labels" in f else None


def sample_set_name(path: str | Path) -> str:
    """A sample set's name in tables and figures: an .npz's stem, or the folder of a sample stage's samples.h5."""
    path = Path(path)
    return path.parent.name if path.suffix == ".h5" else path.stem


# ---- the sample grid: one row per class (conditional) or 10 rows of samples (unconditional) ----


def grid_rows(labels: np.ndarray, conditional: bool, n_rows: int, columns: int = GRID_COLUMNS) -> list[np.ndarray]:
    """Indices of the images shown in each grid row."""
    if conditional:
        return [np.flatnonzero(labels == c)[:columns] for c in range(n_rows)]
    idx = np.arange(min(len(labels), n_rows * columns))
    return [r for r in np.array_split(idx, n_rows) if len(r)]


def mosaic(images: np.ndarray, rows: list[np.ndarray], columns: int) -> np.ndarray:
    """uint8 image of the given rows of tiles, GAP white pixels around every tile."""
    return tile_rows([images[row] for row in rows], columns, GAP)


def grid_figure(samples: Samples, columns: int = GRID_COLUMNS) -> Figure:
    """The sample grid with the class names on the left (conditional models)."""
    n_rows = len(samples.classes) if samples.conditional else 10
    rows = grid_rows(samples.labels, samples.conditional, n_rows, columns)
    image = mosaic(samples.images, rows, columns)
    names = list(samples.classes[: len(rows)]) if samples.conditional else None
    return labelled_rows_figure(image, samples.images.shape[1], names, GAP)


# ---- the sample stage ----


def generate_samples(
    p: SampleParams, gpt_dir: Path, decoder_dir: Path, tokens: Path, samples: Path, grid: Path, plot_grid: Path
) -> dict:
    """The sample stage: p.n_per_class images per class (an unconditional model: 10 x as many) from the GPT in
    `gpt_dir`, decoded by the decoder in `decoder_dir` (both checked against the token file `tokens`), written
    to `samples` (samples.h5) with their grid to `grid` and a copy to `plot_grid`. Returns what the log reports:
    images, conditional, sample_seconds, decode_seconds, device."""
    device = resolve_device(p.device)
    meta = tok.read_meta(tokens)
    model = load_gpt(gpt_dir, device)
    tok.check_compatible(model.cfg, meta, str(gpt_dir), str(tokens))
    decoder = load_token_decoder(decoder_dir)
    check_decoder(model.cfg, decoder, str(gpt_dir), str(decoder_dir))
    check_same_codebook(gpt_dir, decoder_dir, tokens, meta)
    if p.top_k is not None and p.top_k > model.cfg.k:
        raise PipelineError(
            f"sample.top_k = {p.top_k} exceeds the {model.cfg.k} codes the GPT in {gpt_dir} chooses from (it would "
            f"keep them all); set sample.top_k to at most {model.cfg.k}, or null for no top-k filtering"
        )

    labels = sample_labels(model.cfg, p.n_per_class)
    t0 = time.perf_counter()
    codes = sample_tokens(model, labels, p)
    t1 = time.perf_counter()
    images = decoder.decode(codes, p.batch_size, device)
    t2 = time.perf_counter()
    write_samples(samples, codes, labels, images, model.cfg, p, meta.classes, decoder.kind)
    save_png(grid_figure(read_samples(samples)), grid)
    write_bytes(plot_grid, Path(grid).read_bytes())
    return {
        "images": len(images),
        "conditional": model.cfg.conditional,
        "sample_seconds": t1 - t0,
        "decode_seconds": t2 - t1,
        "device": str(device),
    }
