"""Feature extraction: equals a manual eval-mode forward, restores train/eval flags, leaves
batch-norm statistics alone, accepts tensors and (images, labels) iterables."""

from __future__ import annotations

import copy

import pytest
import torch
from tolerance import assert_close_to_scale
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
    """The eval-mode forward of a float64 copy of ``backbone`` on the whole set at once."""
    model = copy.deepcopy(backbone).double().eval()
    x = images.double() / 255
    if normalize is not None:
        x = normalize(x)
    with torch.no_grad():
        return model(x).flatten(1)


def assert_float32_close(features: torch.Tensor, ref: torch.Tensor) -> None:
    """float32 features (in batches) against the float64 reference: a 3x3 convolution, BN and
    a mean over 36 positions, so a few float32 eps x sqrt(9 x 36) of the features' scale."""
    assert features.dtype == torch.float32
    assert_close_to_scale(features.double(), ref, dtype=torch.float32, terms=9 * 36)


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
    assert_float32_close(features, reference(backbone, images))
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
    assert_float32_close(features, reference(backbone, images, normalize))
    assert torch.equal(got_labels, labels)
    unlabeled = extract_features(backbone, [images[:7], images[7:]])
    assert_float32_close(unlabeled, reference(backbone, images))
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
    # bf16 rounds the convolution's inputs and weights (eps 2^-7 each): a few eps of the scale.
    assert_close_to_scale(lowered, exact, dtype=torch.bfloat16, ulps=4)
