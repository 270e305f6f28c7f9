"""In-memory sources: images already decoded into one uint8 tensor (N, C, H, W).

:class:`ArraySource` is the source for users who hold their images in memory (numpy or torch)
and the base of the built-in datasets (Fashion-MNIST, CIFAR, STL-10, synthetic shapes). Because
all images are one tensor, the in-memory loader can move them to the training device whole and
cut batches by indexing, with no worker processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor


def _as_tensor(x: Any, what: str) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach().cpu()
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    if isinstance(x, Sequence):
        return torch.as_tensor(np.asarray(x))
    raise TypeError(f"{what} must be a numpy array or torch tensor, got {type(x).__name__}")


def to_uint8_nchw(images: Any, *, layout: str = "auto") -> Tensor:
    """Bring an image array to uint8 (N, C, H, W) with C in {1, 3}.

    Accepts (N, H, W) (grayscale), (N, C, H, W) or (N, H, W, C) with C in {1, 3, 4} (4: RGBA,
    alpha dropped). ``layout`` is ``"nchw"``, ``"nhwc"`` or ``"auto"``: channel-first when
    dim 1 has 1/3/4 entries, else channel-last. Dtypes: uint8 as is; other integer types must
    lie in [0, 255]; floats must lie in [0, 1] and are scaled by 255 and rounded.
    """
    x = _as_tensor(images, "images")
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4:
        raise ValueError(
            f"images must have shape (N, H, W), (N, C, H, W) or (N, H, W, C); got {tuple(x.shape)}"
        )
    if layout == "auto":
        layout = "nchw" if x.shape[1] in (1, 3, 4) else "nhwc"
    if layout == "nhwc":
        x = x.permute(0, 3, 1, 2)
    elif layout != "nchw":
        raise ValueError(f"layout must be 'auto', 'nchw' or 'nhwc', got {layout!r}")
    if x.shape[1] == 4:
        x = x[:, :3]
    if x.shape[1] not in (1, 3):
        raise ValueError(
            f"images have {x.shape[1]} channels after layout {layout!r} (shape {tuple(x.shape)}); "
            "expected 1 (grayscale) or 3 (RGB); pass layout='nchw' or 'nhwc' explicitly"
        )
    if x.dtype == torch.uint8:
        pass
    elif x.is_floating_point():
        if x.numel() and (x.min() < 0 or x.max() > 1):
            raise ValueError(
                f"float images must lie in [0, 1], got range [{x.min():.3g}, {x.max():.3g}]; "
                "divide by 255 or pass uint8"
            )
        x = (x * 255).round().to(torch.uint8)
    elif x.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint16):
        if x.numel() and (x.min() < 0 or x.max() > 255):
            raise ValueError(
                f"integer images must lie in [0, 255], got [{int(x.min())}, {int(x.max())}]; "
                "rescale (16-bit: divide by 257) before passing them"
            )
        x = x.to(torch.uint8)
    else:
        raise TypeError(f"unsupported image dtype {x.dtype}; pass uint8 or float in [0, 1]")
    return x.contiguous()


class ArraySource:
    """Images held in memory as one uint8 tensor, with optional integer labels.

    Args:
        images: (N, H, W), (N, C, H, W) or (N, H, W, C) array or tensor (see :func:`to_uint8_nchw`).
        labels: (N,) integer class ids, or None (unlabeled: every label is -1).
        classes: class names, index = label; inferred as ``["0", ..., str(max)]`` when labels are
            given without names.
        layout: ``"auto"``, ``"nchw"`` or ``"nhwc"``.

    Attributes: ``images`` uint8 (N, C, H, W), ``labels`` long (N,) with -1 where unlabeled,
    ``num_classes``, ``classes``, ``channels``, ``paths`` (always None here).
    ``source[i]`` returns ``(image uint8 (C, H, W), label int)``.
    """

    paths: list[str] | None = None

    def __init__(
        self,
        images: Any,
        labels: Any | None = None,
        *,
        classes: Sequence[str] | None = None,
        layout: str = "auto",
    ) -> None:
        self.images = to_uint8_nchw(images, layout=layout)
        n = self.images.shape[0]
        if labels is None:
            self.labels = torch.full((n,), -1, dtype=torch.long)
        else:
            self.labels = _as_tensor(labels, "labels").reshape(-1).to(torch.long)
            if self.labels.shape[0] != n:
                raise ValueError(f"{n} images but {self.labels.shape[0]} labels")
        labeled = self.labels[self.labels >= 0]
        if classes is not None:
            self.classes: list[str] | None = [str(c) for c in classes]
        elif labeled.numel():
            self.classes = [str(c) for c in range(int(labeled.max()) + 1)]
        else:
            self.classes = None
        if self.classes is not None and labeled.numel() and int(labeled.max()) >= len(self.classes):
            raise ValueError(
                f"label {int(labeled.max())} out of range for {len(self.classes)} classes"
            )

    @property
    def num_classes(self) -> int | None:
        return None if self.classes is None else len(self.classes)

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], int(self.labels[index])

    def __repr__(self) -> str:
        n, c, h, w = self.images.shape
        return (
            f"{type(self).__name__}(n={n}, channels={c}, size={h}x{w}, classes={self.num_classes})"
        )
