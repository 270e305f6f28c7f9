"""Feature extraction: equals a manual eval-mode forward, restores train/eval flags, leaves
batch-norm statistics alone, accepts tensors and (images, labels) iterables."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from twinview.eval import extract_features, extract_features_and_labels, raw_pixel_features


def make_backbone() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.AdaptiveAvgPool2d(1),  # (B, 4, 1, 1): flattened by extract_features
    )


def make_images(n: int = 37, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8)


def reference(backbone: nn.Module, images: torch.Tensor, normalize=None) -> torch.Tensor:
    backbone.eval()
    x = images.float() / 255
    if normalize is not None:
        x = normalize(x)
    with torch.no_grad():
        return backbone(x).flatten(1)


def test_matches_manual_eval_forward_and_keeps_bn_statistics() -> None:
    backbone = make_backbone()
    with torch.no_grad():  # non-trivial running statistics
        backbone[1].running_mean.fill_(0.3)
        backbone[1].running_var.fill_(2.0)
    backbone.train()
    images = make_images()
    stats = backbone[1].running_mean.clone(), backbone[1].num_batches_tracked.clone()
    features = extract_features(backbone, images, batch_size=10)
    assert features.shape == (37, 4) and features.dtype == torch.float32
    assert features.device.type == "cpu" and not features.requires_grad
    assert torch.equal(backbone[1].running_mean, stats[0])
    assert torch.equal(backbone[1].num_batches_tracked, stats[1])
    assert backbone.training and all(m.training for m in backbone.modules())
    torch.testing.assert_close(features, reference(backbone, images))
    # The train-mode forward (batch statistics) would give something else.
    backbone.train()
    with torch.no_grad():
        train_mode = backbone(images.float() / 255).flatten(1)
    assert not torch.allclose(features, train_mode, atol=1e-3)


def test_restores_mixed_module_modes() -> None:
    backbone = make_backbone()
    backbone.train()
    backbone[1].eval()  # e.g. frozen batch norm
    extract_features(backbone, make_images(5))
    assert backbone.training and not backbone[1].training and backbone[3].training
    backbone.eval()
    extract_features(backbone, make_images(5))
    assert not any(m.training for m in backbone.modules())


def test_iterable_of_labeled_batches_and_normalize() -> None:
    backbone = make_backbone()
    images = make_images(20, seed=1)
    labels = torch.arange(20) % 3
    batches = [(images[i : i + 6], labels[i : i + 6]) for i in range(0, 20, 6)]

    def normalize(x: torch.Tensor) -> torch.Tensor:
        return (x - 0.5) / 0.25

    features, got_labels = extract_features_and_labels(backbone, batches, normalize=normalize)
    torch.testing.assert_close(features, reference(backbone, images, normalize))
    assert torch.equal(got_labels, labels)
    unlabeled = extract_features(backbone, [images[:7], images[7:]])
    torch.testing.assert_close(unlabeled, reference(backbone, images))
    _, none = extract_features_and_labels(backbone, [images[:7], images[7:]])
    assert none is None


def test_raw_pixel_features() -> None:
    images = make_images(6, seed=2)
    flat = raw_pixel_features(images)
    assert flat.shape == (6, 64) and flat.dtype == torch.float32
    torch.testing.assert_close(flat, images.reshape(6, 64).float() / 255)
    assert float(flat.min()) >= 0.0 and float(flat.max()) <= 1.0


def test_bad_inputs_are_clear_errors() -> None:
    backbone = make_backbone()
    with pytest.raises(TypeError, match="uint8"):
        extract_features(backbone, make_images(4).long())
    with pytest.raises(ValueError, match="unsqueeze"):
        extract_features(backbone, make_images(4)[:, 0])
    with pytest.raises(ValueError, match="batch_size"):
        extract_features(backbone, make_images(4), batch_size=0)
    with pytest.raises(ValueError, match="empty"):
        extract_features(backbone, [])
    # A failing forward still restores the modes.
    backbone.train()
    with pytest.raises(RuntimeError):
        extract_features(backbone, torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    assert all(m.training for m in backbone.modules())


def test_channels_last_backbone_gets_channels_last_batches_and_same_features() -> None:
    """A channels-last backbone (train.channels_last) is fed channels-last batches; in float64
    the features equal those of the same backbone in the default layout."""
    images = make_images()
    plain = make_backbone().double()
    seen: list[bool] = []
    last = make_backbone().double().to(memory_format=torch.channels_last)
    last[0].register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last))
    )
    expected = extract_features(plain, images, batch_size=16, normalize=torch.Tensor.double)
    got = extract_features(last, images, batch_size=16, normalize=torch.Tensor.double)
    assert seen == [True, True, True]
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_bf16_autocast_features_are_float32_and_close() -> None:
    images = make_images()
    backbone = make_backbone()
    exact = extract_features(backbone, images)
    lowered = extract_features(backbone, images, autocast_dtype=torch.bfloat16)
    assert lowered.dtype == torch.float32
    assert not torch.equal(lowered, exact)  # it did run in bf16
    scale = exact.abs().max()
    torch.testing.assert_close(lowered, exact, rtol=0, atol=float(2e-2 * scale))
