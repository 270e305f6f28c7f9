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
import warnings
from typing import Any

import torch
from torch import Tensor

from twinview.data.decode import DECODE_ERRORS, DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, decode_image
from twinview.data.shard_files import (
    INDEX_KIND,
    Member,
    expand_spec,
    index_path,
    is_shard_spec,
    read_shard,
    scan_shard,
    split_spec,
)

__all__ = [
    "INDEX_KIND",
    "ShardSource",
    "index_path",
    "is_shard_spec",
    "read_shard",
    "split_spec",
]

_IMAGE_SUFFIXES = tuple(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)


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
        self._members: dict[int, list[Member]] = {}
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
    def _scan(self, shard: int) -> list[Member]:
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
