"""View presets with the papers' augmentation recipes, and :func:`build_views`.

All presets use torchvision's ``ColorJitter`` semantics (the PyTorch ports of every paper do).
The Gaussian blur kernel is about 10% of the view's side (SimCLR, Appendix A; BYOL uses 23 px
for 224 px); the blur sigma range is [0.1, 2.0] throughout.
"""

from __future__ import annotations

from collections.abc import Callable

from twinview.views.pipeline import MultiView, ViewSpec


def simclr(size: int) -> list[ViewSpec]:
    """SimCLR, ImageNet (Chen et al. 2020, "A Simple Framework for Contrastive Learning of
    Visual Representations", Appendix A): random resized crop, scale (0.08, 1), ratio
    (3/4, 4/3), flip p = 0.5; colour distortion of strength s = 1: jitter (0.8s, 0.8s, 0.8s,
    0.2s) with p = 0.8, grayscale p = 0.2; Gaussian blur p = 0.5, sigma in [0.1, 2.0], kernel
    10% of the side. Both views are drawn from the same recipe."""
    view = ViewSpec(
        size, brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2, jitter_p=0.8, blur_p=0.5
    )
    return [view, view]


def simclr_cifar(size: int) -> list[ViewSpec]:
    """SimCLR, CIFAR-10 (Chen et al. 2020, Appendix B.9): the ImageNet recipe without
    Gaussian blur and colour distortion strength s = 0.5: jitter (0.4, 0.4, 0.4, 0.1) with
    p = 0.8, grayscale p = 0.2; crop scale (0.08, 1), flip p = 0.5."""
    view = ViewSpec(size, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, blur_p=0.0)
    return [view, view]


def moco_v2(size: int) -> list[ViewSpec]:
    """MoCo v2 (Chen, Fan, Girshick, He 2020, "Improved Baselines with Momentum Contrastive
    Learning"): crop scale (0.2, 1), jitter (0.4, 0.4, 0.4, 0.1) with p = 0.8, grayscale
    p = 0.2, Gaussian blur p = 0.5 with sigma in [0.1, 2.0], flip p = 0.5; symmetric views."""
    view = ViewSpec(size, crop_scale=(0.2, 1.0), blur_p=0.5)
    return [view, view]


def byol(size: int) -> list[ViewSpec]:
    """BYOL (Grill et al. 2020, "Bootstrap Your Own Latent", Table 6), asymmetric views:
    crop scale (0.08, 1), flip p = 0.5, jitter (brightness 0.4, contrast 0.4, saturation 0.2,
    hue 0.1) with p = 0.8, grayscale p = 0.2; Gaussian blur p = 1.0 / 0.1 (sigma in
    [0.1, 2.0], 23 px kernel at 224 px), solarization p = 0.0 / 0.2."""
    common = dict(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)
    return [
        ViewSpec(size, blur_p=1.0, solarize_p=0.0, **common),
        ViewSpec(size, blur_p=0.1, solarize_p=0.2, **common),
    ]


def simsiam(size: int) -> list[ViewSpec]:
    """SimSiam (Chen & He 2021, "Exploring Simple Siamese Representation Learning", Sec. 4 /
    Appendix A): MoCo v2's augmentation: crop scale (0.2, 1), jitter (0.4, 0.4, 0.4, 0.1)
    with p = 0.8, grayscale p = 0.2, Gaussian blur p = 0.5, flip p = 0.5."""
    return moco_v2(size)


def moco_v3(size: int) -> list[ViewSpec]:
    """MoCo v3 (Chen, Xie, He 2021, "An Empirical Study of Training Self-Supervised Vision
    Transformers", Appendix A): BYOL's asymmetric recipe: crop scale (0.08, 1), jitter
    (0.4, 0.4, 0.2, 0.1) with p = 0.8, grayscale p = 0.2, blur p = 1.0 / 0.1, solarization
    p = 0.0 / 0.2, flip p = 0.5."""
    return byol(size)


