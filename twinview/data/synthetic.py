"""Procedural coloured shapes on textured backgrounds: a labeled dataset with no files.

Class ``c`` is a (shape, colour family) pair: ``shape = c % 5`` among disk, square, triangle,
cross, ring, and ``family = c // 5`` among six well-separated hues (red, green, blue, yellow,
cyan, magenta), so up to 30 classes. Each image draws a random position, size and rotation, a
hue/saturation/value jitter inside its family, a low-frequency coloured background texture and
pixel noise, all from a seeded generator: the same ``(n, size, seed, split)`` gives the same
tensor on every machine.

Why it exists: tests and smoke runs need a dataset that is quick to make and quick to learn, yet
not solvable from raw pixels: position, scale and rotation move the shape around, so a raw-pixel
kNN confuses shapes (it mostly gets the colour family), while a small ConvNet learns both within
a few hundred steps.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from twinview.data.arrays import ArraySource

SHAPES = ["disk", "square", "triangle", "cross", "ring"]
FAMILIES = {
    "red": 0.0,
    "green": 1 / 3,
    "blue": 2 / 3,
    "yellow": 1 / 6,
    "cyan": 0.5,
    "magenta": 5 / 6,
}
_SPLIT_SALT = {"train": 0, "test": 1_000_003}


def _hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """(N,) hue in [0, 1), saturation, value -> (N, 3) RGB in [0, 1]."""
    out = []
    for n in (5.0, 3.0, 1.0):
        k = (n + h * 6.0) % 6.0
        out.append(v - v * s * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0))
    return torch.stack(out, dim=1)


def _shape_distance(shape: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """Signed-distance-like value per pixel (negative inside) in the shape's unit frame.

    shape: (N, 1, 1) shape ids; u, v: (N, H, W) local coordinates (radius 1 = shape size).
    """
    r = torch.sqrt(u * u + v * v)
    disk = r - 1.0
    square = torch.maximum(u.abs(), v.abs()) - 0.8
    tri = (
        torch.stack(
            [
                u * math.cos(a) + v * math.sin(a)
                for a in (math.pi / 2, math.pi * 7 / 6, math.pi * 11 / 6)
            ]
        ).amax(dim=0)
        - 0.5
    )
    bar_a = torch.maximum(u.abs() - 0.3, v.abs() - 1.0)
    bar_b = torch.maximum(v.abs() - 0.3, u.abs() - 1.0)
    cross = torch.minimum(bar_a, bar_b)
    ring = (r - 0.75).abs() - 0.25
    all_shapes = torch.stack([disk, square, tri, cross, ring], dim=1)  # (N, 5, H, W)
    index = shape.view(-1, 1, 1, 1).expand(-1, 1, *u.shape[1:])
    return all_shapes.gather(1, index).squeeze(1)


def render_shapes(labels: Tensor, *, size: int, generator: torch.Generator) -> Tensor:
    """Render one image per label: float (N, 3, size, size) in [0, 1]."""
    n = labels.shape[0]
    g = generator

    def uniform(lo: float, hi: float, *shape: int) -> Tensor:
        return lo + (hi - lo) * torch.rand(*(shape or (n,)), generator=g)

    shape_id = labels % len(SHAPES)
    family = torch.tensor(list(FAMILIES.values()))[labels // len(SHAPES)]
    radius = uniform(0.35, 0.65)
    cx, cy = uniform(-1, 1) * (1 - radius), uniform(-1, 1) * (1 - radius)
    angle = uniform(0, 2 * math.pi)
    axis = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    dx, dy = x[None] - cx[:, None, None], y[None] - cy[:, None, None]
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    rad = radius[:, None, None]
    u, v = (cos * dx + sin * dy) / rad, (-sin * dx + cos * dy) / rad
    pixel = (2.0 / size) / rad  # one pixel in shape units, for anti-aliased edges
    alpha = torch.clamp(0.5 - _shape_distance(shape_id, u, v) / pixel, 0, 1)[:, None]

    fg = _hsv_to_rgb((family + uniform(-0.04, 0.04)) % 1.0, uniform(0.55, 1.0), uniform(0.55, 1.0))
    bg = _hsv_to_rgb(uniform(0, 1), uniform(0.0, 0.4), uniform(0.15, 0.85))
    texture = F.interpolate(
        torch.randn(n, 3, 4, 4, generator=g), size=(size, size), mode="bicubic", align_corners=False
    )
    background = bg[:, :, None, None] + 0.18 * texture
    shading = 1 + 0.1 * F.interpolate(
        torch.randn(n, 1, 3, 3, generator=g),
        size=(size, size),
        mode="bilinear",
        align_corners=False,
    )
    foreground = fg[:, :, None, None] * shading
    image = alpha * foreground + (1 - alpha) * background
    image = image + 0.03 * torch.randn(n, 3, size, size, generator=g)
    return image.clamp(0, 1)


class SyntheticShapes(ArraySource):
    """Seeded synthetic shapes dataset (in memory): ``images`` uint8 (n, channels, size, size).

    Args:
        n: number of images (classes balanced: ``n // num_classes`` each, remainder spread).
        size: image side in pixels.
        channels: 3 (RGB) or 1 (luminance, ITU-R 601 weights).
        num_classes: 1..30 (shape x colour family pairs, see module docstring).
        seed: generator seed.
        split: ``"train"`` or ``"test"``; ``"test"`` draws from a different stream, so the two
            splits are disjoint samples of the same distribution.
    """

    def __init__(
        self,
        n: int = 2000,
        *,
        size: int = 32,
        channels: int = 3,
        num_classes: int = 10,
        seed: int = 0,
        split: str = "train",
    ) -> None:
        if not 1 <= num_classes <= len(SHAPES) * len(FAMILIES):
            raise ValueError(
                f"num_classes must be in 1..{len(SHAPES) * len(FAMILIES)}, got {num_classes}"
            )
        if split not in _SPLIT_SALT:
            raise ValueError(f"synthetic split must be 'train' or 'test', got {split!r}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if size < 8:
            raise ValueError(f"size must be at least 8 pixels, got {size}")
        g = torch.Generator().manual_seed(seed + _SPLIT_SALT[split])
        labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]
        chunks = []
        for start in range(0, n, 4096):  # bounded memory for large n
            chunks.append(render_shapes(labels[start : start + 4096], size=size, generator=g))
        images = torch.cat(chunks) if chunks else torch.zeros(0, 3, size, size)
        if channels == 1:
            weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            images = (images * weights).sum(dim=1, keepdim=True)
        names = [f"{family}_{shape}" for family in FAMILIES for shape in SHAPES][:num_classes]
        super().__init__((images * 255).round().to(torch.uint8), labels, classes=names)
        self.split = split
