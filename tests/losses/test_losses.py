"""Losses against naive loop references, lightly, and float64 gradcheck.

Comparisons between two ways of computing the same loss run in float64, so the tolerance
(RTOL) can be tight on any CPU; float32 accuracy is checked on its own against float64.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from tolerance import rounding

from twinview.losses import info_nce, negative_cosine, nt_xent

# float64: different summation orders agree to ~1e-15; also the absolute slack, as losses are
# O(1) and some are exactly 0 (MoCo form without negatives), where only rounding noise remains.
RTOL = 1e-12
F64 = torch.float64


def naive_info_nce(q, k, qi, ki, temperature, negatives=None, self_contrast=False, in_batch=True):
    """Python loops: for each anchor, average -log softmax over its positives."""
    q = F.normalize(q.double(), dim=1)
    k = q if self_contrast else F.normalize(k.double(), dim=1)
    neg = None if negatives is None else F.normalize(negatives.double(), dim=1)
    losses = []
    for i in range(q.shape[0]):
        cands, is_pos = [], []
        for j in range(k.shape[0]):
            if self_contrast and i == j:
                continue
            pos = int(qi[i]) == int(ki[j])
            if not in_batch and not pos:
                continue
            cands.append(float(q[i] @ k[j]) / temperature)
            is_pos.append(pos)
        if neg is not None:
            for n in neg:
                cands.append(float(q[i] @ n) / temperature)
                is_pos.append(False)
        log_z = math.log(sum(math.exp(c) for c in cands))
        terms = [c - log_z for c, p in zip(cands, is_pos) if p]
        losses.append(-sum(terms) / len(terms))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("batch", [2, 5, 16])
@pytest.mark.parametrize("views", [2, 3, 4])
@pytest.mark.parametrize("temperature", [0.07, 0.5, 1.0])
def test_self_contrast_matches_naive(batch, views, temperature):
    g = torch.Generator().manual_seed(batch * 100 + views)
    z = [torch.randn(batch, 8, generator=g, dtype=F64) for _ in range(views)]
    index = torch.arange(batch).repeat(views)
    got = nt_xent(z, temperature=temperature)
    want = naive_info_nce(torch.cat(z), None, index, index, temperature, self_contrast=True)
    assert got.dtype == F64
    assert got.item() == pytest.approx(want, rel=RTOL, abs=RTOL)


@pytest.mark.parametrize("batch,queue", [(4, 0), (4, 7), (9, 32)])
@pytest.mark.parametrize("in_batch", [True, False])
def test_query_key_with_queue_matches_naive(batch, queue, in_batch):
    g = torch.Generator().manual_seed(batch + queue)
    q, k = (torch.randn(batch, 6, generator=g, dtype=F64) for _ in range(2))
    neg = torch.randn(queue, 6, generator=g, dtype=F64) if queue else None
    idx = torch.arange(batch)
    got = info_nce(q, k, negatives=neg, temperature=0.2, in_batch_negatives=in_batch)
    want = naive_info_nce(q, k, idx, idx, 0.2, negatives=neg, in_batch=in_batch)
    assert got.item() == pytest.approx(want, rel=RTOL, abs=RTOL)


def test_supervised_positives_by_label_index():
    """Positives defined by an arbitrary index (labels): SupCon L_out against the naive loop."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(12, 5, generator=g, dtype=F64)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 0, 1, 3, 3, 2])
    got = info_nce(z, query_index=labels, key_index=labels, temperature=0.3)
    want = naive_info_nce(z, None, labels, labels, 0.3, self_contrast=True)
    assert got.item() == pytest.approx(want, rel=RTOL, abs=RTOL)


@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_float32_loss_is_float32_and_close_to_float64(temperature):
    """float32 inputs give a float32 loss within a few float32 ulps of the logits' scale."""
    g = torch.Generator().manual_seed(8)
    z = [torch.randn(32, 16, generator=g) for _ in range(2)]
    got = nt_xent(z, temperature=temperature)
    ref = nt_xent([t.to(F64) for t in z], temperature=temperature)
    assert got.dtype == torch.float32
    # Logits are cosines / temperature: rounding error up to a few eps x 1 / temperature.
    tol = 64 * torch.finfo(torch.float32).eps / temperature
    assert got.item() == pytest.approx(ref.item(), rel=0, abs=tol)


