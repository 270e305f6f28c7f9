"""Per-epoch monitors, never part of the training loss.

- kNN accuracy on the validation split (bank: the training split, optionally subsampled), with
  the fixed protocol (cosine, weighted, T = 0.07);
- label-free health of the representation: RankMe, std of l2-normalised embeddings against
  1/sqrt(d), alignment and uniformity (:mod:`twinview.eval.health`), with a collapse warning;
- the final numbers: kNN on the test split beside the raw-pixel baseline of the same protocol.

Everything runs under ``no_grad`` on detached features of the backbone in eval mode.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn

from twinview.eval.baselines import raw_pixel_knn
from twinview.eval.features import extract_features
from twinview.eval.health import health_report, is_collapsed
from twinview.eval.knn import knn_accuracy
from twinview.train.build import DataSplits
from twinview.train.config import MonitorConfig


def images_and_labels(source) -> tuple[Tensor, Tensor]:
    """The whole split as uint8 (N, C, H, W) and labels (N,) (in-memory sources)."""
    return source.images, source.labels


def _labeled(source) -> bool:
    labels = getattr(source, "labels", None)
    return labels is not None and bool((labels >= 0).all()) and labels.numel() > 0


class EmbeddingBuffer:
    """Keeps the most recent projector embeddings of training batches for health metrics."""

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self.rows: list[Tensor] = []
        self.count = 0

    def add(self, z: Tensor | None) -> None:
        if z is None:
            return
        self.rows.append(z.detach().float().cpu())
        self.count += z.shape[0]
        while self.count - self.rows[0].shape[0] >= self.capacity:
            self.count -= self.rows.pop(0).shape[0]

    def take(self) -> Tensor | None:
        out = torch.cat(self.rows) if self.rows else None
        self.rows, self.count = [], 0
        return out


class Monitors:
    """Runs the per-epoch and final evaluations of a pretraining run (main process only)."""

    def __init__(
        self,
        cfg: MonitorConfig,
        data: DataSplits,
        transform: Callable[[Tensor], Tensor],
        device: torch.device,
        *,
        seed: int = 0,
    ) -> None:
        self.cfg = cfg
        self.data = data
        self.transform = transform
        self.device = device
        self.buffer = EmbeddingBuffer()
        self.labeled = _labeled(data.train) and _labeled(data.val)
        self.in_memory = hasattr(data.train, "images") and hasattr(data.val, "images")
        self._bank_index: Tensor | None = None
        if self.in_memory and cfg.knn_max_train and len(data.train) > cfg.knn_max_train:
            g = torch.Generator().manual_seed(seed)
            self._bank_index = torch.randperm(len(data.train), generator=g)[: cfg.knn_max_train]

    def _features(self, backbone: nn.Module, images: Tensor) -> Tensor:
        return extract_features(
            backbone, images, batch_size=512, device=self.device, normalize=self.transform
        )

    def epoch_end(self, backbone: nn.Module, epoch: int) -> dict[str, float]:
        """Validation kNN and health; returns the scalars to log."""
        out: dict[str, float] = {}
        val_features = None
        every = self.cfg.knn_every_epochs
        if self.in_memory and every and (epoch + 1) % every == 0:
            val_images, val_labels = images_and_labels(self.data.val)
            val_features = self._features(backbone, val_images)
            if self.labeled:
                bank_images, bank_labels = images_and_labels(self.data.train)
                if self._bank_index is not None:
                    bank_images = bank_images[self._bank_index]
                    bank_labels = bank_labels[self._bank_index]
                bank = self._features(backbone, bank_images)
                k = min(self.cfg.knn_k, bank.shape[0])
                acc = knn_accuracy(
                    bank, bank_labels, val_features, val_labels, k=(k,),
                    temperature=self.cfg.knn_temperature,
                )  # fmt: skip
                out["val_knn_top1"] = acc[f"knn_top1_k{k}"]
        if self.cfg.health:
            embeddings = self.buffer.take()
            if embeddings is not None and embeddings.shape[0] >= 2:
                report = health_report(embeddings)
                out.update({f"health_{key}": value for key, value in report.items()})
                warning = is_collapsed(
                    report, rank_ratio_threshold=self.cfg.collapse_rank_threshold
                )
                if warning:
                    out["collapse_warning"] = 1.0
                    warnings.warn(f"epoch {epoch + 1}: {warning}", stacklevel=2)
            if val_features is not None:
                out["val_feature_rankme"] = health_report(val_features)["rankme"]
        return out

    def final(self, backbone: nn.Module) -> tuple[dict[str, float], dict[str, Tensor]]:
        """kNN (k=20 and k=200) on the test split (or validation when there is no test split)
        with the full training split as the bank, beside the raw-pixel baseline.

        Returns the scalars and, for the report, the test split's features, labels, images.
        """
        if not (self.in_memory and self.labeled):
            return {}, {}
        test = self.data.test if self.data.test is not None and _labeled(self.data.test) else None
        split = "test" if test is not None else "val"
        test_images, test_labels = images_and_labels(test if test is not None else self.data.val)
        bank_images, bank_labels = images_and_labels(self.data.train)
        ks = tuple(sorted({min(20, len(bank_labels)), min(200, len(bank_labels))}))
        t = self.cfg.knn_temperature
        test_features = self._features(backbone, test_images)
        learned = knn_accuracy(
            self._features(backbone, bank_images), bank_labels, test_features, test_labels,
            k=ks, temperature=t,
        )  # fmt: skip
        raw = raw_pixel_knn(bank_images, bank_labels, test_images, test_labels, k=ks, temperature=t)
        out: dict = {"eval_split": split}
        out.update({f"{split}_{key}": value for key, value in learned.items()})
        out.update({f"{split}_raw_pixel_{key}": value for key, value in raw.items()})
        tensors = {"features": test_features, "labels": test_labels, "images": test_images}
        return out, tensors
