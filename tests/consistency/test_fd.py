"""Fréchet distance against scipy's matrix square root (the usual FID formula) and its baselines."""
import numpy as np
import pytest
import torch

from openseason.consistency.fd import frechet_distance, gaussian_baseline

scipy_linalg = pytest.importorskip("scipy.linalg")


def test_frechet_distance_matches_scipy_sqrtm():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 6)), rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6)) + 0.5
    mu1, s1, mu2, s2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    covmean = scipy_linalg.sqrtm(s1 @ s2).real
    want = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-8)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)


def test_gaussian_baseline_shape_and_range():
    x = torch.rand(50, 1, 4, 4) * 2 - 1
    g = gaussian_baseline(x, 20)
    assert g.shape == (20, 1, 4, 4) and g.min() >= -1 and g.max() <= 1
