"""Collapse monitors: RankMe, embedding std, alignment, uniformity, against naive formulas and on
embeddings whose answer is known (collapsed, isotropic, low-rank, clustered)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tolerance import assert_close_to_scale, rounding

from twinview.eval import (
    alignment,
    effective_rank,
    embedding_std,
    health_report,
    is_collapsed,
    uniformity,
)
from twinview.eval.health import (
    COSINE_COLLAPSE_THRESHOLD,
    EXPLOSION_NORM_THRESHOLD,
    is_exploded,
    mean_cosine,
    mean_norm,
    unit_rows,
)

F32 = torch.float32


def gaussian(n: int, d: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_effective_rank_matches_numpy_formula() -> None:
    z = gaussian(50, 12) @ torch.diag(torch.linspace(0.1, 3.0, 12))
    sigma = np.linalg.svd(z.numpy().astype(np.float64), compute_uv=False)
    p = sigma / sigma.sum() + 1e-7
    # Both in float64 from the same float32 values: two SVD implementations agree to ~1e-14.
    assert effective_rank(z) == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-10)


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
    # The unit rows are float32 (a few eps each); the std sums over 64 rows.
    want = u.std(axis=0, ddof=1).mean()
    assert embedding_std(z) == pytest.approx(want, rel=rounding(F32, terms=64))


def test_alignment_values() -> None:
    z = gaussian(30, 5, seed=8)
    assert alignment(z, 3 * z) == pytest.approx(0.0, abs=1e-10)  # scale-free: on the sphere
    assert alignment(z, -z) == pytest.approx(4.0, rel=rounding(F32))  # float32 unit rows
    z2 = gaussian(30, 5, seed=9)
    naive = 0.0
    for a, b in zip(z.double(), z2.double()):
        naive += float((a / a.norm() - b / b.norm()).norm()) ** 3
    assert alignment(z, z2, alpha=3) == pytest.approx(naive / 30, rel=rounding(F32, terms=5))


def test_uniformity_matches_naive_double_loop() -> None:
    z = gaussian(25, 4, seed=10)
    u = z.double() / z.double().norm(dim=1, keepdim=True)
    terms = [
        math.exp(-2 * float((u[i] - u[j]).pow(2).sum()))
        for i in range(25)
        for j in range(i + 1, 25)
    ]
    # float32 squared distances (up to 4) times t = 2 in the exponent: a few eps x 8, absolute.
    want = math.log(sum(terms) / len(terms))
    assert uniformity(z) == pytest.approx(want, rel=0, abs=8 * rounding(F32))


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


def test_mean_cosine_matches_naive_double_loop() -> None:
    z = gaussian(20, 6, seed=14) + 0.5
    u = z.double() / z.double().norm(dim=1, keepdim=True)
    pairs = [float(u[i] @ u[j]) for i in range(20) for j in range(20) if i != j]
    # Cosines (at most 1) of float32 unit rows: a few float32 eps, absolute.
    assert mean_cosine(z) == pytest.approx(sum(pairs) / len(pairs), rel=0, abs=rounding(F32))
    assert mean_cosine(gaussian(1, 6).repeat(10, 1) * torch.arange(1.0, 11.0)[:, None]) == (
        pytest.approx(1.0, abs=rounding(F32))  # float32 unit rows
    )


def test_huge_rows_are_measured_not_overflowed() -> None:
    """float32 F.normalize turns rows of 1e26 into zeros (the squares overflow): the health
    metrics must see the same directions as at scale 1."""
    z = gaussian(200, 32, seed=15)
    huge = z * 1e26
    # float32 unit rows either way (entries at most 1); the metrics sum over 200 rows of them.
    assert_close_to_scale(unit_rows(huge), unit_rows(z))
    assert embedding_std(huge) == pytest.approx(embedding_std(z), rel=rounding(F32, terms=200))
    assert uniformity(huge) == pytest.approx(uniformity(z), rel=rounding(F32, terms=200))
    # the reference's float32 norms of 32 entries round by a few eps
    want = 1e26 * float(z.norm(dim=1).mean())
    assert mean_norm(huge) == pytest.approx(want, rel=rounding(F32, terms=32))
    # > max**0.5; 1e38 itself rounds to float32 by up to eps / 2
    assert mean_norm(torch.full((3, 4), 1e38)) == pytest.approx(2e38, rel=rounding(F32, ulps=1))


def test_health_report_leaves_out_non_finite_rows() -> None:
    z = gaussian(100, 8, seed=16)
    broken = z.clone()
    broken[[3, 50]] = float("nan")
    broken[7, 2] = float("inf")
    finite = torch.ones(100, dtype=torch.bool)
    finite[[3, 50, 7]] = False
    report = health_report(broken)
    assert report["finite_fraction"] == pytest.approx(0.97)
    clean = health_report(z[finite])
    for key in ("mean_norm", "rankme", "std_ratio", "mean_cosine", "uniformity"):
        assert report[key] == pytest.approx(clean[key], rel=1e-9)
    none_finite = health_report(torch.full((4, 3), float("nan")))
    assert none_finite["finite_fraction"] == 0.0 and math.isnan(none_finite["mean_norm"])
    assert is_collapsed(none_finite) is None  # nothing to judge collapse on...
    assert "100.0% of the embeddings hold NaN or inf" in is_exploded(none_finite)  # ...but this


def test_is_exploded_thresholds() -> None:
    assert is_exploded(health_report(gaussian(50, 16, seed=17))) is None
    warning = is_exploded(health_report(1e26 * gaussian(50, 16, seed=17)))
    assert warning is not None and "mean l2 norm is 3.9" in warning and "e+26" in warning
    report = {"finite_fraction": 1.0, "mean_norm": 50.0}
    assert is_exploded(report) is None
    assert is_exploded(report, norm_threshold=10.0) is not None
    assert EXPLOSION_NORM_THRESHOLD == 1e4


def test_one_direction_is_collapse_but_relu_like_features_are_not() -> None:
    direction = gaussian(1, 64, seed=18)
    norms = torch.linspace(1e24, 1e26, 300)[:, None]  # very different norms, one direction
    report = health_report(norms * direction + 1e20 * gaussian(300, 64, seed=19))
    assert report["mean_cosine"] > COSINE_COLLAPSE_THRESHOLD
    warning = is_collapsed(report)
    assert warning is not None and "mean cosine similarity" in warning
    # Non-negative (ReLU) features are concentrated but healthy: randomly initialised networks
    # measured a mean cosine of 0.975-0.99; this set has mu^2 / (mu^2 + 1) ~ 0.98.
    relu = (gaussian(500, 64, seed=20) + 7.0).relu()
    report = health_report(relu)
    assert 0.97 < report["mean_cosine"] < 0.99
    assert is_collapsed(report) is None
