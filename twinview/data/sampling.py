"""Epoch order, distributed sharding and seed derivation shared by both loaders.

Every random choice of the data pipeline is a pure function of the run's seed and a position:

- the sample order of epoch ``e`` comes from a CPU generator seeded with ``mix_seed(seed, e)``,
  identical on all ranks, so the shards cut from it are disjoint;
- the view randomness of batch ``b`` of epoch ``e`` on rank ``r`` comes from
  ``mix_seed(seed, e, b, r)``, and per-sample geometry from ``mix_seed(seed, e, index)``.

Hence a run resumed from ``(epoch, position)`` reproduces the remaining batches bit for bit,
independently of worker scheduling.
"""

from __future__ import annotations

import torch
from torch import Tensor

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """One step of SplitMix64 (Steele et al., 2014): a fast, well-mixing 64-bit bijection."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mix_seed(*values: int) -> int:
    """Combine integers into one generator seed in [0, 2**63): order matters, no collisions
    between nearby tuples in practice (unlike ``seed + epoch``, where (0, 1) == (1, 0))."""
    h = 0
    for v in values:
        h = _splitmix64(h ^ (int(v) & _MASK64))
    return h >> 1


def epoch_indices(
    n: int,
    *,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    rank: int = 0,
    world_size: int = 1,
) -> Tensor:
    """This rank's sample indices for one epoch (long, CPU).

    The full order is a permutation of ``range(n)`` seeded by ``(seed, epoch)`` (or ``range(n)``
    without shuffle), the same on all ranks. It is cut to ``n // world_size * world_size``
    samples (the remainder, different each epoch, is dropped so shards are equal-sized) and rank
    ``r`` takes positions ``r, r + world_size, ...``: shards are disjoint and cover the kept ones.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    if shuffle:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(seed, epoch)))
    else:
        order = torch.arange(n)
    per_rank = n // world_size
    return order[rank : per_rank * world_size : world_size]


def num_batches(n_local: int, batch_size: int, drop_last: bool) -> int:
    """Batches per epoch for ``n_local`` samples."""
    return n_local // batch_size if drop_last else -(-n_local // batch_size)


def make_generator(device: torch.device | str, *values: int) -> torch.Generator:
    """A generator on ``device`` seeded with ``mix_seed(*values)``."""
    return torch.Generator(device=torch.device(device)).manual_seed(mix_seed(*values))


class EpochPosition:
    """Where a loader is: ``epoch`` and ``position`` (batches of that epoch already yielded).

    Shared by both loaders; its state dict is what checkpoints store for exact resume.
    """

    epoch: int = 0
    position: int = 0

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` at its first batch; no-op when already in that epoch."""
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "position"}``: position = batches of this epoch already yielded."""
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
