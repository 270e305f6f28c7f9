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

import warnings
from collections import deque
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from twinview.data.batch import Batch
from twinview.data.folder_loader import GeometryFn, PhotometryFn
from twinview.data.sampling import EpochPosition, make_generator, num_batches
from twinview.data.shard_streams import Item, ShardStreams, deal_shards
from twinview.data.shards import ShardSource


class ShardLoader(EpochPosition):
    """Batches of (views, labels, index) streamed from a :class:`ShardSource`; the interface of
    :class:`~twinview.data.folder_loader.FolderLoader` (epochs, ``state_dict``, exact resume).

    Args:
        source: the training part of the shards (``ShardSource.select`` of the train indices).
        shuffle_buffer: raw samples held per stream for shuffling (memory: this many encoded
            files per worker); 1: the shards' own order (still a new shard order each epoch).
            Default: the source's ``shuffle_buffer``.
        chunk_size: samples a worker sends at once (each send costs a shared-memory transfer:
            64 reads ~1.4x faster than 16 on small JPEGs, see BENCHMARKS.md).
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
        chunk_size: int = 64,
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
        dataset = ShardStreams(
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
        queues: list[deque[Item]] = [deque() for _ in range(k_count)]
        done = [False] * k_count
        skipped_now: list[str] = []
        recent: list[Item] = []

        def pull() -> None:
            chunk = next(chunks, None)
            if chunk is None:  # every worker finished: all streams are done
                done[:] = [True] * k_count
                return
            k = chunk["stream"]
            for i, raw in enumerate(chunk["raw"]):
                views = [v[i] for v in chunk["views"]]
                queues[k].append(Item(views, int(chunk["labels"][i]), int(chunk["index"][i]), raw))
            skipped_now.extend(chunk["failed"])
            done[k] = done[k] or chunk["done"]

        # The workers stop when this generator ends or is dropped (the trainer left mid-epoch).
        for b in range(pos, len(self)):
            items: list[Item] = []
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

    def _pad(self, items: list[Item], recent: list[Item], epoch: int) -> list[Item]:
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

    def _batch(self, items: list[Item], epoch: int, position: int) -> Batch:
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
