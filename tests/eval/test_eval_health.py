"""Collapse monitors: RankMe, embedding std, alignment, uniformity, against naive formulas and on
embeddings whose answer is known (collapsed, isotropic, low-rank, clustered)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from twinview.eval import (
    alignment,
    effective_rank,
    embedding_std,
    health_report,
    is_collapsed,
    uniformity,
)


def gaussian(n: int, d: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_effective_rank_matches_numpy_formula() -> None:
    z = gaussian(50, 12) @ torch.diag(torch.linspace(0.1, 3.0, 12))
    sigma = np.linalg.svd(z.numpy().astype(np.float64), compute_uv=False)
    p = sigma / sigma.sum() + 1e-7
    assert effective_rank(z) == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-6)


def test_collapsed_embedding() -> None:
    row = gaussian(1, 256, seed=1)
    z = row.repeat(500, 1) + 1e-6 * gaussian(500, 256, seed=2)
    report = health_report(z, z + 1e-6 * gaussian(500, 256, seed=3))
    assert report["rankme"] < 1.01
    assert report["std_ratio"] < 1e-4
    assert report["alignment"] < 1e-8
    assert report["uniformity"] > -1e-6  # every pair at distance ~0: log E exp(0) = 0
    warning = is_collapsed(report)
    assert warning is not None and "std_ratio" in warning and "rankme" in warning


def test_isotropic_gaussian_is_healthy() -> None:
    d = 16
    report = health_report(gaussian(4000, d, seed=4))
    assert d * 0.97 < report["rankme"] <= d
    assert report["rankme_ratio"] == pytest.approx(report["rankme"] / d)
    assert report["std"] == pytest.approx(1 / math.sqrt(d), rel=0.05)
    assert report["std_ratio"] == pytest.approx(1.0, rel=0.05)
    assert "alignment" not in report
    assert is_collapsed(report) is None


@pytest.mark.parametrize("r", [1, 3, 7])
def test_rank_r_embedding_has_rankme_at_most_r(r: int) -> None:
    z = gaussian(300, r, seed=5) @ gaussian(r, 40, seed=6)
    rankme = effective_rank(z)
    assert rankme <= r + 1e-3
    assert rankme > 0.5 * r


def test_embedding_std_matches_numpy() -> None:
    z = gaussian(64, 10, seed=7) + 2.0
    u = z.numpy().astype(np.float64)
    u = u / np.linalg.norm(u, axis=1, keepdims=True)
    assert embedding_std(z) == pytest.approx(u.std(axis=0, ddof=1).mean(), rel=1e-5)


def test_alignment_values() -> None:
    z = gaussian(30, 5, seed=8)
    assert alignment(z, 3 * z) == pytest.approx(0.0, abs=1e-10)  # scale-free: on the sphere
    assert alignment(z, -z) == pytest.approx(4.0, rel=1e-6)
    z2 = gaussian(30, 5, seed=9)
    naive = 0.0
    for a, b in zip(z, z2):
        naive += float((a / a.norm() - b / b.norm()).norm()) ** 3
    assert alignment(z, z2, alpha=3) == pytest.approx(naive / 30, rel=1e-5)


def test_uniformity_matches_naive_double_loop() -> None:
    z = gaussian(25, 4, seed=10)
    u = z / z.norm(dim=1, keepdim=True)
    terms = [
        math.exp(-2 * float((u[i] - u[j]).pow(2).sum()))
        for i in range(25)
        for j in range(i + 1, 25)
    ]
    assert uniformity(z) == pytest.approx(math.log(sum(terms) / len(terms)), rel=1e-5)


def test_uniform_points_are_more_uniform_than_clustered_points() -> None:
    spread = gaussian(1000, 8, seed=11)
    clustered = gaussian(4, 8, seed=12).repeat(250, 1) + 0.05 * gaussian(1000, 8, seed=13)
    assert uniformity(spread) < uniformity(clustered) - 0.5
    # Subsampling is seeded: repeated calls agree, and a subsample estimates the full value.
    assert uniformity(spread, max_samples=200) == uniformity(spread, max_samples=200)
    assert uniformity(spread, max_samples=500) == pytest.approx(uniformity(spread), abs=0.1)


def test_is_collapsed_thresholds_are_configurable() -> None:
    report = {"rankme": 5.0, "rankme_ratio": 0.05, "std": 0.01, "std_ratio": 0.3}
    assert is_collapsed(report) is None
    warning = is_collapsed(report, rank_ratio_threshold=0.1)
    assert warning is not None and "dimensional collapse" in warning
    warning = is_collapsed(report, std_ratio_threshold=0.5)
    assert warning is not None and "std_ratio" in warning and "dimensional" not in warning


def test_bad_shapes_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="2-d"):
        effective_rank(torch.randn(10))
    with pytest.raises(ValueError, match="same shape"):
        alignment(torch.randn(4, 3), torch.randn(5, 3))
