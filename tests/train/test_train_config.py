"""Config: defaults, YAML + overrides, shorthands, recipes, round trips and the promised errors."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from twinview.config import (
    ALIASES,
    RECIPES,
    ConfigError,
    PretrainConfig,
    config_help,
    config_keys,
    load_config,
    resolve_defaults,
    run_name,
    save_config,
    to_yaml,
    validate,
)


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_default_run() -> None:
    cfg = load_config(None, [])
    assert isinstance(cfg, PretrainConfig)
    assert (cfg.method.name, cfg.data.dataset, cfg.backbone.name) == (
        "simclr",
        "fashion_mnist",
        "convnet",
    )
    # the small-backbone CPU recipe fills the optimizer, crop scale and temperature
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay) == ("adamw", 1e-3, 1e-4)
    assert cfg.schedule.warmup_epochs == 0.25
    assert cfg.views.crop_scale_min == 0.2 and cfg.method.temperature == 0.2
    # with a ResNet the paper's recipe applies; its 10-epoch warm-up is capped at 10% of the run
    paper = load_config(None, ["backbone=resnet18"])
    assert (paper.optim.name, paper.optim.lr, paper.optim.weight_decay) == ("lars", 0.3, 1e-6)
    assert paper.schedule.warmup_epochs == pytest.approx(0.1 * paper.train.epochs)
    assert paper.views.crop_scale_min is None and paper.method.temperature is None
    assert cfg.train.device == "auto" and cfg.output.resume is True
    assert run_name(cfg) == "simclr-fashion_mnist"


def test_yaml_then_overrides_then_recipe(tmp_path) -> None:
    path = write(
        tmp_path,
        "method: moco_v2\noptim:\n  weight_decay: 5e-4\ntrain:\n  epochs: 3\n  batch_size: 64\n",
    )
    cfg = load_config(
        path, ["epochs=4", "optim.momentum=0.8", "data=./my images/", "backbone=resnet18"]
    )
    assert cfg.method.name == "moco_v2"  # YAML shorthand
    assert cfg.train.epochs == 4  # override beats the file
    assert cfg.train.batch_size == 64  # file beats the default
    assert cfg.optim.weight_decay == 5e-4  # the user's value beats the recipe
    assert (cfg.optim.name, cfg.optim.lr) == ("sgd", 0.03)  # MoCo v2 recipe
    assert cfg.optim.momentum == 0.8 and cfg.schedule.warmup_epochs == 0.0
    assert cfg.data.dataset == "./my images/"
    assert run_name(cfg) == "moco_v2-my_images"
    assert run_name(load_config(None, ["name=exp1"])) == "exp1"


SHORTHAND_VALUES = {
    "method": ("simsiam", "simsiam"),
    "backbone": ("resnet18", "resnet18"),
    "data": ("cifar10", "cifar10"),
    "views": ("byol", "byol"),
    "optim": ("sgd", "sgd"),
    "lr": ("0.5", 0.5),
    "epochs": ("2", 2),
    "budget": ("10min", "10min"),
    "batch_size": ("128", 128),
    "precision": ("bf16", "bf16"),
    "seed": ("3", 3),
    "devices": ("2", 2),
    "name": ("exp", "exp"),
    "resume": ("false", False),
}


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_every_shorthand_sets_its_key(alias: str) -> None:
    text, expected = SHORTHAND_VALUES[alias]
    # lr and weight decay given: with optim=adamw the SimCLR (LARS) recipe does not set them
    cfg = load_config(None, ["optim.lr=0.1", "optim.weight_decay=0.01", f"{alias}={text}"])
    section, leaf = ALIASES[alias].split(".")
    assert getattr(getattr(cfg, section), leaf) == expected
    assert getattr(getattr(load_config(None, []), section), leaf) != expected


def test_recipes_only_fill_none_and_resolve_false_keeps_them() -> None:
    raw = load_config(None, ["method=byol", "backbone=resnet18"], resolve=False)
    assert raw.optim.name is None and raw.optim.lr is None and raw.schedule.warmup_epochs is None
    cfg = resolve_defaults(raw)
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay) == ("lars", 0.2, 1.5e-6)
    assert raw.optim.name is None  # resolve_defaults returns a copy
    long_run = load_config(None, ["method=byol", "epochs=300", "backbone=resnet18"])
    assert long_run.schedule.warmup_epochs == 10.0
    mine = load_config(
        None, ["method=simsiam", "lr=0.1", "schedule.warmup_epochs=2", "backbone=resnet18"]
    )
    assert (mine.optim.name, mine.optim.lr, mine.schedule.warmup_epochs) == ("sgd", 0.1, 2.0)
    assert mine.optim.weight_decay == 1e-4
    # the recipe's lr and weight decay are for its own optimizer only
    msg = error(None, ["method=simsiam", "optim=lars", "lr=0.1", "backbone=resnet18"])
    assert "'optim.weight_decay' is not set and method 'simsiam' with optimizer 'lars'" in msg
    assert "optim.lr'" not in msg
    from twinview.methods import METHODS

    assert set(RECIPES) == set(METHODS)  # every method has the paper's recipe
    with pytest.raises(ConfigError, match=r"config key 'optim\.lr' is not set"):
        validate(raw)


def test_saved_config_loads_back_equal(tmp_path) -> None:
    cfg = load_config(
        None,
        ["method=moco_v3", "optim.betas=[0.9,0.95]", "data.root=/d", "seed=3", "backbone=resnet18"],
    )
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml", []) == cfg
    assert load_config(tmp_path / "config.yaml", [], resolve=False) == cfg
    assert "lr: 0.6" in to_yaml(cfg)


def test_help_lists_every_key_with_default_and_doc() -> None:
    text = config_help()
    keys = config_keys()
    assert len(keys) > 50
    for k in keys:
        assert k.help, f"{k.key} has no doc"
        default = "null" if k.default is None else str(k.default)
        line = next(ln for ln in text.splitlines() if ln.split()[:1] == [k.key])
        assert default in line and k.help in line and k.type in line
    for alias, key in ALIASES.items():
        assert f"{alias}=... means {key}=..." in text


# --- the promised error messages -----------------------------------------------------------------


def error(config_file: Path | None, overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(config_file, overrides)
    assert isinstance(info.value, ValueError)
    return str(info.value)


def test_unknown_key_names_closest_valid_key(tmp_path) -> None:
    msg = error(None, ["optim.lrr=0.1"])
    assert "unknown config key 'optim.lrr'" in msg
    assert "did you mean 'optim.lr'?" in msg and "twinview pretrain --help" in msg
    assert "did you mean 'optim.lr_scaling'?" in error(None, ["lr_scale=sqrt"])
    assert "did you mean 'train.batch_size'?" in error(None, ["train.batchsize=3"])
    path = write(tmp_path, "train:\n  epochs: 2\noptim:\n  lr: 0.1\n  wieght_decay: 0.1\n")
    msg = error(path, [])
    assert "unknown config key 'optim.wieght_decay'" in msg
    assert f"{path}, line 5" in msg and "did you mean 'optim.weight_decay'?" in msg


def test_wrong_type_names_key_type_and_value(tmp_path) -> None:
    msg = error(None, ["epochs=ten"])
    assert "config key 'train.epochs' expects int, got 'ten'" in msg
    assert "override 'epochs=ten'" in msg
    assert "config key 'output.resume' expects bool, got 'maybe'" in error(None, ["resume=maybe"])
    assert "'train.batch_size' expects int, got null" in error(None, ["batch_size=null"])
    path = write(tmp_path, "method:\n  temperature: warm\n")
    msg = error(path, [])
    assert "config key 'method.temperature' expects float | None, got 'warm'" in msg
    assert "line 2" in msg
    msg = error(write(tmp_path, "train: 5\n", "s.yaml"), [])
    assert "config key 'train' is a section" in msg and "train.epochs=" in msg


def test_bad_values_are_listed_together() -> None:
    msg = error(None, ["optim.name=adam"])
    assert "config key 'optim.name' must be one of sgd, adamw, lars; got 'adam'" in msg
    msg = error(None, ["data.val_fraction=1.5", "lr=-1", "precision=fp8", "method=swavv"])
    assert "config key 'data.val_fraction' must be in [0, 1); got 1.5" in msg
    assert "config key 'optim.lr' must be > 0; got -1.0" in msg
    assert "config key 'train.precision' must be one of auto, fp32, bf16, fp16; got 'fp8'" in msg
    assert re.search(r"'method.name' must be one of .*simclr.*; got 'swavv'", msg)
    assert "'backbone.name' must be one of convnet" in error(None, ["backbone=resnet9"])
    msg = error(None, ["batch_size=100", "devices=3"])
    assert "'train.batch_size' (100) must be divisible by train.devices x train.accumulate" in msg
    msg = error(None, ["epochs=2", "schedule.warmup_epochs=3"])
    assert "'schedule.warmup_epochs' (3) must not exceed train.epochs (2)" in msg
    assert "must be a plain folder name" in error(None, ["name=a/b"])
    assert "'optim.betas' must be two numbers" in error(None, ["optim.betas=[0.9]"])


def test_malformed_overrides_and_files(tmp_path) -> None:
    assert "override 'epochs 10' is not key=value" in error(None, ["epochs 10"])
    assert "config file '" in error(tmp_path / "nope.yaml", []) and "not found" in error(
        tmp_path / "nope.yaml", []
    )
    path = write(tmp_path, "train:\n  epochs: 3\n   batch_size: 4\n")
    msg = error(path, [])
    assert f"could not parse config file '{path}', line 3" in msg
    msg = error(write(tmp_path, "- a\n- b\n", "list.yaml"), [])
    assert "must hold a mapping of keys" in msg and "list.yaml" in msg


def test_default_config_object_is_valid() -> None:
    cfg = load_config(None, [])
    validate(cfg)
    broken = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, accumulate=0))
    with pytest.raises(ConfigError, match=r"'train\.accumulate' must be >= 1; got 0"):
        validate(broken)
