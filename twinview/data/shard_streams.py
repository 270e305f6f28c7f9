"""What the workers of a :class:`~twinview.data.shard_loader.ShardLoader` run: the epoch's
deal of shards to processes, and per stream the shard reading, shuffle buffer, validation filter,
decoding and per-sample geometry, sent to the main process in chunks."""

from __future__ import annotations

import random
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import IterableDataset, get_worker_info

from twinview.data.decode import DECODE_ERRORS
from twinview.data.folder_loader import GeometryFn, collate_views
from twinview.data.sampling import mix_seed
from twinview.data.shards import ShardSource, read_shard

_SHARD_ORDER = 0x5A4D  # salt: the shard permutation's seed differs from the sample order's


def deal_shards(
    num_shards: int, *, seed: int, epoch: int, shuffle: bool, rank: int, world_size: int
) -> list[int]:
    """This process's shards for one epoch: a permutation seeded (seed, epoch), dealt
    round-robin (``order[rank::world_size]``)."""
    if shuffle:
        g = torch.Generator().manual_seed(mix_seed(seed, epoch, _SHARD_ORDER))
        order = torch.randperm(num_shards, generator=g).tolist()
    else:
        order = list(range(num_shards))
    return order[rank::world_size]


@dataclass
class Item:
    views: list[Tensor]
    label: int
    index: int
    raw_position: int


class ShardStreams(IterableDataset):
    """Runs in the workers: chunks ``{"stream", "views", "labels", "index", "raw", "failed",
    "done"}`` of decoded samples from this worker's streams, interleaved chunk by chunk."""

    def __init__(
        self,
        source: ShardSource,
        streams: list[list[int]],
        skip: list[int],
        *,
        geometry: GeometryFn | None,
        seed: int,
        epoch: int,
        rank: int,
        shuffle_buffer: int,
        chunk_size: int,
    ) -> None:
        self.source, self.streams, self.skip, self.geometry = source, streams, skip, geometry
        self.seed, self.epoch, self.rank = seed, epoch, rank
        self.shuffle_buffer, self.chunk_size = shuffle_buffer, chunk_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        wid, workers = (0, 1) if info is None else (info.id, info.num_workers)
        mine = [self._chunks(k) for k in range(len(self.streams)) if k % workers == wid]
        while mine:
            for chunks in list(mine):
                chunk = next(chunks, None)
                if chunk is None:
                    mine.remove(chunks)
                else:
                    yield chunk

    def _raw(self, k: int) -> Iterator[tuple[int, dict[str, Any], str]]:
        """(position in this source, raw sample, name) of stream k's shards, validation left out."""
        keep = self.source.keep
        for shard in self.streams[k]:
            start, count = self.source.offsets[shard], self.source.counts[shard]
            path = self.source.shards[shard]
            # This shard's samples in this source: a slice of the sorted ``keep``.
            lo, hi = (int(torch.searchsorted(keep, x)) for x in (start, start + count))
            local_of = {g: lo + j for j, g in enumerate(keep[lo:hi].tolist())}
            for position, sample in enumerate(read_shard(path)):
                if position >= count:
                    warnings.warn(
                        f"{path} holds more than the {count} samples its index says; the rest "
                        "are left out (rewrite the index with twinview shards)",
                        stacklevel=2,
                    )
                    break
                local = local_of.get(start + position)
                if local is not None:
                    yield local, sample, self.source.sample_name(shard, sample["__key__"])

    def _shuffled(self, k: int) -> Iterator[tuple[int, dict[str, Any], str]]:
        """Stream k through a shuffle buffer: fill it, then emit a random slot and refill it."""
        raw = self._raw(k)
        if self.shuffle_buffer <= 1:
            yield from raw
            return
        rng = random.Random(mix_seed(self.seed, self.epoch, self.rank, k))
        buffer: list[tuple[int, dict[str, Any], str]] = []
        for item in raw:
            if len(buffer) < self.shuffle_buffer:
                buffer.append(item)
                continue
            slot = rng.randrange(len(buffer))
            yield buffer[slot]
            buffer[slot] = item
        rng.shuffle(buffer)
        yield from buffer

    def _chunks(self, k: int) -> Iterator[dict[str, Any]]:
        items: list[tuple[list[Tensor], int, int, list[str]]] = []
        raw_positions: list[int] = []
        failed: list[str] = []
        for raw_position, (local, sample, name) in enumerate(self._shuffled(k)):
            if raw_position < self.skip[k]:
                continue  # taken by batches before the checkpoint
            try:
                image, label = self.source.decode(sample, name)
            except DECODE_ERRORS as error:
                failed.append(f"{name} ({error})")
                continue
            if self.geometry is None:
                views = [image]
            else:
                g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, local))
                views = self.geometry(image, g)
            items.append((views, label, local, []))
            raw_positions.append(raw_position)
            if len(items) == self.chunk_size:
                yield self._pack(k, items, raw_positions, failed, done=False)
                items, raw_positions, failed = [], [], []
        yield self._pack(k, items, raw_positions, failed, done=True)

    @staticmethod
    def _pack(k: int, items: list, raw_positions: list[int], failed: list[str], done: bool):
        views, labels, index, _ = collate_views(items) if items else ([], None, None, [])
        return {
            "stream": k,
            "views": views,
            "labels": labels,
            "index": index,
            "raw": raw_positions,
            "failed": failed,
            "done": done,
        }
