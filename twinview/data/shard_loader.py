"""Training batches streamed from tar shards: split by process and worker, shuffled with a
buffer, resumable to the exact sample within an epoch.

How an epoch is read (every choice a pure function of the seed and the epoch, so all processes
agree without talking):

1. The shards are permuted (seed, epoch) and dealt round-robin to the processes: process ``r``
   reads shards ``order[r::world_size]``; no two processes read the same shard.
2. A process splits its shards into ``K`` streams (``K`` = DataLoader workers, at least 1), stream
   ``k`` taking every K-th shard. A worker reads its streams' shards sequentially (webdataset's
   tar iterator), passes the raw samples through a shuffle buffer seeded (seed, epoch, rank, k),
   leaves out the validation samples, decodes and applies the geometric view ops per sample
   (seeded by the sample, as for folders), and sends chunks of samples to the main process.
3. The main process takes one sample from each stream in turn (round robin, an exhausted stream
   drops out) into batches, so the order does not depend on worker timing; photometric ops run
   batched on the device.

Every process yields the same number of batches per epoch (DDP needs it): what the smallest
possible deal of shards holds. With equal shards and a shard count divisible by the number of
processes, each training image is seen exactly once per epoch; otherwise the few samples beyond
that count wait for another epoch's deal.

Resume: the state holds, per stream, how many raw samples its batches took and whose turn is
next; a resumed worker fast-forwards through those (reading, not decoding), so the continued
epoch is the uninterrupted one sample for sample, even with another ``num_workers`` (the epoch
keeps its saved stream count; the new one applies from the next epoch).
"""

from __future__ import annotations

import random
import warnings
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from twinview.data.batch import Batch
from twinview.data.decode import DECODE_ERRORS
from twinview.data.folder_loader import GeometryFn, PhotometryFn, collate_views
from twinview.data.sampling import EpochPosition, make_generator, mix_seed, num_batches
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
class _Item:
    views: list[Tensor]
    label: int
    index: int
    raw_position: int


class _ShardStreams(IterableDataset):
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


