"""A run's data and the transforms that feed its frozen backbone.

:func:`build_data` turns a config into the run's train / validation / test splits, the same way
for pretraining, monitors, evaluation, embedding and reports; :func:`eval_transform` and
:func:`square_crop` bring images to the backbone's input as training did.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from twinview.config import DataConfig, PretrainConfig
from twinview.data import builtin_name, load_dataset, subset, train_val_split
from twinview.data.shards import ShardSource
from twinview.views.preview import square_crop as square_crop_image


@dataclass
class DataSplits:
    """Train (for pretraining), validation (held out of train) and test (reported only)."""

    train: Any
    val: Any
    test: Any | None
    channels: int
    image_size: int | None  # native side of in-memory images; None for folders of mixed sizes
    num_classes: int | None


def dataset_kwargs(d: DataConfig) -> dict[str, Any]:
    """``load_dataset`` arguments of a data config: root, options, channels, and for the user's
    own images (folders, file lists) the ``max_pixels`` limit."""
    kwargs: dict[str, Any] = {"root": d.root, **d.options}
    if d.channels is not None:
        kwargs["channels"] = d.channels
    if builtin_name(d.dataset) is None:
        kwargs.setdefault("max_pixels", d.max_pixels)
    return kwargs


def build_data(cfg: PretrainConfig) -> DataSplits:
    """The run's splits: ``train`` minus a validation part held out with a fixed seed (the same
    split for pretraining, monitors and evaluation), ``val``, and ``test`` when the dataset has
    one (an image folder without a ``test`` subfolder has none)."""
    d = cfg.data
    kwargs = dataset_kwargs(d)
    full = load_dataset(d.dataset, split="train", **kwargs)
    train_idx, val_idx = train_val_split(len(full), val_fraction=d.val_fraction, seed=0)
    try:
        test = load_dataset(d.dataset, split="test", **kwargs)
    except (ValueError, FileNotFoundError):
        test = None  # an image folder has no test split; reports then say "validation"
    images = getattr(full, "images", None)
    size = int(images.shape[-1]) if images is not None else None
    # Tar shards stay shards (streamed for training), restricted to each part's samples.
    part = full.select if isinstance(full, ShardSource) else functools.partial(subset, full)
    return DataSplits(
        train=part(train_idx),
        val=part(val_idx),
        test=test,
        channels=int(full.channels),
        image_size=size,
        num_classes=getattr(full, "num_classes", None),
    )


def view_size(cfg: PretrainConfig, data: DataSplits) -> int:
    """Side of the global views: ``views.size``, ``data.image_size``, the images' own, or 224."""
    return cfg.views.size or cfg.data.image_size or data.image_size or 224


def eval_transform(size: int, mean: tuple[float, ...], std: tuple[float, ...]):
    """float [0, 1] (B, C, H, W) -> normalised (B, C, size, size) for feature extraction."""
    mean_t = torch.tensor(mean).view(1, -1, 1, 1)
    std_t = torch.tensor(std).view(1, -1, 1, 1)

    def transform(x: Tensor) -> Tensor:
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
        return (x - mean_t.to(x.device)) / std_t.to(x.device)

    return transform


def square_crop(size: int) -> Callable[[Tensor], Tensor]:
    """uint8 (C, H, W) of any size -> (C, size, size): shorter side resized, centre crop
    (:func:`twinview.views.preview.square_crop`, the one the views preview uses).

    How images of a folder (mixed sizes) are brought to the backbone's input size for
    evaluation and embedding; a ``partial``, so DataLoader workers can pickle it.
    """
    return functools.partial(square_crop_image, side=size)


def sample_images(source: Any, n: int) -> Tensor | list[Tensor]:
    """The first ``n`` images of a split, for previews: a uint8 (n, C, H, W) slice of an
    in-memory source, or a list of decoded (C, H, W) images of a folder (sizes may differ)."""
    images = getattr(source, "images", None)
    if images is not None:
        return images[:n]
    return [source[i][0] for i in range(min(n, len(source)))]
