"""A PNG grid of images and their views, so a user sees what an augmentation recipe does to
their data (used by ``twinview views``).

Row i holds image i, then each of its views, denormalised back to [0, 1]. Cells are square,
as large as the largest image or view, and every image is upscaled by the same integer factor
with nearest-neighbour sampling, so small images (28 px Fashion-MNIST) stay readable and a
pixel of the grid shows what a pixel of the view is.

Images of a folder come in mixed sizes: pass them as a list of (C, H, W) tensors and each is
brought to one square side first (the views' output size, the largest one with multi-crop):
shorter side resized, centre crop (:func:`square_crop`, which evaluation uses too).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from twinview.views.ops import check_images, to_float
from twinview.views.pipeline import MultiView

#: Smallest cell side in the written PNG, in pixels.
MIN_CELL = 96
#: Gap between cells, and height of the header row with column titles.
GAP, HEADER = 4, 16


def denormalize(view: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """Invert the normalisation of a view batch (B, C, h, w) -> values in [0, 1]."""
    c = view.shape[1]
    m = torch.tensor(mean, dtype=view.dtype, device=view.device).reshape(1, c, 1, 1)
    s = torch.tensor(std, dtype=view.dtype, device=view.device).reshape(1, c, 1, 1)
    return (view * s + m).clamp_(0.0, 1.0)


def _to_rgb_uint8(x: Tensor) -> np.ndarray:
    """float (C, h, w) in [0, 1] -> (h, w, 3) uint8 array."""
    x = x.detach().to("cpu", torch.float32)
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    return (x * 255.0).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def square_crop(image: Tensor, side: int) -> Tensor:
    """(C, H, W) of any size -> (C, side, side): shorter side resized to ``side`` (antialiased),
    then centre crop. Evaluation and embedding bring folder images to the backbone's input
    the same way (``twinview.run.data.square_crop``)."""
    from torchvision.transforms.v2 import functional as TF

    return TF.center_crop(TF.resize(image, side), [side, side])


def as_batch(images: Tensor | Sequence[Tensor], views: MultiView) -> Tensor:
    """A (B, C, H, W) batch from a batch, or from a sequence of (C, H, W) images of any sizes.

    Images of one shape are stacked as they are; mixed sizes are each :func:`square_crop`-ed to
    the largest output side of ``views``, so a folder's images can share one grid.
    """
    if isinstance(images, Tensor):
        check_images(images)
        return images
    items = list(images)
    if not items:
        raise ValueError("preview needs at least one image, got an empty sequence")
    for i, image in enumerate(items):
        if not isinstance(image, Tensor) or image.ndim != 3 or image.shape[0] not in (1, 3):
            got = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
            raise ValueError(
                f"images[{i}] must be a (C, H, W) tensor with 1 or 3 channels, got {got}; pass "
                "a batch (B, C, H, W) or a list of single images"
            )
    channels = sorted({int(image.shape[0]) for image in items})
    if len(channels) > 1:
        raise ValueError(
            f"images mix {channels[0]}- and {channels[1]}-channel images; decode them all with "
            "the same channels (1 or 3)"
        )
    if len({tuple(image.shape) for image in items}) == 1:
        return torch.stack(items)
    side = max(max(spec.hw) for spec in views.specs)
    return torch.stack([square_crop(image, side) for image in items])


def preview(
    images: Tensor | Sequence[Tensor],
    views: MultiView,
    path: str | Path,
    *,
    n: int = 8,
    seed: int = 0,
) -> Path:
    """Write a PNG grid of the first ``n`` images and their views to ``path``; return the path.

    images: a batch (B, C, H, W) uint8 (or float in [0, 1]), any device, or a list of (C, H, W)
    images of mixed sizes (see :func:`as_batch`); views: the recipe to show; seed: seeds a
    generator on the images' device, so the same call draws the same grid.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"preview writes a PNG; give a path ending in .png, got {str(path)!r}")
    batch = as_batch(images if isinstance(images, Tensor) else list(images)[:n], views)
    batch = batch[: min(n, batch.shape[0])]
    generator = torch.Generator(device=batch.device).manual_seed(seed)
    outs = views(batch, generator=generator)
    columns = [to_float(batch)]
    for spec, out in zip(views.specs, outs):
        columns.append(denormalize(out, *spec.stats(batch.shape[1])))

    side = max(max(col.shape[-2:]) for col in columns)
    scale = max(1, math.ceil(MIN_CELL / side))
    cell = side * scale
    rows, cols = batch.shape[0], len(columns)
    width = cols * cell + (cols + 1) * GAP
    height = HEADER + rows * cell + (rows + 1) * GAP
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    titles = ["image"] + [f"view {i + 1}" for i in range(cols - 1)]
    for j, (title, col) in enumerate(zip(titles, columns)):
        x0 = GAP + j * (cell + GAP)
        draw.text((x0, 2), f"{title} {col.shape[-2]}x{col.shape[-1]}", fill=(0, 0, 0))
        for i in range(rows):
            tile = Image.fromarray(_to_rgb_uint8(col[i]))
            tile = tile.resize((tile.width * scale, tile.height * scale), Image.NEAREST)
            y0 = HEADER + GAP + i * (cell + GAP)
            canvas.paste(tile, (x0 + (cell - tile.width) // 2, y0 + (cell - tile.height) // 2))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, format="PNG")
    return path
