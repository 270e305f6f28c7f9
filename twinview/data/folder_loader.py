"""Folder loader: DataLoader workers decode images and make the geometric part of the views.

Data flow (DESIGN.md): worker processes decode each file and apply ``geometry`` (crop, resize,
flip) per sample, on uint8; batches travel in pinned memory to the device, where ``photometry``
(jitter, grayscale, blur, solarize) runs batched. Per-sample geometry randomness is seeded from
``(seed, epoch, sample index)``, so it does not depend on which worker got the sample; the
photometric randomness from ``(seed, epoch, batch position, rank)``, as in the in-memory loader.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from twinview.data.batch import Batch
from twinview.data.sampling import (
    EpochPosition,
    epoch_indices,
    make_generator,
    mix_seed,
    num_batches,
)

GeometryFn = Callable[[Tensor, torch.Generator], list[Tensor]]
PhotometryFn = Callable[[list[Tensor], torch.Generator], list[Tensor]]


class _EpochBatchSampler:
    """Yields lists of ``(epoch, index)`` keys: this rank's batches from ``start`` on."""

    def __init__(self, n: int, batch_size: int, drop_last: bool, **order: Any) -> None:
        self.n, self.batch_size, self.drop_last, self.order = n, batch_size, drop_last, order
        self.epoch, self.start = 0, 0

    def __len__(self) -> int:
        n_local = self.n // self.order["world_size"]
        return max(0, num_batches(n_local, self.batch_size, self.drop_last) - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        indices = epoch_indices(self.n, epoch=self.epoch, **self.order).tolist()
        total = num_batches(len(indices), self.batch_size, self.drop_last)
        for pos in range(self.start, total):
            chunk = indices[pos * self.batch_size : (pos + 1) * self.batch_size]
            yield [(self.epoch, i) for i in chunk]


class _GeometryDataset:
    """Runs in the workers: decode sample ``index``, then ``geometry`` seeded per sample."""

    def __init__(self, source: Any, geometry: GeometryFn | None, seed: int) -> None:
        self.source, self.geometry, self.seed = source, geometry, seed

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int]) -> tuple[list[Tensor], int, int, list[str]]:
        epoch, index = key
        if hasattr(self.source, "load"):
            image, label, failed = self.source.load(index)
        else:
            (image, label), failed = self.source[index], []
        if self.geometry is None:
            views = [image]
        else:
            views = self.geometry(
                image, torch.Generator().manual_seed(mix_seed(self.seed, epoch, index))
            )
        return views, label, index, failed


def collate_views(samples: list[tuple[list[Tensor], int, int, list[str]]]):
    """Samples ``(views, label, index, failed paths)`` -> stacked views, labels, index, failed."""
    views = []
    for v in range(len(samples[0][0])):
        shapes = {tuple(s[0][v].shape) for s in samples}
        if len(shapes) > 1:
            raise ValueError(
                f"view {v} has different sizes within a batch ({sorted(shapes)[:3]}...); images of "
                "different sizes need a geometry step (crop / resize) before batching"
            )
        views.append(torch.stack([s[0][v] for s in samples]))
    labels = torch.tensor([s[1] for s in samples], dtype=torch.long)
    index = torch.tensor([s[2] for s in samples], dtype=torch.long)
    failed = [path for s in samples for path in s[3]]
    return views, labels, index, failed


class FolderLoader(EpochPosition):
    """Batches of (views, labels, index) decoded by DataLoader workers; same interface as
    :class:`~twinview.data.memory_loader.InMemoryLoader` (epochs, ``state_dict``, resume).

    Args:
        source: any source (``__len__``, ``__getitem__ -> (uint8 (C, H, W), label)``; a ``load``
            method that also reports unreadable files is used when present).
        batch_size, device, seed, shuffle, drop_last, rank, world_size: as for InMemoryLoader.
        geometry: ``geometry(uint8 (C, H, W), generator) -> list of uint8 views``, run in the
            workers; None yields the decoded image as the single view (all images must then
            have one size).
        photometry: ``photometry(list of uint8 (B, C, H, W) on device, generator) -> views``;
            None yields the uint8 batches.
        num_workers: decoding processes (0: decode in the main process).
        pin_memory: page-locked host batches for asynchronous copies; default: when CUDA.
        persistent_workers: keep workers alive across epochs (no restart cost per epoch).
        prefetch_factor: batches prefetched per worker.
    """

    def __init__(
        self,
        source: Any,
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
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        prefetch_factor: int = 2,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.source, self.batch_size, self.seed = source, batch_size, seed
        self.photometry, self.device = photometry, torch.device(device)
        self.rank, self.world_size = rank, world_size
        self.epoch, self.position = 0, 0
        self.skipped_files: list[str] = []
        self._sampler = _EpochBatchSampler(
            len(source),
            batch_size,
            drop_last,
            seed=seed,
            shuffle=shuffle,
            rank=rank,
            world_size=world_size,
        )
        if len(self) == 0:
            raise ValueError(
                f"{len(source)} samples over {world_size} rank(s) give no batch of {batch_size} "
                f"(drop_last={drop_last}); lower batch_size"
            )
        if pin_memory is None:
            pin_memory = self.device.type == "cuda"
        self._loader = DataLoader(
            _GeometryDataset(source, geometry, seed),
            batch_sampler=self._sampler,
            num_workers=num_workers,
            collate_fn=collate_views,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers and num_workers > 0,
            prefetch_factor=prefetch_factor if num_workers > 0 else None,
            # Worker base seeds come from this private generator: iterating must not consume
            # the global RNG, which the trainer checkpoints (our randomness is seeded per sample).
            generator=torch.Generator(),
        )

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        n_local = len(self.source) // self.world_size
        return num_batches(n_local, self.batch_size, self._sampler.drop_last)

    def __iter__(self) -> Iterator[Batch]:
        epoch, pos = self.epoch, self.position
        self._sampler.epoch, self._sampler.start = epoch, pos
        skipped_now: list[str] = []
        non_blocking = self._loader.pin_memory
        for views, labels, index, failed in self._loader:
            views = [v.to(self.device, non_blocking=non_blocking) for v in views]
            if self.photometry is not None:
                views = self.photometry(
                    views, make_generator(self.device, self.seed, epoch, pos, self.rank)
                )
            skipped_now += failed
            pos += 1
            self.position = pos
            yield Batch(
                views=views,
                labels=labels.to(self.device, non_blocking=non_blocking),
                index=index.to(self.device, non_blocking=non_blocking),
            )
        if skipped_now:
            self.skipped_files += skipped_now
            names = ", ".join(skipped_now[:10]) + (" ..." if len(skipped_now) > 10 else "")
            warnings.warn(
                f"epoch {epoch}: {len(skipped_now)} unreadable file(s) skipped and replaced by "
                f"the next readable image: {names}",
                stacklevel=2,
            )
        self.epoch, self.position = epoch + 1, 0
