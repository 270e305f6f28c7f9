"""Every recipe in configs/ loads, validates and names its source."""

from __future__ import annotations

from pathlib import Path

import pytest

from twinview.config import load_config
from twinview.methods import METHODS
from twinview.train.build import backbone_kwargs, build_run_views, method_kwargs

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*/*.yaml"))


def test_there_is_a_recipe_per_method_and_setting():
    names = {(p.parent.name, p.stem) for p in CONFIGS}
    for setting in ("fashion_mnist", "cifar10", "imagenet"):
        for method in METHODS:
            assert (setting, method) in names, (setting, method)
    for setting in ("cifar10", "imagenet"):  # the ViT recipes of MoCo v3 and DINO
        assert {(setting, "moco_v3_vit"), (setting, "dino_vit")} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_recipe_loads_and_cites_its_source(path):
    cfg = load_config(path)
    if path.stem != "best":  # best.yaml: the best-accuracy recipe, any method
        assert cfg.method.name == path.stem.removesuffix("_vit")
    assert cfg.backbone.name.startswith("vit_") == path.stem.endswith("_vit")
    # every method and backbone option is one the constructor takes, the views can be built
    method_kwargs(cfg)
    size = {"fashion_mnist": 28, "cifar10": 32}.get(path.parent.name, 224)
    backbone_kwargs(cfg, size)
    build_run_views(cfg, cfg.method.name, cfg.views.size or size)
    assert cfg.optim.name and cfg.optim.lr and cfg.optim.weight_decay is not None
    header = path.read_text().split("\n", 3)[:3]
    assert any("Source" in line or "recipe" in line for line in header), header
