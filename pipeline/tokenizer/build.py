"""The codebook stage's work: feature grids -> k-means codebook, token grids, their metrics and usage plot.

`build_tokenizer` reads the extract stage's features.h5, fits FAISS k-means (kmeans.py; with
codebook.codes_per_cell > 1 the residual levels of residual.py) on a seeded sample of train cells,
tokenises every split and writes the codebook (safetensors), the tokens (tokens.h5) and the code-usage
plot (CSV + PNG). It returns the stage's metrics: relative quantisation error per split (and per extract
layer on test), perplexity and dead codes of the train tokens, timings. With extract.encoder = pixels it
is the classic demo's pixel-palette tokenizer: k-means over RGB.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.artifacts import open_h5
from pipeline.core.errors import PipelineError
from pipeline.core.plots import save_png, write_csv
from pipeline.core.results import Results, minutes
from pipeline.data.cifar10 import CLASSES
from pipeline.features.files import SPLITS, FeatureLayout, check_features, layer_slices
from pipeline.params import CodebookParams
from pipeline.tokenizer import files as token_files
from pipeline.tokenizer import kmeans as cb
from pipeline.tokenizer import residual

log = logging.getLogger(__name__)

USAGE_PLOT = "codebook_usage"  # plots/codebook_usage.csv and .png


@dataclass
class _Fit:
    """The fitted codebook and every split's codes."""

    layout: FeatureLayout
    slices: dict[str, slice]  # channels of each extract layer
    space: cb.SearchSpace
    fit: cb.KMeansResult  # the first level's k-means
    fit_seconds: float  # all levels' k-means
    centroids: np.ndarray  # (codes_per_cell * k, dim), the levels stacked
    # per split: (all codes of each cell, the first code alone)
    assigned: dict[str, tuple[cb.Assignment, cb.Assignment]]
    labels: dict[str, np.ndarray]


def _fit(p: CodebookParams, features: Path) -> _Fit:
    """Fit the codebook on sampled train cells and assign every split's cells."""
    gpu = cb.use_faiss_gpu(p.device)
    with open_h5(features, "extract", "features") as f:
        layout = check_features(f, features)
        log.info(
            "%s: %s features, %dx%d grid, %d dims, %s images",
            *(features, layout.encoder, layout.grid_h, layout.grid_w, layout.dim, layout.counts),
        )
        if p.codes_per_cell > 1 and layout.encoder == "pixels" and layout.dim == 3:
            raise PipelineError(
                f"codebook.codes_per_cell = {p.codes_per_cell}: the pixel palette decodes one colour per token; "
                "set codebook.codes_per_cell to 1 (or extract.grid below 32 for pixel patches)"
            )
        slices = layer_slices(f, features)
        sample = cb.sample_vectors(f["train/features"], p.sample_size, p.seed)
        if not np.isfinite(sample).all():
            raise PipelineError(f"{features}: train/features contains NaN or inf; re-run the extract stage")
        scale = cb.channel_scale(p.layer_weights, slices, layout.dim)  # None: unweighted
        space = cb.search_space(sample, scale, p.pca_dims, p.whiten)
        fit = cb.fit_kmeans(space(sample), p.k, p.niter, p.seed, p.max_points_per_centroid, gpu, p.init)
        # stored in the feature space, what the decoder reads: weights and PCA shape the partition only
        first = cb.feature_centroids(sample, fit.centroids, space, gpu)
        t0 = time.perf_counter()
        levels = residual.fit_levels(
            sample, first, space, p.codes_per_cell, p.k, p.niter, p.seed, p.max_points_per_centroid, gpu, p.init
        )
        fit_seconds = fit.seconds + time.perf_counter() - t0  # + the residual levels' k-means
        del sample
        splits = tuple(layout.counts)  # train, val, test (+ train_flip)
        assigned = {s: residual.assign_levels(f[f"{s}/features"], levels, space, gpu, f"assign {s}") for s in splits}
        labels = {s: f[f"{s}/labels"][:] for s in splits}
    return _Fit(layout, slices, space, fit, fit_seconds, residual.stacked(levels), assigned, labels)


