"""Barlow Twins and VICReg losses against explicit loops over the papers' formulas (float64,
exact to 1e-10), against lightly's implementations, gradcheck, low precision, edge cases.

lightly 1.6's conventions are the same as the official code's on one process: BarlowTwinsLoss
standardises with ``F.batch_norm`` (biased variance, eps 1e-5); VICRegLoss uses the unbiased
variance and covariance, averages the variance over the branches and sums the covariance. So
both compare to 1e-10. (They differ only with several processes: lightly's Barlow Twins
standardises with per-process statistics.)
"""

from __future__ import annotations

import math

import pytest
import torch
from tolerance import rounding

from twinview.losses.barlow_twins import (
    barlow_twins_loss,
    barlow_twins_terms,
    cross_correlation,
    off_diagonal,
)
from twinview.losses.vicreg import vicreg_loss, vicreg_terms

F64 = torch.float64
RTOL = 1e-10


def pair(n: int, d: int, seed: int, dtype: torch.dtype = F64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, d, generator=g, dtype=dtype) * 2 + 0.5
    z2 = 0.7 * z1 + torch.randn(n, d, generator=g, dtype=dtype)  # correlated views
    return z1, z2


def naive_barlow(z1, z2, lam, eps=1e-5):
    """Explicit sums: per-dimension mean and biased variance, C_ij, the two terms."""
    n, d = len(z1), len(z1[0])

    def standardise(z):
        out = [[0.0] * d for _ in range(n)]
        for j in range(d):
            mean = sum(z[b][j] for b in range(n)) / n
            var = sum((z[b][j] - mean) ** 2 for b in range(n)) / n
            for b in range(n):
                out[b][j] = (z[b][j] - mean) / math.sqrt(var + eps)
        return out

    a, b_ = standardise(z1), standardise(z2)
    c = [[sum(a[b][i] * b_[b][j] for b in range(n)) / n for j in range(d)] for i in range(d)]
    on = sum((1 - c[i][i]) ** 2 for i in range(d))
    off = sum(c[i][j] ** 2 for i in range(d) for j in range(d) if i != j)
    return on + lam * off, on, off


def naive_vicreg(z1, z2, lam, mu, nu, eps=1e-4):
    n, d = len(z1), len(z1[0])
    inv = sum((z1[b][j] - z2[b][j]) ** 2 for b in range(n) for j in range(d)) / (n * d)

    def var_cov(z):
        mean = [sum(z[b][j] for b in range(n)) / n for j in range(d)]
        cov = [
            [sum((z[b][i] - mean[i]) * (z[b][j] - mean[j]) for b in range(n)) / (n - 1)
             for j in range(d)]
            for i in range(d)
        ]  # fmt: skip
        v = sum(max(0.0, 1 - math.sqrt(cov[j][j] + eps)) for j in range(d)) / d
        c = sum(cov[i][j] ** 2 for i in range(d) for j in range(d) if i != j) / d
        return v, c

    v1, c1 = var_cov(z1)
    v2, c2 = var_cov(z2)
    var, cov = (v1 + v2) / 2, c1 + c2
    return lam * inv + mu * var + nu * cov, inv, var, cov


@pytest.mark.parametrize(("n", "d", "lam"), [(7, 5, 5e-3), (12, 3, 0.3), (4, 6, 1.0)])
def test_barlow_twins_matches_naive_loop(n, d, lam):
    z1, z2 = pair(n, d, seed=n + d)
    ref, ref_on, ref_off = naive_barlow(z1.tolist(), z2.tolist(), lam)
    got = barlow_twins_loss(z1, z2, lambda_param=lam)
    on, off = barlow_twins_terms(z1, z2)
    assert got.dtype == F64 and got.ndim == 0
    assert got.item() == pytest.approx(ref, rel=RTOL, abs=0)
    assert on.item() == pytest.approx(ref_on, rel=RTOL, abs=0)
    assert off.item() == pytest.approx(ref_off, rel=RTOL, abs=0)


@pytest.mark.parametrize(("n", "d"), [(7, 5), (12, 3), (3, 4)])
@pytest.mark.parametrize(("lam", "mu", "nu"), [(25.0, 25.0, 1.0), (1.0, 3.0, 10.0)])
def test_vicreg_matches_naive_loop(n, d, lam, mu, nu):
    z1, z2 = pair(n, d, seed=3 * n + d)
    z1 = z1 * 0.3  # some dimensions with std below 1, so the hinge is active
    ref, ref_inv, ref_var, ref_cov = naive_vicreg(z1.tolist(), z2.tolist(), lam, mu, nu)
    assert ref_var > 0
    got = vicreg_loss(z1, z2, invariance=lam, variance=mu, covariance=nu)
    terms = vicreg_terms(z1, z2)
    assert got.dtype == F64 and got.ndim == 0
    assert got.item() == pytest.approx(ref, rel=RTOL, abs=0)
    for value, expected in zip(terms, (ref_inv, ref_var, ref_cov)):
        assert value.item() == pytest.approx(expected, rel=RTOL, abs=0)


