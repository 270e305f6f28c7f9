"""WebDataset-style tar shards: ``data=path/train-{000000..000127}.tar``.

A shard is a plain tar file whose members are grouped into samples by their name up to the first
dot (WebDataset's convention): ``000123.jpg`` + ``000123.cls`` is one sample with an image and a
class id. An image member (any of :data:`~twinview.data.decode.IMAGE_EXTENSIONS`) is required;
the label comes from ``.cls`` (an integer) or else from a ``.json`` member's ``"label"`` (an
integer, or a class name listed in the index), else the sample is unlabeled (-1). Members are
read with the webdataset library's tar iterators, so shards written by other WebDataset tools
work too.

Sample counts come from a wids shard index (``<prefix>-index.json`` next to the shards, written by
``twinview shards``; ``{"shardlist": [{"url": ..., "nsamples": ...}], ...}``) or, without one,
from a scan of the tar headers (nothing is decoded). A sample's *global index* is its position in
the concatenation of the shards in the order the pattern names them; the validation split is held
out by global index exactly as for folders (:func:`~twinview.data.splits.train_val_split`), so
every shard keeps feeding training and validation costs no extra shards.

Two ways to read: training streams whole shards sequentially
(:class:`~twinview.data.shard_loader.ShardLoader`: split by process and worker, shuffle buffer,
exact resume); evaluation and previews use random access (``source[i]``) through a per-shard table
of member offsets, built on first use by a header scan. Local files only (no URLs or pipes).
"""

from __future__ import annotations

import bisect
import io
import json
import os
import re
import tarfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import braceexpand
import torch
from torch import Tensor
from webdataset.tariterators import base_plus_ext, group_by_keys, tar_file_iterator

from twinview.data.decode import DECODE_ERRORS, DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, decode_image

INDEX_KIND = "wids-shard-index-v1"
_IMAGE_SUFFIXES = tuple(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)
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


class _Member:
    __slots__ = ("key", "parts")

    def __init__(self, key: str) -> None:
        self.key = key
        self.parts: dict[str, tuple[int, int]] = {}  # suffix -> (data offset, size)


def scan_shard(path: Path) -> list[_Member]:
    """The samples of one shard from its tar headers only (seeks past the data): per sample its
    key and ``{suffix: (offset, size)}``, grouped exactly as webdataset's iterator groups them."""
    samples: list[_Member] = []
    with tarfile.open(path, mode="r:") as tar:
        for info in tar:
            if not info.isreg() or _META.match(info.name):
                continue
            key, suffix = base_plus_ext(info.name)
            if key is None:
                continue
            if not samples or samples[-1].key != key:
                samples.append(_Member(key))
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


