"""Fréchet distance, KID, precision and recall on cases with a known answer (pipeline/evaluation/feature_stats.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg

from pipeline.evaluation.feature_stats import Gaussian, frechet_distance, gaussian, kid, precision_recall


def test_gaussian_is_the_mean_and_unbiased_covariance():
    x = np.random.default_rng(0).normal(size=(5000, 7)).astype(np.float32) * np.arange(1, 8)
    g = gaussian(x)
    assert g.n == 5000 and g.mean.dtype == np.float64
    np.testing.assert_allclose(g.mean, x.astype(np.float64).mean(0), atol=1e-12)
    np.testing.assert_allclose(g.cov, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-10, atol=1e-12)


def test_identical_gaussians_are_at_distance_zero():
    g = gaussian(np.random.default_rng(1).normal(size=(500, 16)))
    assert abs(frechet_distance(g, g)) < 1e-8


def test_mean_shift_alone_gives_the_squared_distance_of_the_means():
    cov = np.diag(np.linspace(0.5, 2.0, 6))
    a, b = Gaussian(np.zeros(6), cov, 10), Gaussian(np.full(6, 3.0), cov, 10)
    assert math.isclose(frechet_distance(a, b), 6 * 9.0, rel_tol=1e-10)


def test_diagonal_covariances_give_the_sum_of_squared_root_differences():
    va, vb = np.array([1.0, 4.0, 9.0, 0.25]), np.array([4.0, 1.0, 9.0, 1.0])
    mu = np.array([1.0, 0.0, -1.0, 2.0])
    expected = ((np.sqrt(va) - np.sqrt(vb)) ** 2).sum() + (mu**2).sum()
    d = frechet_distance(Gaussian(np.zeros(4), np.diag(va), 10), Gaussian(mu, np.diag(vb), 10))
    assert math.isclose(d, expected, rel_tol=1e-10)


def test_full_covariances_match_the_pytorch_fid_formula():
    rng = np.random.default_rng(2)
    a, b = gaussian(rng.normal(size=(400, 32))), gaussian(rng.normal(size=(400, 32)) @ rng.normal(size=(32, 32)))
    root = scipy.linalg.sqrtm(a.cov @ b.cov).real  # pytorch-fid: |mu1-mu2|^2 + tr(S1 + S2 - 2 sqrtm(S1 S2))
    expected = (a.mean - b.mean) @ (a.mean - b.mean) + np.trace(a.cov + b.cov - 2 * root)
    assert math.isclose(frechet_distance(a, b), expected, rel_tol=1e-8)
    assert math.isclose(frechet_distance(a, b), frechet_distance(b, a), rel_tol=1e-8)


@pytest.mark.parametrize("keep_factor", [True, False])
def test_fewer_vectors_than_dimensions_in_both_sets_still_match(keep_factor):
    # Both covariances singular (rank 9 and 11 in 24 dimensions): through the small factor of the
    # vectors when kept, else (no Cholesky factor exists) through a symmetric square root.
    rng = np.random.default_rng(4)
    a, b = gaussian(rng.normal(size=(10, 24))), gaussian(rng.normal(size=(12, 24)) * 2)
    assert a.factor is not None and a.factor.shape == (10, 24)
    if not keep_factor:
        a, b = (Gaussian(g.mean, g.cov, g.n) for g in (a, b))
    root = scipy.linalg.sqrtm(a.cov @ b.cov).real
    expected = (a.mean - b.mean) @ (a.mean - b.mean) + np.trace(a.cov + b.cov - 2 * root)
    assert math.isclose(frechet_distance(a, b), expected, rel_tol=1e-6)
    assert math.isclose(frechet_distance(b, a), expected, rel_tol=1e-6)


def test_kid_of_two_point_masses_is_the_kernel_mmd():
    # Every row equal: the unbiased MMD^2 is exactly k(x,x) + k(y,y) - 2 k(x,y) with k = (x.y/d + 1)^3.
    d = 8
    x, y = np.zeros((50, d)), np.ones((60, d))
    mean, std = kid(x, y, subsets=5, subset_size=20, seed=0)
    assert math.isclose(mean, 1 + 8 - 2 * 1, rel_tol=1e-12) and std == pytest.approx(0, abs=1e-12)


def test_kid_is_near_zero_for_one_distribution_and_seeded():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(2000, 16)), rng.normal(size=(2000, 16))
    mean, std = kid(a, b, subsets=20, subset_size=500, seed=0)
    assert abs(mean) < 3 * std + 1e-3
    assert kid(a, b, subsets=20, subset_size=500, seed=0) == (mean, std)
    assert kid(a, b + 1.0, subsets=20, subset_size=500, seed=0)[0] > 10 * max(std, 1e-3)


def test_too_few_vectors_are_refused():
    with pytest.raises(ValueError, match="at least 2"):
        gaussian(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="at least 2"):
        kid(np.zeros((1, 4)), np.zeros((5, 4)), subsets=1, subset_size=5, seed=0)
    with pytest.raises(ValueError, match="more than 3"):
        precision_recall(np.zeros((3, 4)), np.zeros((5, 4)))


def test_precision_and_recall_of_a_copy_a_distant_set_and_half_the_modes():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((300, 8)), rng.standard_normal((200, 8)) + 100.0  # two far-apart modes
    real = np.concatenate([a, b])
    assert precision_recall(real, real) == (1.0, 1.0)
    assert precision_recall(real, real + 1000.0) == (0.0, 0.0)
    # Only mode a generated, exactly: every fake is a real point (precision 1); the reals of mode b lie
    # outside every fake's neighbourhood, those of mode a on a fake (recall = 300 / 500).
    assert precision_recall(real, a) == (1.0, pytest.approx(300 / 500))
    # Spread-out fakes around mode a cover its reals but are not inside the real manifold themselves.
    precision, recall = precision_recall(real, 10.0 * a)
    assert precision < 0.2 and recall == pytest.approx(300 / 500)
