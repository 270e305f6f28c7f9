"""The batch both loaders yield."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class Batch:
    """One training or evaluation batch, on the training device.

    views: list of view tensors, each (B, C, H, W). With a views pipeline these are its outputs
        (float, normalised as the pipeline chooses); without one, a single raw **uint8** batch
        ``[images]``, which the consumer converts and normalises itself.
    labels: (B,) long class ids, -1 for unlabeled samples. Never used by the SSL loss; for
        monitoring and evaluation only.
    index: (B,) long index of each sample in the source: identifies positives across ranks and
        names samples when embeddings are written.
    """

    views: list[Tensor]
    labels: Tensor
    index: Tensor
