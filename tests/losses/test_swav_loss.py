"""SwAV's Sinkhorn-Knopp codes and swapped-prediction loss: naive loops, lightly, properties,
gradcheck. (2 processes x B == 1 process x 2B, with a shared queue:
tests/methods/test_swav_method.py.)

Comparisons run in float64 so the tolerance can be tight on any CPU.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from tolerance import rounding

from twinview.losses.swav import sinkhorn, swav_loss

F64 = torch.float64
RTOL = 1e-10


def naive_sinkhorn(scores, queue, epsilon, iterations):
    """The paper's algorithm with explicit loops over a K x n matrix of Python floats.

    Columns: the batch samples, then the queue; rows: prototypes. Rows are normalised to 1/K,
    columns to 1/n, and the columns finally rescaled to sum to 1 (official ``Q *= B``).
    """
    samples = scores.tolist() + ([] if queue is None else queue.tolist())
    n, k_num = len(samples), len(samples[0])
    q = [[math.exp(samples[b][k] / epsilon) for b in range(n)] for k in range(k_num)]
    total = sum(sum(row) for row in q)
    q = [[v / total for v in row] for row in q]
    for _ in range(iterations):
        for k in range(k_num):
            r = sum(q[k])
            q[k] = [v / r / k_num for v in q[k]]
        for b in range(n):
            c = sum(q[k][b] for k in range(k_num))
            for k in range(k_num):
                q[k][b] = q[k][b] / c / n
    batch = scores.shape[0]
    return torch.tensor([[q[k][b] * n for k in range(k_num)] for b in range(batch)], dtype=F64)


def naive_swav_loss(scores, codes, temperature):
    """Loops over assigned crops, other crops, samples and prototypes."""
    num_crops = len(scores)
    total = 0.0
    for i, q in codes.items():
        sub = 0.0
        for v in range(num_crops):
            if v == i:
                continue
            ce = 0.0
            for b in range(q.shape[0]):
                logits = [float(x) / temperature for x in scores[v][b]]
                log_z = math.log(sum(math.exp(x) for x in logits))
                ce -= sum(float(q[b, k]) * (logits[k] - log_z) for k in range(len(logits)))
            sub += ce / q.shape[0]
        total += sub / (num_crops - 1)
    return total / len(codes)


def _scores(batch, k, seed, scale=1.0, n=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(batch, k, generator=g, dtype=F64) * scale
    return s, (torch.randn(n, k, generator=g, dtype=F64) * scale if n else None)


@pytest.mark.parametrize("batch,k,queue", [(1, 3, 0), (6, 5, 0), (4, 7, 9), (8, 3, 16)])
@pytest.mark.parametrize("iterations", [1, 3, 10])
@pytest.mark.parametrize("epsilon", [0.05, 0.5])
def test_sinkhorn_matches_naive_loops(batch, k, queue, iterations, epsilon):
    s, sq = _scores(batch, k, seed=batch * 31 + k + queue, scale=0.5, n=queue)
    got = sinkhorn(s, epsilon=epsilon, iterations=iterations, queue_scores=sq)
    want = naive_sinkhorn(s, sq, epsilon, iterations)
    assert got.dtype == F64 and got.shape == (batch, k)
    torch.testing.assert_close(got, want, rtol=RTOL, atol=RTOL)


@pytest.mark.parametrize(
    "crops,assigned", [(2, [0]), (2, [0, 1]), (3, [0, 1]), (3, [1, 2]), (5, [0, 1]), (5, [3])]
)
def test_swav_loss_matches_naive_loops(crops, assigned):
    g = torch.Generator().manual_seed(crops * 10 + len(assigned))
    scores = [torch.randn(5, 6, generator=g, dtype=F64) for _ in range(crops)]
    codes = {i: torch.softmax(torch.randn(5, 6, generator=g, dtype=F64), 1) for i in assigned}
    got = swav_loss(scores, codes, temperature=0.1)
    want = naive_swav_loss(scores, codes, 0.1)
    assert got.dtype == F64 and got.ndim == 0
    assert got.item() == pytest.approx(want, rel=RTOL, abs=RTOL)
    # A sequence of codes means crops 0 .. len - 1.
    if assigned == [0, 1]:
        assert torch.equal(swav_loss(scores, [codes[0], codes[1]], temperature=0.1), got)


@pytest.mark.parametrize("queue", [0, 12])
@pytest.mark.parametrize("iterations", [1, 3])
def test_sinkhorn_and_loss_match_lightly(queue, iterations):
    lightly_swav = pytest.importorskip("lightly.loss.swav_loss")
    g = torch.Generator().manual_seed(queue + iterations)
    high = [F.normalize(torch.randn(6, 8, generator=g, dtype=F64), dim=1) for _ in range(2)]
    low = [F.normalize(torch.randn(6, 8, generator=g, dtype=F64), dim=1) for _ in range(3)]
    queued = [torch.randn(queue, 8, generator=g, dtype=F64) * 0.3 for _ in range(2)]
    # lightly's sinkhorn sees batch and queue concatenated; the batch rows come first.
    for i in range(2):
        full = torch.cat([high[i], queued[i]]) if queue else high[i]
        ref = lightly_swav.sinkhorn(full, iterations=iterations, epsilon=0.05)[:6]
        got = sinkhorn(
            high[i], iterations=iterations, epsilon=0.05, queue_scores=queued[i] if queue else None
        )
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    criterion = lightly_swav.SwaVLoss(temperature=0.1, sinkhorn_iterations=iterations)
    ref_loss = criterion(high, low, queued if queue else None)
    codes = {
        i: sinkhorn(
            high[i], iterations=iterations, epsilon=0.05, queue_scores=queued[i] if queue else None
        )
        for i in range(2)
    }
    got_loss = swav_loss(high + low, codes, temperature=0.1)
    assert got_loss.item() == pytest.approx(ref_loss.item(), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("queue", [0, 10])
def test_sinkhorn_codes_are_distributions_and_balance_prototypes(queue):
    s, sq = _scores(12, 4, seed=7, scale=0.2, n=queue)
    for iterations in (1, 3):
        q = sinkhorn(s, iterations=iterations, queue_scores=sq)
        # The last step normalises samples: every code sums to 1, to rounding.
        torch.testing.assert_close(q.sum(1), torch.ones(12, dtype=F64), rtol=0, atol=1e-13)
        assert bool((q >= 0).all())
    # Prototype totals (over batch and queue) reach n / K as the iterations converge.
    n = 12 + queue
    both = s if sq is None else torch.cat([s, sq])
    full = sinkhorn(both, iterations=300)  # the queue's codes are the rows after the batch's
    torch.testing.assert_close(full.sum(0), torch.full((4,), n / 4, dtype=F64), rtol=1e-9, atol=0)
    torch.testing.assert_close(
        full[:12], sinkhorn(s, iterations=300, queue_scores=sq), rtol=1e-12, atol=1e-14
    )
    # Three iterations are not converged: the balance is approximate, not exact.
    three = sinkhorn(both, iterations=3).sum(0)
    assert (three - n / 4).abs().max() < 0.5 * n / 4


def test_sinkhorn_is_shift_invariant_stable_and_gradient_free():
    s, _ = _scores(5, 6, seed=3)
    q = sinkhorn(s)
    torch.testing.assert_close(sinkhorn(s + 7.0), q, rtol=1e-12, atol=1e-14)
    # Scores / epsilon in [80, 100]: exp() overflows float32 unless the largest score is
    # subtracted first; with the shift float32 agrees with float64.
    high = 4.0 + torch.rand(5, 6, generator=torch.Generator().manual_seed(4), dtype=F64)
    assert not bool(torch.isfinite(torch.exp(high.float() / 0.05)).all())
    big = sinkhorn(high.float())
    assert big.dtype == torch.float32
    # float32 rounds scores / epsilon (~100) by eps x 100 in the exponent: relative error of the
    # codes ~ eps(float32) x max|score| / epsilon (absolute too: the codes are at most 1).
    rtol = rounding(torch.float32) * float(high.abs().max()) / 0.05
    torch.testing.assert_close(big.double(), sinkhorn(high), rtol=rtol, atol=rtol)
    # bf16 in -> float32 codes; a tensor that requires grad gives a detached result.
    x = s.to(torch.bfloat16).requires_grad_()
    out = sinkhorn(x)
    assert out.dtype == torch.float32 and not out.requires_grad
    with pytest.raises(ValueError, match="iterations"):
        sinkhorn(s, iterations=0)
    with pytest.raises(ValueError, match="queue_scores"):
        sinkhorn(s, queue_scores=torch.zeros(3, 5, dtype=F64))


def test_swav_loss_gradcheck_float64():
    g = torch.Generator().manual_seed(0)
    scores = [torch.randn(4, 5, generator=g, dtype=F64, requires_grad=True) for _ in range(3)]
    codes = {i: sinkhorn(scores[i]) for i in (0, 1)}  # fixed targets
    assert torch.autograd.gradcheck(
        lambda *s: swav_loss(list(s), codes, temperature=0.1), scores, eps=1e-6, atol=1e-8
    )
    # The codes are targets: no gradient flows into them even if they require grad.
    q = codes[0].clone().requires_grad_()
    swav_loss(scores, {0: q}, temperature=0.1).backward()
    assert q.grad is None


def test_swav_loss_low_precision_computes_in_float32():
    g = torch.Generator().manual_seed(1)
    scores = [torch.randn(4, 5, generator=g) for _ in range(2)]
    codes = [sinkhorn(s) for s in scores]
    ref = swav_loss(scores, codes)
    low = swav_loss([s.to(torch.bfloat16) for s in scores], codes)
    assert low.dtype == torch.float32
    # bf16 rounds each score by eps/2 of its size, each logit / T (0.1); the cross-entropy moves
    # by at most twice the largest logit change.
    tol = rounding(torch.bfloat16, ulps=1) * max(float(s.abs().max()) for s in scores) / 0.1
    assert low.item() == pytest.approx(ref.item(), rel=0, abs=tol)
    with pytest.raises(ValueError, match="at least 2 crops"):
        swav_loss(scores[:1], codes[:1])
