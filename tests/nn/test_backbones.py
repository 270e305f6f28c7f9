"""Backbones: shapes, stems, input channels, torchvision state-dict compatibility, registry."""

from __future__ import annotations

import sys

import pytest
import torch
import torchvision
from torch import nn

from twinview.nn import BACKBONES, build_backbone, list_backbones, register_backbone


def _features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize(
    ("name", "dim", "channels", "size"),
    [
        ("resnet18", 512, 3, 32),
        ("resnet34", 512, 3, 32),
        ("resnet50", 2048, 3, 32),
        ("convnet", 256, 1, 28),
        ("convnet", 256, 3, 32),
    ],
)
def test_output_shape_and_feature_dim(name: str, dim: int, channels: int, size: int) -> None:
    model, feature_dim = build_backbone(name, in_channels=channels)
    assert feature_dim == dim
    out = _features(model, torch.randn(2, channels, size, size))
    assert out.shape == (2, dim)
    assert torch.isfinite(out).all()


def test_convnet_width_scales_features() -> None:
    model, feature_dim = build_backbone("convnet", in_channels=1, width=8)
    assert feature_dim == 64
    assert _features(model, torch.randn(3, 1, 28, 28)).shape == (3, 64)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16, 32, 64]
    assert all(c.kernel_size == (3, 3) for c in convs)


def test_convnet_gradients_reach_every_parameter() -> None:
    model, _ = build_backbone("convnet", in_channels=1)
    model(torch.randn(4, 1, 28, 28)).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("channels", [1, 4])
@pytest.mark.parametrize("cifar_stem", [False, True])
def test_resnet_input_channels(channels: int, cifar_stem: bool) -> None:
    model, dim = build_backbone("resnet18", in_channels=channels, cifar_stem=cifar_stem)
    assert model.conv1.in_channels == channels
    assert model.conv1.out_channels == 64
    assert _features(model, torch.randn(2, channels, 32, 32)).shape == (2, dim)


def test_convnet_four_channels() -> None:
    model, dim = build_backbone("convnet", in_channels=4)
    assert _features(model, torch.randn(2, 4, 32, 32)).shape == (2, dim)


def test_cifar_stem_structure_and_resolution() -> None:
    model, _ = build_backbone("resnet18", cifar_stem=True)
    assert model.conv1.kernel_size == (3, 3)
    assert model.conv1.stride == (1, 1)
    assert model.conv1.padding == (1, 1)
    assert model.conv1.bias is None
    assert isinstance(model.maxpool, nn.Identity)

    def layer4_shape(m: nn.Module) -> torch.Size:
        shapes = []
        handle = m.layer4.register_forward_hook(lambda _m, _i, o: shapes.append(o.shape))
        _features(m, torch.randn(2, 3, 32, 32))
        handle.remove()
        return shapes[0]

    # 32 px: the CIFAR stem keeps 8x more resolution than the ImageNet stem (4x4 vs 1x1).
    assert layer4_shape(model)[-2:] == (4, 4)
    imagenet, _ = build_backbone("resnet18")
    assert isinstance(imagenet.maxpool, nn.MaxPool2d)
    assert imagenet.conv1.kernel_size == (7, 7)
    assert layer4_shape(imagenet)[-2:] == (1, 1)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnet_state_dict_loads_into_torchvision(name: str) -> None:
    model, dim = build_backbone(name)
    reference = getattr(torchvision.models, name)(weights=None)
    ref_sd = reference.state_dict()
    sd = model.state_dict()
    assert set(sd) == set(ref_sd) - {"fc.weight", "fc.bias"}
    assert all(sd[k].shape == ref_sd[k].shape for k in sd)
    result = reference.load_state_dict(sd, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"]
    assert result.unexpected_keys == []
    # Same weights, same features: the torchvision model without fc computes our output (float64,
    # so that no kernel choice between the two can matter; features reach ~20 for resnet50).
    reference.fc = nn.Identity()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    expected = _features(reference.double(), x)
    got = _features(model.double(), x)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10 * float(expected.abs().max()))
    assert dim == ref_sd["fc.weight"].shape[1]


def test_cifar_stem_keeps_state_dict_keys() -> None:
    model, _ = build_backbone("resnet18", cifar_stem=True, in_channels=1)
    ref_keys = set(torchvision.models.resnet18(weights=None).state_dict())
    assert set(model.state_dict()) == ref_keys - {"fc.weight", "fc.bias"}
    assert model.state_dict()["conv1.weight"].shape == (64, 1, 3, 3)


def test_resnet_kwargs_reach_torchvision() -> None:
    model, _ = build_backbone("resnet18", zero_init_residual=True)
    assert torch.count_nonzero(model.layer1[0].bn2.weight) == 0
    with pytest.raises(ValueError, match="never downloads"):
        build_backbone("resnet18", weights="IMAGENET1K_V1")


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown backbone 'resnet_101'") as info:
        build_backbone("resnet_101")
    for name in ["convnet", "resnet18", "resnet34", "resnet50", "timm:<model_name>"]:
        assert name in str(info.value)
    assert list_backbones() == sorted(list_backbones())
    assert {"convnet", "resnet18", "resnet34", "resnet50"} <= set(list_backbones())


@pytest.mark.parametrize("channels", [0, -1, 2.0, True])
def test_bad_in_channels(channels: object) -> None:
    with pytest.raises(ValueError, match="in_channels must be a positive int"):
        build_backbone("convnet", in_channels=channels)  # type: ignore[arg-type]


def test_register_backbone_adds_entry() -> None:
    @register_backbone("test_linear_probe_net")
    def _builder(*, in_channels: int = 3, cifar_stem: bool = False, dim: int = 5):
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(dim)), dim

    try:
        assert "test_linear_probe_net" in list_backbones()
        model, dim = build_backbone("test_linear_probe_net", dim=7)
        assert dim == 7 and model(torch.randn(2, 3, 4, 4)).shape == (2, 7)
        with pytest.raises(ValueError, match="already registered"):
            register_backbone("test_linear_probe_net")(_builder)
    finally:
        BACKBONES.pop("test_linear_probe_net")


def test_timm_missing_says_pip_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` raise ImportError
    with pytest.raises(ImportError, match="pip install timm"):
        build_backbone("timm:resnet18")


def test_timm_bad_arguments() -> None:
    with pytest.raises(ValueError, match="model name"):
        build_backbone("timm:")
    with pytest.raises(ValueError, match="cifar_stem"):
        build_backbone("timm:resnet18", cifar_stem=True)


def test_timm_model() -> None:
    pytest.importorskip("timm")
    model, dim = build_backbone("timm:resnet18", in_channels=1)
    assert dim == 512
    assert _features(model, torch.randn(2, 1, 32, 32)).shape == (2, 512)
