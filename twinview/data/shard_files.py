"""Tar shard files: what a ``data=`` pattern names, their wids index, and reading a shard.

The pattern (``dir/train-{000000..000127}.tar``) is brace-expanded; the index
``<prefix>-index.json`` beside the shards (wids format: ``{"shardlist": [{"url", "nsamples"}]}``)
gives sample counts without opening the shards. A shard is read either streamed, with the
webdataset library's tar iterators (:func:`read_shard`, for training), or through a table of
member offsets from its tar headers (:func:`scan_shard`, for random access).
"""

from __future__ import annotations

import json
import os
import re
import tarfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import braceexpand
from webdataset.tariterators import base_plus_ext, group_by_keys, tar_file_iterator

INDEX_KIND = "wids-shard-index-v1"
_META = re.compile(r"__[^/]*__($|/)")  # members webdataset's iterator skips, skipped here too


def is_shard_spec(spec: str | os.PathLike[str]) -> bool:
    """Whether ``data=`` names tar shards (a ``*.tar`` pattern) or an index (``*-index.json``)."""
    name = str(spec).lower()
    return name.endswith(".tar") or name.endswith("-index.json")


def index_path(spec: str | os.PathLike[str]) -> Path:
    """Where the index of a pattern lives: ``dir/train-{0..9}.tar`` -> ``dir/train-index.json``."""
    spec = str(spec)
    if spec.lower().endswith("-index.json"):
        return Path(spec).expanduser()
    folder, name = os.path.split(spec)
    prefix = re.split(r"[{\[]", name)[0].removesuffix(".tar").rstrip("-_.") or "shards"
    return Path(folder or ".").expanduser() / f"{prefix}-index.json"


def _read_index(path: Path) -> dict[str, Any]:
    try:
        index = json.loads(path.read_text())
        entries = index["shardlist"]
        counts = {Path(e["url"]).name: int(e["nsamples"]) for e in entries}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"{path}: not a readable shard index ({type(error).__name__}: {error}); it should "
            'hold {"shardlist": [{"url": "train-000000.tar", "nsamples": 5000}, ...]}. Delete it '
            "to count samples from the shards themselves, or rewrite it with twinview shards"
        ) from error
    index["counts"] = counts
    index["urls"] = [path.parent / e["url"] for e in entries]
    return index


def expand_spec(spec: str | os.PathLike[str]) -> tuple[list[Path], dict[str, Any] | None]:
    """The shard files a spec names, in order, and the index found for them (or None).

    A brace pattern (``train-{000000..000127}.tar``, ``{a,b}.tar``) is expanded; every file must
    exist. An index file names its shards itself.
    """
    spec = str(spec)
    index_file = index_path(spec)
    index = _read_index(index_file) if index_file.is_file() else None
    if spec.lower().endswith("-index.json"):
        if index is None:
            raise FileNotFoundError(f"shard index {index_file} does not exist")
        paths = list(index["urls"])
    else:
        paths = [Path(p).expanduser() for p in braceexpand.braceexpand(spec)]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{spec}: {len(missing)} of {len(paths)} shard(s) not found, first {missing[0]}. "
            "Check the pattern (e.g. data=shards/train-{000000..000127}.tar) or write shards "
            "from a folder with: twinview shards FOLDER OUT/"
        )
    if index is not None and any(p.name not in index["counts"] for p in paths):
        absent = next(p.name for p in paths if p.name not in index["counts"])
        warnings.warn(
            f"{index_file} does not list {absent}; counting samples from the tar headers instead",
            stacklevel=2,
        )
        index = None
    return paths, index


def split_spec(spec: str | os.PathLike[str], split: str) -> str | None:
    """The shard set of another split beside a train set: ``dir/train-{..}.tar`` ->
    ``dir/test-index.json`` (or the ``dir/test-*.tar`` files); None when there is none."""
    index = index_path(spec)
    prefix = index.name.removesuffix("-index.json")
    if "train" not in prefix:
        return None
    other = prefix.replace("train", split)
    if (index.parent / f"{other}-index.json").is_file():
        return str(index.parent / f"{other}-index.json")
    files = [str(f) for f in sorted(index.parent.glob(f"{other}-*.tar"))]
    if len(files) < 2:
        return files[0] if files else None
    return "{" + ",".join(files) + "}"


class Member:
    __slots__ = ("key", "parts")

    def __init__(self, key: str) -> None:
        self.key = key
        self.parts: dict[str, tuple[int, int]] = {}  # suffix -> (data offset, size)


def scan_shard(path: Path) -> list[Member]:
    """The samples of one shard from its tar headers only (seeks past the data): per sample its
    key and ``{suffix: (offset, size)}``, grouped exactly as webdataset's iterator groups them."""
    samples: list[Member] = []
    with tarfile.open(path, mode="r:") as tar:
        for info in tar:
            if not info.isreg() or _META.match(info.name):
                continue
            key, suffix = base_plus_ext(info.name)
            if key is None:
                continue
            if not samples or samples[-1].key != key:
                samples.append(Member(key))
            samples[-1].parts[suffix.lower()] = (info.offset_data, info.size)
    return samples


def read_shard(path: Path) -> Iterator[dict[str, Any]]:
    """Raw samples (``{"__key__": ..., suffix: bytes}``) of a shard, streamed in tar order with
    webdataset's iterators. A truncated or corrupt tar ends with a warning naming it."""
    with path.open("rb") as stream:
        members = tar_file_iterator(stream)

        def with_url() -> Iterator[dict[str, Any]]:
            try:
                for member in members:
                    member["__url__"] = str(path)
                    yield member
            except (tarfile.TarError, OSError, EOFError) as error:
                warnings.warn(
                    f"shard {path} is damaged ({type(error).__name__}: {error}); its remaining "
                    "samples are skipped",
                    stacklevel=2,
                )

        yield from group_by_keys(with_url())
