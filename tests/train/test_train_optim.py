"""Optimizers: LARS against a naive reference, exclusion, SGD / AdamW from groups, lr scaling."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from twinview.methods.base import decay_groups
from twinview.train.optim import LARS, build_optimizer, scale_lr

# Two implementations of an update sum and multiply in other orders (foreach / fused kernels,
# FMA or not): compared in float64, to RTOL of the weights' scale, they agree on any CPU.
F64 = torch.float64
RTOL = 1e-10


def small_net(dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    return net.to(dtype)


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    for p, q in zip(a.parameters(), b.parameters()):
        scale = float(q.detach().abs().max())
        torch.testing.assert_close(p, q, rtol=RTOL, atol=RTOL * scale)


def fake_grads(model: nn.Module, step: int) -> None:
    g = torch.Generator().manual_seed(100 + step)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)


class NaiveLARS:
    """Reference written from the formula, one parameter and one float64 number at a time."""

    def __init__(self, groups: list[dict], *, lr: float, momentum: float, eta: float) -> None:
        self.groups, self.lr, self.momentum, self.eta = groups, lr, momentum, eta
        self.buf: dict[int, torch.Tensor] = {}

    def step(self, lr: float) -> None:
        with torch.no_grad():
            for group in self.groups:
                for p in group["params"]:
                    w, g = p.detach().double(), p.grad.double()
                    d = g + group["weight_decay"] * w
                    if not group.get("lars_exclude", False):
                        w_norm = math.sqrt(sum(x * x for x in w.flatten().tolist()))
                        d_norm = math.sqrt(sum(x * x for x in d.flatten().tolist()))
                        if w_norm > 0 and d_norm > 0:
                            d = d * (self.eta * w_norm / d_norm)
                    v = self.buf.get(id(p), torch.zeros_like(d))
                    v = self.momentum * v + d
                    self.buf[id(p)] = v
                    p.copy_((w - lr * v).to(p.dtype))


@pytest.mark.parametrize("exclude", [True, False])
def test_lars_matches_naive_reference_over_steps(exclude: bool) -> None:
    model = small_net(F64)
    reference = copy.deepcopy(model)
    wd = 0.05
    groups = decay_groups(model.named_parameters(), wd)
    ref_groups = decay_groups(reference.named_parameters(), wd)
    if not exclude:  # every group adapted and decayed
        for gs in (groups, ref_groups):
            for g in gs:
                g["lars_exclude"], g["weight_decay"] = False, wd
    assert any(g.get("lars_exclude") for g in groups) == exclude
    opt = build_optimizer(groups, name="lars", lr=0.5, weight_decay=wd, momentum=0.9, eta=0.02)
    ref = NaiveLARS(ref_groups, lr=0.5, momentum=0.9, eta=0.02)
    lrs = [0.5, 0.4, 0.25, 0.1, 0.05]  # a schedule changes lr between steps
    for step, lr in enumerate(lrs):
        fake_grads(model, step)
        fake_grads(reference, step)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        ref.step(lr)
        assert_same_weights(model, reference)
    # the run actually moved the weights
    assert not torch.allclose(model[0].weight, small_net(F64)[0].weight)


def test_lars_exclusion_equals_sgd_with_momentum() -> None:
    """A group with lars_exclude=True is plain heavy-ball SGD with its own weight decay."""
    a, b = small_net(F64), small_net(F64)
    opt_a = LARS([{"params": a.parameters(), "lars_exclude": True}], lr=0.1, weight_decay=1e-2)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    for step in range(4):
        fake_grads(a, step)
        fake_grads(b, step)
        opt_a.step()
        opt_b.step()
    assert_same_weights(a, b)


def test_lars_first_step_norm_is_trust_ratio_times_weight_norm() -> None:
    """Step 1 of an adapted tensor moves it by exactly lr * eta * ||w||, whatever the gradient."""
    w = nn.Parameter(torch.randn(5, 4, dtype=F64))
    w.grad = 1e3 * torch.randn(5, 4, dtype=F64)
    before = w.detach().clone()
    LARS([w], lr=2.0, eta=0.01, weight_decay=0.0).step()
    moved = torch.linalg.vector_norm(w.detach() - before)
    # float64: the update's norm and the formula sum in other orders
    expected = 2.0 * 0.01 * torch.linalg.vector_norm(before)
    torch.testing.assert_close(moved, expected, rtol=RTOL, atol=0)


def test_lars_zero_weights_fall_back_to_unit_ratio() -> None:
    w = nn.Parameter(torch.zeros(3, 3))
    w.grad = torch.ones(3, 3)
    LARS([w], lr=0.1, eta=0.001).step()
    torch.testing.assert_close(w.detach(), torch.full((3, 3), -0.1))


def test_lars_state_dict_resume_continues_exactly() -> None:
    a = small_net()
    opt = LARS(a.parameters(), lr=0.3, weight_decay=1e-4)
    for step in range(2):
        fake_grads(a, step)
        opt.step()
    b = copy.deepcopy(a)
    opt_b = LARS(b.parameters(), lr=0.3, weight_decay=1e-4)
    opt_b.load_state_dict(copy.deepcopy(opt.state_dict()))
    for step in range(2, 4):
        fake_grads(a, step)
        fake_grads(b, step)
        opt.step()
        opt_b.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_build_optimizer_records_groups() -> None:
    model = small_net()
    groups = decay_groups(model[:2].named_parameters(), 1e-4)
    groups += decay_groups(model[3].named_parameters(), 1e-4, fixed_lr=True)
    for name, cls in [("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW), ("lars", LARS)]:
        opt = build_optimizer(groups, name=name, lr=0.2, weight_decay=1e-4, betas=(0.8, 0.99))
        assert isinstance(opt, cls)
        assert [g["initial_lr"] for g in opt.param_groups] == [0.2] * 4
        assert [g["weight_decay"] for g in opt.param_groups] == [1e-4, 0.0, 1e-4, 0.0]
        assert [g["fixed_lr"] for g in opt.param_groups] == [False, False, True, True]
        assert [g["lars_exclude"] for g in opt.param_groups] == [False, True, False, True]
        n_params = sum(len(g["params"]) for g in opt.param_groups)
        assert n_params == len(list(model.parameters()))
    assert opt.param_groups[0]["momentum"] == 0.9
    adamw = build_optimizer(groups, name="adamw", lr=1, weight_decay=0, betas=(0.8, 0.99))
    assert adamw.param_groups[0]["betas"] == (0.8, 0.99)
    # caller's groups are not modified
    assert "initial_lr" not in groups[0]


def test_build_optimizer_sgd_step_matches_torch() -> None:
    a, b = small_net(F64), small_net(F64)
    opt_a = build_optimizer(decay_groups(a.named_parameters(), 0.1), name="sgd", lr=0.1,
                            weight_decay=0.1)  # fmt: skip
    decay = [p for n, p in b.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in b.named_parameters() if p.ndim <= 1]
    opt_b = torch.optim.SGD(
        [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=0.1, momentum=0.9, weight_decay=0.1,
    )  # fmt: skip
    for step in range(3):
        fake_grads(a, step)
        fake_grads(b, step)
        opt_a.step()
        opt_b.step()
    assert_same_weights(a, b)


def test_build_optimizer_uses_fused_kernels_with_the_foreach_update() -> None:
    """SGD and AdamW come fused where torch has the kernel (CPU since 2.4): ~4x faster steps
    on the CPU; the update must match torch's default (foreach) implementation."""
    for name, cls, kwargs in [
        ("sgd", torch.optim.SGD, {"momentum": 0.9}),
        ("adamw", torch.optim.AdamW, {"betas": (0.9, 0.999)}),
    ]:
        a, b = small_net(F64), small_net(F64)
        opt_a = build_optimizer(decay_groups(a.named_parameters(), 0.05), name=name, lr=0.01,
                                weight_decay=0.05)  # fmt: skip
        assert opt_a.defaults.get("fused") is True
        decay = [p for n, p in b.named_parameters() if p.ndim > 1]
        no_decay = [p for n, p in b.named_parameters() if p.ndim <= 1]
        groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
        opt_b = cls(groups, lr=0.01, weight_decay=0.05, foreach=True, **kwargs)
        for step in range(5):
            fake_grads(a, step)
            fake_grads(b, step)
            opt_a.step()
            opt_b.step()
        assert_same_weights(a, b)
        for p, start in zip(a.parameters(), small_net(F64).parameters()):
            assert not torch.equal(p, start)  # the step did move the weights


def test_build_optimizer_unknown_name() -> None:
    with pytest.raises(ValueError, match="unknown optimizer 'adam'; valid optimizers: sgd, adamw"):
        build_optimizer([{"params": [nn.Parameter(torch.ones(1))]}], name="adam", lr=1,
                        weight_decay=0)  # fmt: skip


def test_scale_lr() -> None:
    assert scale_lr(0.3, 4096, rule="linear") == pytest.approx(4.8)
    assert scale_lr(0.3, 64, rule="linear", reference=128) == pytest.approx(0.15)
    assert scale_lr(0.3, 1024, rule="sqrt") == pytest.approx(0.6)
    assert scale_lr(0.3, 1024, rule="none") == 0.3
    with pytest.raises(ValueError, match="unknown lr scaling rule 'log'"):
        scale_lr(0.3, 1024, rule="log")
    with pytest.raises(ValueError, match="batch_size"):
        scale_lr(0.3, 0, rule="linear")
