"""The preview grid: a readable PNG with one row per image (original, then its views)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from twinview.views import MultiView, ViewSpec, build_views, preview
from twinview.views.preview import GAP, HEADER, MIN_CELL


def _images(b: int, c: int, side: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (b, c, side, side), generator=g, dtype=torch.uint8)


def test_grid_layout_and_original_column(tmp_path: Path) -> None:
    x = _images(5, 3, 32)
    path = preview(x, build_views("byol", size=32), tmp_path / "grid.png", n=3)
    grid = np.asarray(Image.open(path).convert("RGB"))
    scale = -(-MIN_CELL // 32)  # 32 px images upscaled by 3 to 96 px cells
    cell = 32 * scale
    assert grid.shape == (HEADER + 3 * cell + 4 * GAP, 3 * cell + 4 * GAP, 3)
    for i in range(3):  # first column: the originals, nearest-neighbour upscaled
        y0 = HEADER + GAP + i * (cell + GAP)
        tile = grid[y0 : y0 + cell : scale, GAP : GAP + cell : scale]
        assert np.array_equal(tile, x[i].permute(1, 2, 0).numpy())


def test_views_are_denormalized_views(tmp_path: Path) -> None:
    x = _images(2, 1, 28)
    spec = ViewSpec(28, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip_p=1.0, jitter_p=0.0)
    path = preview(x, MultiView([spec]), tmp_path / "flip.png", n=2)
    grid = np.asarray(Image.open(path).convert("L"))
    scale, cell = 4, 112  # 28 px -> 4x
    x0 = GAP + cell + GAP  # second column
    for i in range(2):
        y0 = HEADER + GAP + i * (cell + GAP)
        tile = grid[y0 : y0 + cell : scale, x0 : x0 + cell : scale]
        assert np.abs(tile.astype(int) - x[i, 0].flip(-1).numpy().astype(int)).max() <= 1


def test_same_seed_same_png_and_errors(tmp_path: Path) -> None:
    x = _images(4, 3, 16)
    views = build_views("multicrop", size=16, local_views=2)
    a = preview(x, views, tmp_path / "a.png", seed=1).read_bytes()
    b = preview(x, views, tmp_path / "sub" / "b.png", seed=1).read_bytes()
    c = preview(x, views, tmp_path / "c.png", seed=2).read_bytes()
    assert a == b and a != c
    with pytest.raises(ValueError, match=r"ending in \.png"):
        preview(x, views, tmp_path / "grid.jpg")
    with pytest.raises(ValueError, match="n must be >= 1"):
        preview(x, views, tmp_path / "grid.png", n=0)


def test_list_of_mixed_sizes_is_square_cropped_to_the_view_size(tmp_path: Path) -> None:
    square = _images(1, 3, 32)[0]  # already the view size: shown unchanged
    tall = torch.empty(3, 30, 20, dtype=torch.uint8)  # 30 high, 20 wide, one colour per half
    tall[:, :15] = torch.tensor([200, 40, 10], dtype=torch.uint8).view(3, 1, 1)
    tall[:, 15:] = torch.tensor([10, 40, 200], dtype=torch.uint8).view(3, 1, 1)
    views = build_views("byol", size=32)
    path = preview([square, tall], views, tmp_path / "mixed.png", n=2)
    grid = np.asarray(Image.open(path).convert("RGB")).astype(int)
    scale, cell = 3, 96  # every image is brought to 32 x 32 first
    assert grid.shape == (HEADER + 2 * cell + 3 * GAP, 3 * cell + 4 * GAP, 3)
    first = grid[HEADER + GAP : HEADER + GAP + cell : scale, GAP : GAP + cell : scale]
    assert np.array_equal(first, square.permute(1, 2, 0).numpy())
    y0 = HEADER + GAP + cell + GAP
    second = grid[y0 : y0 + cell : scale, GAP : GAP + cell : scale]
    # 20 wide -> 32, 30 high -> 48, centre 32 rows kept: the colour edge sits mid-tile.
    assert np.abs(second[:12] - [200, 40, 10]).max() <= 1
    assert np.abs(second[20:] - [10, 40, 200]).max() <= 1
    # The whole 96 px cell is filled: the 20 px wide image was not pasted narrow on white.
    assert not (grid[y0 : y0 + cell, GAP : GAP + cell] == 255).all(axis=2).any()
    # A list of one size is the same grid as the stacked batch.
    same = [_images(1, 3, 32)[0], _images(2, 3, 32)[1]]
    a = preview(same, views, tmp_path / "a.png", seed=3).read_bytes()
    assert a == preview(torch.stack(same), views, tmp_path / "b.png", seed=3).read_bytes()


def test_list_of_images_errors_name_the_problem(tmp_path: Path) -> None:
    views = build_views("byol", size=16)
    with pytest.raises(ValueError, match="empty"):
        preview([], views, tmp_path / "grid.png")
    with pytest.raises(ValueError, match=r"images\[1\] must be a \(C, H, W\) tensor"):
        preview([_images(1, 3, 16)[0], _images(1, 3, 16)], views, tmp_path / "grid.png")
    with pytest.raises(ValueError, match="mix 1- and 3-channel images"):
        preview([_images(1, 3, 16)[0], _images(1, 1, 20)[0]], views, tmp_path / "grid.png")
