"""Backbones: image (B, C, H, W) -> flat features (B, D), with no classifier head.

``build_backbone(name, ...)`` returns ``(module, feature_dim)``. Names come from a small
timm-style registry (:data:`BACKBONES`, :func:`register_backbone`):

- ``"resnet18"``, ``"resnet34"``, ``"resnet50"``: torchvision ResNets (He et al. 2016), built
  with ``weights=None`` (nothing is ever downloaded) and ``fc`` replaced by ``nn.Identity``, so
  the state dict loads straight into a torchvision model of the same name (minus ``fc``).
  ``cifar_stem=True`` swaps the 7x7 stride-2 ``conv1`` for a 3x3 stride-1 conv and drops the
  max-pool, the usual stem for 32 px images (SimCLR, Chen et al. 2020, appendix B.9).
- ``"convnet"``: a small ConvNet for 28-32 px images, the default CPU backbone.
- ``"vit_tiny"``, ``"vit_small"``: Vision Transformers (DeiT-Ti / DeiT-S widths) with small
  patches for 28-96 px images (:class:`~twinview.nn.vit.VisionTransformer`).
- ``"timm:<model_name>"``: any timm model (``pretrained=False``, ``num_classes=0``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torchvision
from torch import Tensor, nn

from twinview.nn.vit import VisionTransformer

BackboneBuilder = Callable[..., tuple[nn.Module, int]]

BACKBONES: dict[str, BackboneBuilder] = {}
"""Registry name -> builder ``(*, in_channels, cifar_stem, **kwargs) -> (module, feature_dim)``."""

TIMM_PREFIX = "timm:"


def register_backbone(name: str) -> Callable[[BackboneBuilder], BackboneBuilder]:
    """Decorator adding a builder to :data:`BACKBONES` under ``name``.

    The builder is called as ``builder(in_channels=..., cifar_stem=..., **kwargs)`` and must
    return ``(module, feature_dim)`` with ``module(x)`` of shape (B, feature_dim).
    """

    def decorator(builder: BackboneBuilder) -> BackboneBuilder:
        if name in BACKBONES:
            raise ValueError(f"backbone {name!r} is already registered")
        if name.startswith(TIMM_PREFIX):
            raise ValueError(f"backbone names may not start with {TIMM_PREFIX!r}: {name!r}")
        BACKBONES[name] = builder
        return builder

    return decorator


def list_backbones() -> list[str]:
    """Registered backbone names, sorted (``"timm:<model_name>"`` is accepted on top of these)."""
    return sorted(BACKBONES)


def build_backbone(
    name: str, *, in_channels: int = 3, cifar_stem: bool = False, **kwargs: Any
) -> tuple[nn.Module, int]:
    """Build backbone ``name``; returns ``(module, feature_dim)``.

    module: (B, in_channels, H, W) float -> (B, feature_dim) features.
    kwargs: passed to the builder (e.g. ``width`` for ``"convnet"``, ``zero_init_residual`` for
    the ResNets, any ``timm.create_model`` argument for ``"timm:..."``).
    """
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
    if isinstance(name, str) and name.startswith(TIMM_PREFIX):
        return _build_timm(name[len(TIMM_PREFIX) :], in_channels, cifar_stem, **kwargs)
    if name not in BACKBONES:
        valid = ", ".join([*list_backbones(), TIMM_PREFIX + "<model_name>"])
        raise ValueError(f"unknown backbone {name!r}; valid names: {valid}")
    return BACKBONES[name](in_channels=in_channels, cifar_stem=cifar_stem, **kwargs)


# --- torchvision ResNets -----------------------------------------------------------------------


def _resnet(arch: str, in_channels: int, cifar_stem: bool, **kwargs: Any) -> tuple[nn.Module, int]:
    for key in ("weights", "pretrained"):
        if key in kwargs:
            raise ValueError(
                f"build_backbone({arch!r}) never downloads weights: drop {key}={kwargs[key]!r} "
                "and load a state dict into the returned module instead"
            )
    model = getattr(torchvision.models, arch)(weights=None, **kwargs)
    feature_dim = model.fc.in_features
    model.fc = nn.Identity()
    if cifar_stem or in_channels != 3:
        kernel, stride, padding = (3, 1, 1) if cifar_stem else (7, 2, 3)
        model.conv1 = nn.Conv2d(
            in_channels, model.conv1.out_channels, kernel, stride, padding, bias=False
        )
        # Same init torchvision gives its convolutions.
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    if cifar_stem:
        model.maxpool = nn.Identity()
    return model, feature_dim


@register_backbone("resnet18")
def resnet18(*, in_channels: int = 3, cifar_stem: bool = False, **kwargs: Any):
    """torchvision ResNet-18, 512-d features."""
    return _resnet("resnet18", in_channels, cifar_stem, **kwargs)


@register_backbone("resnet34")
def resnet34(*, in_channels: int = 3, cifar_stem: bool = False, **kwargs: Any):
    """torchvision ResNet-34, 512-d features."""
    return _resnet("resnet34", in_channels, cifar_stem, **kwargs)


@register_backbone("resnet50")
def resnet50(*, in_channels: int = 3, cifar_stem: bool = False, **kwargs: Any):
    """torchvision ResNet-50, 2048-d features."""
    return _resnet("resnet50", in_channels, cifar_stem, **kwargs)


# --- small ConvNet -----------------------------------------------------------------------------


class ConvNet(nn.Module):
    """Four conv3x3-BN-ReLU blocks for 28-32 px images, then global average pooling.

    Widths ``width * (1, 2, 4, 8)`` (32-64-128-256 by default); a 2x2 max-pool (ceil mode, so
    no border row is dropped) after each of the first three blocks: 28 -> 14 -> 7 -> 4 px and
    32 -> 16 -> 8 -> 4 px. The widest block runs on a 4x4 map, so the net costs about 12 M
    multiply-adds per 28 px image (a ResNet-18 with CIFAR stem: about 550 M): fast on a CPU,
    and enough capacity for Fashion-MNIST / CIFAR-scale features.

    x: (B, in_channels, H, W) -> (B, 8 * width).
    """

    def __init__(self, *, in_channels: int = 3, width: int = 32) -> None:
        super().__init__()
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"convnet width must be a positive int, got {width!r}")
        widths = [width, 2 * width, 4 * width, 8 * width]
        layers: list[nn.Module] = []
        prev = in_channels
        for i, w in enumerate(widths):
            layers += [
                nn.Conv2d(prev, w, 3, padding=1, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
            ]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            prev = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = widths[-1]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.features(x)).flatten(1)


@register_backbone("convnet")
def convnet(*, in_channels: int = 3, cifar_stem: bool = False, width: int = 32):
    """Small CPU ConvNet, ``8 * width``-d features (256 by default).

    ``cifar_stem`` is accepted and ignored: this net is already built for small images.
    """
    model = ConvNet(in_channels=in_channels, width=width)
    return model, model.feature_dim


# --- Vision Transformers ----------------------------------------------------------------------


def _vit(
    name: str,
    dim: int,
    default_heads: int,
    *,
    in_channels: int,
    cifar_stem: bool,
    image_size: int,
    patch_size: int,
    drop_path: float,
    freeze_patch_embed: bool,
    depth: int,
    heads: int | None,
    mlp_ratio: float,
) -> tuple[nn.Module, int]:
    if cifar_stem:
        raise ValueError(
            f"cifar_stem=True is a ResNet option and does not apply to {name!r}: a ViT's stem is "
            f"its patch embedding; set cifar_stem=False and pick patch_size for the image size "
            f"(4 for 32 px, 4 or 7 for 28 px)"
        )
    model = VisionTransformer(
        image_size=image_size, patch_size=patch_size, in_channels=in_channels, dim=dim,
        depth=depth, heads=default_heads if heads is None else heads, mlp_ratio=mlp_ratio,
        drop_path=drop_path, freeze_patch_embed=freeze_patch_embed,
    )  # fmt: skip
    return model, model.feature_dim


@register_backbone("vit_tiny")
def vit_tiny(
    *,
    in_channels: int = 3,
    cifar_stem: bool = False,
    image_size: int = 32,
    patch_size: int = 4,
    drop_path: float = 0.0,
    freeze_patch_embed: bool = False,
    depth: int = 12,
    heads: int | None = None,
    mlp_ratio: float = 4.0,
):
    """ViT-Tiny (DeiT-Ti width: dim 192, 12 blocks, 3 heads), 192-d cls-token features.

    ``image_size``: the side the position embedding is learned for (other sizes divisible by
    ``patch_size`` are interpolated); ``patch_size`` must divide it (4 for 32 px, 4 or 7 for
    28 px). ``drop_path``: stochastic depth of the last block (DINO uses 0.1 for ViT-S, MoCo v3
    none). ``freeze_patch_embed``: MoCo v3's fixed random patch projection. ``depth`` /
    ``heads`` / ``mlp_ratio`` override the architecture. ``cifar_stem=True`` is refused.
    """
    return _vit(
        "vit_tiny", 192, 3, in_channels=in_channels, cifar_stem=cifar_stem,
        image_size=image_size, patch_size=patch_size, drop_path=drop_path,
        freeze_patch_embed=freeze_patch_embed, depth=depth, heads=heads, mlp_ratio=mlp_ratio,
    )  # fmt: skip


@register_backbone("vit_small")
def vit_small(
    *,
    in_channels: int = 3,
    cifar_stem: bool = False,
    image_size: int = 32,
    patch_size: int = 4,
    drop_path: float = 0.0,
    freeze_patch_embed: bool = False,
    depth: int = 12,
    heads: int | None = None,
    mlp_ratio: float = 4.0,
):
    """ViT-Small (DeiT-S / DINO width: dim 384, 12 blocks, 6 heads), 384-d cls-token features.

    Arguments as :func:`vit_tiny`. MoCo v3's ViT-S has 12 heads instead of 6 (same parameter
    count): pass ``heads=12`` to match it.
    """
    return _vit(
        "vit_small", 384, 6, in_channels=in_channels, cifar_stem=cifar_stem,
        image_size=image_size, patch_size=patch_size, drop_path=drop_path,
        freeze_patch_embed=freeze_patch_embed, depth=depth, heads=heads, mlp_ratio=mlp_ratio,
    )  # fmt: skip


# --- timm ----------------------------------------------------------------------------------------


def _build_timm(
    model_name: str, in_channels: int, cifar_stem: bool, **kwargs: Any
) -> tuple[nn.Module, int]:
    if not model_name:
        raise ValueError("timm backbone needs a model name, e.g. 'timm:resnet18'")
    if cifar_stem:
        raise ValueError(
            f"cifar_stem=True is not supported for timm backbones ('timm:{model_name}'); "
            "set cifar_stem=False or use a torchvision resnet"
        )
    try:
        import timm
    except ImportError as err:
        raise ImportError(
            f"backbone 'timm:{model_name}' needs the timm package: pip install timm"
        ) from err
    model = timm.create_model(
        model_name, pretrained=False, num_classes=0, in_chans=in_channels, **kwargs
    )
    return model, int(model.num_features)