def _write_files(p: CodebookParams, r: _Fit, tokens: Path, codebook: Path) -> None:
    layout, centroids = r.layout, r.centroids
    # k: the vocabulary, k x codes_per_cell
    described = dict(
        k=len(centroids),
        codes_per_cell=p.codes_per_cell,
        feature_dim=layout.dim,
        encoder=layout.encoder,
        codebook_sha256=token_files.centroids_sha256(centroids),
    )
    token_files.write_codebook(
        codebook,
        centroids,
        dict(described, grid=layout.grid_h, niter=p.niter, seed=p.seed, init=p.init, n_fit=r.fit.n_fit)
        | {"objective": r.fit.objective, "layer_weights": p.layer_weights, "pca_dims": p.pca_dims, "whiten": p.whiten},
    )
    token_files.write_tokens(
        tokens,
        {s: (r.assigned[s][0].tokens, r.labels[s]) for s in r.assigned},
        dict(described, grid_h=layout.grid_h, grid_w=layout.grid_w, n_classes=len(CLASSES), classes=list(CLASSES)),
    )


def _results(p: CodebookParams, r: _Fit, counts: np.ndarray) -> Results:
    test = r.assigned["test"]
    metrics = {
        # of the sum of a cell's codes' centroids
        **{f"rel_quant_error_{s}": r.assigned[s][0].relative_error for s in SPLITS},
        # per extract layer, on test, unweighted: where the codes' error goes (docs/tokenizer_study.md)
        **{f"rel_quant_error_test_{name}": test[0].relative_error_of(ch) for name, ch in r.slices.items()},
        **({"rel_quant_error_test_first_code": test[1].relative_error} if p.codes_per_cell > 1 else {}),
        "pca_variance_kept": r.space.variance_kept,
        "perplexity": cb.perplexity(counts[: p.k]),  # of the first code
        "dead_codes": int((counts == 0).sum()),  # of all codes
        "kmeans_minutes": minutes(r.fit_seconds),
        "assign_minutes": minutes(sum(a[0].seconds for a in r.assigned.values())),
    }
    info = {
        "k": p.k,
        "codes_per_cell": p.codes_per_cell,
        "tokens_per_image": r.layout.grid_h * r.layout.grid_w * p.codes_per_cell,
        "feature_dim": r.layout.dim,
        "n_fit": r.fit.n_fit,
        "faiss_gpu": r.fit.gpu,
    }
    return Results(metrics, info)


def _write_usage_plot(counts: np.ndarray, metrics: dict, plots: Path) -> None:
    """Code usage on train, codes sorted by count: plots/codebook_usage.csv and .png."""
    vocabulary = len(counts)
    order = np.argsort(-counts, kind="stable")
    write_csv(plots / f"{USAGE_PLOT}.csv", ["rank", "code", "count"], zip(range(vocabulary), order, counts[order]))
    title = f"code usage on train ({vocabulary} codes, perplexity {metrics['perplexity']:.0f}, {metrics['dead_codes']} dead)"
    figure = cb.usage_figure(counts, title, "code rank", "grid cells", reference="uniform usage")
    save_png(figure, plots / f"{USAGE_PLOT}.png")


def build_tokenizer(p: CodebookParams, features: Path, tokens: Path, codebook: Path, plots: Path) -> Results:
    """The codebook stage: fit the codebook on the train features of `features` (an extract stage file), write
    it to `codebook`, every split's token grids to `tokens` and the code-usage plot under `plots`; returns the
    stage's results."""
    r = _fit(p, features)
    _write_files(p, r, tokens, codebook)
    counts = cb.code_counts(r.assigned["train"][0].tokens, len(r.centroids))
    results = _results(p, r, counts)
    _write_usage_plot(counts, results.metrics, plots)
    return results
