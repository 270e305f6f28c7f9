"""Configuration of a pretraining run: the typed schema, recipes, loading and checks.

Below ``train/``, ``eval/``, ``report/`` and the run-directory module: everything that reads or
writes a run's ``config.yaml`` uses these functions, and nothing here imports training code.
"""

from twinview.config.checks import validate
from twinview.config.load import (
    config_from_args,
    config_from_yaml,
    load_config,
    save_config,
    to_yaml,
)
from twinview.config.recipes import RECIPES, SMALL_BACKBONES, resolve_defaults, run_name
from twinview.config.schema import (
    ALIASES,
    CHOICES,
    HELP_HINT,
    ConfigError,
    DataConfig,
    MonitorConfig,
    PretrainConfig,
    config_help,
    config_keys,
)

__all__ = [
    "ALIASES",
    "CHOICES",
    "HELP_HINT",
    "RECIPES",
    "SMALL_BACKBONES",
    "ConfigError",
    "DataConfig",
    "MonitorConfig",
    "PretrainConfig",
    "config_from_args",
    "config_from_yaml",
    "config_help",
    "config_keys",
    "load_config",
    "resolve_defaults",
    "run_name",
    "save_config",
    "to_yaml",
    "validate",
]
