"""From config to run parts: multi-crop views, method and backbone options, the BN choice per
method, and the label check of supervised methods."""

from __future__ import annotations

import pytest
import torch

from twinview.config import ConfigError, load_config
from twinview.methods import METHODS
from twinview.train.build import (
    backbone_kwargs,
    build_run_views,
    check_labels,
    method_kwargs,
    sync_batchnorm,
)


def cfg(*args: str):
    return load_config(None, list(args))


def test_multicrop_presets_take_the_number_and_size_of_local_crops():
    views = build_run_views(cfg("method=dino"), "dino", 28)
    assert [s.size for s in views.specs] == [28, 28] + [12] * 8  # 96/224 of 28 px
    c = cfg("method=dino", "views.num_small_crops=2", "views.small_crop_size=16")
    specs = build_run_views(c, "dino", 32).specs
    assert [s.size for s in specs] == [32, 32, 16, 16]
    assert specs[2].crop_scale == (0.05, 0.4)  # DINO's local scale, not SwAV's
    none = build_run_views(cfg("method=swav", "views.num_small_crops=0"), "swav", 32)
    assert len(none.specs) == 2


def test_crop_scale_min_applies_to_global_views_only():
    """The small-backbone recipe's crop_scale_min must not turn local crops into global ones."""
    c = cfg("method=swav", "views.crop_scale_min=0.3")
    specs = build_run_views(c, "swav", 32).specs
    assert [s.crop_scale for s in specs] == [(0.3, 1.0)] * 2 + [(0.05, 0.14)] * 6


def test_two_view_presets_append_local_crops():
    c = cfg("method=simclr", "views.num_small_crops=3", "views.small_crop_size=12")
    specs = build_run_views(c, "simclr", 28).specs
    assert [s.size for s in specs] == [28, 28, 12, 12, 12]
    assert specs[2].crop_scale == (0.05, 0.14) and specs[0].crop_scale[0] != 0.05
    with pytest.raises(ValueError, match="multi-crop presets"):
        from twinview.views import build_views

        build_views("simclr", size=28, local_views=2)


def test_method_options_reach_the_constructor_and_bad_ones_are_named():
    kwargs = method_kwargs(
        cfg("method=simclr", "method.options.num_layers=3", "method.temperature=0.3")
    )
    assert kwargs == {"num_layers": 3, "temperature": 0.3}
    with pytest.raises(
        ConfigError, match=r"method.options.num_layer' .* did you mean 'num_layers'"
    ):
        method_kwargs(cfg("method=simclr", "method.options.num_layer=3"))
    with pytest.raises(ConfigError, match=r"set it with method.temperature"):
        method_kwargs(cfg("method=simclr", "method.options.temperature=0.5"))
    with pytest.raises(ConfigError, match="does not apply to method 'simclr'"):
        method_kwargs(cfg("method=simclr", "method.queue_size=10"))


def test_backbone_options_are_checked_against_the_builder():
    assert backbone_kwargs(cfg("backbone.width=16"), 28) == {"width": 16}
    with pytest.raises(ConfigError, match=r"backbone.options.widht' .* did you mean 'width'"):
        backbone_kwargs(cfg("backbone.options.widht=16"), 28)


def test_each_method_follows_its_papers_batchnorm_choice():
    """MoCo v2 keeps per-process BN (shuffle-BN needs it); the others synchronise it; the
    train.sync_bn key overrides either way."""
    assert sync_batchnorm(cfg("method=moco_v2")) is False
    for name in ("simclr", "byol", "moco_v3", "barlow_twins", "vicreg", "dino", "swav"):
        assert sync_batchnorm(cfg(f"method={name}")) is True, name
    assert sync_batchnorm(cfg("method=moco_v2", "train.sync_bn=true")) is True
    assert sync_batchnorm(cfg("method=simclr", "train.sync_bn=false")) is False
    assert [n for n, m in METHODS.items() if m.needs_labels] == ["supcon"]


class _Split:
    def __init__(self, labels):
        self.labels = labels


class _Data:
    def __init__(self, labels):
        self.train = _Split(labels)


def test_a_supervised_method_refuses_unlabeled_data_before_training():
    c = cfg("method=supcon", "data=./photos")
    check_labels(c, _Data(torch.tensor([0, 1, 1])))
    with pytest.raises(ConfigError, match=r"supcon' is supervised.*\./photos has no labels"):
        check_labels(c, _Data(torch.full((3,), -1)))
    with pytest.raises(ConfigError, match="has 1 of 3 training images without a label"):
        check_labels(c, _Data(torch.tensor([0, -1, 2])))
    check_labels(cfg("method=simclr"), _Data(torch.full((3,), -1)))  # self-supervised: fine


def test_supcon_on_an_unlabeled_folder_fails_before_anything_is_written(tmp_path, capsys):
    from PIL import Image

    from twinview.cli import main

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(8):
        Image.new("RGB", (20, 20), (30 * i, 10, 200)).save(photos / f"{i}.png")
    out = tmp_path / "runs"
    assert main(["pretrain", f"data={photos}", "method=supcon", f"output.dir={out}"]) == 2
    assert "supcon' is supervised" in capsys.readouterr().err
    assert not any(p.is_file() for p in out.rglob("*") if p.name != ".lock")


def test_vit_local_crops_are_multiples_of_the_patch_size():
    c = cfg("method=dino", "backbone=vit_tiny", "views.num_small_crops=2")
    assert [s.size for s in build_run_views(c, "dino", 32).specs] == [32, 32, 16, 16]  # 14 -> 16
    c = cfg(
        "method=dino",
        "backbone=vit_tiny",
        "backbone.options.patch_size=7",
        "views.num_small_crops=2",
    )
    assert [s.size for s in build_run_views(c, "dino", 28).specs] == [28, 28, 14, 14]
    c = cfg("method=dino", "backbone=vit_tiny", "views.small_crop_size=10")
    with pytest.raises(ConfigError, match="multiple of 4; got views of 10 px"):
        build_run_views(c, "dino", 32)


def test_small_crop_scale_sets_the_local_crops_only():
    c = cfg("method=dino", "views.num_small_crops=2", "views.small_crop_scale=[0.05,0.14]")
    specs = build_run_views(c, "dino", 32).specs
    assert [s.crop_scale for s in specs[2:]] == [(0.05, 0.14)] * 2
    assert specs[0].crop_scale != (0.05, 0.14)
    with pytest.raises(ConfigError, match=r"views.small_crop_scale' must be \[min, max\]"):
        cfg("views.small_crop_scale=[0.5,0.1]")
