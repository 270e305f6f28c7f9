"""Resume rules: only the keys listed as resumable may differ from the saved config."""

from __future__ import annotations

import pytest

from twinview.config import ConfigError, load_config
from twinview.run.resume import RESUMABLE, changed_keys, check_resume


def test_resumable_changes_pass_and_are_listed() -> None:
    saved = load_config(None, ["epochs=4"])
    new = load_config(None, ["epochs=10", "monitor.knn_every_epochs=2", "data.num_workers=0"])
    changed = check_resume(saved, new, run_dir="runs/x", mid_epoch=True)
    assert changed == ["data.num_workers", "train.epochs", "monitor.knn_every_epochs"]
    assert check_resume(saved, saved, run_dir="runs/x", mid_epoch=True) == []


def test_every_other_change_is_refused_by_name_with_both_ways_out() -> None:
    saved = load_config(None, [])
    new = load_config(None, ["batch_size=128", "seed=3", "lr=0.01", "data=synthetic"])
    with pytest.raises(ConfigError) as err:
        check_resume(saved, new, run_dir="runs/x", mid_epoch=False)
    text = str(err.value)
    for line in (
        "data.dataset: fashion_mnist -> synthetic",
        "optim.lr: 0.001 -> 0.01",
        "train.batch_size: 256 -> 128",
        "train.seed: 0 -> 3",
    ):
        assert line in text
    assert "data.dataset=fashion_mnist" in text and "train.batch_size=256" in text
    assert "resume=false or another name=" in text
    assert "train.epochs" in text  # the list of what may change


def test_device_count_changes_only_at_an_epoch_boundary() -> None:
    saved = load_config(None, [])
    new = load_config(None, ["devices=2"])
    assert check_resume(saved, new, run_dir="r", mid_epoch=False) == ["train.devices"]
    with pytest.raises(ConfigError, match=r"(?s)train\.devices: 1 -> 2.*end of an epoch"):
        check_resume(saved, new, run_dir="r", mid_epoch=True)


def test_changed_keys_cover_every_section() -> None:
    saved = load_config(None, [])
    new = load_config(None, ["backbone.width=16", "views.hflip_p=0.1", "name=other"])
    keys = [key for key, _, _ in changed_keys(saved, new)]
    assert keys == ["backbone.width", "views.hflip_p", "output.name"]
    assert "output.*" in RESUMABLE


def test_a_changed_option_is_named_like_a_key_the_user_can_type():
    from twinview.config import load_config
    from twinview.run.resume import changed_keys

    saved = load_config(None, ["method=swav", "method.options.num_prototypes=10"])
    new = load_config(None, ["method=swav", "method.options.num_prototypes=20"])
    assert changed_keys(saved, new) == [("method.options.num_prototypes", 10, 20)]
    dropped = load_config(None, ["method=swav"])
    assert changed_keys(saved, dropped) == [("method.options.num_prototypes", 10, None)]
