"""Momentum targets: frozen copies, the foreach EMA update, BYOL's cosine schedule."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from twinview.nn import cosine_momentum, ema_update, momentum_copy


def small_net() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.ReLU(), nn.Linear(7, 3))


def naive_ema(target: nn.Module, online: nn.Module, m: float) -> None:
    """Reference: one tensor at a time, written from the formula."""
    with torch.no_grad():
        for t, o in zip(target.parameters(), online.parameters()):
            t.copy_(m * t + (1 - m) * o)
        for t, o in zip(target.buffers(), online.buffers()):
            t.copy_(m * t + (1 - m) * o if t.is_floating_point() else o)


def test_momentum_copy_is_frozen_and_independent() -> None:
    torch.manual_seed(0)
    online = small_net()
    online(torch.randn(4, 5)).sum().backward()  # online has grads; the copy must not
    target = momentum_copy(online)
    assert all(not p.requires_grad and p.grad is None for p in target.parameters())
    assert all(p.requires_grad for p in online.parameters())
    for t, o in zip(target.parameters(), online.parameters()):
        assert t.data_ptr() != o.data_ptr()
        torch.testing.assert_close(t, o, rtol=0, atol=0)
    before = copy.deepcopy(target.state_dict())
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
    online(torch.randn(4, 5))  # train-mode forward moves the online BN running stats
    for k, v in target.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    # The copy gives no gradient path: its output does not require grad.
    assert not target(torch.randn(4, 5)).requires_grad


@pytest.mark.parametrize("m", [0.0, 0.5, 0.99, 1.0])
def test_ema_update_matches_naive_loop(m: float) -> None:
    # float64: foreach kernels and the loop round differently (FMA or not); float64 makes the
    # comparison tight on any CPU.
    torch.manual_seed(1)
    online = small_net().to(torch.float64)
    target = momentum_copy(online)
    expected = momentum_copy(online)
    for _ in range(3):
        with torch.no_grad():
            for p in online.parameters():
                p.add_(torch.randn_like(p))
        # moves running mean / var / num_batches_tracked
        online(torch.randn(8, 5, dtype=torch.float64) * 3 + 1)
        ema_update(target, online, m)
        naive_ema(expected, online, m)
    for (name, t), e, o in zip(
        target.state_dict().items(), expected.state_dict().values(), online.state_dict().values()
    ):
        assert t.dtype == e.dtype == o.dtype, name
        torch.testing.assert_close(t, e, rtol=1e-12, atol=1e-12, msg=name)
        if m == 0.0:
            torch.testing.assert_close(t, o, rtol=0, atol=0, msg=name)
    bn = target[1]
    assert bn.num_batches_tracked.item() == 3  # integer buffer copied, not averaged
    assert not torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean)) or m == 1.0
    assert all(not p.requires_grad for p in target.parameters())


def test_ema_update_does_not_touch_online() -> None:
    torch.manual_seed(2)
    online = small_net()
    target = momentum_copy(online)
    with torch.no_grad():
        for p in online.parameters():
            p.mul_(2)
    snapshot = copy.deepcopy(online.state_dict())
    ema_update(target, online, 0.9)
    for k, v in online.state_dict().items():
        torch.testing.assert_close(v, snapshot[k], rtol=0, atol=0)


def test_ema_update_rejects_mismatched_modules() -> None:
    online = small_net()
    with pytest.raises(ValueError, match="parameters do not match"):
        ema_update(nn.Sequential(nn.Linear(5, 7)), online, 0.9)
    wider = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    with pytest.raises(ValueError, match=r"'0.weight' has shape \(8, 5\)"):
        ema_update(wider, online, 0.9)
    no_stats = nn.Sequential(
        nn.Linear(5, 7), nn.BatchNorm1d(7, track_running_stats=False), nn.ReLU(), nn.Linear(7, 3)
    )
    with pytest.raises(ValueError, match="buffers do not match"):
        ema_update(no_stats, online, 0.9)
    with pytest.raises(ValueError, match="momentum must be in"):
        ema_update(momentum_copy(online), online, 1.5)


def test_cosine_momentum_schedule() -> None:
    assert cosine_momentum(0.0) == pytest.approx(0.996)
    assert cosine_momentum(1.0) == pytest.approx(1.0)
    assert cosine_momentum(0.5) == pytest.approx((0.996 + 1.0) / 2)
    for k in [0.1, 0.25, 0.7]:
        expected = 1.0 - (1.0 - 0.99) * (math.cos(math.pi * k) + 1) / 2
        assert cosine_momentum(k, base=0.99) == pytest.approx(expected, abs=1e-12)
    assert cosine_momentum(0.0, base=0.9, final=0.95) == pytest.approx(0.9)
    assert cosine_momentum(1.0, base=0.9, final=0.95) == pytest.approx(0.95)
    values = [cosine_momentum(i / 10) for i in range(11)]
    assert values == sorted(values)
    with pytest.raises(ValueError, match="progress"):
        cosine_momentum(1.1)


def test_momentum_copy_has_no_stochastic_depth() -> None:
    """A target network is deterministic: the copy of a ViT with drop path runs without it (as
    DINO's teacher), while the online network keeps its rate."""
    from twinview.nn import DropPath, build_backbone

    vit, _ = build_backbone("vit_tiny", image_size=16, patch_size=4, depth=2, drop_path=0.5)
    target = momentum_copy(vit)
    rates = [m.drop_prob for m in vit.modules() if isinstance(m, DropPath)]
    assert rates and max(rates) == 0.5
    assert all(m.drop_prob == 0.0 for m in target.modules() if isinstance(m, DropPath))
    target.train()
    x = torch.randn(4, 3, 16, 16)
    torch.testing.assert_close(target(x), target(x), rtol=0, atol=0)