class ShardSource:
    """Samples of tar shards, with the source interface (``len``, ``source[i]``, ``labels``).

    Args:
        spec: a shard pattern or index (see module docstring).
        channels: 3 (RGB) or 1 (luminance).
        max_pixels: largest ``width * height`` decoded (see :mod:`twinview.data.decode`).
        keep: sorted global indices this source is made of (the train or validation part);
            None: all samples.
        shuffle_buffer: raw samples each training stream holds for shuffling
            (``data.options.shuffle_buffer``; memory: that many encoded files per worker).

    Attributes: ``shards`` (paths), ``counts`` (samples per shard), ``offsets`` (global index of
    each shard's first sample), ``classes`` (from the index, or None), ``keep`` (long (n,) global
    indices), ``skipped`` (``[(name, reason)]`` of samples that failed to decode here).
    """

    def __init__(
        self,
        spec: str | os.PathLike[str],
        *,
        channels: int = 3,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        keep: Tensor | None = None,
        shuffle_buffer: int = 1000,
        warn: bool = True,
    ) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if shuffle_buffer < 1:
            raise ValueError(
                f"shuffle_buffer must be a positive number of samples, got {shuffle_buffer} "
                "(1: no shuffling within shards); set data.options.shuffle_buffer=..."
            )
        self.spec, self.channels, self.max_pixels, self.warn = str(spec), channels, max_pixels, warn
        self.shuffle_buffer = shuffle_buffer
        self.shards, index = expand_spec(spec)
        self._members: dict[int, list[_Member]] = {}
        if index is not None:
            self.counts = [index["counts"][p.name] for p in self.shards]
            self.classes: list[str] | None = index.get("classes")
        else:
            self.counts = [len(self._scan(i)) for i in range(len(self.shards))]
            self.classes = None
        self.offsets = [0]
        for count in self.counts:
            self.offsets.append(self.offsets[-1] + count)
        total = self.offsets[-1]
        if total == 0:
            raise ValueError(f"{spec}: the shards hold no samples")
        self.keep = torch.arange(total) if keep is None else torch.as_tensor(keep).long()
        self.skipped: list[tuple[str, str]] = []
        self._labels: Tensor | None = None

    def select(self, keep: Tensor) -> ShardSource:
        """The same shards restricted to the sorted global indices ``keep``."""
        other = object.__new__(ShardSource)
        other.__dict__.update(self.__dict__)
        other.keep, other._labels, other.skipped = torch.as_tensor(keep).long(), None, []
        return other

    @property
    def num_classes(self) -> int | None:
        return None if self.classes is None else len(self.classes)

    def __len__(self) -> int:
        return int(self.keep.numel())

    def __repr__(self) -> str:
        return f"ShardSource({self.spec!r}, shards={len(self.shards)}, n={len(self)})"

    # -- decoding -------------------------------------------------------------------------------
    def sample_name(self, shard: int, key: str) -> str:
        return f"{self.shards[shard]}:{key}"

    def label_of(self, sample: dict[str, Any]) -> int:
        """The class id of a raw sample (-1 when unlabeled)."""
        if "cls" in sample:
            return int(bytes(sample["cls"]).decode().strip())
        if "json" in sample:
            label = json.loads(sample["json"]).get("label", -1)
            if isinstance(label, str):
                if not self.classes or label not in self.classes:
                    raise ValueError(f"class name {label!r} is not in the index's classes")
                return self.classes.index(label)
            return int(label)
        return -1

    def decode(self, sample: dict[str, Any], name: str = "sample") -> tuple[Tensor, int]:
        """A raw sample -> (uint8 (C, H, W), label); raises DECODE_ERRORS on bad data."""
        suffix = next((s for s in _IMAGE_SUFFIXES if s in sample), None)
        if suffix is None:
            found = sorted(k for k in sample if not k.startswith("__"))
            raise ValueError(f"no image member (looked for {', '.join(_IMAGE_SUFFIXES)}; {found})")
        data = io.BytesIO(sample[suffix])
        data.name = f"{name}.{suffix}"  # named in decode errors
        try:
            image = decode_image(data, channels=self.channels, max_pixels=self.max_pixels)
        except DECODE_ERRORS as error:  # Pillow names a file object by its repr: use the member
            message = re.sub(r"<_io\.BytesIO object at 0x[0-9a-f]+>", data.name, str(error))
            raise ValueError(f"{type(error).__name__}: {message}") from error
        return image, self.label_of(sample)

    # -- random access --------------------------------------------------------------------------
    def _scan(self, shard: int) -> list[_Member]:
        if shard not in self._members:
            self._members[shard] = scan_shard(self.shards[shard])
        return self._members[shard]

    def locate(self, global_index: int) -> tuple[int, int]:
        """(shard, position within the shard) of a global index."""
        shard = bisect.bisect_right(self.offsets, global_index) - 1
        return shard, global_index - self.offsets[shard]

    def _raw(
        self, global_index: int, only: tuple[str, ...] | None = None
    ) -> tuple[dict[str, Any], str]:
        """The raw sample at a global index (only the members ``only``, when given) and its name."""
        shard, position = self.locate(global_index)
        members = self._scan(shard)
        if position >= len(members):
            raise ValueError(
                f"{self.shards[shard]} holds {len(members)} samples, but its index says "
                f"{self.counts[shard]}; rewrite the shards (twinview shards) or delete the index"
            )
        member = members[position]
        sample: dict[str, Any] = {"__key__": member.key}
        with self.shards[shard].open("rb") as f:
            for suffix, (offset, size) in member.parts.items():
                if only is None or suffix in only:
                    f.seek(offset)
                    sample[suffix] = f.read(size)
        return sample, self.sample_name(shard, member.key)

    def load(self, index: int) -> tuple[Tensor, int, list[str]]:
        """Decode sample ``index`` of this source; a bad sample is warned about by name and
        replaced by the next readable one (as in :meth:`ImageFolder.load`)."""
        failed: list[str] = []
        n = len(self)
        for step in range(n):
            global_index = int(self.keep[(index + step) % n])
            sample, name = self._raw(global_index)
            try:
                image, label = self.decode(sample, name)
                return image, label, failed
            except DECODE_ERRORS as error:
                self.skipped.append((name, str(error)))
                if self.warn:
                    warnings.warn(f"skipping sample {name}: {error}", stacklevel=2)
                failed.append(name)
        raise RuntimeError(f"{self.spec}: none of the {n} samples could be decoded")

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image, label, _ = self.load(index)
        return image, label

    @property
    def paths(self) -> list[str]:
        """``<shard>:<key>`` of each sample (what ``twinview embed`` writes as ``path``); from the
        tar headers, on first access."""
        names = []
        for global_index in self.keep.tolist():
            shard, position = self.locate(global_index)
            names.append(self.sample_name(shard, self._scan(shard)[position].key))
        return names

    @property
    def labels(self) -> Tensor:
        """long (n,) class ids of this source's samples (-1: unlabeled); reads only the small
        label members, on first access."""
        if self._labels is None:
            labels = []
            for global_index in self.keep.tolist():
                sample, _ = self._raw(global_index, only=("cls", "json"))
                try:
                    labels.append(self.label_of(sample))
                except ValueError:
                    labels.append(-1)
            self._labels = torch.tensor(labels, dtype=torch.long)
        return self._labels
