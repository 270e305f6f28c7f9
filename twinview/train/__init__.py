"""Training engine: config, optimizers and schedules, checkpoints, RNG state, the training loop.

Unlike the core (``twinview.nn``, ``losses``, ``views``, ``methods``), this package may depend
on everything else; nothing in the core imports it.
"""

from twinview.train.checkpoint import (
    CheckpointError,
    find_resume,
    last_checkpoint_path,
    load_checkpoint,
    prepare_run_dir,
    save_checkpoint,
)
from twinview.train.config import (
    ConfigError,
    PretrainConfig,
    config_help,
    load_config,
    resolve_defaults,
    run_name,
    save_config,
    to_yaml,
    validate,
)
from twinview.train.optim import LARS, build_optimizer, scale_lr
from twinview.train.rng import capture_rng_state, restore_rng_state
from twinview.train.schedules import LRSchedule, apply_lr, warmup_cosine

__all__ = [
    "LARS",
    "CheckpointError",
    "ConfigError",
    "LRSchedule",
    "PretrainConfig",
    "apply_lr",
    "build_optimizer",
    "capture_rng_state",
    "config_help",
    "find_resume",
    "last_checkpoint_path",
    "load_checkpoint",
    "load_config",
    "prepare_run_dir",
    "resolve_defaults",
    "restore_rng_state",
    "run_name",
    "save_checkpoint",
    "save_config",
    "scale_lr",
    "to_yaml",
    "validate",
    "warmup_cosine",
]
