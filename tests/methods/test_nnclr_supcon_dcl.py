"""NNCLR, SupCon, DCL and DCLW: optimizer steps, state round trips, NNCLR's support set against
a naive loop and lightly's NNMemoryBankModule, SupCon's labels."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from tiny import tiny_backbone
from torch import nn

from twinview.losses.dcl import dcl_loss
from twinview.methods import DCL, DCLW, NNCLR, Method, SimCLR, SupCon, build_method
from twinview.methods.nnclr import nearest_neighbours

F64 = torch.float64
TOL = 1e-10
SMALL = {
    "nnclr": {"hidden_dim": 32, "out_dim": 16, "pred_hidden_dim": 8, "queue_size": 12},
    "supcon": {"hidden_dim": 32, "out_dim": 16},
    "dcl": {"hidden_dim": 32, "out_dim": 16},
    "dclw": {"hidden_dim": 32, "out_dim": 16},
}
LABELS = torch.tensor([0, 1, 0, 2, 1, 0])


def make(name: str, seed: int = 0, **kwargs) -> Method:
    torch.manual_seed(seed)
    return build_method(name, tiny_backbone(), feature_dim=24, **{**SMALL[name], **kwargs})


def views(batch: int = 6, seed: int = 1, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, 8, 8, generator=g, dtype=dtype) for _ in range(2)]


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", sorted(SMALL))
def test_two_steps_finite_loss(name, dtype):
    method = make(name).to(dtype)
    method.train()
    opt = torch.optim.SGD(method.param_groups(1e-4), lr=0.1, momentum=0.9)
    before = [p.detach().clone() for p in method.backbone.parameters()]
    for step in range(2):
        out = method(views(seed=step, dtype=dtype), LABELS)
        assert out.loss.ndim == 0 and torch.isfinite(out.loss) and out.loss.dtype == dtype
        assert out.features.shape == (6, 24) and not out.features.requires_grad
        assert out.embeddings.shape == (6, 16) and not out.embeddings.requires_grad
        assert all(v.ndim == 0 and not v.requires_grad for v in out.logs.values())
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        method.on_step_end((step + 1) / 2)
    changed = [not torch.equal(b, p) for b, p in zip(before, method.backbone.parameters())]
    assert any(changed), "the backbone is trained"


@pytest.mark.parametrize("name", sorted(SMALL))
def test_state_dict_round_trip_gives_identical_outputs(name):
    method = make(name)
    opt = torch.optim.SGD(method.parameters(), lr=0.1)
    for step in range(2):
        out = method(views(seed=step), LABELS)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    fresh = make(name, seed=1)
    fresh.load_state_dict(method.state_dict())
    x = views(seed=5)
    a, b = method(x, LABELS), fresh(x, LABELS)
    assert torch.equal(a.loss, b.loss) and torch.equal(a.embeddings, b.embeddings)
    if name == "nnclr":
        assert "queue.features" in method.state_dict() and "queue.ptr" in method.state_dict()
        assert torch.equal(method.queue.features, fresh.queue.features)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_param_groups_cover_every_trainable_parameter_once(name):
    method = make(name)
    ids = [id(p) for g in method.param_groups(1e-4) for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in method.parameters() if p.requires_grad}


def test_registry_and_class_attributes():
    assert isinstance(make("nnclr"), NNCLR) and NNCLR.default_views == "byol"
    assert isinstance(make("supcon"), SupCon) and SupCon.needs_labels
    assert isinstance(make("dclw"), DCLW) and isinstance(make("dclw"), DCL)
    assert make("dcl").sigma is None and make("dclw").sigma == 0.5
    for cls in (NNCLR, SupCon, DCL, DCLW):
        assert cls.sync_bn
    assert not NNCLR.needs_labels and not DCL.needs_labels
    assert DCL.default_views == "simclr" and SupCon.default_views == "simclr"
    full = NNCLR(tiny_backbone(), feature_dim=24)
    assert full.queue.features.shape == (98304, 256) and full.temperature == 0.1
    bn = [m for m in full.projector if isinstance(m, nn.BatchNorm1d)]
    assert len(bn) == 3, "NNCLR's projector has BN after every layer"
    assert sum(isinstance(m, nn.BatchNorm1d) for m in full.predictor) == 1


# NNCLR


def test_nnclr_queue_fills_with_normalised_view_1_projections():
    method = make("nnclr").to(F64)  # queue 12, batch 6
    initial = method.queue.features.clone()
    first = method(views(seed=0, dtype=F64))
    assert int(method.queue.ptr) == 6
    unit = {"rtol": TOL, "atol": TOL}  # unit rows
    assert torch.allclose(method.queue.features[:6], F.normalize(first.embeddings, dim=1), **unit)
    assert torch.equal(method.queue.features[6:], initial[6:])
    second = method(views(seed=1, dtype=F64))
    assert int(method.queue.ptr) == 0
    assert torch.allclose(method.queue.features[6:], F.normalize(second.embeddings, dim=1), **unit)
    assert torch.allclose(method.queue.features[:6], F.normalize(first.embeddings, dim=1), **unit)


def naive_nearest(z, support):
    """For each row: the support row of highest cosine similarity, by a Python loop."""
    out = []
    for row in z:
        row = row / row.norm()
        sims = [float(row @ s) / float(s.norm()) for s in support]
        out.append(support[max(range(len(sims)), key=sims.__getitem__)])
    return torch.stack(out)


def naive_nnclr_loss(nn1, nn2, p1, p2, temperature):
    """Paper Eq. 2, symmetrised as Algorithm 1: 0.5 * (L(NN1, p2) + L(NN2, p1))."""

    def one_way(nn_, p):
        nn_, p = F.normalize(nn_, dim=1), F.normalize(p, dim=1)
        total = 0.0
        for i in range(nn_.shape[0]):
            logits = [float(nn_[i] @ p[k]) / temperature for k in range(p.shape[0])]
            total += -(logits[i] - math.log(sum(math.exp(c) for c in logits)))
        return total / nn_.shape[0]

    return 0.5 * (one_way(nn1, p2) + one_way(nn2, p1))


def test_nearest_neighbours_match_naive_loop_and_carry_no_gradient():
    g = torch.Generator().manual_seed(0)
    support = F.normalize(torch.randn(30, 5, generator=g, dtype=F64), dim=1)
    z = torch.randn(7, 5, generator=g, dtype=F64, requires_grad=True)
    nn_, sim = nearest_neighbours(z, support)
    assert not nn_.requires_grad and not sim.requires_grad
    assert torch.equal(nn_, naive_nearest(z.detach(), support))
    assert torch.allclose(sim, (F.normalize(z.detach(), dim=1) * nn_).sum(1), rtol=TOL, atol=TOL)


def test_nnclr_loss_matches_naive_loop_float64():
    method = make("nnclr", queue_size=18).to(F64)
    method(views(seed=0, dtype=F64))  # part of the support set now holds real projections
    support = method.queue.features.clone()
    x = views(seed=1, dtype=F64)
    with torch.no_grad():
        h = method.backbone(torch.cat(x))  # both views in one pass, as the method
        z = method.projector(h)
        p = method.predictor(z)
    z1, z2 = z.chunk(2)
    p1, p2 = p.chunk(2)
    nn1, nn2 = naive_nearest(z1, support), naive_nearest(z2, support)
    want = naive_nnclr_loss(nn1, nn2, p1, p2, method.temperature)
    out = method(x)
    assert out.loss.item() == pytest.approx(want, rel=TOL, abs=TOL)
    mean_sim = 0.5 * (
        (F.normalize(z1, dim=1) * nn1).sum(1).mean() + (F.normalize(z2, dim=1) * nn2).sum(1).mean()
    )
    assert out.logs["nn_similarity"].item() == pytest.approx(mean_sim.item(), rel=TOL)


def test_nnclr_gradient_flows_through_predictions_only():
    method = make("nnclr").to(F64)
    x = views(dtype=F64)
    out = method(x)
    out.loss.backward()
    assert method.queue.features.grad is None
    assert all(p.grad is not None for p in method.predictor.parameters())


def test_nnclr_support_set_matches_lightly_nn_memory_bank():
    """Lookup before update, FIFO update with view 1: lightly's NNMemoryBankModule, called as in
    its NNCLR example (view 2 without update, then view 1 with update)."""
    modules = pytest.importorskip("lightly.models.modules")
    method = make("nnclr", queue_size=24).to(F64)  # 24 = 4 batches of 6: lightly drops no rows
    bank = modules.NNMemoryBankModule(size=(24, 16))
    bank.bank = method.queue.features.clone()
    bank.bank_ptr.zero_()
    g = torch.Generator().manual_seed(3)
    for _ in range(6):  # wraps around the queue
        z1, z2 = (torch.randn(6, 16, generator=g, dtype=F64) for _ in range(2))
        ours2, _ = nearest_neighbours(z2, method.queue.features)
        ours1, _ = nearest_neighbours(z1, method.queue.features)
        method.queue.enqueue(F.normalize(z1, dim=1))
        ref2 = bank(F.normalize(z2, dim=1), update=False)
        ref1 = bank(F.normalize(z1, dim=1), update=True)
        assert torch.allclose(ours1, ref1, rtol=0, atol=1e-12)
        assert torch.allclose(ours2, ref2, rtol=0, atol=1e-12)
        assert torch.allclose(method.queue.features, bank.bank, rtol=0, atol=1e-12)
        assert int(method.queue.ptr) == int(bank.bank_ptr)


def test_nnclr_nt_xent_form_matches_lightly_example():
    lightly_loss = pytest.importorskip("lightly.loss")
    method = make("nnclr", loss_form="nt_xent").to(F64)
    support = method.queue.features.clone()
    x = views(dtype=F64)
    with torch.no_grad():
        z = method.projector(method.backbone(torch.cat(x)))
        p = method.predictor(z)
    (z1, z2), (p1, p2) = z.chunk(2), p.chunk(2)
    nn1, nn2 = nearest_neighbours(z1, support)[0], nearest_neighbours(z2, support)[0]
    criterion = lightly_loss.NTXentLoss(temperature=0.1)
    ref = 0.5 * (criterion(nn1, p2) + criterion(nn2, p1))
    assert method(x).loss.item() == pytest.approx(ref.item(), rel=TOL, abs=TOL)


def test_nnclr_and_dcl_reject_other_view_counts():
    x = views() + views(seed=2)[:1]
    for name in ("nnclr", "dcl"):
        with pytest.raises(ValueError, match="exactly 2 views"):
            make(name)(x)
    with pytest.raises(ValueError, match="loss_form"):
        make("nnclr", loss_form="ntxent")


# SupCon


def test_supcon_raises_without_labels_or_with_bad_labels():
    method = make("supcon")
    with pytest.raises(ValueError, match="supcon needs labels: "):
        method(views())
    with pytest.raises(ValueError, match="class ids of shape"):
        method(views(), LABELS[:4])
    with pytest.raises(ValueError, match="class ids of shape"):
        method(views(), LABELS.float())


def test_supcon_with_distinct_labels_equals_simclr():
    torch.manual_seed(0)
    simclr = SimCLR(tiny_backbone(), feature_dim=24, hidden_dim=32, out_dim=16).to(F64)
    supcon = make("supcon").to(F64)  # float64: two index paths, two summation orders
    x = views(dtype=F64)
    distinct = torch.tensor([40, 3, 17, 8, 99, 0])
    got = supcon(x, distinct).loss
    assert got.item() == pytest.approx(simclr(x).loss.item(), rel=TOL)


def test_supcon_multicrop_and_repeated_labels():
    method = make("supcon").to(F64)
    g = torch.Generator().manual_seed(0)
    big = [torch.randn(6, 3, 8, 8, generator=g, dtype=F64) for _ in range(2)]
    small = [torch.randn(6, 3, 4, 4, generator=g, dtype=F64) for _ in range(2)]
    out = method(big + small, LABELS)
    with torch.no_grad():
        h = [method.backbone(torch.cat(big)), method.backbone(torch.cat(small))]
        z = F.normalize(method.projector(torch.cat(h)), dim=1)  # 24 rows: views x samples
    index = LABELS.repeat(4)
    losses = []
    for i in range(24):
        others = [j for j in range(24) if j != i]
        logits = z[i] @ z[others].T / method.temperature
        positive = torch.tensor([int(index[j]) == int(index[i]) for j in others])
        losses.append(-(logits[positive] - torch.logsumexp(logits, 0)).mean())
    assert out.loss.item() == pytest.approx(float(torch.stack(losses).mean()), rel=TOL)
    out.loss.backward()


# DCL / DCLW


@pytest.mark.parametrize("name,sigma", [("dcl", None), ("dclw", 0.5)])
def test_dcl_methods_use_the_decoupled_loss(name, sigma):
    method = make(name).to(F64)
    x = views(dtype=F64)
    with torch.no_grad():
        z1, z2 = method.projector(method.backbone(torch.cat(x))).chunk(2)
    want = dcl_loss(z1, z2, temperature=0.1, sigma=sigma)
    assert method(x).loss.item() == pytest.approx(want.item(), rel=TOL)
    with pytest.raises(ValueError, match="sigma"):
        DCLW(tiny_backbone(), feature_dim=24, sigma=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sigma"):
        DCL(tiny_backbone(), feature_dim=24, sigma=0.0)


@pytest.mark.parametrize("name", ["supcon", "dcl", "dclw"])
def test_learning_reduces_loss_on_fixed_batch(name):
    method = make(name)
    opt = torch.optim.SGD(method.param_groups(0.0), lr=0.05, momentum=0.9)
    x = views(batch=12, seed=3)
    labels = torch.arange(12) % 4
    losses = []
    for _ in range(10):
        out = method(x, labels)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < losses[0]
