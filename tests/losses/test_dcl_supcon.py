"""DCL / DCLW and the SupCon (label-index) form of info_nce against naive loops, lightly and
float64 gradcheck."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from tolerance import rounding

from twinview.losses import info_nce, nt_xent
from twinview.losses.dcl import dcl_loss, vmf_weights

F64 = torch.float64
TOL = 1e-10


def _normalize(z):
    return F.normalize(z.double(), dim=1)


def naive_vmf(a, b, sigma):
    """w_i = 2 - exp(a_i . b_i / sigma) / mean_j exp(a_j . b_j / sigma), one sample at a time."""
    s = [math.exp(float(a[i] @ b[i]) / sigma) for i in range(a.shape[0])]
    mean = sum(s) / len(s)
    return [2 - s_i / mean for s_i in s]


def naive_dcl(z1, z2, temperature, sigma=None):
    """Paper Eq. 6 with loops: -w_i s(a_i, b_i)/tau + log sum_{l, j != i} exp(s(a_i, z^l_j)/tau),
    averaged over the N anchors of each view and over the two views."""
    a, b = _normalize(z1), _normalize(z2)
    n = a.shape[0]

    def one_way(x, y):
        w = naive_vmf(x, y, sigma) if sigma is not None else [1.0] * n
        total = 0.0
        for i in range(n):
            negatives = [float(x[i] @ x[j]) / temperature for j in range(n) if j != i]
            negatives += [float(x[i] @ y[j]) / temperature for j in range(n) if j != i]
            log_z = math.log(sum(math.exp(c) for c in negatives))
            total += -w[i] * float(x[i] @ y[i]) / temperature + log_z
        return total / n

    return 0.5 * (one_way(a, b) + one_way(b, a))


def naive_dcl_torch(z1, z2, temperature, sigma=None):
    """The same loops with differentiable torch scalars (weights detached), for gradients."""
    a, b = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    n = a.shape[0]

    def one_way(x, y):
        w = naive_vmf(x.detach(), y.detach(), sigma) if sigma is not None else [1.0] * n
        terms = []
        for i in range(n):
            neg = [x[i] @ x[j] for j in range(n) if j != i] + [
                x[i] @ y[j] for j in range(n) if j != i
            ]
            terms.append(
                -w[i] * (x[i] @ y[i]) / temperature
                + torch.logsumexp(torch.stack(neg) / temperature, 0)
            )
        return torch.stack(terms).mean()

    return 0.5 * (one_way(a, b) + one_way(b, a))


def naive_supcon(z, labels, temperature):
    """SupCon L_out with loops: each anchor averages -log softmax over all its positives."""
    z = _normalize(z)
    losses = []
    for i in range(z.shape[0]):
        others = [j for j in range(z.shape[0]) if j != i]
        logits = {j: float(z[i] @ z[j]) / temperature for j in others}
        log_z = math.log(sum(math.exp(c) for c in logits.values()))
        positives = [j for j in others if int(labels[j]) == int(labels[i])]
        losses.append(-sum(logits[p] - log_z for p in positives) / len(positives))
    return sum(losses) / len(losses)


def pair(batch, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, dim, generator=g, dtype=F64) for _ in range(2))


@pytest.mark.parametrize("batch", [2, 5, 12])
@pytest.mark.parametrize("temperature", [0.07, 0.1, 0.5])
@pytest.mark.parametrize("sigma", [None, 0.5, 1.0])
def test_dcl_matches_naive_loop(batch, temperature, sigma):
    z1, z2 = pair(batch, seed=batch)
    got = dcl_loss(z1, z2, temperature=temperature, sigma=sigma)
    assert got.dtype == F64
    want = naive_dcl(z1, z2, temperature, sigma)
    assert got.item() == pytest.approx(want, rel=TOL, abs=TOL)


def test_dcl_positive_is_not_in_the_denominator():
    """Identical views: the positive term is -1/tau, only other samples form the denominator."""
    z1, _ = pair(4)
    z2 = z1.clone()
    a = _normalize(z1)
    sim = a @ a.T / 0.1
    eye = torch.eye(4, dtype=torch.bool)
    neg = torch.logsumexp(torch.cat([sim.masked_fill(eye, -math.inf)] * 2, dim=1), dim=1)
    want = (neg - 1 / 0.1).mean()
    assert dcl_loss(z1, z2, temperature=0.1).item() == pytest.approx(want.item(), rel=TOL)


def test_vmf_weights_formula_and_mean_one():
    z1, z2 = pair(7)
    a, b = _normalize(z1), _normalize(z2)
    w = vmf_weights(a, b, sigma=0.5)
    assert w.shape == (7,) and not w.requires_grad
    assert w.mean().item() == pytest.approx(1.0, abs=1e-12)
    assert w.tolist() == pytest.approx(naive_vmf(a, b, 0.5), rel=TOL, abs=TOL)
    # Harder positive pairs (less similar) get larger weights.
    s = (a * b).sum(1)
    assert torch.equal(torch.argsort(w), torch.argsort(-s))


def test_dcl_custom_weight_fn_receives_anchor_view_first():
    z1, z2 = pair(5, seed=3)
    calls = []

    def weight(a, b):
        calls.append((a, b))
        return torch.ones(a.shape[0], dtype=a.dtype)

    got = dcl_loss(z1, z2, temperature=0.2, weight_fn=weight)
    assert got.item() == pytest.approx(dcl_loss(z1, z2, temperature=0.2).item(), rel=TOL)
    assert torch.allclose(calls[0][0], _normalize(z1)) and torch.allclose(
        calls[1][0], _normalize(z2)
    )
    with pytest.raises(ValueError, match="not both"):
        dcl_loss(z1, z2, sigma=0.5, weight_fn=weight)


def test_dcl_needs_two_samples_and_matching_shapes():
    with pytest.raises(ValueError, match="at least 2"):
        dcl_loss(torch.randn(1, 4), torch.randn(1, 4))
    with pytest.raises(ValueError, match="same shape"):
        dcl_loss(torch.randn(3, 4), torch.randn(2, 4))


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_dcl_matches_lightly(temperature):
    lightly_loss = pytest.importorskip("lightly.loss")
    z1, z2 = pair(16, dim=12, seed=5)
    ref = lightly_loss.DCLLoss(temperature=temperature)(z1, z2)
    assert ref.dtype == F64
    got = dcl_loss(z1, z2, temperature=temperature)
    assert got.item() == pytest.approx(ref.item(), rel=TOL, abs=TOL)


@pytest.mark.parametrize("sigma", [0.5, 0.2])
@pytest.mark.filterwarnings("ignore::UserWarning")  # lightly builds the weights with torch.tensor
def test_dclw_matches_lightly(sigma):
    lightly_loss = pytest.importorskip("lightly.loss")
    z1, z2 = pair(16, dim=12, seed=6)
    ref = lightly_loss.DCLWLoss(temperature=0.1, sigma=sigma)(z1, z2)
    got = dcl_loss(z1, z2, temperature=0.1, sigma=sigma)
    assert got.item() == pytest.approx(ref.item(), rel=TOL, abs=TOL)


def test_dcl_gradcheck_float64():
    z1, z2 = (t.requires_grad_() for t in pair(4, dim=3, seed=7))
    assert torch.autograd.gradcheck(lambda a, b: dcl_loss(a, b, temperature=0.3), (z1, z2))
    fixed = torch.tensor([0.5, 1.0, 1.5, 2.0], dtype=F64)
    assert torch.autograd.gradcheck(
        lambda a, b: dcl_loss(a, b, temperature=0.3, weight_fn=lambda x, y: fixed), (z1, z2)
    )


def test_dclw_gradient_matches_naive_with_weights_held_constant():
    """The vMF weight depends on the inputs but is a constant for backward (as in lightly)."""
    z1, z2 = (t.requires_grad_() for t in pair(5, dim=4, seed=8))
    g1, g2 = torch.autograd.grad(dcl_loss(z1, z2, temperature=0.2, sigma=0.5), (z1, z2))
    r1, r2 = torch.autograd.grad(naive_dcl_torch(z1, z2, 0.2, sigma=0.5), (z1, z2))
    assert torch.allclose(g1, r1, rtol=TOL, atol=TOL) and torch.allclose(g2, r2, rtol=TOL, atol=TOL)


def test_dcl_float32_and_bf16_are_float32_and_close():
    g = torch.Generator().manual_seed(9)
    z1, z2 = (torch.randn(32, 16, generator=g) for _ in range(2))
    ref = dcl_loss(z1.double(), z2.double(), sigma=0.5)
    got = dcl_loss(z1, z2, sigma=0.5)
    assert got.dtype == torch.float32
    # Logits are cosines / T (T = 0.1): a few eps(dtype) of rounding, divided by T; the loss (a
    # log-sum-exp) moves by at most twice the largest logit change.
    assert got.item() == pytest.approx(ref.item(), abs=2 * rounding(torch.float32) / 0.1)
    low = dcl_loss(z1.bfloat16(), z2.bfloat16(), sigma=0.5)
    assert low.dtype == torch.float32 and torch.isfinite(low)
    assert low.item() == pytest.approx(ref.item(), abs=2 * rounding(torch.bfloat16, ulps=1) / 0.1)


# SupCon: info_nce with labels as (global) indices.


@pytest.mark.parametrize("views", [2, 3])
@pytest.mark.parametrize("temperature", [0.07, 0.1, 0.5])
def test_supcon_repeated_labels_matches_naive_loop(views, temperature):
    g = torch.Generator().manual_seed(views)
    labels = torch.tensor([3, 1, 3, 0, 1, 3, 7, 0])  # several positives per anchor, any ids
    z = torch.randn(views * 8, 6, generator=g, dtype=F64)
    index = labels.repeat(views)
    got = info_nce(z, query_index=index, temperature=temperature, global_index=True)
    want = naive_supcon(z, index, temperature)
    assert got.item() == pytest.approx(want, rel=TOL, abs=TOL)
    # One process: global and per-process indices give the same loss.
    plain = info_nce(z, query_index=index, temperature=temperature)
    assert got.item() == pytest.approx(plain.item(), rel=TOL)


def test_supcon_each_positive_counted():
    """Labels [5, 9, 5, 9] over two views: every anchor has 3 positives (the other sample of
    its class in its own view, both of them in the other view), each counted once."""
    g = torch.Generator().manual_seed(11)
    index = torch.tensor([5, 9, 5, 9]).repeat(2)
    z = torch.randn(8, 4, generator=g, dtype=F64)
    a = _normalize(z)
    terms = []
    for i in range(8):
        logits = a[i] @ a.T / 0.1
        others = [j for j in range(8) if j != i]
        log_z = torch.logsumexp(logits[others], dim=0)
        positives = [j for j in others if int(index[j]) == int(index[i])]
        assert len(positives) == 3
        terms.append(-sum(logits[j] - log_z for j in positives) / 3)
    # Anchor 0's positives are rows 2, 4 and 6.
    logits0 = a[0] @ a.T / 0.1
    log_prob0 = logits0 - torch.logsumexp(logits0[1:], dim=0)
    assert float(terms[0]) == pytest.approx(-float(log_prob0[[2, 4, 6]].mean()), rel=TOL)
    got = info_nce(z, query_index=index, temperature=0.1, global_index=True)
    assert got.item() == pytest.approx(float(torch.stack(terms).mean()), rel=TOL, abs=TOL)


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_supcon_with_distinct_labels_is_nt_xent(temperature):
    g = torch.Generator().manual_seed(12)
    z = [torch.randn(10, 8, generator=g, dtype=F64) for _ in range(2)]
    labels = torch.randperm(100, generator=g)[:10]  # distinct, arbitrary class ids
    got = info_nce(
        torch.cat(z), query_index=labels.repeat(2), temperature=temperature, global_index=True
    )
    want = nt_xent(z, temperature=temperature)
    assert got.item() == pytest.approx(want.item(), rel=TOL, abs=TOL)


def test_supcon_gradcheck_float64():
    g = torch.Generator().manual_seed(13)
    z = torch.randn(6, 3, generator=g, dtype=F64, requires_grad=True)
    index = torch.tensor([0, 1, 0]).repeat(2)  # two views of three samples, two classes
    assert torch.autograd.gradcheck(
        lambda x: info_nce(x, query_index=index, temperature=0.2, global_index=True), (z,)
    )


# A simulated two-process world (forward values only): ``gather`` returns the rank-ordered
# concatenation of what each process passed to the same call; the inputs of a gather do not
# depend on earlier gathers' outputs here, so one recording pass gives them all.


def _simulated(monkeypatch, fn, shards):
    """fn(*shard) on each of len(shards) simulated processes; returns the per-process losses."""
    from twinview import distributed

    world = len(shards)
    recorded = [[] for _ in range(world)]
    state = {"rank": 0, "call": 0, "replay": False}

    def gather(x, *, grad=True):
        call = state["call"]
        state["call"] += 1
        if not state["replay"]:
            recorded[state["rank"]].append(x.detach().clone())
            return torch.cat([x] * world)
        return torch.cat([recorded[r][call] for r in range(world)])

    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(distributed, "rank", lambda: state["rank"])
    monkeypatch.setattr(distributed, "gather", gather)
    losses = []
    for replay in (False, True):
        state["replay"] = replay
        losses = []
        for r in range(world):
            state["rank"], state["call"] = r, 0
            losses.append(fn(*shards[r]))
    return losses


def test_simulated_two_processes_supcon_labels_are_not_offset(monkeypatch):
    g = torch.Generator().manual_seed(14)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 2, 0])  # classes shared across the two halves
    z = [torch.randn(8, 5, generator=g, dtype=F64) for _ in range(2)]  # two views
    whole = info_nce(torch.cat(z), query_index=labels.repeat(2), temperature=0.2, global_index=True)
    shards = [
        (torch.cat([v[s] for v in z]), labels[s].repeat(2)) for s in (slice(0, 4), slice(4, 8))
    ]

    def supcon(rows, index):
        return info_nce(rows, query_index=index, temperature=0.2, global_index=True)

    losses = _simulated(monkeypatch, supcon, shards)
    assert (0.5 * sum(losses)).item() == pytest.approx(whole.item(), rel=TOL)
    # Labels offset by rank (as sample indices are) would lose the cross-process positives.
    wrong = _simulated(
        monkeypatch, lambda rows, index: info_nce(rows, query_index=index, temperature=0.2), shards
    )
    assert (0.5 * sum(wrong)).item() != pytest.approx(whole.item(), rel=1e-6)


@pytest.mark.parametrize("sigma", [None, 0.5])
def test_simulated_two_processes_dcl_equals_global_batch(monkeypatch, sigma):
    z1, z2 = pair(8, seed=15)
    whole = dcl_loss(z1, z2, temperature=0.2, sigma=sigma)
    shards = [(z1[s], z2[s]) for s in (slice(0, 4), slice(4, 8))]
    losses = _simulated(
        monkeypatch, lambda a, b: dcl_loss(a, b, temperature=0.2, sigma=sigma), shards
    )
    assert (0.5 * sum(losses)).item() == pytest.approx(whole.item(), rel=TOL)
