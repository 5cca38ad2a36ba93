"""codebook: data/features/features.h5 -> k-means codebook + token grids (data/tokens/).

Also writes metrics/codebook.json and the code-usage plot (plots/codebook_usage.csv + .png).
With extract.encoder = pixels this is the classic demo's pixel-palette tokenizer: k-means over RGB.
"""

import logging
import time
from pathlib import Path

from stages import PARAMS_OPTION, app
from pipeline.paths import CODEBOOK, FEATURES, METRICS, PLOTS, TOKENS

log = logging.getLogger(__name__)


@app.command()
def codebook(params: Path = PARAMS_OPTION) -> None:
    """Fit FAISS k-means on sampled train features; tokenise train and test."""
    import numpy as np

    from pipeline.core.artifacts import open_h5
    from pipeline.core.atomic import write_json
    from pipeline.core.errors import PipelineError
    from pipeline.core.plots import save_png, write_csv
    from pipeline.data.cifar10 import CLASSES
    from pipeline.features.files import SPLITS, check_features, layer_slices
    from pipeline.params import load_params
    from pipeline.tokenizer import files as token_files, kmeans as cb, residual

    p = load_params(params).codebook
    gpu = cb.use_faiss_gpu(p.device)
    with open_h5(FEATURES, "extract", "features") as f:
        layout = check_features(f, FEATURES)
        log.info(
            "%s: %s features, %dx%d grid, %d dims, %s images",
            *(FEATURES, layout.encoder, layout.grid_h, layout.grid_w, layout.dim, layout.counts),
        )
        if p.codes_per_cell > 1 and layout.encoder == "pixels" and layout.dim == 3:
            raise PipelineError(
                f"codebook.codes_per_cell = {p.codes_per_cell}: the pixel palette decodes one colour per token; "
                "set codebook.codes_per_cell to 1 (or extract.grid below 32 for pixel patches)"
            )
        slices = layer_slices(f, FEATURES)
        sample = cb.sample_vectors(f["train/features"], p.sample_size, p.seed)
        if not np.isfinite(sample).all():
            raise PipelineError(f"{FEATURES}: train/features contains NaN or inf; re-run the extract stage")
        scale = cb.channel_scale(p.layer_weights, slices, layout.dim)  # None: unweighted
        space = cb.search_space(sample, scale, p.pca_dims, p.whiten)
        fit = cb.fit_kmeans(space(sample), p.k, p.niter, p.seed, p.max_points_per_centroid, gpu, p.init)
        # stored in the feature space, what the decoder reads: weights and PCA shape the partition only
        first = cb.feature_centroids(sample, fit.centroids, space, gpu)
        t0 = time.perf_counter()
        levels = residual.fit_levels(sample, first, space, p.codes_per_cell, p.k, p.niter, p.seed,
                                     p.max_points_per_centroid, gpu, p.init)  # fmt: skip
        fit_seconds = fit.seconds + time.perf_counter() - t0  # + the residual levels' k-means
        centroids = residual.stacked(levels)
        del sample
        splits = tuple(layout.counts)  # train, val, test (+ train_flip)
        # per split: (all codes of each cell, the first code alone)
        assigned = {s: residual.assign_levels(f[f"{s}/features"], levels, space, gpu, f"assign {s}") for s in splits}
        labels = {s: f[f"{s}/labels"][:] for s in splits}

    vocabulary = len(centroids)  # k x codes_per_cell
    described = dict(k=vocabulary, codes_per_cell=p.codes_per_cell, feature_dim=layout.dim, encoder=layout.encoder,
                     codebook_sha256=token_files.centroids_sha256(centroids))
    token_files.write_codebook(
        CODEBOOK,
        centroids,
        dict(described, grid=layout.grid_h, niter=p.niter, seed=p.seed, init=p.init, n_fit=fit.n_fit)
        | {"objective": fit.objective, "layer_weights": p.layer_weights, "pca_dims": p.pca_dims, "whiten": p.whiten},
    )
    token_files.write_tokens(
        TOKENS,
        {s: (assigned[s][0].tokens, labels[s]) for s in splits},
        dict(described, grid_h=layout.grid_h, grid_w=layout.grid_w, n_classes=len(CLASSES), classes=list(CLASSES)),
    )

    counts = cb.code_counts(assigned["train"][0].tokens, vocabulary)
    metrics = {
        "k": p.k,
        "codes_per_cell": p.codes_per_cell,
        "tokens_per_image": layout.grid_h * layout.grid_w * p.codes_per_cell,
        "feature_dim": layout.dim,
        "n_fit": fit.n_fit,
        # of the sum of a cell's codes' centroids
        **{f"rel_quant_error_{s}": assigned[s][0].relative_error for s in SPLITS},
        # per extract layer, on test, unweighted: where the codes' error goes (README: tokenizer study)
        **{f"rel_quant_error_test_{name}": assigned["test"][0].relative_error_of(ch) for name, ch in slices.items()},
        **({"rel_quant_error_test_first_code": assigned["test"][1].relative_error} if p.codes_per_cell > 1 else {}),
        "pca_variance_kept": space.variance_kept,
        "perplexity": cb.perplexity(counts[: p.k]),  # of the first code
        "dead_codes": int((counts == 0).sum()),  # of all codes
        "fit_seconds": round(fit_seconds, 2),
        "assign_seconds": round(sum(a[0].seconds for a in assigned.values()), 2),
        "faiss_gpu": fit.gpu,
    }
    write_json(METRICS / "codebook.json", metrics)
    order = np.argsort(-counts, kind="stable")
    write_csv(PLOTS / "codebook_usage.csv", ["rank", "code", "count"], zip(range(vocabulary), order, counts[order]))
    title = f"code usage on train ({vocabulary} codes, perplexity {metrics['perplexity']:.0f}, {metrics['dead_codes']} dead)"
    figure = cb.usage_figure(counts, title, "code rank", "grid cells", reference="uniform usage")
    save_png(figure, PLOTS / "codebook_usage.png")
    log.info(
        "codebook: rel. error train %.4f val %.4f, first-code perplexity %.1f / %d, %d dead codes -> %s, %s",
        *(metrics["rel_quant_error_train"], metrics["rel_quant_error_val"], metrics["perplexity"], p.k),
        *(metrics["dead_codes"], TOKENS, CODEBOOK),
    )
