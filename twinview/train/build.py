"""Turn a :class:`PretrainConfig` into the run's parts: data, views, method, optimizer.

Each function reads only the config sections it needs and calls the core's public builders
(``load_dataset``, ``build_views``, ``build_backbone``, ``build_method``, ``build_optimizer``),
so what the trainer runs is what a user could assemble by hand.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from typing import Any

import torch
from torch import nn

from twinview.config import ConfigError, PretrainConfig
from twinview.methods import METHODS, Method, build_method
from twinview.nn import build_backbone, convert_sync_batchnorm
from twinview.train.optim import build_optimizer, scale_lr
from twinview.views import MultiView, ViewSpec
from twinview.views.presets import MULTICROP_PRESETS, local_crop_size, preset_specs

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_run_views(cfg: PretrainConfig, method_name: str, size: int) -> MultiView:
    """The method's paper preset (or ``views.preset``) with the config's overrides.

    Multi-crop: the multi-crop presets (``dino``, ``swav``, ``multicrop``) bring their own local
    crops, ``views.num_small_crops`` / ``views.small_crop_size`` / ``views.small_crop_scale`` set
    their number, size and scale; with a two-view preset, ``views.num_small_crops`` appends
    SwAV-style local crops (scale (0.05, 0.14)) drawn like the first view. ``views.crop_scale_min``
    applies to the global views only: the local crops keep their paper's scale range. With a ViT
    every side must be a multiple of its patch size (default local sizes are rounded to one).
    """
    v = cfg.views
    preset = v.preset or METHODS[method_name].default_views
    overrides: dict[str, Any] = {}
    if v.jitter_strength is not None:
        s = v.jitter_strength
        overrides.update(brightness=0.8 * s, contrast=0.8 * s, saturation=0.8 * s, hue=0.2 * s)
    for key in ("hflip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p"):
        if getattr(v, key) is not None:
            overrides[key] = getattr(v, key)
    local: dict[str, Any] = {}
    if preset in MULTICROP_PRESETS:
        if v.num_small_crops is not None:
            local["local_views"] = v.num_small_crops
        if v.small_crop_size is not None:
            local["local_size"] = v.small_crop_size
    patch = patch_size(cfg)
    if "local_size" not in local and preset in MULTICROP_PRESETS:
        local["local_size"] = _multiple_of(local_crop_size(size), patch)
    specs = preset_specs(preset, size=size, **local, **overrides)
    if preset not in MULTICROP_PRESETS and v.num_small_crops:
        small_size = v.small_crop_size or _multiple_of(local_crop_size(size), patch)
        small = dataclasses.replace(specs[0], size=small_size, crop_scale=(0.05, 0.14))
        specs = [*specs, *[small] * v.num_small_crops]
    if v.crop_scale_min is not None:
        specs = [
            s.replace(crop_scale=(v.crop_scale_min, 1.0)) if s.size == specs[0].size else s
            for s in specs
        ]
    if v.small_crop_scale is not None:
        scale = (float(v.small_crop_scale[0]), float(v.small_crop_scale[1]))
        specs = [s.replace(crop_scale=scale) if s.size != specs[0].size else s for s in specs]
    bad = sorted({side for s in specs for side in s.hw if side % patch})
    if bad:
        raise ConfigError(
            f"backbone '{cfg.backbone.name}' cuts images into {patch} px patches, so every view "
            f"side must be a multiple of {patch}; got views of {', '.join(map(str, bad))} px. Set "
            "views.size / views.small_crop_size (or data.image_size) to multiples of "
            f"{patch}, or another backbone.options.patch_size"
        )
    return MultiView(specs)


def patch_size(cfg: PretrainConfig) -> int:
    """The side every view must be a multiple of: a ViT's patch size, else 1."""
    from twinview.nn.backbones import BACKBONES

    builder = BACKBONES.get(cfg.backbone.name)
    param = inspect.signature(builder).parameters.get("patch_size") if builder else None
    if param is None:
        return 1
    return int(cfg.backbone.options.get("patch_size", param.default))


def _multiple_of(side: int, multiple: int) -> int:
    """``side`` rounded to the nearest multiple of ``multiple`` (at least one multiple)."""
    return max(multiple, round(side / multiple) * multiple)


