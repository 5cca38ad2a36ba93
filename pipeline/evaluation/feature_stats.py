"""Distances between two sets of image features: the Fréchet distance of their Gaussians (FID, when
the features are Inception pool3) and the kernel inception distance (KID). Independent of the network.

FID follows Heusel et al. 2017 / pytorch-fid: mean and unbiased covariance (ddof 1) per set, then
|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)), all in float64. The trace of the matrix square
root is the sum of the square roots of the eigenvalues of S1 S2, taken from a symmetric matrix with the
same non-zero spectrum: F S1 F^T when S2 = F^T F comes from fewer vectors than dimensions (F: the
centred vectors / sqrt(N - 1), a small matrix), else L^T S2 L for a Cholesky factor S1 = L L^T (or
S2's), else S1^(1/2) S2 S1^(1/2). No complex round-off to discard and no eigenvectors of a large
matrix unless nothing else applies. Linear algebra runs in
torch (its LAPACK is much faster here than numpy's on a busy CPU). KID follows Binkowski et al. 2018 as torch-fidelity and
clean-fid compute it: the unbiased MMD^2 with the cubic polynomial kernel (x.y / d + 1)^3, averaged
over random equal-size subsets of both sets. Precision and recall follow Kynkaanniemi et al. 2019: each
set's manifold is the union of balls around its vectors reaching their k-th nearest neighbour in the same
set (k = 3 as published); precision is the fraction of generated vectors inside the real manifold, recall
the fraction of real vectors inside the generated one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

STATS_BLOCK = 4096  # rows per float64 block when accumulating a covariance


@dataclass(frozen=True)
class Gaussian:
    mean: np.ndarray  # (D,) float64
    cov: np.ndarray  # (D, D) float64
    n: int  # the number of feature vectors it was fitted to
    factor: np.ndarray | None = None  # (N, D) with cov = factor.T @ factor, kept when N <= D


def gaussian(features: np.ndarray) -> Gaussian:
    """Mean and unbiased covariance of (N, D) features, accumulated in float64 blocks."""
    n, d = features.shape
    if n < 2:
        raise ValueError(f"a covariance needs at least 2 feature vectors, got {n}")
    total, outer = torch.zeros(d, dtype=torch.float64), torch.zeros(d, d, dtype=torch.float64)
    for start in range(0, n, STATS_BLOCK):
        block = torch.as_tensor(np.asarray(features[start : start + STATS_BLOCK]), dtype=torch.float64)
        total += block.sum(0)
        outer += block.T @ block
    mean = total / n
    cov = ((outer - n * torch.outer(mean, mean)) / (n - 1)).numpy()
    factor = None
    if n <= d:
        factor = ((torch.as_tensor(np.asarray(features), dtype=torch.float64) - mean) / (n - 1) ** 0.5).numpy()
    return Gaussian(mean.numpy(), cov, n, factor)


def _trace_sqrt(m: torch.Tensor) -> float:
    """Sum of the square roots of the eigenvalues of a symmetric positive semi-definite matrix."""
    return float(torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum())


def trace_sqrt_product(a: Gaussian, b: Gaussian) -> float:
    """tr((A B)^(1/2)) for the covariance matrices A and B of two Gaussians."""
    ta, tb = torch.from_numpy(np.asarray(a.cov, np.float64)), torch.from_numpy(np.asarray(b.cov, np.float64))
    for first, second in ((a, tb), (b, ta)):
        if first.factor is not None:
            f = torch.from_numpy(first.factor)
            return _trace_sqrt(f @ second @ f.T)
    for first, second in ((ta, tb), (tb, ta)):
        factor, info = torch.linalg.cholesky_ex(first)
        if int(info) == 0:
            return _trace_sqrt(factor.T @ second @ factor)
    values, vectors = torch.linalg.eigh(ta)
    root = (vectors * values.clamp_min(0).sqrt()) @ vectors.T
    return _trace_sqrt(root @ tb @ root)


def frechet_distance(a: Gaussian, b: Gaussian) -> float:
    """Squared Fréchet (2-Wasserstein) distance between N(a.mean, a.cov) and N(b.mean, b.cov)."""
    diff = a.mean - b.mean
    return float(diff @ diff + np.trace(a.cov) + np.trace(b.cov) - 2 * trace_sqrt_product(a, b))


def kid(a: np.ndarray, b: np.ndarray, *, subsets: int, subset_size: int, seed: int) -> tuple[float, float]:
    """(mean, std) over `subsets` random subsets of the unbiased MMD^2 between (N, D) feature sets `a`
    and `b` with the kernel (x.y / D + 1)^3; each subset draws `subset_size` rows of each set."""
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError(f"KID needs at least 2 feature vectors per set, got {len(a)} and {len(b)}")
    rng, d = np.random.default_rng(seed), a.shape[1]
    values = np.empty(subsets)
    for i in range(subsets):
        x, y = (
            torch.as_tensor(np.asarray(f[np.sort(rng.choice(len(f), m, replace=False))]), dtype=torch.float64)
            for f in (a, b)
        )
        kxx, kyy, kxy = ((p @ q.T / d + 1) ** 3 for p, q in ((x, x), (y, y), (x, y)))
        within = (kxx.sum() - kxx.trace() + kyy.sum() - kyy.trace()) / (m * (m - 1))
        values[i] = float(within - 2 * kxy.mean())
    return float(values.mean()), float(values.std())


PR_NEIGHBOURS = 3  # k of Kynkaanniemi et al. 2019
PR_BLOCK = 2048  # rows per block of pairwise distances


def _squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T).clamp_min(0)


def _knn_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    """Squared distance of each row of x to its k-th nearest other row."""
    return torch.cat(
        [
            _squared_distances(x[i : i + PR_BLOCK], x).kthvalue(k + 1, dim=1).values  # +1: itself
            for i in range(0, len(x), PR_BLOCK)
        ]
    )


def _covered(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> float:
    """Fraction of `points` inside at least one ball (centre, radius) of the other set."""
    inside = [
        (_squared_distances(points[i : i + PR_BLOCK], centres) <= radii[None]).any(1)
        for i in range(0, len(points), PR_BLOCK)
    ]
    return float(torch.cat(inside).double().mean())


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = PR_NEIGHBOURS) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) of (N, D) `fake` against (M, D) `real`."""
    if min(len(real), len(fake)) <= k:
        raise ValueError(
            f"precision/recall with k={k} needs more than {k} vectors per set, got {len(real)} and {len(fake)}"
        )
    r, f = (torch.as_tensor(np.asarray(x), dtype=torch.float64) for x in (real, fake))
    return _covered(f, r, _knn_radii(r, k)), _covered(r, f, _knn_radii(f, k))
