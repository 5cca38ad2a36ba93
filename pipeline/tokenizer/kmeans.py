"""FAISS k-means codebook: fit on a seeded sample of grid-cell features, assign every cell a code.

Features are (N, H, W, C) grids (CNN patch features, or RGB pixels for the classic demo's palette
tokenizer); a cell's token is the index of its nearest centroid, so an image becomes H*W tokens in
raster order. Everything here works on numpy arrays or h5py datasets alike, batch by batch, so a
feature file larger than memory can be tokenised.

k-means partitions in a search space: the features scaled per layer (codebook.layer_weights), optionally
projected on their first principal components (codebook.pca_dims) and whitened (codebook.whiten). The
centroids are stored in the feature space, which is what the decoder reads.

Determinism: the sample is drawn with numpy's seeded Generator and FAISS's own RNG (initialisation,
subsampling) is seeded from the same seed. On CPU, FAISS k-means is bitwise reproducible for a given
seed and thread count (checked by tests/test_codebook.py); across thread counts the BLAS reduction
order can change, which may flip near-tie assignments.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import faiss
import numpy as np
from matplotlib.figure import Figure
from tqdm import tqdm

from pipeline.core.errors import PipelineError

log = logging.getLogger(__name__)

# Vectors per FAISS search call when assigning: ~16 MiB of float32 at 64 dims, large enough for BLAS.
ASSIGN_BATCH_VECTORS = 65_536


@dataclass(frozen=True)
class KMeansResult:
    centroids: np.ndarray  # float32 (K, C)
    objective: float  # FAISS's final sum of squared distances over the points it trained on
    n_fit: int  # points FAISS actually trained on: min(len(sample), k * max_points_per_centroid)
    seconds: float
    gpu: bool


@dataclass(frozen=True)
class Assignment:
    tokens: np.ndarray  # uint16 (N, H*W), raster order
    channel_sse: np.ndarray  # float64 (C,): per channel, the sum over cells of the squared error to the centroid
    channel_sst: np.ndarray  # float64 (C,): per channel, the sum over cells of the squared distance to the mean
    seconds: float

    @property
    def sse(self) -> float:
        return float(self.channel_sse.sum())

    @property
    def relative_error(self) -> float:
        # Relative quantisation error = SSE / SST, i.e. the fraction of the features' variance that
        # the codebook leaves unexplained (0: perfect, 1: no better than the mean vector).
        return relative(self.sse, self.channel_sst.sum())

    def relative_error_of(self, channels: slice) -> float:
        """The same for a group of channels (one extract layer's), still in the unweighted feature space."""
        return relative(self.channel_sse[channels].sum(), self.channel_sst[channels].sum())


def relative(sse: float, sst: float) -> float:
    return float(sse / sst) if sst > 0 else 0.0


def channel_scale(layer_weights: dict[str, float], slices: dict[str, slice], dim: int) -> np.ndarray | None:
    """float32 (C,) factors from codebook.layer_weights (unnamed layers 1); None when every factor is 1."""
    if all(w == 1 for w in layer_weights.values()):
        return None
    scale = np.ones(dim, dtype=np.float32)
    for name, weight in layer_weights.items():
        scale[slices[name]] = weight
    return scale


@dataclass(frozen=True)
class SearchSpace:
    """Feature vectors (n, C) -> the space k-means partitions and codes are searched in: x * scale, then
    the PCA (mean removed, projected on the first components, whitened if asked). Affine, so the mean of
    mapped vectors is the mapped mean: a centroid stored in the feature space maps onto its search code."""

    scale: np.ndarray | None = None  # (C,) codebook.layer_weights per channel; None: all 1
    pca: faiss.PCAMatrix | None = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x if self.scale is None else x * self.scale, dtype=np.float32)
        return x if self.pca is None else self.pca.apply(x)

    def back_project(self, y: np.ndarray) -> np.ndarray:
        """Search-space vectors (n, d) -> the feature vectors that map onto them, least squares where the PCA
        dropped dimensions (FAISS's reverse_transform refuses a whitened, non-orthonormal PCA)."""
        x = np.asarray(y, dtype=np.float64)
        if self.pca is not None:
            a = faiss.vector_to_array(self.pca.A).reshape(self.pca.d_out, self.pca.d_in)
            x = (x - faiss.vector_to_array(self.pca.b)) @ np.linalg.pinv(a).T
        return (x if self.scale is None else x / self.scale).astype(np.float32)

    @property
    def variance_kept(self) -> float:
        """Fraction of the (scaled) features' variance on the kept principal components (1 without PCA)."""
        if self.pca is None:
            return 1.0
        eigenvalues = faiss.vector_to_array(self.pca.eigenvalues)
        return float(eigenvalues[: self.pca.d_out].sum() / eigenvalues.sum())


