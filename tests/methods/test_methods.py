"""Every method: optimizer steps on random data, EMA rule, state round trips, param groups."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny import tiny_backbone
from tolerance import assert_close_to_scale
from torch import nn

from twinview.methods import METHODS, Method, SimSiam, build_method

F64 = torch.float64
RTOL = 1e-10  # float64 comparisons of two computation orders, relative to values of ~1

SMALL = {
    "simclr": {"hidden_dim": 32, "out_dim": 16},
    "moco_v2": {"hidden_dim": 32, "out_dim": 16, "queue_size": 20},
    "moco_v3": {"hidden_dim": 32, "out_dim": 16},
    "byol": {"hidden_dim": 32, "out_dim": 16},
    "simsiam": {"hidden_dim": 32, "out_dim": 16, "pred_hidden_dim": 8},
}


def make(name: str, seed: int = 0) -> Method:
    torch.manual_seed(seed)
    return build_method(name, tiny_backbone(), feature_dim=24, **SMALL[name])


def views(batch: int = 6, seed: int = 1, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, 8, 8, generator=g, dtype=dtype) for _ in range(2)]


def momentum_pairs(method: Method) -> list[tuple[nn.Module, nn.Module]]:
    pairs = []
    for name in method.momentum_modules():
        online = getattr(method, name.removesuffix("_momentum"))
        pairs.append((getattr(method, name), online))
    return pairs


def test_registry_lists_every_method_and_rejects_unknown():
    assert set(METHODS) == {
        "simclr", "moco_v2", "moco_v3", "byol", "simsiam", "barlow_twins", "vicreg", "dino",
        "swav", "nnclr", "supcon", "dcl", "dclw",
    }  # fmt: skip
    with pytest.raises(ValueError, match=r"valid methods: .*simclr"):
        build_method("simclrr", tiny_backbone(), feature_dim=24)
    with pytest.raises(TypeError, match="simclr"):
        build_method("simclr", tiny_backbone(), feature_dim=24, queue_size=5)


# EMA against its formula: foreach kernels and the formula round differently (FMA or not), by an
# ulp or two of the terms: a few eps(dtype) relative to the tensor's largest weight, either dtype.


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", sorted(SMALL))
def test_two_steps_finite_loss_and_exact_ema(name, dtype):
    method = make(name).to(dtype)
    method.train()
    opt = torch.optim.SGD(method.param_groups(1e-4), lr=0.1, momentum=0.9)
    for step in range(2):
        out = method(views(seed=step, dtype=dtype))
        assert out.loss.ndim == 0 and torch.isfinite(out.loss) and out.loss.dtype == dtype
        assert out.features.shape == (6, 24) and not out.features.requires_grad
        opt.zero_grad()
        out.loss.backward()
        for target, _online in momentum_pairs(method):
            assert all(p.grad is None for p in target.parameters())
            assert all(not p.requires_grad for p in target.parameters())
        before = [copy.deepcopy(t) for t, _ in momentum_pairs(method)]
        opt.step()
        method.on_step_end((step + 1) / 2)
        m = getattr(method, "momentum", None)
        for (target, online), old in zip(momentum_pairs(method), before):
            for p_t, p_o, p_old in zip(target.parameters(), online.parameters(), old.parameters()):
                assert p_t.dtype == dtype
                assert_close_to_scale(p_t, m * p_old + (1 - m) * p_o, ulps=8)
    if name in {"moco_v2", "moco_v3", "byol"}:
        assert momentum_pairs(method), "momentum methods expose their momentum modules"


@pytest.mark.parametrize("name", sorted(SMALL))
def test_param_groups_cover_every_trainable_parameter_once(name):
    method = make(name)
    ids = [id(p) for g in method.param_groups(1e-4) for p in g["params"]]
    trainable = [id(p) for p in method.parameters() if p.requires_grad]
    assert len(ids) == len(set(ids))
    assert set(ids) == set(trainable)
    for g in method.param_groups(1e-4):
        for p in g["params"]:
            if p.ndim <= 1:
                assert g["weight_decay"] == 0.0 and g.get("lars_exclude")


def test_simsiam_predictor_is_a_fixed_lr_group():
    method = make("simsiam")
    assert isinstance(method, SimSiam)
    predictor = {id(p) for p in method.predictor.parameters()}
    for g in method.param_groups(1e-4):
        in_pred = {id(p) in predictor for p in g["params"]}
        assert len(in_pred) == 1
        assert g.get("fixed_lr", False) == in_pred.pop()


def test_moco_v2_queue_fills_and_survives_state_dict():
    method = make("moco_v2").to(F64)  # float64: the keys are recomputed below, to RTOL
    for step in range(3):  # 3 x 6 keys into a queue of 20: wraps around
        method(views(seed=step, dtype=F64))
    assert int(method.queue.ptr) == 18 % 20
    state = method.state_dict()
    assert "queue.features" in state and "queue.ptr" in state
    fresh = make("moco_v2", seed=1).to(F64)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.queue.features, method.queue.features)
    assert int(fresh.queue.ptr) == int(method.queue.ptr)
    # The newest keys are the momentum encoder's normalised projections of view 1.
    with torch.no_grad():
        k = method._key_encoder(views(seed=2, dtype=F64)[1])
    assert torch.allclose(method.queue.features[12:18], k, rtol=RTOL, atol=RTOL)  # unit rows


def test_moco_v2_split_bn_keys_are_a_permutation_invariant_encoding():
    """Split-BN keys equal encoding each sub-batch alone, returned in the original order (in
    float64: BN statistics over a sub-batch and over a slice of the whole sum in other orders)."""
    method = make("moco_v2").to(F64)
    method.bn_splits = 2
    x = views(batch=8, dtype=F64)[1]
    torch.manual_seed(0)
    perm = torch.randperm(8)
    torch.manual_seed(0)
    k = method._keys(x)
    with torch.no_grad():
        parts = [method._key_encoder(c) for c in x[perm].chunk(2)]
    expected = torch.cat(parts)[torch.argsort(perm)]
    assert torch.allclose(k, expected, rtol=RTOL, atol=RTOL)  # unit rows


@pytest.mark.parametrize("name", ["moco_v3", "byol"])
def test_momentum_follows_cosine_schedule(name):
    method = make(name)
    base = method.momentum_base
    method.on_step_end(0.0)
    assert method.momentum == pytest.approx(base)
    method.on_step_end(0.5)
    assert method.momentum == pytest.approx(1 - (1 - base) / 2)
    method.on_step_end(1.0)
    assert method.momentum == pytest.approx(1.0)


def test_simclr_multicrop_groups_views_by_size():
    method = make("simclr")
    g = torch.Generator().manual_seed(0)
    big = [torch.randn(4, 3, 8, 8, generator=g) for _ in range(2)]
    small = [torch.randn(4, 3, 4, 4, generator=g) for _ in range(3)]
    out = method(big + small)
    assert torch.isfinite(out.loss)
    out.loss.backward()


@pytest.mark.parametrize("name", sorted(SMALL))
def test_learning_reduces_loss_on_fixed_batch(name):
    """A few steps on one batch of two views must lower the loss (the method can learn)."""
    method = make(name)
    opt = torch.optim.SGD(method.param_groups(0.0), lr=0.05, momentum=0.9)
    x = views(batch=16, seed=3)
    # MoCo v2's queue fills with keys of this very batch; compare against the same queue.
    queue = copy.deepcopy(method.queue) if hasattr(method, "queue") else None
    losses = []
    for step in range(15):
        out = method(x)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        method.on_step_end(step / 15)
        losses.append(out.loss.item())
        if queue is not None:
            method.queue.load_state_dict(queue.state_dict())
    assert losses[-1] < losses[0]


def test_dino_evaluates_its_teacher_and_the_others_their_online_backbone():
    for name in METHODS:
        method = build_method(name, tiny_backbone(), feature_dim=24)
        expected = method.backbone_momentum if name == "dino" else method.backbone
        assert method.evaluation_backbone() is expected, name
