"""Training monitors: collapse and explosion warnings on synthetic embeddings and features, and
the training-batch buffers surviving a mid-epoch checkpoint exactly."""

from __future__ import annotations

import io
import warnings
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from twinview.config import MonitorConfig
from twinview.train.monitors import EmbeddingBuffer, Monitors, RepresentationWarning


def gaussian(n: int, d: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def one_direction(n: int, d: int, seed: int = 0, noise: float = 1e-6) -> torch.Tensor:
    """n rows all pointing along one direction, with different norms and tiny noise."""
    direction = gaussian(1, d, seed)
    norms = 1 + torch.rand(n, 1, generator=torch.Generator().manual_seed(seed + 1))
    return norms * direction + noise * gaussian(n, d, seed + 2)


def label_free_monitors(**cfg) -> Monitors:
    """Monitors over a data set that is not in memory: only the health monitors run."""
    splits = SimpleNamespace(train=object(), val=object(), test=None)
    return Monitors(MonitorConfig(**cfg), splits, lambda x: x, torch.device("cpu"))


def run_health(monitors: Monitors, **kwargs) -> tuple[dict, list[str]]:
    """Calls ``Monitors.health`` and returns its scalars and the RepresentationWarnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = monitors.health(**kwargs)
    messages = [str(w.message) for w in caught if issubclass(w.category, RepresentationWarning)]
    return out, messages


def test_healthy_random_embeddings_and_features_raise_no_warning() -> None:
    monitors = label_free_monitors()
    for step in range(8):
        # ReLU features: all non-negative, mean cosine ~0.9 like a randomly initialised network
        monitors.add_batch(gaussian(64, 32, seed=step), gaussian(64, 128, seed=100 + step).relu())
    out, messages = run_health(monitors, epoch=0, step=8, val_features=gaussian(300, 128, 9))
    assert messages == []
    assert "collapse_warning" not in out and "explosion_warning" not in out
    assert 0.9 < out["health_std_ratio"] <= 1.1
    assert abs(out["health_mean_cosine"]) < 0.05
    assert 0.3 < out["train_feature_mean_cosine"] < 0.9
    assert out["train_feature_mean_norm"] == pytest.approx((128 / 2) ** 0.5, rel=0.1)
    assert out["val_feature_rankme"] > 100
    assert monitors.buffer.take() is None and monitors.feature_buffer.take() is None  # emptied


def test_embeddings_in_one_direction_give_a_collapse_warning() -> None:
    monitors = label_free_monitors()
    monitors.add_batch(one_direction(256, 64))
    out, messages = run_health(monitors, epoch=2, step=120)
    assert out["collapse_warning"] == 1.0 and "explosion_warning" not in out
    assert out["health_mean_cosine"] > 0.9999
    (message,) = messages
    assert message.startswith("epoch 3, step 120: projector embeddings of training batches")
    assert "all embeddings point in the same direction" in message
    assert "optim.lr=" in message and "precision=fp32" in message


def test_collapsed_backbone_features_are_caught_behind_healthy_embeddings() -> None:
    """The lr=1e9 run: features of 1e26 all in one direction, projector outputs looking fine
    (an output BatchNorm re-standardises them), loss finite."""
    monitors = label_free_monitors()
    monitors.add_batch(gaussian(256, 32), 1e26 * one_direction(256, 128, noise=1e-4))
    out, messages = run_health(monitors, epoch=0)
    assert out["collapse_warning"] == 1.0 and out["explosion_warning"] == 1.0
    assert out["train_feature_mean_norm"] > 1e26  # measured, not overflowed to 0 or inf
    assert "health_mean_norm" in out and out["health_mean_norm"] < 100
    assert len(messages) == 2
    assert all(m.startswith("epoch 1: backbone features of training batches") for m in messages)
    assert "projector" not in " ".join(messages)
    explosion = next(m for m in messages if "exploded" in m)
    assert "mean l2 norm" in explosion and "optim.lr=" in explosion


@pytest.mark.parametrize("scale", [1e26, 1e5])
def test_huge_embeddings_give_an_explosion_warning(scale: float) -> None:
    monitors = label_free_monitors()
    monitors.add_batch(scale * gaussian(128, 16))
    out, messages = run_health(monitors, epoch=4, step=7)
    assert out["explosion_warning"] == 1.0 and "collapse_warning" not in out
    assert out["health_mean_norm"] == pytest.approx(scale * 4, rel=0.1)  # sqrt(16) = 4
    (message,) = messages
    assert message.startswith("epoch 5, step 7:") and "representation exploded" in message


def test_non_finite_validation_features_give_an_explosion_warning() -> None:
    monitors = label_free_monitors()
    features = gaussian(100, 16)
    features[::10] = float("nan")
    features[5] = float("inf")
    out, messages = run_health(monitors, epoch=0, val_features=features)
    assert out["explosion_warning"] == 1.0
    assert out["val_feature_finite_fraction"] == pytest.approx(0.89)
    assert "11.0% of the embeddings hold NaN or inf" in messages[0]
    assert "validation split" in messages[0]


def test_epoch_end_checks_the_validation_features_of_the_backbone() -> None:
    """In-memory labelled data: the kNN's validation features go through the checks too."""
    images = torch.randint(0, 256, (40, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    split = SimpleNamespace(images=images.to(torch.uint8), labels=torch.arange(40) % 2)
    data = SimpleNamespace(train=split, val=split, test=None)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(16, 8))
    with torch.no_grad():
        backbone[1].weight.mul_(1e25)
    monitors = Monitors(
        MonitorConfig(knn_k=5), data, lambda x: x.float() / 255, torch.device("cpu")
    )
    with pytest.warns(RepresentationWarning, match="epoch 1, step 3: backbone features of the va"):
        out = monitors.epoch_end(backbone, 0, step=3)
    assert out["explosion_warning"] == 1.0 and out["val_feature_mean_norm"] > 1e20
    assert "val_knn_top1" in out


def test_health_off_logs_nothing_and_empties_the_buffers() -> None:
    monitors = label_free_monitors(health=False, knn_every_epochs=0)
    monitors.add_batch(one_direction(64, 8), 1e26 * gaussian(64, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert monitors.epoch_end(nn.Identity(), 0) == {}
    assert monitors.buffer.take() is None and monitors.feature_buffer.take() is None


def save_and_load(state: dict) -> dict:
    """Round trip through torch.save / torch.load(weights_only=True), as a checkpoint does."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("interrupt_after", [0, 1, 3, 7])
def test_embedding_buffer_state_round_trip_matches_never_interrupting(interrupt_after) -> None:
    batches = [gaussian(size, 6, seed=i) for i, size in enumerate([4, 3, 5, 4, 2, 6, 4, 3, 5])]
    uninterrupted = EmbeddingBuffer(capacity=10)
    for batch in batches:
        uninterrupted.add(batch)
    expected = uninterrupted.take()

    before = EmbeddingBuffer(capacity=10)
    for batch in batches[:interrupt_after]:
        before.add(batch)
    state = save_and_load(before.state_dict())
    resumed = EmbeddingBuffer(capacity=10)
    resumed.load_state_dict(state)
    assert resumed.count == before.count
    for batch in batches[interrupt_after:]:
        resumed.add(batch)
    got = resumed.take()
    assert torch.equal(got, expected)  # exact: same rows, same order, same dtype
    assert got.shape[0] >= 10 and got.shape[0] - 3 < 10  # whole batches, at least capacity


def test_monitors_state_round_trip_and_health_match_an_uninterrupted_epoch() -> None:
    steps = [(gaussian(32, 16, seed=i), gaussian(32, 24, seed=50 + i).relu()) for i in range(6)]
    uninterrupted = label_free_monitors()
    for z, h in steps:
        uninterrupted.add_batch(z, h)
    expected, _ = run_health(uninterrupted, epoch=0, step=6)

    first = label_free_monitors()
    for z, h in steps[:4]:
        first.add_batch(z, h)
    state = save_and_load(first.state_dict())
    assert set(state) == {"embeddings", "features"}
    resumed = label_free_monitors()
    resumed.load_state_dict(state)
    for z, h in steps[4:]:
        resumed.add_batch(z, h)
    got, _ = run_health(resumed, epoch=0, step=6)
    assert got == expected and "train_feature_rankme" in got


def test_bad_buffer_states_are_clear_errors() -> None:
    buffer = EmbeddingBuffer()
    with pytest.raises(ValueError, match="needs 'rows' and 'sizes'"):
        buffer.load_state_dict({"rows": torch.zeros(2, 3)})
    with pytest.raises(ValueError, match="do not match sizes"):
        buffer.load_state_dict({"rows": torch.zeros(5, 3), "sizes": [2, 2]})
    with pytest.raises(ValueError, match="Monitors state needs 'embeddings'"):
        label_free_monitors().load_state_dict({"features": {}})
    empty = save_and_load(EmbeddingBuffer().state_dict())
    buffer.load_state_dict(empty)
    assert buffer.take() is None
