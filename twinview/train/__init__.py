"""Training engine: optimizers and schedules, RNG state, monitors, the training loop.

The config lives in :mod:`twinview.config`, the run directory (lock, checkpoints, resume
rules) in :mod:`twinview.run`; both sit below this package, so eval and report never import it.

Unlike the core (``twinview.nn``, ``losses``, ``views``, ``methods``), this package may depend
on everything else; nothing in the core imports it.
"""

from twinview.train.optim import LARS, build_optimizer, scale_lr
from twinview.train.rng import capture_rng_state, restore_rng_state
from twinview.train.schedules import LRSchedule, apply_lr, warmup_cosine

__all__ = [
    "LARS",
    "LRSchedule",
    "apply_lr",
    "build_optimizer",
    "capture_rng_state",
    "restore_rng_state",
    "scale_lr",
    "warmup_cosine",
]
