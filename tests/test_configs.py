"""Every recipe in configs/ loads, validates and names its source."""

from __future__ import annotations

from pathlib import Path

import pytest

from twinview.config import load_config

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*/*.yaml"))


def test_there_is_a_recipe_per_method_and_setting():
    names = {(p.parent.name, p.stem) for p in CONFIGS}
    for setting in ("fashion_mnist", "cifar10", "imagenet"):
        for method in ("simclr", "moco_v2", "moco_v3", "byol", "simsiam"):
            assert (setting, method) in names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_recipe_loads_and_cites_its_source(path):
    cfg = load_config(path)
    assert cfg.method.name == path.stem
    assert cfg.optim.name and cfg.optim.lr and cfg.optim.weight_decay is not None
    header = path.read_text().split("\n", 3)[:3]
    assert any("Source" in line or "recipe" in line for line in header), header