class ShardLoader(EpochPosition):
    """Batches of (views, labels, index) streamed from a :class:`ShardSource`; the interface of
    :class:`~twinview.data.folder_loader.FolderLoader` (epochs, ``state_dict``, exact resume).

    Args:
        source: the training part of the shards (``ShardSource.select`` of the train indices).
        shuffle_buffer: raw samples held per stream for shuffling (memory: this many encoded
            files per worker); 1: the shards' own order (still a new shard order each epoch).
            Default: the source's ``shuffle_buffer``.
        chunk_size: samples a worker sends at once.
        Other arguments: as for FolderLoader.
    """

    def __init__(
        self,
        source: ShardSource,
        *,
        batch_size: int,
        geometry: GeometryFn | None,
        photometry: PhotometryFn | None,
        device: torch.device | str = "cpu",
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 2,
        shuffle_buffer: int | None = None,
        chunk_size: int = 16,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        num_shards = len(source.shards)
        if num_shards < world_size:
            raise ValueError(
                f"{source.spec}: {num_shards} shard(s) cannot feed {world_size} processes (each "
                "reads whole shards); write more, smaller shards: twinview shards FOLDER OUT/ "
                "--shard-size N"
            )
        self.source, self.batch_size, self.seed, self.shuffle = source, batch_size, seed, shuffle
        self.geometry, self.photometry, self.device = geometry, photometry, torch.device(device)
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.num_workers, self.shuffle_buffer, self.chunk_size = (
            num_workers,
            (source.shuffle_buffer if shuffle_buffer is None else shuffle_buffer) if shuffle else 1,
            chunk_size,
        )
        self.epoch, self.position = 0, 0
        self._streams: dict[str, Any] | None = None  # per-stream progress within the epoch
        self.skipped_files: list[str] = []
        # Samples of this source in each shard (the validation part left out).
        bounds = torch.tensor(source.offsets)
        self._kept = torch.bincount(
            torch.searchsorted(bounds, source.keep, right=True) - 1, minlength=num_shards
        ).tolist()
        if len(self) == 0:
            raise ValueError(
                f"{source.spec}: {len(source)} training samples in {num_shards} shard(s) over "
                f"{world_size} process(es) give no batch of {batch_size}; lower batch_size"
            )

    def __len__(self) -> int:
        """Batches per epoch on every process: what the smallest possible deal holds."""
        per_process = len(self.source.shards) // self.world_size
        smallest = sum(sorted(self._kept)[:per_process])
        return num_batches(smallest, self.batch_size, self.drop_last)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"epoch": self.epoch, "position": self.position}
        if self._streams is not None and self.position > 0:
            state["streams"] = dict(self._streams, consumed=list(self._streams["consumed"]))
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        streams = state.get("streams")
        self._streams = None if streams is None else dict(streams)

    def __iter__(self) -> Iterator[Batch]:
        epoch, pos = self.epoch, self.position
        saved = self._streams if pos > 0 else None
        if pos > 0 and saved is None:
            raise RuntimeError(
                f"{self.source.spec}: resuming {pos} batches into epoch {epoch} needs the shard "
                "streams' progress, which this checkpoint lacks"
            )
        k_count = int(saved["count"]) if saved else max(1, self.num_workers)
        consumed = list(saved["consumed"]) if saved else [0] * k_count
        cursor = int(saved["cursor"]) if saved else 0
        shards = deal_shards(
            len(self.source.shards),
            seed=self.seed,
            epoch=epoch,
            shuffle=self.shuffle,
            rank=self.rank,
            world_size=self.world_size,
        )
        streams = [shards[k::k_count] for k in range(k_count)]
        dataset = _ShardStreams(
            self.source,
            streams,
            consumed,
            geometry=self.geometry,
            seed=self.seed,
            epoch=epoch,
            rank=self.rank,
            shuffle_buffer=self.shuffle_buffer,
            chunk_size=self.chunk_size,
        )
        workers = min(self.num_workers, k_count)
        loader = DataLoader(
            dataset,
            batch_size=None,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=4 if workers > 0 else None,
            generator=torch.Generator(),  # leave the global (checkpointed) RNG untouched
        )
        chunks = iter(loader)
        queues: list[deque[_Item]] = [deque() for _ in range(k_count)]
        done = [False] * k_count
        skipped_now: list[str] = []
        recent: list[_Item] = []

        def pull() -> None:
            chunk = next(chunks, None)
            if chunk is None:  # every worker finished: all streams are done
                done[:] = [True] * k_count
                return
            k = chunk["stream"]
            for i, raw in enumerate(chunk["raw"]):
                views = [v[i] for v in chunk["views"]]
                queues[k].append(_Item(views, int(chunk["labels"][i]), int(chunk["index"][i]), raw))
            skipped_now.extend(chunk["failed"])
            done[k] = done[k] or chunk["done"]

        # The workers stop when this generator ends or is dropped (the trainer left mid-epoch).
        for b in range(pos, len(self)):
            items: list[_Item] = []
            while len(items) < self.batch_size:
                live = [k for k in range(k_count) if queues[k] or not done[k]]
                if not live:
                    break
                k = min(live, key=lambda s: (s - cursor) % k_count)  # next turn
                while not queues[k] and not done[k]:
                    pull()
                if not queues[k]:
                    continue
                item = queues[k].popleft()
                consumed[k], cursor = item.raw_position + 1, (k + 1) % k_count
                items.append(item)
            if len(items) < self.batch_size:
                items = self._pad(items, recent, epoch)
            recent = items
            batch = self._batch(items, epoch, b)
            self.position = b + 1
            self._streams = {"count": k_count, "consumed": list(consumed), "cursor": cursor}
            yield batch
        if skipped_now:
            self.skipped_files += skipped_now
            names = ", ".join(skipped_now[:10]) + (" ..." if len(skipped_now) > 10 else "")
            warnings.warn(
                f"epoch {epoch}: {len(skipped_now)} unreadable sample(s) in the shards skipped: "
                f"{names}",
                stacklevel=2,
            )
        self.epoch, self.position, self._streams = epoch + 1, 0, None

    def _pad(self, items: list[_Item], recent: list[_Item], epoch: int) -> list[_Item]:
        """Fill a batch cut short (unreadable samples left this process's shards short of the
        epoch's batch count) with samples already seen this epoch."""
        pool = items + recent
        if not pool:
            raise RuntimeError(
                f"{self.source.spec}: process {self.rank} found no readable sample in its shards "
                f"in epoch {epoch}"
            )
        warnings.warn(
            f"epoch {epoch}: process {self.rank} ran out of readable samples; a batch is filled "
            "with repeated ones",
            stacklevel=3,
        )
        return items + [pool[i % len(pool)] for i in range(self.batch_size - len(items))]

    def _batch(self, items: list[_Item], epoch: int, position: int) -> Batch:
        non_blocking = self.device.type == "cuda"
        views = [
            torch.stack([item.views[v] for item in items]).to(
                self.device, non_blocking=non_blocking
            )
            for v in range(len(items[0].views))
        ]
        if self.photometry is not None:
            views = self.photometry(
                views, make_generator(self.device, self.seed, epoch, position, self.rank)
            )
        labels = torch.tensor([item.label for item in items], dtype=torch.long)
        index = torch.tensor([item.index for item in items], dtype=torch.long)
        return Batch(views=views, labels=labels.to(self.device), index=index.to(self.device))
