"""Reading a finished (or running) run: its config, its data, and how to feed its backbone.

``twinview eval``, ``embed``, ``report`` and ``export`` start from a path the user gives: a run
directory, or a backbone / checkpoint file inside one. These functions turn it into the run's
``config.yaml`` (validated, errors naming the file), its splits (:func:`~twinview.run.data.
build_data`, so the validation split is the one pretraining held out) and the input transforms
its backbone was trained with. Weights are read by :func:`twinview.export.load_backbone`, which
picks the freshest file and never executes code from it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor

from twinview.config import ConfigError, PretrainConfig, load_config
from twinview.run.data import eval_transform, square_crop

CONFIG = "config.yaml"


def run_folder(run: str | Path) -> Path:
    """The run directory of ``run``: itself, or the run a backbone / checkpoint file is in."""
    run = Path(run).expanduser()
    folder = run if run.is_dir() else run.parent
    if folder.name == "checkpoints" and not (folder / CONFIG).is_file():
        folder = folder.parent
    return folder


def run_config_path(run: str | Path) -> Path | None:
    """The ``config.yaml`` of a run directory (or of the run a file is in), or None."""
    path = run_folder(run) / CONFIG
    return path if path.is_file() else None


def read_run_config(run: str | Path) -> PretrainConfig:
    """The run's saved config; :class:`ConfigError` naming the file if missing or invalid."""
    path = run_config_path(run)
    if path is None:
        raise ConfigError(
            f"'{run}' is not a twinview run directory (no {CONFIG}); pass runs/<name>, or name "
            "the dataset with data=..."
        )
    try:
        return load_config(path)
    except ConfigError as err:
        raise ConfigError(f"the run's {path} is not a valid twinview config: {err}") from err


def backbone_input(
    spec: dict[str, Any], source: Any
) -> tuple[Callable[[Tensor], Tensor] | None, Callable[[Tensor], Tensor]]:
    """How images of ``source`` reach a backbone with ``spec``, as in training.

    Returns ``(per_image, normalize)``: ``per_image`` brings a folder's uint8 (C, H, W) image of
    any size to the spec's square input (shorter side resized, centre crop; None for in-memory
    sources, whose images share one size); ``normalize`` maps float [0, 1] batches to the
    backbone's normalised input at ``image_size``.
    """
    c = int(spec["in_channels"])
    size = int(spec.get("image_size") or 224)
    mean = tuple(spec.get("mean") or [0.0] * c)
    std = tuple(spec.get("std") or [1.0] * c)
    per_image = None if hasattr(source, "images") else square_crop(size)
    return per_image, eval_transform(size, mean, std)
