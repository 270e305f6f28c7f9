"""Linear probe: accuracy on separable data, selection on validation only, the stacked grid
against torch.optim.SGD, determinism; the online probe."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from tolerance import assert_close_to_scale
from torch import nn

from twinview.eval import OnlineLinearProbe, linear_probe
from twinview.eval.linear import _train_grid


def make_split(n: int, centers: torch.Tensor, noise: float, g: torch.Generator):
    y = torch.randint(0, centers.shape[0], (n,), generator=g)
    return centers[y] + noise * torch.randn(n, centers.shape[1], generator=g), y


def make_problem(noise: float = 0.3, seed: int = 0, d: int = 8, classes: int = 3):
    g = torch.Generator().manual_seed(seed)
    centers = 3 * torch.randn(classes, d, generator=g)
    return [make_split(n, centers, noise, g) for n in (300, 100, 100)]


def run(splits, **kwargs):
    (tx, ty), (vx, vy), (sx, sy) = splits
    options = {"num_classes": 3, "epochs": 5, "batch_size": 64, **kwargs}
    return linear_probe(tx, ty, vx, vy, sx, sy, **options)


def test_separable_features_are_classified_almost_perfectly() -> None:
    result = run(make_problem(noise=0.3))
    assert set(result) == {"linear_top1", "linear_val_top1", "linear_lr", "linear_wd"}
    assert result["linear_top1"] >= 0.99
    assert result["linear_val_top1"] >= 0.99


def test_selection_uses_validation_not_test() -> None:
    splits = make_problem(noise=2.0, seed=1)
    grid = {"lrs": (1e-4, 0.01, 1.0), "weight_decays": (0.0, 0.1)}
    honest = run(splits, **grid)
    (tx, ty), val, (sx, sy) = splits
    wrong = run([(tx, ty), val, (sx, (sy + 1) % 3)], **grid)
    assert (wrong["linear_lr"], wrong["linear_wd"]) == (honest["linear_lr"], honest["linear_wd"])
    assert wrong["linear_val_top1"] == honest["linear_val_top1"]
    assert wrong["linear_top1"] < 0.5 < honest["linear_top1"]
    # The chosen configuration is the validation argmax of the configurations run one by one,
    # and its test score is that single run's (all configs start from the same weights).
    single = {
        (lr, wd): run(splits, lrs=(lr,), weight_decays=(wd,))
        for lr in grid["lrs"]
        for wd in grid["weight_decays"]
    }
    vals = {key: r["linear_val_top1"] for key, r in single.items()}
    best = max(vals, key=vals.get)
    assert (honest["linear_lr"], honest["linear_wd"]) == best
    assert honest["linear_top1"] == pytest.approx(single[best]["linear_top1"], abs=0.011)
    assert len(set(vals.values())) > 1  # the grid actually matters on this problem


def test_stacked_grid_matches_torch_sgd_per_config() -> None:
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(50, 6, generator=g), torch.randint(0, 4, (50,), generator=g)
    grid = [(0.5, 0.0), (0.05, 0.01)]
    epochs, batch_size = 3, 16
    weight, bias = _train_grid(
        x,
        y,
        grid=grid,
        num_classes=4,
        epochs=epochs,
        batch_size=batch_size,
        momentum=0.9,
        seed=5,
    )
    total = epochs * math.ceil(50 / batch_size)
    for j, (lr, wd) in enumerate(grid):
        gen = torch.Generator().manual_seed(5)
        layer = nn.Linear(6, 4)
        with torch.no_grad():
            layer.weight.copy_(torch.randn(4, 6, generator=gen) * 0.01)
            layer.bias.zero_()
        optimizer = torch.optim.SGD(
            [
                {"params": [layer.weight], "weight_decay": wd},
                {"params": [layer.bias], "weight_decay": 0.0},
            ],
            lr=lr,
            momentum=0.9,
        )
        cosine = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / total))
        )
        for _ in range(epochs):
            order = torch.randperm(50, generator=gen)
            for start in range(0, 50, batch_size):
                idx = order[start : start + batch_size]
                optimizer.zero_grad()
                F.cross_entropy(layer(x[idx]), y[idx]).backward()
                optimizer.step()
                cosine.step()
        rows = slice(4 * j, 4 * (j + 1))
        # float32 (the grid trainer's dtype): stacked matmuls and per-config layers round
        # otherwise, over 12 steps of gradients summed over batches of 16.
        steps = {"terms": total * batch_size}
        assert_close_to_scale(weight[rows], layer.weight.detach(), **steps)
        assert_close_to_scale(bias[rows], layer.bias.detach(), **steps)


def test_deterministic_and_invariant_to_feature_scale() -> None:
    splits = make_problem(noise=1.5, seed=3)
    first, second = run(splits, seed=7), run(splits, seed=7)
    assert first == second
    # Standardisation with train statistics: an affine change of the features changes nothing.
    scaled = [(1000 * x + 50, y) for x, y in splits]
    result = run(scaled, seed=7)
    assert result["linear_lr"] == first["linear_lr"] and result["linear_wd"] == first["linear_wd"]
    assert result["linear_top1"] == pytest.approx(first["linear_top1"], abs=0.011)


def test_bad_labels_are_clear_errors() -> None:
    (tx, ty), (vx, vy), (sx, sy) = make_problem()
    ty = ty.clone()
    ty[0] = -1
    with pytest.raises(ValueError, match="train_labels"):
        linear_probe(tx, ty, vx, vy, sx, sy, num_classes=3, epochs=1)
    with pytest.raises(ValueError, match="num_classes"):
        linear_probe(tx, ty.abs(), vx, vy, sx, sy, num_classes=2, epochs=1)
    with pytest.raises(ValueError, match="dimension"):
        linear_probe(tx, ty.abs(), vx[:, :4], vy, sx, sy, num_classes=3, epochs=1)


def test_online_probe_learns_and_ignores_unlabeled_rows() -> None:
    g = torch.Generator().manual_seed(4)
    centers = 3 * torch.randn(3, 8, generator=g)
    probe = OnlineLinearProbe(8, 3, lr=0.1)
    for _ in range(60):
        y = torch.randint(0, 3, (32,), generator=g)
        x = centers[y] + 0.5 * torch.randn(32, 8, generator=g)
        y[:8] = -1
        logs = probe.step(x, y)
    assert set(logs) == {"online_linear_loss", "online_linear_top1"}
    assert logs["online_linear_top1"] >= 0.95 and logs["online_linear_loss"].ndim == 0
    y = torch.randint(0, 3, (200,), generator=g)
    x = centers[y] + 0.5 * torch.randn(200, 8, generator=g)
    assert (probe(x).argmax(1) == y).float().mean() >= 0.95
    # A batch without labels takes no step.
    before = [p.clone() for p in probe.parameters()]
    assert probe.step(x, torch.full_like(y, -1)) == {}
    assert all(torch.equal(a, b) for a, b in zip(before, probe.parameters()))


def test_online_probe_sends_no_gradient_to_backbone() -> None:
    backbone = nn.Sequential(nn.Linear(5, 8), nn.ReLU())
    probe = OnlineLinearProbe(8, 2)
    features = backbone(torch.randn(16, 5))
    assert features.requires_grad
    probe.step(features, torch.arange(16) % 2)
    assert all(p.grad is None for p in backbone.parameters())
    assert all(p.grad is not None for p in probe.parameters())


def test_online_probe_state_dict_carries_optimizer_state() -> None:
    g = torch.Generator().manual_seed(5)
    batches = [(torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g))]
    batches += [(torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g))]
    torch.manual_seed(0)
    original = nn.ModuleDict({"probe": OnlineLinearProbe(6, 3, lr=0.05, weight_decay=1e-3)})
    original["probe"].step(*batches[0])
    state = original.state_dict()
    assert "probe._extra_state" in state
    restored = nn.ModuleDict({"probe": OnlineLinearProbe(6, 3, lr=0.05, weight_decay=1e-3)})
    restored.load_state_dict(state)
    # Momentum buffers came along: the next step is identical.
    original["probe"].step(*batches[1])
    restored["probe"].step(*batches[1])
    for a, b in zip(original.parameters(), restored.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # Without the optimizer state the next step would differ.
    fresh = nn.ModuleDict({"probe": OnlineLinearProbe(6, 3, lr=0.05, weight_decay=1e-3)})
    fresh.load_state_dict(
        {k: v for k, v in state.items() if k != "probe._extra_state"}, strict=False
    )
    fresh["probe"].step(*batches[1])
    assert not torch.equal(fresh["probe"].linear.weight, original["probe"].linear.weight)
