"""Turn a :class:`PretrainConfig` into the run's parts: data, views, method, optimizer.

Each function reads only the config sections it needs and calls the core's public builders
(``load_dataset``, ``build_views``, ``build_backbone``, ``build_method``, ``build_optimizer``),
so what the trainer runs is what a user could assemble by hand.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import torch
from torch import nn

from twinview.config import ConfigError, PretrainConfig
from twinview.methods import METHODS, Method, build_method
from twinview.nn import build_backbone, convert_sync_batchnorm
from twinview.train.optim import build_optimizer, scale_lr
from twinview.views import MultiView, ViewSpec, build_views

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_run_views(cfg: PretrainConfig, method_name: str, size: int) -> MultiView:
    """The method's paper preset (or ``views.preset``) with the config's overrides."""
    v = cfg.views
    preset = v.preset or METHODS[method_name].default_views
    overrides: dict[str, Any] = {}
    if v.crop_scale_min is not None:
        overrides["crop_scale"] = (v.crop_scale_min, 1.0)
    if v.jitter_strength is not None:
        s = v.jitter_strength
        overrides.update(brightness=0.8 * s, contrast=0.8 * s, saturation=0.8 * s, hue=0.2 * s)
    for key in ("hflip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p"):
        if getattr(v, key) is not None:
            overrides[key] = getattr(v, key)
    views = build_views(preset, size=size, **overrides)
    if v.num_small_crops:
        small_size = v.small_crop_size or max(8, size * 96 // 224)
        small = dataclasses.replace(views.specs[0], size=small_size, crop_scale=(0.05, 0.14))
        views = MultiView([*views.specs, *[small] * v.num_small_crops])
    return views


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
    """Constructor arguments from ``method.*`` keys that are set; others keep paper defaults."""
    cls = METHODS[cfg.method.name]
    accepted = inspect.signature(cls.__init__).parameters
    kwargs = {}
    for key, arg in METHOD_KEYS.items():
        value = getattr(cfg.method, key)
        if value is None:
            continue
        if arg not in accepted:
            raise ConfigError(
                f"config key 'method.{key}' does not apply to method '{cfg.method.name}'; remove it"
            )
        kwargs[arg] = value
    return kwargs


def backbone_spec(cfg: PretrainConfig, channels: int, size: int, views: MultiView) -> dict:
    """How to rebuild the backbone and feed it (see :mod:`twinview.export`)."""
    mean, std = normalization(views, channels)
    kwargs = {} if cfg.backbone.width is None else {"width": cfg.backbone.width}
    return {
        "name": cfg.backbone.name,
        "in_channels": channels,
        "cifar_stem": cfg.backbone.cifar_stem,
        "kwargs": kwargs,
        "image_size": size,
        "mean": list(mean),
        "std": list(std),
    }


def build_model(cfg: PretrainConfig, spec: dict, device: torch.device, world_size: int) -> Method:
    """Backbone + method on ``device``; SyncBatchNorm across processes unless turned off."""
    backbone, dim = build_backbone(
        spec["name"], in_channels=spec["in_channels"], cifar_stem=spec["cifar_stem"],
        **spec["kwargs"],
    )  # fmt: skip
    spec["feature_dim"] = dim
    method = build_method(cfg.method.name, backbone, feature_dim=dim, **method_kwargs(cfg))
    sync = cfg.train.sync_bn if cfg.train.sync_bn is not None else True
    if world_size > 1 and sync:
        method = convert_sync_batchnorm(method, device=device)
    method = method.to(device)
    if cfg.train.channels_last:
        method = method.to(memory_format=torch.channels_last)
    return method


def build_run_optimizer(cfg: PretrainConfig, method: nn.Module) -> torch.optim.Optimizer:
    o = cfg.optim
    assert o.name is not None and o.lr is not None and o.weight_decay is not None
    lr = scale_lr(o.lr, cfg.train.batch_size, rule=o.lr_scaling, reference=o.reference_batch)
    groups = method.param_groups(o.weight_decay)  # type: ignore[operator]
    return build_optimizer(
        groups, name=o.name, lr=lr, weight_decay=o.weight_decay, momentum=o.momentum,
        betas=tuple(o.betas), eta=o.lars_eta,
    )  # fmt: skip
