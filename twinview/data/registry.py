"""``load_dataset``: one entry point from a name or a path to a source."""

from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from twinview.data.cifar import CIFAR10, CIFAR100
from twinview.data.fashion_mnist import FashionMNIST
from twinview.data.folder import ImageFolder
from twinview.data.shards import ShardSource, is_shard_spec, split_spec
from twinview.data.stl10 import STL10
from twinview.data.synthetic import SyntheticShapes

DATASETS = ("fashion_mnist", "cifar10", "cifar100", "stl10", "synthetic")
SPLITS = ("train", "test", "unlabeled")
_ALIASES = {"fashion-mnist": "fashion_mnist", "fashionmnist": "fashion_mnist", "stl-10": "stl10"}
_SOURCES: dict[str, Callable[..., Any]] = {
    "fashion_mnist": FashionMNIST,
    "cifar10": CIFAR10,
    "cifar100": CIFAR100,
    "stl10": STL10,
    "synthetic": SyntheticShapes,
}
#: Arguments load_dataset sets itself, never options: the split, and where the files are.
_OWN_ARGUMENTS = ("split", "root")


def source_options(factory: Callable[..., Any], extra: Iterable[str] = ()) -> list[str]:
    """The keyword options a source's constructor takes (from its signature), plus ``extra``,
    less the ones :func:`load_dataset` passes itself."""
    names = [
        name
        for name, param in inspect.signature(factory).parameters.items()
        if param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)
        and name not in _OWN_ARGUMENTS
    ]
    return names + [name for name in extra if name not in names]


def check_options(dataset: str, options: Iterable[str], given: dict[str, Any]) -> None:
    """Raise a ValueError naming the first option in ``given`` that ``dataset`` does not take.

    Why: a misspelt ``data.options.sede=1`` would otherwise end in a TypeError traceback from
    deep inside a constructor (or, worse, be ignored); this names the option, the dataset, the
    valid options and the closest match.
    """
    options = list(options)
    for key in given:
        if key in options:
            continue
        close = difflib.get_close_matches(key, options, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(
            f"dataset {dataset} has no option {key!r}{hint}; its options are: "
            f"{', '.join(options) or 'none'} (set them as data.options.<name>=...)"
        )


def builtin_name(name_or_path: str | os.PathLike[str]) -> str | None:
    """The built-in dataset ``name_or_path`` names (aliases resolved), or None when it is a path
    to the user's own images (a folder or file list of that name wins over a built-in name)."""
    key = str(name_or_path)
    name = _ALIASES.get(key.lower(), key.lower())
    return name if name in DATASETS and not Path(key).exists() else None


def load_dataset(
    name_or_path: str | os.PathLike[str] = "fashion_mnist",
    *,
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> Any:
    """A source for a built-in dataset or for the user's images.

    Args:
        name_or_path: ``"fashion_mnist"`` (default), ``"cifar10"``, ``"cifar100"``, ``"stl10"``,
            ``"synthetic"``; a pattern of WebDataset tar shards (``dir/train-{000000..000127}.tar``)
            or their index (``dir/train-index.json``, see :mod:`twinview.data.shards`); anything
            else is a path to an image folder or to a ``.txt`` / ``.csv`` file list.
        split: ``"train"``, ``"test"``, or ``"unlabeled"`` (STL-10). The validation split is
            carved out of ``"train"`` by :func:`~twinview.data.splits.train_val_split`. For a
            folder, ``split`` picks the subfolder of that name when there is one (``images/test``);
            ``"train"`` falls back to the folder itself.
        root: where a built-in dataset's files are (default: its search order / cache folder).
        kwargs: passed on to the source (``download``, ``label_type``, ``n``, ``size``, ``seed``,
            ``labeled``, ``channels``, ``verify``, ``max_pixels``, ...); an option the source does
            not take raises a ValueError that lists the ones it does. ``channels`` (1 or 3) works
            for every dataset: built-in grayscale images are replicated to RGB, RGB ones reduced
            to luminance (ITU-R 601 weights, as Pillow's ``convert("L")``).
    """
    if split not in SPLITS:
        hint = (
            "; the validation split comes from train via twinview.data.train_val_split"
            if split in ("val", "valid", "validation")
            else ""
        )
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}{hint}")
    key = str(name_or_path)
    name = builtin_name(key)
    if name is not None:
        if split == "unlabeled" and name != "stl10":
            raise ValueError(f"split 'unlabeled' exists only for stl10, not {name}")
        extra = () if name == "synthetic" else ("channels",)  # see with_channels
        check_options(repr(name), source_options(_SOURCES[name], extra), kwargs)
        if name == "synthetic":
            return SyntheticShapes(split=split, **kwargs)
        channels = kwargs.pop("channels", None)
        if name == "fashion_mnist":
            source = FashionMNIST(split, root=root, **kwargs)
        elif name == "cifar10":
            source = CIFAR10(split, root=root, **kwargs)
        elif name == "cifar100":
            source = CIFAR100(split, root=root, **kwargs)
        else:
            source = STL10(split, root=root, **kwargs)
        return source if channels is None else with_channels(source, channels)
    if is_shard_spec(key):
        return _load_shards(key, split, kwargs)
    path = Path(key).expanduser()
    if not path.exists():
        raise ValueError(
            f"unknown dataset {key!r}: not one of {', '.join(DATASETS)}, and no file or folder "
            "of that name exists. Pass a built-in name, or the path to a folder of images "
            "(or a .txt / .csv file list)."
        )
    kind = "a file list" if path.is_file() else "an image folder"
    check_options(f"{key!r} ({kind})", source_options(ImageFolder), kwargs)
    if path.is_file():
        if path.suffix.lower() not in (".txt", ".csv"):
            raise ValueError(f"{path}: a file list must end in .txt or .csv")
        return ImageFolder(path, **kwargs)
    if (path / split).is_dir():
        return ImageFolder(path / split, **kwargs)
    if split != "train":
        raise FileNotFoundError(
            f"{path} has no {split!r} subfolder; a folder's train split is the folder itself, "
            f"other splits live in {path / split}"
        )
    return ImageFolder(path, **kwargs)


def _load_shards(spec: str, split: str, kwargs: dict[str, Any]) -> ShardSource:
    """Tar shards: the pattern is the train split; ``test`` is the set beside it with ``test``
    in place of ``train`` in its name (``test-index.json`` or ``test-*.tar``)."""
    check_options(
        f"{spec!r} (tar shards)", [o for o in source_options(ShardSource) if o != "keep"], kwargs
    )
    if split != "train":
        other = split_spec(spec, split)
        if other is None:
            raise FileNotFoundError(
                f"{spec}: no {split} shards beside these (looked for a {split}-index.json or "
                f"{split}-*.tar next to them, named like the train set with {split!r} for 'train')"
            )
        spec = other
    return ShardSource(spec, **kwargs)


def with_channels(source: Any, channels: int) -> Any:
    """Convert an in-memory source's ``images`` to ``channels`` (1 or 3), in place."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    images = source.images
    if images.shape[1] == channels:
        return source
    if channels == 3:
        source.images = images.expand(-1, 3, -1, -1).contiguous()
    else:
        # Pillow's fixed-point ITU-R 601 luma, so folders and built-ins agree bit for bit.
        weights = torch.tensor([19595, 38470, 7471], dtype=torch.int32).view(1, 3, 1, 1)
        luminance = (images.to(torch.int32) * weights).sum(dim=1, keepdim=True)
        source.images = ((luminance + 0x8000) >> 16).to(torch.uint8)
    return source
