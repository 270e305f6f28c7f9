"""Per-epoch monitors, never part of the training loss.

- kNN accuracy on the validation split (bank: the training split, optionally subsampled), with
  the fixed protocol (cosine, weighted, T = 0.07);
- label-free health of the representation (:mod:`twinview.eval.health`): RankMe, std of
  l2-normalised embeddings against 1/sqrt(d), mean cosine similarity, mean norm, alignment and
  uniformity, of the projector embeddings and of the backbone features (training batches, when
  the trainer passes them to :meth:`Monitors.add_batch`, and the validation split, when kNN runs
  that epoch), with a :class:`RepresentationWarning` and a logged flag (``collapse_warning``,
  ``explosion_warning`` = 1.0) when a representation has collapsed or exploded;
- the final numbers: kNN on the test split beside the raw-pixel baseline of the same protocol.

Everything runs under ``no_grad`` on detached features. The training-batch buffers are part of
a mid-epoch checkpoint (:meth:`Monitors.state_dict`), so a resumed epoch reports the same health.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from twinview.config import MonitorConfig
from twinview.eval.baselines import raw_pixel_knn
from twinview.eval.features import extract_features
from twinview.eval.health import health_report, is_collapsed, is_exploded
from twinview.eval.knn import knn_accuracy
from twinview.run.data import DataSplits


def images_and_labels(source) -> tuple[Tensor, Tensor]:
    """The whole split as uint8 (N, C, H, W) and labels (N,) (in-memory sources)."""
    return source.images, source.labels


def _labeled(source) -> bool:
    labels = getattr(source, "labels", None)
    return labels is not None and bool((labels >= 0).all()) and labels.numel() > 0


ADVICE = (
    "Lower the learning rate (optim.lr=..., e.g. 10x lower), check the data, or use precision=fp32."
)
"""What to change, appended to every health warning (``lr`` and ``precision`` are CLI keys)."""

FEATURE_KEYS = ("rankme", "std_ratio", "mean_cosine", "mean_norm", "finite_fraction")
"""Health metrics logged for backbone features (``train_feature_*``, ``val_feature_*``)."""


class RepresentationWarning(UserWarning):
    """The monitored representation has collapsed or exploded (training goes on)."""


class EmbeddingBuffer:
    """The most recent rows (at least ``capacity`` once filled) of per-batch tensors (B, d),
    on the CPU in float32: the projector embeddings or backbone features of an epoch's
    training batches, for the health metrics at the epoch's end.

    Batches are kept whole; the oldest is dropped once the rest still hold ``capacity`` rows.
    """

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self.rows: list[Tensor] = []
        self.count = 0

    def add(self, z: Tensor | None) -> None:
        """Append a batch z (B, d) (detached, copied to the CPU); None is ignored."""
        if z is None:
            return
        self.rows.append(z.detach().float().cpu())
        self.count += z.shape[0]
        self._drop_old()

    def _drop_old(self) -> None:
        while self.rows and self.count - self.rows[0].shape[0] >= self.capacity:
            self.count -= self.rows.pop(0).shape[0]

    def take(self) -> Tensor | None:
        """All kept rows (n, d), oldest first, and empty the buffer; None when empty."""
        out = torch.cat(self.rows) if self.rows else None
        self.rows, self.count = [], 0
        return out

    def state_dict(self) -> dict[str, Any]:
        """``{"capacity": int, "rows": Tensor (n, d) float32 CPU (0 x 0 when empty),
        "sizes": list[int] (the rows of each kept batch)}``: plain tensors, ints and lists, so
        it loads with ``torch.load(weights_only=True)``."""
        rows = torch.cat(self.rows) if self.rows else torch.zeros(0, 0)
        return {"capacity": self.capacity, "rows": rows, "sizes": [r.shape[0] for r in self.rows]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved: the next :meth:`add` / :meth:`take` give what
        they would have without the interruption. This buffer keeps its own ``capacity``."""
        if not isinstance(state, dict) or not {"rows", "sizes"} <= state.keys():
            found = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"EmbeddingBuffer state needs 'rows' and 'sizes', got {found}")
        rows, sizes = state["rows"], [int(size) for size in state["sizes"]]
        if not isinstance(rows, Tensor) or rows.ndim != 2 or sum(sizes) != rows.shape[0]:
            shape = tuple(rows.shape) if isinstance(rows, Tensor) else type(rows).__name__
            raise ValueError(
                f"EmbeddingBuffer state: rows {shape} do not match sizes {sizes} "
                "(expected a 2-d tensor with sum(sizes) rows)"
            )
        self.rows = list(rows.detach().float().cpu().split(sizes)) if sizes else []
        self.count = sum(sizes)
        self._drop_old()


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
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        self.cfg = cfg
        self.autocast_dtype = autocast_dtype  # per-epoch kNN only; the final scores are fp32
        self.data = data
        self.transform = transform
        self.device = device
        self.buffer = EmbeddingBuffer()  # projector embeddings of training batches
        self.feature_buffer = EmbeddingBuffer()  # backbone features of training batches
        self.in_memory = hasattr(data.train, "images") and hasattr(data.val, "images")
        # kNN monitors need in-memory splits; only then read the labels (a shard set's labels
        # would cost a pass over every shard's headers).
        self.labeled = self.in_memory and _labeled(data.train) and _labeled(data.val)
        self._bank_index: Tensor | None = None
        if self.in_memory and cfg.knn_max_train and len(data.train) > cfg.knn_max_train:
            g = torch.Generator().manual_seed(seed)
            self._bank_index = torch.randperm(len(data.train), generator=g)[: cfg.knn_max_train]

    def _features(self, backbone: nn.Module, images: Tensor, *, lowered: bool = False) -> Tensor:
        return extract_features(
            backbone,
            images,
            batch_size=512,
            device=self.device,
            normalize=self.transform,
            autocast_dtype=self.autocast_dtype if lowered else None,
        )

    def add_batch(self, embeddings: Tensor | None, features: Tensor | None = None) -> None:
        """Keep a training batch's projector embeddings (B, d) and backbone features (B, D)
        (``StepOutput.embeddings`` and ``.features``; either may be None) for the epoch's end."""
        self.buffer.add(embeddings)
        self.feature_buffer.add(features)

    def state_dict(self) -> dict[str, Any]:
        """The training-batch buffers, for a mid-epoch checkpoint (plain tensors, ints, lists)."""
        return {
            "embeddings": self.buffer.state_dict(),
            "features": self.feature_buffer.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s buffers, so a resumed epoch reports the same health."""
        if not isinstance(state, dict) or "embeddings" not in state:
            found = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"Monitors state needs 'embeddings' (and 'features'), got {found}")
        self.buffer.load_state_dict(state["embeddings"])
        if "features" in state:
            self.feature_buffer.load_state_dict(state["features"])

    def epoch_end(
        self, backbone: nn.Module, epoch: int, *, step: int | None = None
    ) -> dict[str, float]:
        """Validation kNN and health after epoch ``epoch`` (0-based) at optimizer step ``step``;
        returns the scalars to log. Empties the training-batch buffers."""
        out: dict[str, float] = {}
        val_features = None
        every = self.cfg.knn_every_epochs
        if self.in_memory and every and (epoch + 1) % every == 0:
            val_images, val_labels = images_and_labels(self.data.val)
            val_features = self._features(backbone, val_images, lowered=True)
            if self.labeled:
                bank_images, bank_labels = images_and_labels(self.data.train)
                if self._bank_index is not None:
                    bank_images = bank_images[self._bank_index]
                    bank_labels = bank_labels[self._bank_index]
                bank = self._features(backbone, bank_images, lowered=True)
                k = min(self.cfg.knn_k, bank.shape[0])
                acc = knn_accuracy(
                    bank, bank_labels, val_features, val_labels, k=(k,),
                    temperature=self.cfg.knn_temperature,
                )  # fmt: skip
                out["val_knn_top1"] = acc[f"knn_top1_k{k}"]
        if self.cfg.health:
            out.update(self.health(epoch, step=step, val_features=val_features))
        else:  # nothing to report, but the next epoch starts afresh
            self.buffer.take()
            self.feature_buffer.take()
        return out

    def health(
        self, epoch: int, *, step: int | None = None, val_features: Tensor | None = None
    ) -> dict[str, float]:
        """Health metrics of the buffered training batches and of ``val_features`` (N, D), and
        a :class:`RepresentationWarning` naming the epoch, the step and what to change when
        one of them has collapsed (one direction, or a few) or exploded (huge or non-finite).
        Empties the buffers. Returns the scalars to log, with ``collapse_warning`` and
        ``explosion_warning`` = 1.0 when warned."""
        out: dict[str, float] = {}
        found: dict[str, list[str]] = {"collapse": [], "explosion": []}
        sources = [
            ("projector embeddings of training batches", "health_", self.buffer.take(), None),
            ("backbone features of training batches", "train_feature_",
             self.feature_buffer.take(), FEATURE_KEYS),
            ("backbone features of the validation split", "val_feature_", val_features,
             FEATURE_KEYS),
        ]  # fmt: skip
        for name, prefix, z, keys in sources:
            if z is None or z.ndim != 2 or z.shape[0] < 2:
                continue
            report = health_report(z, include_uniformity=keys is None)
            out.update({prefix + k: v for k, v in report.items() if keys is None or k in keys})
            collapsed = is_collapsed(report, rank_ratio_threshold=self.cfg.collapse_rank_threshold)
            for kind, message in (("collapse", collapsed), ("explosion", is_exploded(report))):
                if message:
                    found[kind].append(f"{name}: {message}")
        where = f"epoch {epoch + 1}" + (f", step {step}" if step is not None else "")
        for kind, messages in found.items():
            if messages:
                out[f"{kind}_warning"] = 1.0
                text = f"{where}: " + " | ".join(messages) + " " + ADVICE
                warnings.warn(text, RepresentationWarning, stacklevel=3)
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