def search_space(sample: np.ndarray, scale: np.ndarray | None, pca_dims: int | None, whiten: bool) -> SearchSpace:
    """The SearchSpace of codebook.layer_weights (`scale`), pca_dims and whiten, its PCA fitted on `sample`."""
    space = SearchSpace(scale)
    if pca_dims is None and not whiten:
        return space
    dim = sample.shape[1]
    pca_dims = dim if pca_dims is None else pca_dims
    if pca_dims > dim:
        raise PipelineError(
            f"codebook.pca_dims = {pca_dims}, but the features have {dim} dims; set it to at most {dim} (or null: no PCA)"
        )
    x = space(sample)
    # eigen_power -0.5 divides each component by its standard deviation (whitening); 0 keeps its variance
    pca = faiss.PCAMatrix(dim, pca_dims, -0.5 if whiten else 0.0, False)
    # FAISS's eigenvalues are sums of squares over the sample; a direction with none (a channel that mixes others)
    # comes out 0 or slightly negative and whitening would divide by it: each gets 1e-4 of their mean added first
    pca.epsilon = 1e-4 * float(np.square(x - x.mean(axis=0), dtype=np.float64).sum()) / dim
    pca.train(x)
    return SearchSpace(scale, pca)


def cluster_means(x: np.ndarray, codes: np.ndarray, k: int, fallback: np.ndarray) -> np.ndarray:
    """float32 (k, C): the mean of the rows of `x` assigned to each code; `fallback`'s row for a code with none."""
    sums = np.zeros((k, x.shape[1]), dtype=np.float64)
    np.add.at(sums, codes, x)
    counts = np.bincount(codes, minlength=k)
    means = sums / np.maximum(counts, 1)[:, None]
    return np.where(counts[:, None] > 0, means, fallback).astype(np.float32)


def feature_centroids(
    sample: np.ndarray, search_centroids: np.ndarray, space: SearchSpace, gpu: bool = False
) -> np.ndarray:
    """The codebook in the feature space, float32 (K, C), from k-means centroids found in `space`.

    Without a PCA the mapping is undone exactly (`back_project`). A PCA may drop dimensions, so there each
    code's centroid is the mean of the sampled feature vectors nearest to it in the search space (what k-means'
    next update would compute there); a code nobody chose keeps its back-projection.
    """
    if space.pca is None:
        return space.back_project(search_centroids)
    codes = nearest(space(sample), search_centroids, gpu)
    return cluster_means(sample, codes, len(search_centroids), space.back_project(search_centroids))


def nearest(x: np.ndarray, centroids: np.ndarray, gpu: bool = False) -> np.ndarray:
    """int64 (n,): the index of the nearest of `centroids` (K, d) for each row of `x` (n, d), in memory."""
    index = _flat_index(centroids.shape[1], gpu)
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    return index.search(np.ascontiguousarray(x, dtype=np.float32), 1)[1].ravel()


def use_faiss_gpu(device: str) -> bool:
    """'auto' -> GPU FAISS when this FAISS build sees a GPU; 'cuda' insists; 'cpu' never."""
    n_gpus = faiss.get_num_gpus()
    if device == "cuda" and n_gpus == 0:
        raise PipelineError(
            "codebook.device = 'cuda' but this FAISS build sees no GPU (faiss-cpu is installed, or no "
            "CUDA device). On a GPU machine run `make faiss-gpu`, or set codebook.device to 'auto' or 'cpu'."
        )
    return device != "cpu" and n_gpus > 0


def _flat_index(dim: int, gpu: bool) -> faiss.Index:
    index = faiss.IndexFlatL2(dim)
    return faiss.index_cpu_to_all_gpus(index) if gpu else index


def iter_batches(features, batch_images: int, desc: str = "") -> Iterator[tuple[int, np.ndarray]]:
    """Yield (first image index, float32 (b, H*W, C)) over an (N, H, W, C) array or h5 dataset."""
    n, h, w, c = features.shape
    for start in tqdm(range(0, n, batch_images), desc=desc, unit="batch", disable=not desc, leave=False):
        block = np.asarray(features[start : start + batch_images], dtype=np.float32)
        yield start, block.reshape(len(block), h * w, c)