def test_anchor_without_positive_is_an_error():
    z = torch.randn(3, 4)
    with pytest.raises(ValueError, match="no positive"):
        info_nce(z, temperature=0.5)  # self-contrast, every index unique


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_matches_lightly_ntxent(temperature):
    lightly_loss = pytest.importorskip("lightly.loss")
    g = torch.Generator().manual_seed(3)
    z0, z1 = (torch.randn(32, 16, generator=g, dtype=F64) for _ in range(2))
    ref = lightly_loss.NTXentLoss(temperature=temperature)(z0, z1)
    assert ref.dtype == F64
    got = nt_xent([z0, z1], temperature=temperature)
    assert got.item() == pytest.approx(ref.item(), rel=RTOL, abs=RTOL)


def test_matches_lightly_ntxent_with_memory_bank_form():
    """lightly's NTXentLoss with a memory bank is MoCo's form: positive key vs the bank."""
    lightly_loss = pytest.importorskip("lightly.loss")
    g = torch.Generator().manual_seed(4)
    q, k = (torch.randn(8, 16, generator=g, dtype=F64) for _ in range(2))
    bank = F.normalize(torch.randn(32, 16, generator=g, dtype=F64), dim=1)  # lightly: (K, D)
    loss_fn = lightly_loss.NTXentLoss(temperature=0.2, memory_bank_size=(32, 16))
    loss_fn.memory_bank.bank = bank.clone()
    ref = loss_fn(q, k)
    assert ref.dtype == F64
    got = info_nce(q, k, negatives=bank, temperature=0.2, in_batch_negatives=False)
    assert got.item() == pytest.approx(ref.item(), rel=RTOL, abs=RTOL)


def test_negative_cosine_matches_lightly_and_detaches_target():
    lightly_loss = pytest.importorskip("lightly.loss")
    g = torch.Generator().manual_seed(5)
    p = torch.randn(10, 8, generator=g, dtype=F64, requires_grad=True)
    z = torch.randn(10, 8, generator=g, dtype=F64, requires_grad=True)
    ref = lightly_loss.NegativeCosineSimilarity()(p, z)
    loss = negative_cosine(p, z)
    assert loss.dtype == F64
    assert loss.item() == pytest.approx(ref.item(), rel=0, abs=RTOL)  # a mean of cosines
    loss.backward()
    assert z.grad is None and p.grad is not None and p.grad.abs().sum() > 0


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(6)
    q = torch.randn(4, 3, dtype=torch.float64, generator=g, requires_grad=True)
    k = torch.randn(4, 3, dtype=torch.float64, generator=g, requires_grad=True)
    neg = torch.randn(5, 3, dtype=torch.float64, generator=g, requires_grad=True)
    idx = torch.arange(4).repeat(2)
    assert torch.autograd.gradcheck(
        lambda q, k, n: info_nce(torch.cat([q, k]), query_index=idx, negatives=n, temperature=0.3),
        (q, k, neg),
    )
    assert torch.autograd.gradcheck(
        lambda q, k: info_nce(q, k, temperature=0.2, in_batch_negatives=False), (q, k)
    )
    z = torch.randn(3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.randn(3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: negative_cosine(a, b, detach_target=False), (z, y))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_low_temperature_is_finite_and_close(dtype):
    g = torch.Generator().manual_seed(7)
    z = [torch.randn(64, 32, generator=g) for _ in range(2)]
    ref = nt_xent([t.to(F64) for t in z], temperature=0.05)
    got = nt_xent([t.to(dtype) for t in z], temperature=0.05)
    assert torch.isfinite(got)
    assert got.dtype == torch.float32
    # Rounding the inputs to dtype moves each cosine by ~eps(dtype), each logit by that / T; the
    # loss (a log-softmax) by at most twice the largest logit change.
    assert got.item() == pytest.approx(ref.item(), rel=0, abs=2 * rounding(dtype, ulps=1) / 0.05)
    # Nearly identical views at very low temperature: large logits, no overflow.
    near = [z[0], z[0] + 1e-3]
    loss = nt_xent([t.to(dtype) for t in near], temperature=0.01)
    assert torch.isfinite(loss)
