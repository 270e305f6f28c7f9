"""The training recipes: per-method optimizer values from the papers, and the small-backbone
recipe of the default CPU run; :func:`resolve_defaults` fills the fields a user left ``None``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from twinview.config.schema import PretrainConfig

RECIPES: dict[str, dict[str, Any]] = {
    # SimCLR (Chen et al. 2020, sec. 2.2 / B.1): LARS, lr 0.3 x B/256, wd 1e-6, 10 warm-up epochs.
    "simclr": {"optim.name": "lars", "optim.lr": 0.3, "optim.weight_decay": 1e-6, "warmup": 10.0},
    # MoCo v2 (Chen et al. 2020b, with MoCo's He et al. 2020 recipe): SGD, lr 0.03 per 256, wd 1e-4.
    "moco_v2": {"optim.name": "sgd", "optim.lr": 0.03, "optim.weight_decay": 1e-4, "warmup": 0.0},
    # MoCo v3 ResNet-50 (Chen, Xie & He 2021; official code): LARS, lr 0.6 per 256, wd 1e-6.
    "moco_v3": {"optim.name": "lars", "optim.lr": 0.6, "optim.weight_decay": 1e-6, "warmup": 10.0},
    # BYOL (Grill et al. 2020, sec. 3.3): LARS, lr 0.2 x B/256, wd 1.5e-6, 10 warm-up epochs.
    "byol": {"optim.name": "lars", "optim.lr": 0.2, "optim.weight_decay": 1.5e-6, "warmup": 10.0},
    # SimSiam (Chen & He 2021, sec. 4): SGD, lr 0.05 x B/256, wd 1e-4, no warm-up.
    "simsiam": {"optim.name": "sgd", "optim.lr": 0.05, "optim.weight_decay": 1e-4, "warmup": 0.0},
    # Barlow Twins (Zbontar et al. 2021, sec. 4): LARS, lr 0.2 x B/256 (biases 0.0048), wd 1.5e-6.
    "barlow_twins": {
        "optim.name": "lars", "optim.lr": 0.2, "optim.weight_decay": 1.5e-6, "warmup": 10.0,
    },
    # VICReg (Bardes et al. 2022, appendix C): LARS, lr 0.2 x B/256, wd 1e-6, 10 warm-up epochs.
    "vicreg": {"optim.name": "lars", "optim.lr": 0.2, "optim.weight_decay": 1e-6, "warmup": 10.0},
    # DINO, ResNet-50 (official README): SGD, lr 0.03 x B/256, wd 1e-4, 10 warm-up epochs.
    "dino": {"optim.name": "sgd", "optim.lr": 0.03, "optim.weight_decay": 1e-4, "warmup": 10.0},
    # SwAV (Caron et al. 2020, appendix A): LARS, lr 4.8 at batch 4096 (0.3 x B/256), wd 1e-6.
    "swav": {"optim.name": "lars", "optim.lr": 0.3, "optim.weight_decay": 1e-6, "warmup": 10.0},
    # NNCLR (Dwibedi et al. 2021, sec. 4): LARS, wd 1e-6, SimCLR's lr 0.3 x B/256 (4.8 at 4096).
    "nnclr": {"optim.name": "lars", "optim.lr": 0.3, "optim.weight_decay": 1e-6, "warmup": 10.0},
    # SupCon (Khosla et al. 2020; official TF script supcon_imagenet_resnet50.sh): LARS,
    # lr 0.4 x B/256, wd 1e-3, 12 warm-up epochs.
    "supcon": {"optim.name": "lars", "optim.lr": 0.4, "optim.weight_decay": 1e-3, "warmup": 12.0},
    # DCL / DCLW (Yeh et al. 2022, sec. 4): SimCLR's recipe, LARS lr 0.3 x B/256, wd 1e-6.
    "dcl": {"optim.name": "lars", "optim.lr": 0.3, "optim.weight_decay": 1e-6, "warmup": 10.0},
    "dclw": {"optim.name": "lars", "optim.lr": 0.3, "optim.weight_decay": 1e-6, "warmup": 10.0},
}  # fmt: skip
"""Per-method training recipe (the papers' values) for fields left ``None``."""

SMALL_BACKBONES = ("convnet",)
"""Backbones trained with :data:`SMALL_RECIPE` instead of the papers' large-batch recipes."""

SMALL_RECIPE: dict[str, Any] = {
    "optim.name": "adamw", "optim.lr": 1e-3, "optim.weight_decay": 1e-4, "warmup": 0.25,
}  # fmt: skip
"""The CPU recipe for the small ConvNet at batch 256 (the default run). The papers' LARS
settings assume thousands of images per batch on ResNets; on Fashion-MNIST with the ConvNet,
AdamW (lr 1e-3, wd 1e-4), crops of at least 20% of the image and temperature 0.2 reached a
higher validation kNN after 2 epochs than LARS with SimCLR's values (81.7% vs 81.2%; runs
recorded in BENCHMARKS.md)."""

VIT_RECIPES: dict[str, dict[str, Any]] = {
    # MoCo v3 ViT-S (Chen, Xie & He 2021, sec. 4 / appendix): AdamW lr 1.5e-4 x B/256, wd 0.1,
    # 40 warm-up epochs (of 300), temperature 0.2.
    "moco_v3": {
        "optim.name": "adamw", "optim.lr": 1.5e-4, "optim.weight_decay": 0.1, "warmup": 40.0,
        "method.temperature": 0.2,
    },
    # DINO ViT-S/16 (Caron et al. 2021, official main_dino.py): AdamW lr 5e-4 x B/256, wd 0.04
    # (the paper raises it to 0.4 on a cosine schedule), 10 warm-up epochs.
    "dino": {"optim.name": "adamw", "optim.lr": 5e-4, "optim.weight_decay": 0.04, "warmup": 10.0},
}  # fmt: skip
"""ViT recipes (backbones ``vit_*``) where a paper gives one."""

VIT_RECIPE: dict[str, Any] = {
    "optim.name": "adamw", "optim.lr": 5e-4, "optim.weight_decay": 0.05, "warmup": 10.0,
}  # fmt: skip
"""ViT recipe of every other method: AdamW as DINO's (ViTs do not train with LARS / SGD
recipes made for ResNets), wd 0.05 as DeiT / timm."""

SMALL_VIEWS_CROP_SCALE_MIN = 0.2
SMALL_TEMPERATURE = 0.2


def _fill_small_defaults(cfg: PretrainConfig) -> PretrainConfig:
    """Crop scale and temperature of :data:`SMALL_RECIPE` where the user left them unset."""
    views, method = dataclasses.replace(cfg.views), dataclasses.replace(cfg.method)
    if views.crop_scale_min is None:
        views.crop_scale_min = SMALL_VIEWS_CROP_SCALE_MIN
    if method.temperature is None and method.name in ("simclr", "moco_v2", "moco_v3"):
        method.temperature = SMALL_TEMPERATURE
    return dataclasses.replace(cfg, views=views, method=method)


WARMUP_MAX_FRACTION = 0.1
"""A recipe's warm-up is capped at this fraction of the run (papers train 100+ epochs)."""


def resolve_defaults(cfg: PretrainConfig) -> PretrainConfig:
    """A copy of ``cfg`` with ``None`` optimizer / schedule fields taken from :data:`RECIPES`.

    The recipe's lr and weight decay are for its optimizer: with another ``optim.name`` they are
    not filled in (:func:`validate` then asks for them). The recipe's warm-up is capped at
    ``WARMUP_MAX_FRACTION`` of the run. Unknown methods are left untouched. Values the user set
    are never changed.
    """
    recipe = RECIPES.get(cfg.method.name)
    if recipe is None:
        return cfg
    if cfg.backbone.name in SMALL_BACKBONES:
        recipe = SMALL_RECIPE
        cfg = _fill_small_defaults(cfg)
    elif cfg.backbone.name.startswith("vit_"):
        recipe = VIT_RECIPES.get(cfg.method.name, VIT_RECIPE)
        if cfg.method.temperature is None and "method.temperature" in recipe:
            method = dataclasses.replace(cfg.method, temperature=recipe["method.temperature"])
            cfg = dataclasses.replace(cfg, method=method)
    optim = dataclasses.replace(cfg.optim)
    if optim.name is None:
        optim.name = recipe["optim.name"]
    if optim.name == recipe["optim.name"]:
        for leaf in ("lr", "weight_decay"):
            if getattr(optim, leaf) is None:
                setattr(optim, leaf, recipe[f"optim.{leaf}"])
    schedule = dataclasses.replace(cfg.schedule)
    if schedule.warmup_epochs is None:
        schedule.warmup_epochs = min(recipe["warmup"], WARMUP_MAX_FRACTION * cfg.train.epochs)
    return dataclasses.replace(cfg, optim=optim, schedule=schedule)


def run_name(cfg: PretrainConfig) -> str:
    """``output.name``, or ``<method>-<dataset>`` (the folder's name for an image folder or for
    the folder holding tar shards)."""
    if cfg.output.name:
        return cfg.output.name
    dataset = Path(cfg.data.dataset.rstrip("/\\")).name or "data"
    if dataset.lower().endswith((".tar", "-index.json")):  # shards: name the folder they are in
        dataset = Path(cfg.data.dataset).expanduser().absolute().parent.name or "shards"
    return f"{cfg.method.name}-{''.join(c if c.isalnum() or c in '-_.' else '_' for c in dataset)}"
