"""Barlow Twins and VICReg methods: two optimizer steps on random data, the loss is the loss
function of the heads' outputs, logged terms, head shapes, state round trip, learning."""

from __future__ import annotations

import inspect

import pytest
import torch
from tiny import tiny_backbone
from torch import nn

from twinview.losses.barlow_twins import barlow_twins_loss, barlow_twins_terms
from twinview.losses.vicreg import vicreg_loss, vicreg_terms
from twinview.methods import BarlowTwins, Method, VICReg, build_method

SMALL = {"hidden_dim": 32, "out_dim": 16}
LOGS = {
    "barlow_twins": {"on_diagonal", "off_diagonal"},
    "vicreg": {"invariance", "variance", "covariance"},
}


def make(name: str, seed: int = 0, **kwargs) -> Method:
    torch.manual_seed(seed)
    return build_method(name, tiny_backbone(), feature_dim=24, **{**SMALL, **kwargs})


def views(batch: int = 6, seed: int = 1, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, 8, 8, generator=g, dtype=dtype) for _ in range(2)]


def head(method: Method) -> nn.Module:
    return method.projector if isinstance(method, BarlowTwins) else method.expander


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", sorted(LOGS))
def test_two_steps_train_every_parameter(name, dtype):
    method = make(name).to(dtype)
    method.train()
    opt = torch.optim.SGD(method.param_groups(1e-4), lr=0.05, momentum=0.9)
    start = {k: v.clone() for k, v in method.state_dict().items()}
    for step in range(2):
        out = method(views(seed=step, dtype=dtype))
        assert out.loss.ndim == 0 and torch.isfinite(out.loss) and out.loss.dtype == dtype
        assert out.features.shape == (6, 24) and not out.features.requires_grad
        assert out.embeddings.shape == (6, 16) and not out.embeddings.requires_grad
        assert set(out.logs) == LOGS[name]
        assert all(v.ndim == 0 and not v.requires_grad for v in out.logs.values())
        opt.zero_grad()
        out.loss.backward()
        for pname, p in method.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        opt.step()
        method.on_step_end((step + 1) / 2)
    state = method.state_dict()
    moved = [k for k in start if not torch.equal(start[k], state[k])]
    # every weight, BN statistic and counter changed; the conv bias in front of BN has a true
    # gradient of 0 (BN removes it), so whether rounding noise moves it is left open
    assert set(start) - set(moved) <= {"backbone.0.bias"}


@pytest.mark.parametrize("name", sorted(LOGS))
def test_loss_is_the_loss_function_of_the_heads_outputs(name):
    """Each view passes backbone and head on its own (per-view BN), then the loss function."""
    method = make(name, lambda_param=0.1) if name == "barlow_twins" else make(name)
    x = views(batch=8, seed=4, dtype=torch.float64)
    method = method.to(torch.float64)
    out = method(x)
    z1, z2 = (head(method)(method.backbone(v)) for v in x)
    if name == "barlow_twins":
        expected = barlow_twins_loss(z1, z2, lambda_param=0.1)
        terms = barlow_twins_terms(z1, z2)._asdict()
    else:
        expected = vicreg_loss(z1, z2)
        terms = vicreg_terms(z1, z2)._asdict()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-12)
    assert torch.allclose(out.embeddings, z1, rtol=1e-12, atol=0)
    for key, value in terms.items():
        assert out.logs[key].item() == pytest.approx(value.item(), rel=1e-12)
    # a joint pass (BN over both views at once) would give a different loss
    z = head(method)(method.backbone(torch.cat(x)))
    joint = barlow_twins_loss(*z.chunk(2), lambda_param=0.1) if name == "barlow_twins" else None
    joint = vicreg_loss(*z.chunk(2)) if joint is None else joint
    assert abs(joint.item() - out.loss.item()) > 1e-6


def test_coefficients_reach_the_loss():
    x = views(batch=8, seed=5, dtype=torch.float64)
    bt = make("barlow_twins", lambda_param=0.2, scale_loss=0.1).to(torch.float64)
    out = bt(x)
    on, off = out.logs["on_diagonal"], out.logs["off_diagonal"]
    assert out.loss.item() == pytest.approx(0.1 * (on + 0.2 * off).item(), rel=1e-12)
    vic = make("vicreg", invariance_weight=2.0, variance_weight=3.0, covariance_weight=5.0)
    out = vic.to(torch.float64)(x)
    inv, var, cov = (out.logs[k] for k in ("invariance", "variance", "covariance"))
    assert out.loss.item() == pytest.approx((2 * inv + 3 * var + 5 * cov).item(), rel=1e-12)


@pytest.mark.parametrize("name", sorted(LOGS))
def test_state_dict_round_trip_gives_identical_outputs(name):
    method = make(name)
    opt = torch.optim.SGD(method.parameters(), lr=0.05)
    for step in range(2):
        out = method(views(seed=step))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    fresh = make(name, seed=123)
    fresh.load_state_dict(method.state_dict())
    for mode in ("train", "eval"):
        getattr(method, mode)()
        getattr(fresh, mode)()
        a, b = method(views(seed=9)), fresh(views(seed=9))
        assert torch.equal(a.loss, b.loss) and torch.equal(a.embeddings, b.embeddings)
        assert all(torch.equal(a.logs[k], b.logs[k]) for k in a.logs)


@pytest.mark.parametrize("name", sorted(LOGS))
def test_heads_follow_the_papers(name):
    method = make(name)
    linears = [m for m in head(method) if isinstance(m, nn.Linear)]
    norms = [m for m in head(method) if isinstance(m, nn.BatchNorm1d)]
    assert [(m.in_features, m.out_features) for m in linears] == [(24, 32), (32, 32), (32, 16)]
    assert all(m.bias is None for m in linears)
    assert len(norms) == 2 and all(m.affine for m in norms)
    assert not isinstance(list(head(method))[-1], nn.BatchNorm1d | nn.ReLU)  # plain last Linear
    cls = type(method)
    assert cls.default_views == "byol" and cls.sync_bn and not cls.needs_labels
    defaults = inspect.signature(cls.__init__).parameters
    assert defaults["hidden_dim"].default == 8192 and defaults["out_dim"].default == 8192
    assert defaults["num_layers"].default == 3


def test_paper_coefficients_are_the_defaults():
    bt = inspect.signature(BarlowTwins.__init__).parameters
    assert bt["lambda_param"].default == 5e-3 and bt["scale_loss"].default == 1.0
    vic = inspect.signature(VICReg.__init__).parameters
    assert (vic["invariance_weight"].default, vic["variance_weight"].default) == (25.0, 25.0)
    assert vic["covariance_weight"].default == 1.0 and vic["eps"].default == 1e-4


@pytest.mark.parametrize("name", sorted(LOGS))
def test_exactly_two_views(name):
    method = make(name)
    with pytest.raises(ValueError, match="exactly 2 views"):
        method(views() + views(seed=2)[:1])
    with pytest.raises(ValueError, match="num_layers"):
        make(name, num_layers=0)


@pytest.mark.parametrize("name", sorted(LOGS))
def test_learning_reduces_loss_on_fixed_batch(name):
    method = make(name)
    opt = torch.optim.SGD(method.param_groups(0.0), lr=0.02, momentum=0.9)
    x = views(batch=16, seed=3)
    losses = []
    for _ in range(15):
        out = method(x)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.9 * losses[0]
