"""In-memory loader: the whole uint8 dataset on the training device, batches cut by indexing.

For datasets that fit in device memory (Fashion-MNIST: 47 MB, CIFAR: 150 MB) this is the fastest
path there is: no decoding, no worker processes, no host-to-device copies per step. A batch is
``images[perm[b * B:(b + 1) * B]]`` followed by the views pipeline on the whole batch, on device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from twinview.data.batch import Batch
from twinview.data.sampling import EpochPosition, epoch_indices, make_generator, num_batches

ViewsFn = Callable[[Tensor, torch.Generator], list[Tensor]]


class InMemoryLoader(EpochPosition):
    """Batches of (views, labels, index) from a uint8 image tensor kept on ``device``.

    Args:
        images: uint8 (N, C, H, W); copied to ``device`` once.
        labels: (N,) long or None (all -1).
        batch_size: samples per batch *per rank*.
        views: ``views(uint8_batch, generator) -> list[Tensor]`` (e.g. a ``MultiView``), or None
            to yield the raw uint8 batch as ``views=[images]``.
        device: where images live and views are made.
        seed: the run's seed; epoch order and view randomness derive from it (see
            :mod:`twinview.data.sampling`).
        shuffle: a fresh permutation each epoch (else source order).
        drop_last: drop the last incomplete batch (training: True, keeps batch statistics and
            the number of negatives constant).
        rank, world_size: distributed sharding; shards are disjoint and equal-sized.

    Epochs: iterating once runs the rest of the current epoch and then advances ``epoch`` by
    one; ``set_epoch(e)`` jumps to epoch ``e`` (position 0) unless already there. ``state_dict``
    / ``load_state_dict`` save and restore ``(epoch, position)``; a restored loader yields exactly
    the batches, views included, that the original would have yielded next.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor | None,
        *,
        batch_size: int,
        views: ViewsFn | None,
        device: torch.device | str = "cpu",
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.device = torch.device(device)
        self.images = images.to(self.device).contiguous()
        n = images.shape[0]
        if labels is None:
            labels = torch.full((n,), -1, dtype=torch.long)
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
        self.labels = labels.to(self.device, torch.long)
        self.batch_size, self.views, self.seed = batch_size, views, seed
        self.shuffle, self.drop_last = shuffle, drop_last
        self.rank, self.world_size = rank, world_size
        self.epoch, self.position = 0, 0
        if len(self) == 0:
            raise ValueError(
                f"{n} samples over {world_size} rank(s) give no batch of {batch_size} "
                f"(drop_last={drop_last}); lower batch_size"
            )

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        n_local = self.images.shape[0] // self.world_size
        return num_batches(n_local, self.batch_size, self.drop_last)

    def __iter__(self) -> Iterator[Batch]:
        epoch, start, total = self.epoch, self.position, len(self)
        order = epoch_indices(
            self.images.shape[0],
            seed=self.seed,
            epoch=epoch,
            shuffle=self.shuffle,
            rank=self.rank,
            world_size=self.world_size,
        ).to(self.device)
        for pos in range(start, total):
            index = order[pos * self.batch_size : (pos + 1) * self.batch_size]
            images = self.images.index_select(0, index)
            if self.views is None:
                views = [images]
            else:
                views = self.views(
                    images, make_generator(self.device, self.seed, epoch, pos, self.rank)
                )
            self.position = pos + 1
            yield Batch(views=views, labels=self.labels.index_select(0, index), index=index)
        self.epoch, self.position = epoch + 1, 0