def test_off_diagonal_is_every_entry_but_the_diagonal():
    m = torch.arange(16.0).view(4, 4)
    expected = torch.tensor([v for i in range(4) for j, v in enumerate(m[i].tolist()) if i != j])
    assert torch.equal(off_diagonal(m), expected)
    with pytest.raises(ValueError, match="square"):
        off_diagonal(torch.zeros(2, 3))


@pytest.mark.parametrize("lam", [5e-3, 0.1])
def test_barlow_twins_matches_lightly(lam):
    lightly_loss = pytest.importorskip("lightly.loss")
    z1, z2 = pair(32, 16, seed=11)
    ref = lightly_loss.BarlowTwinsLoss(lambda_param=lam)(z1, z2)
    assert ref.dtype == F64
    got = barlow_twins_loss(z1, z2, lambda_param=lam)
    assert got.item() == pytest.approx(ref.item(), rel=RTOL, abs=0)


def test_vicreg_matches_lightly():
    lightly_loss = pytest.importorskip("lightly.loss")
    z1, z2 = pair(32, 16, seed=12)
    z1 = z1 * 0.3
    for lam, mu, nu in [(25.0, 25.0, 1.0), (2.0, 5.0, 7.0)]:
        ref = lightly_loss.VICRegLoss(lambda_param=lam, mu_param=mu, nu_param=nu)(z1, z2)
        assert ref.dtype == F64
        got = vicreg_loss(z1, z2, invariance=lam, variance=mu, covariance=nu)
        assert got.item() == pytest.approx(ref.item(), rel=RTOL, abs=0)


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(13)
    z1 = torch.randn(5, 3, dtype=F64, generator=g, requires_grad=True)
    z2 = torch.randn(5, 3, dtype=F64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b: barlow_twins_loss(a, b, lambda_param=0.3), (z1, z2)
    )
    # scaled down so the variance hinge is active (its gradient is zero above std 1)
    assert torch.autograd.gradcheck(lambda a, b: vicreg_loss(0.4 * a, 0.4 * b), (z1, z2))


def test_barlow_twins_is_zero_for_identical_whitened_views():
    """C = I exactly when both views are the same decorrelated, standardised data (eps = 0)."""
    d, n = 4, 8
    a = torch.randn(n, d, dtype=F64, generator=torch.Generator().manual_seed(1))
    q, _ = torch.linalg.qr(a - a.mean(dim=0))  # orthonormal columns, each with mean 0
    z = q * math.sqrt(n) * 3.0 + 5.0  # mean 5, biased std 3, uncorrelated dimensions
    torch.testing.assert_close(
        cross_correlation(z, z, eps=0.0), torch.eye(d, dtype=F64), rtol=0, atol=1e-12
    )
    assert barlow_twins_loss(z, z, eps=0.0).item() == pytest.approx(0.0, abs=1e-20)


def test_collapsed_embeddings():
    """Constant embeddings: Barlow Twins' C is 0 (loss D); VICReg's hinge is 1 - sqrt(eps)."""
    z = torch.full((6, 5), 3.0, dtype=F64)
    assert barlow_twins_loss(z, z).item() == pytest.approx(5.0, rel=RTOL)
    inv, var, cov = vicreg_terms(z, z)
    assert inv.item() == 0.0 and cov.item() == 0.0
    assert var.item() == pytest.approx(1 - math.sqrt(1e-4), rel=RTOL)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_inputs_give_float32_close_to_float64(dtype):
    z1, z2 = pair(64, 32, seed=14)
    for loss in (barlow_twins_loss, vicreg_loss):
        ref = loss(z1, z2).item()
        got = loss(z1.to(dtype), z2.to(dtype))
        assert got.dtype == torch.float32 and torch.isfinite(got)
        # A few eps(dtype) from rounding the inputs, plus float32 sums over the batch of 64.
        rel = rounding(dtype, ulps=4) + rounding(torch.float32, ulps=8, terms=64)
        assert got.item() == pytest.approx(ref, rel=rel, abs=0)


def test_autocast_does_not_lower_the_loss_precision():
    """Under bf16 autocast the matrix products stay float32: same loss as without autocast.

    Bit for bit: autocast is off inside the loss, so the same float32 kernels run either way."""
    z1, z2 = (t.float() for t in pair(64, 32, seed=15))
    for loss in (barlow_twins_loss, vicreg_loss):
        ref = loss(z1, z2)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = loss(z1, z2)
        assert got.dtype == torch.float32
        assert torch.equal(got, ref)


def test_shape_errors():
    z = torch.randn(4, 3)
    for loss in (barlow_twins_loss, vicreg_loss):
        with pytest.raises(ValueError, match="same shape"):
            loss(z, torch.randn(4, 2))
        with pytest.raises(ValueError, match="same shape"):
            loss(z.flatten(), z.flatten())
    with pytest.raises(ValueError, match=">= 2 samples"):
        vicreg_loss(z[:1], z[:1])
