"""The report's pictures, each returned as PNG bytes.

Figures are built on :class:`matplotlib.figure.Figure` with the Agg canvas directly, never
through ``pyplot``: no global figure registry, no backend switching, safe in threads and in
processes that already use another backend. The nearest-neighbour grid is composed with PIL
(one pass over small tiles, pixel-exact, much faster than one matplotlib axis per image).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

SAME_LABEL = (34, 160, 60)  # green border: neighbour shares the query's label
OTHER_LABEL = (214, 40, 40)  # red border: it does not
NO_LABEL = (150, 150, 150)  # grey: labels unknown
QUERY = (50, 100, 200)  # blue: the query image


def figure_png(fig: Figure, *, dpi: int = 100) -> bytes:
    """Render ``fig`` with Agg and return PNG bytes."""
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


@dataclass
class Series:
    """One line of a panel: y (n,) against x (n,)."""

    label: str
    x: np.ndarray
    y: np.ndarray
    smooth: bool = False  # draw the raw values faintly and a moving average on top


@dataclass
class Panel:
    """One axis: lines, optional horizontal reference lines and vertical event markers."""

    title: str
    xlabel: str
    ylabel: str = ""
    series: list[Series] = field(default_factory=list)
    hlines: list[tuple[float, str]] = field(default_factory=list)  # (y, legend label)
    vlines: list[float] = field(default_factory=list)  # x of events (collapse warnings)
    vline_label: str = ""
    percent: bool = False  # y values are fractions, shown as percentages
    integer_x: bool = False  # x ticks on whole numbers only (epochs)


def moving_average(y: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over ``window`` values; the first values average what exists so far."""
    y = np.asarray(y, dtype=np.float64)
    if window <= 1 or y.size == 0:
        return y
    csum = np.cumsum(np.insert(y, 0, 0.0))
    counts = np.minimum(np.arange(1, y.size + 1), window)
    return (csum[1:] - csum[np.arange(1, y.size + 1) - counts]) / counts