def _images_per_batch(features) -> int:
    _, h, w, _ = features.shape
    return max(1, ASSIGN_BATCH_VECTORS // (h * w))


def sample_vectors(features, sample_size: int, seed: int) -> np.ndarray:
    """float32 (min(sample_size, N*H*W), C): grid cells drawn without replacement, seeded.

    The sampled indices are sorted so an h5 dataset is read once, sequentially, batch by batch.
    """
    n, h, w, c = features.shape
    total = n * h * w
    if sample_size >= total:
        chosen = np.arange(total)
    else:
        chosen = np.sort(np.random.default_rng(seed).choice(total, size=sample_size, replace=False))
    out = np.empty((len(chosen), c), dtype=np.float32)
    filled = 0
    for start, block in iter_batches(features, _images_per_batch(features), desc="sample"):
        lo, hi = start * h * w, (start + len(block)) * h * w
        a, b = np.searchsorted(chosen, [lo, hi])
        out[filled : filled + b - a] = block.reshape(-1, c)[chosen[a:b] - lo]
        filled += b - a
    return out


# Centroid initialisation: FAISS's default picks k random training points (cheapest); k-means++ costs
# k extra passes over the sample but avoids merged clusters when the data has few, well separated modes.
INIT_METHODS = {
    "random": faiss.ClusteringInitMethod_RANDOM,
    "kmeans++": faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS,
}


def fit_kmeans(
    x: np.ndarray,
    k: int,
    niter: int,
    seed: int,
    max_points_per_centroid: int,
    gpu: bool = False,
    init: str = "random",
) -> KMeansResult:
    """FAISS k-means on float32 (n, C) training vectors.

    max_points_per_centroid is passed explicitly: FAISS otherwise silently subsamples the training set
    to 256 points per centroid.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, dim = x.shape
    if n < k:
        raise PipelineError(
            f"codebook: only {n} training vectors for k = {k} centroids; "
            "lower codebook.k or raise codebook.sample_size (or extract more features)."
        )
    km = faiss.Kmeans(
        dim,
        k,
        niter=niter,
        seed=seed,
        max_points_per_centroid=max_points_per_centroid,
        min_points_per_centroid=1,  # small k-means runs are legitimate; do not warn
        init_method=INIT_METHODS[init],
        gpu=gpu,
        verbose=False,
    )
    n_fit = min(n, k * max_points_per_centroid)
    if n_fit < n:
        log.warning(
            "FAISS trains on a random %d of the %d sampled vectors (k * max_points_per_centroid); "
            "raise codebook.max_points_per_centroid to use them all",
            n_fit,
            n,
        )
    t0 = time.perf_counter()
    objective = float(km.train(x))
    seconds = time.perf_counter() - t0
    log.info(
        "k-means: %d x %d -> %d codes, %d iterations on %d points (%s): objective %.4g -> %.4g in %.1f s",
        *(n, dim, k, niter, n_fit, "GPU" if gpu else "CPU", km.obj[0], objective, seconds),
    )
    return KMeansResult(np.ascontiguousarray(km.centroids, dtype=np.float32), objective, n_fit, seconds, gpu)


def assign(
    features,
    centroids: np.ndarray,
    gpu: bool = False,
    desc: str = "",
    space: SearchSpace | None = None,
    previous: list[tuple[np.ndarray, np.ndarray]] = (),
) -> Assignment:
    """Nearest centroid of every grid cell of an (N, H, W, C) array or h5 dataset, batch by batch.

    With a `space`, "nearest" is measured between the mapped features and mapped centroids (layer weights,
    PCA); the errors are always measured in the feature space. With `previous` codebooks and their (N, H*W)
    tokens (residual quantisation), what gets quantised is each cell's residual, the features minus its
    previous centroids; the errors are then of the sum of all centroids, the variance still of the features.
    """
    n, h, w, c = features.shape
    k = len(centroids)
    if k > np.iinfo(np.uint16).max + 1:
        raise PipelineError(f"codebook: k = {k} codes do not fit uint16 tokens; use k <= 65536")
    space = space or SearchSpace()
    mapped = space(centroids)
    index = _flat_index(mapped.shape[1], gpu)
    index.add(mapped)
    tokens = np.empty((n, h * w), dtype=np.uint16)
    sse, sum_sq, sum_x, count = np.zeros(c), np.zeros(c), np.zeros(c), 0
    t0 = time.perf_counter()
    for start, block in iter_batches(features, _images_per_batch(features), desc=desc):
        flat = block.reshape(-1, c)
        target = flat - sum(codes[t[start : start + len(block)].ravel()] for codes, t in previous) if previous else flat
        _, found = index.search(space(target), 1)
        found = found.ravel()
        tokens[start : start + len(block)] = found.reshape(len(block), h * w)
        # Exact residuals rather than FAISS's distances, which come from ||x||^2 - 2xc + ||c||^2 and
        # lose precision exactly when the error is near zero.
        sse += np.square(target - centroids[found], dtype=np.float64).sum(axis=0)
        sum_sq += np.square(flat, dtype=np.float64).sum(axis=0)
        sum_x += flat.sum(axis=0, dtype=np.float64)
        count += len(flat)
    sst = np.maximum(sum_sq - sum_x * sum_x / max(count, 1), 0.0)
    return Assignment(tokens, sse, sst, time.perf_counter() - t0)


def code_counts(tokens: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(tokens.ravel(), minlength=k)


def perplexity(counts: np.ndarray) -> float:
    """exp(entropy) of the code frequencies: the effective number of codes in use (k when uniform)."""
    p = counts[counts > 0] / counts.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def usage_figure(
    values: np.ndarray, title: str, xlabel: str, ylabel: str, log_y: bool = True, reference: str | None = None
) -> Figure:
    """Values sorted descending against their rank, e.g. how often each code is used.

    `reference` labels a dashed line at the mean value (e.g. "uniform usage").
    """
    values = np.sort(np.asarray(values))[::-1]
    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot()
    shown = values[values > 0] if log_y else values  # zeros (e.g. dead codes) have no place on a log axis
    ax.plot(np.arange(len(shown)), shown, lw=1.2)
    ax.set_xlim(0, max(len(values) - 1, 1))
    if reference:
        ax.axhline(values.mean(), color="grey", ls="--", lw=1, label=reference)
        ax.legend()
    if log_y:
        ax.set_yscale("log")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(True, alpha=0.3)
    return fig
