"""The run directory: one place for its rules, below ``train/``, ``eval/`` and ``report/``.

- :mod:`~twinview.run.directory`: which directory, one writer at a time (an OS lock);
- :mod:`~twinview.run.checkpoint`: atomic, verified checkpoints with the previous one kept;
- :mod:`~twinview.run.resume`: what a resume may change, every other change refused by name;
- :mod:`~twinview.run.data`: a config -> its data splits and the backbone's input transforms;
- :mod:`~twinview.run.reader`: a run directory -> its config, data and inputs (eval, embed,
  report, export).
"""

from twinview.run.checkpoint import (
    CheckpointError,
    last_checkpoint_path,
    load_checkpoint,
    load_latest,
    save_checkpoint,
    verify_checkpoint,
)
from twinview.run.data import DataSplits, build_data, eval_transform, square_crop, view_size
from twinview.run.directory import RunDirectory, RunLocked
from twinview.run.reader import backbone_input, read_run_config, run_config_path, run_folder
from twinview.run.resume import RESUMABLE, changed_keys, check_resume

__all__ = [
    "RESUMABLE",
    "CheckpointError",
    "DataSplits",
    "RunDirectory",
    "RunLocked",
    "backbone_input",
    "build_data",
    "changed_keys",
    "check_resume",
    "eval_transform",
    "last_checkpoint_path",
    "load_checkpoint",
    "load_latest",
    "read_run_config",
    "run_config_path",
    "run_folder",
    "save_checkpoint",
    "square_crop",
    "verify_checkpoint",
    "view_size",
]