def _draw_panel(ax, panel: Panel) -> None:
    for i, s in enumerate(panel.series):
        colour = f"C{i}"
        marker = "o" if s.x.size <= 30 else None
        if s.smooth and s.x.size >= 50:
            ax.plot(s.x, s.y, color=colour, alpha=0.25, linewidth=0.8)
            smoothed = moving_average(s.y, max(2, s.x.size // 25))
            ax.plot(s.x, smoothed, color=colour, linewidth=1.6, label=f"{s.label} (smoothed)")
        else:
            ax.plot(s.x, s.y, color=colour, marker=marker, markersize=3.5, label=s.label)
    for y, label in panel.hlines:
        ax.axhline(y, color="0.35", linestyle="--", linewidth=1.0, label=label)
    for j, x in enumerate(panel.vlines):
        ax.axvline(
            x,
            color="tab:red",
            alpha=0.5,
            linewidth=1.0,
            label=panel.vline_label if j == 0 else None,
        )
    if panel.integer_x:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if panel.percent:
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    ax.set_title(panel.title, fontsize=11)
    ax.set_xlabel(panel.xlabel)
    if panel.ylabel:
        ax.set_ylabel(panel.ylabel)
    ax.grid(True, alpha=0.3)
    if len(panel.series) + len(panel.hlines) + bool(panel.vlines) > 1:
        ax.legend(fontsize=8)


def panels_png(
    panels: Sequence[Panel], *, ncols: int = 3, panel_size: tuple[float, float] = (4.3, 3.1)
) -> bytes:
    """A row-major grid of line plots, one per :class:`Panel`, as PNG bytes."""
    if not panels:
        raise ValueError("panels_png: no panels to draw")
    ncols = 2 if len(panels) == 4 else min(ncols, len(panels))  # 2 x 2 rather than 3 + 1
    nrows = -(-len(panels) // ncols)
    fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, panel in zip(axes, panels):
        _draw_panel(ax, panel)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    return figure_png(fig)


def scatter_png(
    points: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    class_names: Sequence[str] | None = None,
    title: str = "",
) -> bytes:
    """2-D points (n, 2) coloured by integer label (n,), with a legend of class names.

    Up to 20 classes get distinct tab10 / tab20 colours and a legend; more get a continuous
    colour map and a colour bar of label ids.
    """
    fig = Figure(figsize=(8.0, 6.4), layout="constrained")
    ax = fig.subplots()
    n = points.shape[0]
    size = 14.0 if n <= 500 else 6.0 if n <= 2000 else 3.0
    if labels is None:
        ax.scatter(points[:, 0], points[:, 1], s=size, color="C0", alpha=0.7, linewidths=0)
    else:
        classes = np.unique(labels)
        if classes.size <= 20:
            palette = "tab10" if classes.size <= 10 else "tab20"
            colours = colormaps[palette].colors
            for i, c in enumerate(classes):
                mask = labels == c
                name = _class_name(int(c), class_names)
                ax.scatter(
                    points[mask, 0],
                    points[mask, 1],
                    s=size,
                    color=colours[i],
                    alpha=0.8,
                    linewidths=0,
                    label=name,
                )
            ax.legend(
                loc="center left",
                bbox_to_anchor=(1.01, 0.5),
                markerscale=3,
                fontsize=9,
                frameon=False,
            )
        else:
            sc = ax.scatter(
                points[:, 0],
                points[:, 1],
                s=size,
                c=labels,
                cmap="viridis",
                alpha=0.8,
                linewidths=0,
            )
            fig.colorbar(sc, ax=ax, label="label")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=11)
    return figure_png(fig)


def _class_name(label: int, class_names: Sequence[str] | None) -> str:
    if class_names is not None and 0 <= label < len(class_names):
        return str(class_names[label])
    return str(label)


def _tile(image: np.ndarray, size: int) -> Image.Image:
    """(C, H, W) uint8 -> RGB PIL image of size x size (nearest when enlarging)."""
    pil = (
        Image.fromarray(image[0])
        if image.shape[0] == 1
        else Image.fromarray(np.ascontiguousarray(image[:3].transpose(1, 2, 0)))
    )
    resample = Image.NEAREST if max(pil.size) < size else Image.LANCZOS
    return pil.convert("RGB").resize((size, size), resample)


def as_uint8_images(images: Tensor | np.ndarray) -> np.ndarray:
    """Check and convert (N, C, H, W) images (uint8, or floats in [0, 1]) to uint8 numpy."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] not in (1, 3, 4):
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images)
        raise ValueError(f"images must be a (N, C, H, W) tensor with C in (1, 3, 4), got {shape}")
    images = images.detach().cpu()
    if images.is_floating_point():
        images = (images.clamp(0, 1) * 255).round()
    return images.to(dtype=torch.uint8).numpy()


def neighbour_grid_png(
    images: Tensor | np.ndarray,
    queries: np.ndarray,
    neighbours: np.ndarray,
    *,
    labels: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    tile: int = 64,
) -> bytes:
    """One row per query: the query image, then its neighbours in rank order.

    Args:
        images: (N, C, H, W) uint8 images (or floats in [0, 1]).
        queries: (Q,) indices of the query images.
        neighbours: (Q, k) indices of each query's neighbours, nearest first.
        labels: (N,) integer labels; a neighbour's border is green when its label equals the
            query's, red otherwise. Without labels every border is grey.
        class_names: names for the row captions (label ids otherwise).
        tile: side of each image tile in pixels.
    """
    pixels = as_uint8_images(images)
    q, k = neighbours.shape
    border, gap, caption_w, header_h = max(2, tile // 16), 6, 110, 18
    cell = tile + 2 * border + gap
    width = caption_w + cell * (k + 1) + 2 * gap
    height = header_h + cell * q + gap
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=12)

    def place(index: int, row: int, col: int, colour: tuple[int, int, int]) -> None:
        x = caption_w + col * cell + (gap * 2 if col > 0 else 0)
        y = header_h + row * cell
        draw.rectangle([x, y, x + tile + 2 * border - 1, y + tile + 2 * border - 1], fill=colour)
        canvas.paste(_tile(pixels[index], tile), (x + border, y + border))

    draw.text((caption_w, 2), "query", fill="black", font=font)
    for col in range(1, k + 1):
        draw.text((caption_w + col * cell + 2 * gap, 2), f"#{col}", fill="black", font=font)
    for row, (query, nbrs) in enumerate(zip(queries, neighbours)):
        caption = "" if labels is None else _class_name(int(labels[query]), class_names)
        draw.text((4, header_h + row * cell + tile // 2), caption[:16], fill="black", font=font)
        place(int(query), row, 0, QUERY)
        for col, index in enumerate(nbrs, start=1):
            if labels is None:
                colour = NO_LABEL
            else:
                colour = SAME_LABEL if labels[index] == labels[query] else OTHER_LABEL
            place(int(index), row, col, colour)
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()