def normalization(views: MultiView, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std the views normalise with (what evaluation and export must use too)."""
    spec: ViewSpec = views.specs[0]
    if spec.mean is not None and spec.std is not None:
        return tuple(spec.mean), tuple(spec.std)
    if channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return (0.5,) * channels, (0.5,) * channels


METHOD_KEYS = {
    "temperature": "temperature",
    "proj_hidden_dim": "hidden_dim",
    "proj_out_dim": "out_dim",
    "pred_hidden_dim": "pred_hidden_dim",
    "queue_size": "queue_size",
    "momentum": "momentum",
    "momentum_final": "momentum_final",
}


def method_kwargs(cfg: PretrainConfig) -> dict[str, Any]:
    """Constructor arguments from the ``method.*`` keys that are set and ``method.options``;
    everything else keeps the paper's default. A key the method does not take is refused with
    the method's valid options listed."""
    name = cfg.method.name
    accepted = _arguments(METHODS[name])
    kwargs = {}
    for key, arg in METHOD_KEYS.items():
        value = getattr(cfg.method, key)
        if value is None:
            continue
        if arg not in accepted:
            raise ConfigError(
                f"config key 'method.{key}' does not apply to method '{name}'; remove it"
            )
        kwargs[arg] = value
    options = [a for a in accepted if a not in METHOD_KEYS.values()]
    mapped = {a: k for k, a in METHOD_KEYS.items()}
    for arg, value in cfg.method.options.items():
        if arg in mapped:
            raise ConfigError(
                f"config key 'method.options.{arg}': set it with method.{mapped[arg]}=... instead"
            )
        if arg not in options:
            raise ConfigError(
                f"config key 'method.options.{arg}' is not an option of method '{name}'; valid "
                f"options: {', '.join(options) or 'none'}{_closest(arg, options)}"
            )
        kwargs[arg] = value
    return kwargs


def _arguments(factory: Any) -> list[str]:
    """Keyword arguments of a method class or backbone builder (``feature_dim`` etc. excluded)."""
    target = factory.__init__ if isinstance(factory, type) else factory
    params = inspect.signature(target).parameters.values()
    skip = {"self", "backbone", "feature_dim"}
    return [p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name not in skip]


def _closest(key: str, valid: list[str]) -> str:
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    return f"; did you mean '{match[0]}'?" if match else ""


def backbone_kwargs(cfg: PretrainConfig, size: int) -> dict[str, Any]:
    """Builder arguments: ``backbone.width``, ``backbone.options``, and the view size as
    ``image_size`` for backbones that take one (ViTs size their position embedding by it)."""
    from twinview.nn.backbones import BACKBONES

    kwargs: dict[str, Any] = {} if cfg.backbone.width is None else {"width": cfg.backbone.width}
    builder = BACKBONES.get(cfg.backbone.name)
    accepted = _arguments(builder) if builder is not None else None
    valid = [a for a in accepted or [] if a not in ("in_channels", "cifar_stem")]
    for arg, value in cfg.backbone.options.items():
        if accepted is not None and arg not in valid:
            raise ConfigError(
                f"config key 'backbone.options.{arg}' is not an argument of backbone "
                f"'{cfg.backbone.name}'; valid: {', '.join(valid) or 'none'}{_closest(arg, valid)}"
            )
        kwargs[arg] = value
    if accepted is not None and "image_size" in accepted and "image_size" not in kwargs:
        kwargs["image_size"] = size
    return kwargs


def backbone_spec(cfg: PretrainConfig, channels: int, size: int, views: MultiView) -> dict:
    """How to rebuild the backbone and feed it (see :mod:`twinview.export`)."""
    mean, std = normalization(views, channels)
    return {
        "name": cfg.backbone.name,
        "in_channels": channels,
        "cifar_stem": cfg.backbone.cifar_stem,
        "kwargs": backbone_kwargs(cfg, size),
        "image_size": size,
        "mean": list(mean),
        "std": list(std),
    }


def build_model(cfg: PretrainConfig, spec: dict, device: torch.device, world_size: int) -> Method:
    """Backbone + method on ``device``. With several processes BatchNorm follows the method's
    paper (``Method.sync_bn``: SyncBatchNorm for all but MoCo v2) unless ``train.sync_bn``
    says otherwise."""
    backbone, dim = build_backbone(
        spec["name"], in_channels=spec["in_channels"], cifar_stem=spec["cifar_stem"],
        **spec["kwargs"],
    )  # fmt: skip
    spec["feature_dim"] = dim
    method = build_method(cfg.method.name, backbone, feature_dim=dim, **method_kwargs(cfg))
    if world_size > 1 and sync_batchnorm(cfg):
        method = convert_sync_batchnorm(method, device=device)
    method = method.to(device)
    if cfg.train.channels_last:
        method = method.to(memory_format=torch.channels_last)
    return method


def check_labels(cfg: PretrainConfig, data: Any) -> None:
    """A method that learns from labels (``Method.needs_labels``: SupCon) needs a class label for
    every training image; refuse an unlabeled dataset before anything is trained or written."""
    if not METHODS[cfg.method.name].needs_labels:
        return
    labels = getattr(data.train, "labels", None)
    if labels is None or len(labels) == 0 or bool((labels < 0).any()):
        missing = (
            "has no labels"
            if labels is None or bool((labels < 0).all())
            else (f"has {int((labels < 0).sum())} of {len(labels)} training images without a label")
        )
        raise ConfigError(
            f"method '{cfg.method.name}' is supervised: it needs a class label for every "
            f"training image, and data.dataset={cfg.data.dataset} {missing}. Use a labeled "
            "dataset (a built-in one, an image folder with one subfolder per class, or a .csv "
            "file list with a label column), or a self-supervised method such as method=simclr"
        )


def sync_batchnorm(cfg: PretrainConfig) -> bool:
    """Whether BatchNorm statistics are synchronised across processes for this run."""
    if cfg.train.sync_bn is not None:
        return cfg.train.sync_bn
    return METHODS[cfg.method.name].sync_bn


def build_run_optimizer(cfg: PretrainConfig, method: nn.Module) -> torch.optim.Optimizer:
    o = cfg.optim
    assert o.name is not None and o.lr is not None and o.weight_decay is not None
    lr = scale_lr(o.lr, cfg.train.batch_size, rule=o.lr_scaling, reference=o.reference_batch)
    groups = method.param_groups(o.weight_decay)  # type: ignore[operator]
    return build_optimizer(
        groups, name=o.name, lr=lr, weight_decay=o.weight_decay, momentum=o.momentum,
        betas=tuple(o.betas), eta=o.lars_eta,
    )  # fmt: skip
