"""FeatureQueue: MoCo's dictionary of negative keys (He et al. 2020, section 3.1).

A ring buffer of the last ``size`` keys, kept as persistent buffers (``features``, ``ptr``) so
it is saved in checkpoints and a resumed run continues with the same negatives. Under
distributed training the method gathers the keys of all processes before ``enqueue`` so every
process holds the same queue.

Order of one step: ``negatives()`` -> loss -> ``enqueue(keys)``. ``negatives()`` returns a
copy, so an enqueue later in the same step (even before ``backward()``) cannot change a tensor
that the loss saved for its backward pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class FeatureQueue(nn.Module):
    """First-in first-out queue of ``size`` keys of dimension ``dim``.

    Buffers: ``features`` (size, dim), initialised with random l2-normalised rows as in MoCo's
    code; ``ptr`` (0-dim long), the row the next key goes to (the oldest row).
    """

    features: Tensor
    ptr: Tensor

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        for key, value in (("size", size), ("dim", dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"FeatureQueue: {key} must be a positive int, got {value!r}")
        self.size = size
        self.dim = dim
        self.register_buffer("features", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Write keys (n, dim) in place at ``ptr``, wrapping around, and advance ``ptr`` by n.

        Same result as writing the keys one at a time: with n > size only the last ``size``
        keys remain. Keys are detached and cast to the buffer's device and dtype. No host sync.
        """
        if keys.ndim != 2 or keys.shape[1] != self.dim:
            raise ValueError(
                f"FeatureQueue.enqueue: keys must have shape (n, {self.dim}), "
                f"got {tuple(keys.shape)}"
            )
        n = keys.shape[0]
        if n == 0:
            return
        kept = min(n, self.size)
        keys = keys.detach()[n - kept :].to(self.features.device, self.features.dtype)
        offsets = torch.arange(n - kept, n, device=self.ptr.device)
        rows = (self.ptr + offsets) % self.size
        self.features.index_copy_(0, rows, keys)
        self.ptr.copy_((self.ptr + n) % self.size)

    def negatives(self) -> Tensor:
        """The queued keys (size, dim): a detached copy, safe to use in this step's loss."""
        return self.features.detach().clone()

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}"
