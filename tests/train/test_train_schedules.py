"""Warm-up + cosine schedule: values, endpoints, torch's cosine, fixed-lr groups, resume."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from twinview.train.optim import build_optimizer
from twinview.train.schedules import LRSchedule, apply_lr, warmup_cosine


def lrs(total: int, warmup: int, base: float = 0.4, min_lr: float = 0.0) -> list[float]:
    return [
        warmup_cosine(s, total_steps=total, warmup_steps=warmup, base_lr=base, min_lr=min_lr)
        for s in range(total + 3)
    ]


def test_warmup_is_linear_from_near_zero_to_base() -> None:
    values = lrs(100, 10)
    assert values[0] == pytest.approx(0.04)
    assert values[9] == pytest.approx(0.4)
    steps = [b - a for a, b in itertools.pairwise(values[:10])]
    assert steps == pytest.approx([0.04] * 9)


def test_cosine_endpoints_and_monotone_decay() -> None:
    values = lrs(100, 10, min_lr=0.01)
    assert values[10] == pytest.approx(0.4)  # peak right after warm-up
    assert values[55] == pytest.approx((0.4 + 0.01) / 2)  # half way through the decay
    assert values[100] == pytest.approx(0.01)
    assert values[101:] == pytest.approx([0.01, 0.01])  # stays at the floor past the end
    decay = values[10:]
    assert all(b <= a for a, b in itertools.pairwise(decay))
    assert max(values) == pytest.approx(0.4)


def test_decay_matches_torch_cosine_annealing() -> None:
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=50, eta_min=0.02)
    for step in range(51):
        ours = warmup_cosine(step, total_steps=50, warmup_steps=0, base_lr=0.4, min_lr=0.02)
        # Python floats (float64): the closed form and torch's recursive update agree to ~1e-15
        assert ours == pytest.approx(opt.param_groups[0]["lr"], rel=1e-10, abs=1e-12)
        opt.step()
        sched.step()


def test_edge_cases_and_bad_arguments() -> None:
    assert lrs(5, 5)[4] == pytest.approx(0.4)  # all warm-up
    assert lrs(5, 5)[7] == pytest.approx(0.4)
    assert warmup_cosine(0, total_steps=1, warmup_steps=0, base_lr=1.0) == 1.0
    with pytest.raises(ValueError, match="warmup_steps=11"):
        warmup_cosine(0, total_steps=10, warmup_steps=11, base_lr=1.0)
    with pytest.raises(ValueError, match="step=-1"):
        warmup_cosine(-1, total_steps=10, warmup_steps=0, base_lr=1.0)


def make_optimizer() -> torch.optim.Optimizer:
    groups = [
        {"params": [nn.Parameter(torch.ones(2, 2))]},
        {"params": [nn.Parameter(torch.ones(2))], "weight_decay": 0.0},
        {"params": [nn.Parameter(torch.ones(3))], "fixed_lr": True},  # SimSiam predictor
    ]
    return build_optimizer(groups, name="sgd", lr=0.2, weight_decay=1e-4)


def test_apply_lr_scales_groups_and_leaves_fixed_groups() -> None:
    opt = make_optimizer()
    opt.param_groups[1]["initial_lr"] = 0.1  # a group with its own base lr
    for step in (0, 3, 20, 39, 40):
        factor = apply_lr(opt, step, total_steps=40, warmup_steps=4, min_lr_ratio=0.1)
        expected = warmup_cosine(step, total_steps=40, warmup_steps=4, base_lr=1.0, min_lr=0.1)
        assert factor == pytest.approx(expected)
        assert opt.param_groups[0]["lr"] == pytest.approx(0.2 * expected)
        assert opt.param_groups[1]["lr"] == pytest.approx(0.1 * expected)
        assert opt.param_groups[2]["lr"] == 0.2
    assert opt.param_groups[0]["lr"] == pytest.approx(0.02)  # min_lr_ratio * initial at the end


def test_apply_lr_needs_initial_lr() -> None:
    opt = torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=0.1)
    with pytest.raises(KeyError, match="initial_lr"):
        apply_lr(opt, 0, total_steps=10, warmup_steps=0)


def test_lr_schedule_state_dict_round_trip() -> None:
    opt = make_optimizer()
    schedule = LRSchedule(opt, total_steps=30, warmup_steps=3, min_lr_ratio=0.0)
    for step in range(12):
        schedule.step_to(step)
    state = schedule.state_dict()
    assert state["last_step"] == 11
    fresh_opt = make_optimizer()
    fresh = LRSchedule(fresh_opt, total_steps=30, warmup_steps=3)
    fresh.load_state_dict(state)
    assert [g["lr"] for g in fresh_opt.param_groups] == [g["lr"] for g in opt.param_groups]
    assert fresh_opt.param_groups[0]["lr"] == pytest.approx(
        0.2 * 0.5 * (1 + math.cos(math.pi * 8 / 27))
    )
    with pytest.raises(ValueError, match="warmup_steps"):
        LRSchedule(opt, total_steps=3, warmup_steps=5)
