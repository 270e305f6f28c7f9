"""A run's data from its config: the folder limits reach the folder, not the built-ins."""

from __future__ import annotations

import dataclasses

import pytest
from PIL import Image

from twinview.config import DataConfig, load_config
from twinview.data import DEFAULT_MAX_PIXELS
from twinview.run.data import build_data, dataset_kwargs


def test_config_default_is_the_decoders_default() -> None:
    assert DataConfig().max_pixels == DEFAULT_MAX_PIXELS


def test_max_pixels_applies_to_folders_only(tmp_path) -> None:
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i, side in enumerate((8, 8, 8, 40)):
            Image.new("RGB", (side, side), (i * 40, 0, 0)).save(tmp_path / cls / f"{i}.png")
    cfg = load_config(None, [f"data={tmp_path}", "data.max_pixels=100"])
    with pytest.warns(UserWarning, match=r"40x40 = .*max_pixels=100"):
        data = build_data(cfg)
    assert len(data.train) + len(data.val) == 6  # the two 40x40 images are skipped
    builtin = dataclasses.replace(cfg.data, dataset="synthetic", options={"n": 8})
    assert "max_pixels" not in dataset_kwargs(builtin)
    assert build_data(dataclasses.replace(cfg, data=builtin)).channels == 3