def multicrop(size: int, *, local_views: int = 6, local_size: int | None = None) -> list[ViewSpec]:
    """Multi-crop (Caron et al. 2020, "Unsupervised Learning of Visual Features by Contrasting
    Cluster Assignments", SwAV): 2 global views at ``size`` (224) with crop scale (0.14, 1) and
    ``local_views`` (6) small views at ``local_size`` (96 at 224, i.e. 3/7 of ``size``) with
    scale (0.05, 0.14). Colour as SwAV: jitter (0.8, 0.8, 0.8, 0.2) with p = 0.8, grayscale
    p = 0.2, Gaussian blur p = 0.5, flip p = 0.5."""
    if local_views < 0:
        raise ValueError(f"local_views must be >= 0, got {local_views}")
    small = local_size if local_size is not None else local_crop_size(size)
    colour = dict(brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2, blur_p=0.5)
    global_view = ViewSpec(size, crop_scale=(0.14, 1.0), **colour)
    local_view = ViewSpec(small, crop_scale=(0.05, 0.14), **colour)
    return [global_view, global_view] + [local_view] * local_views


def local_crop_size(size: int) -> int:
    """The papers' local crop side for global crops of side ``size``: 96 px at 224 (3/7),
    at least 8 px."""
    return max(8, round(size * 96 / 224))


def swav(size: int, *, local_views: int = 6, local_size: int | None = None) -> list[ViewSpec]:
    """SwAV (Caron et al. 2020, sec. 4 and appendix A): 2 x 224 scale (0.14, 1) + 6 x 96 scale
    (0.05, 0.14), SimCLR's colour distortion of strength 1 and blur p = 0.5 on every crop. The
    same recipe as :func:`multicrop`, under the method's name."""
    return multicrop(size, local_views=local_views, local_size=local_size)


def dino(size: int, *, local_views: int = 8, local_size: int | None = None) -> list[ViewSpec]:
    """DINO (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers";
    official ``DataAugmentationDINO``): 2 global crops at ``size`` (224) with scale (0.4, 1) and
    ``local_views`` (8, the code's default; the paper's best ViT-S uses 10) local crops at
    ``local_size`` (96) with scale (0.05, 0.4). BYOL's colour: jitter (0.4, 0.4, 0.2, 0.1) with
    p = 0.8, grayscale p = 0.2, flip p = 0.5; blur p = 1.0 on the first global crop, 0.1 plus
    solarization p = 0.2 on the second, 0.5 on the local crops."""
    if local_views < 0:
        raise ValueError(f"local_views must be >= 0, got {local_views}")
    small = local_size if local_size is not None else local_crop_size(size)
    colour = dict(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)
    first = ViewSpec(size, crop_scale=(0.4, 1.0), blur_p=1.0, **colour)
    second = ViewSpec(size, crop_scale=(0.4, 1.0), blur_p=0.1, solarize_p=0.2, **colour)
    local_view = ViewSpec(small, crop_scale=(0.05, 0.4), blur_p=0.5, **colour)
    return [first, second] + [local_view] * local_views


PRESETS: dict[str, Callable[..., list[ViewSpec]]] = {
    "simclr": simclr,
    "simclr_cifar": simclr_cifar,
    "moco_v2": moco_v2,
    "byol": byol,
    "simsiam": simsiam,
    "moco_v3": moco_v3,
    "multicrop": multicrop,
    "swav": swav,
    "dino": dino,
}

MULTICROP_PRESETS = ("multicrop", "swav", "dino")
"""Presets with local crops; they take ``local_views`` and ``local_size``."""


def preset_specs(preset: str, *, size: int, **overrides: object) -> list[ViewSpec]:
    """The specs of ``preset`` at ``size``, with ``overrides`` replacing ViewSpec fields on
    every view (``local_views`` / ``local_size`` go to the multi-crop preset)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown views preset {preset!r}; valid presets: {sorted(PRESETS)}")
    extra = {k: overrides.pop(k) for k in ("local_views", "local_size") if k in overrides}
    if extra and preset not in MULTICROP_PRESETS:
        raise ValueError(
            f"{sorted(extra)} only apply to the multi-crop presets {MULTICROP_PRESETS}, "
            f"not {preset!r}"
        )
    specs = PRESETS[preset](size, **extra)
    return [spec.replace(**overrides) for spec in specs] if overrides else specs


def build_views(preset: str, *, size: int, **overrides: object) -> MultiView:
    """A :class:`MultiView` for a paper's recipe: ``preset`` in :data:`PRESETS`, views of side
    ``size``; ``overrides`` replace ViewSpec fields on every view (e.g. ``blur_p=0.0``,
    ``to_rgb=True``, ``mean=(0.286,), std=(0.353,)``). Unknown presets or fields raise
    ValueError listing the valid names.

    >>> views = build_views("byol", size=32)
    >>> [s.blur_p for s in views.specs]
    [1.0, 0.1]
    """
    return MultiView(preset_specs(preset, size=size, **overrides))
