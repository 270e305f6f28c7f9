"""ViewSpec / MultiView / presets: the pipeline wires the ops with the right parameters,
probabilities, per-sample independence, determinism, and both the in-memory and the
worker (geometry) + device (photometry) paths."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torchvision.transforms.functional as TF
from scipy import stats
from tolerance import assert_close_to_scale
from torch.utils.data import DataLoader, Dataset

from twinview.views import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PRESETS,
    MultiView,
    ViewSpec,
    bernoulli,
    build_views,
    sample_crop_box,
    sample_crop_boxes,
)

OFF = dict(hflip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, solarize_p=0.0)
WHOLE = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))  # the whole (square) image


def _images(b: int, c: int, side: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, c, side, side), generator=g, dtype=torch.uint8)


def _normalized(x: torch.Tensor, spec: ViewSpec) -> torch.Tensor:
    mean, std = spec.stats(x.shape[1])
    return TF.normalize(x.float() / 255, mean, std)


@pytest.mark.parametrize("channels", [1, 3])
def test_crop_only_view_is_torchvision_resized_crop(channels: int) -> None:
    x = _images(8, channels, 24)
    spec = ViewSpec(16, **{**OFF, "hflip_p": 0.5})
    (view,) = MultiView([spec])(x, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)  # replay the draws: boxes, then flips
    boxes = sample_crop_boxes(8, 24, 24, generator=g)
    flip = bernoulli(8, 0.5, generator=g)
    ref = torch.stack(
        [
            TF.resized_crop(x[i].float(), *boxes[i].tolist(), [16, 16], antialias=True)
            for i in range(8)
        ]
    )
    ref = torch.where(flip[:, None, None, None], TF.hflip(ref), ref).round().to(torch.uint8)
    # float path vs torchvision's uint8 result: within one grey level
    assert (view - _normalized(ref, spec)).abs().max() <= 1.01 / 255 / min(spec.stats(channels)[1])


def test_geometry_path_is_exact_on_whole_crop_and_flips() -> None:
    x = _images(1, 3, 20)[0]
    same, flipped = MultiView(
        [ViewSpec(20, **WHOLE, hflip_p=0.0), ViewSpec(20, **WHOLE, hflip_p=1.0)]
    ).geometry(x)
    assert same.dtype == torch.uint8 and torch.equal(same, x)
    assert torch.equal(flipped, x.flip(-1))


def test_geometry_matches_torchvision_for_its_box() -> None:
    x = _images(1, 3, 40)[0]
    views = MultiView([ViewSpec((12, 18), hflip_p=0.0)])
    (out,) = views.geometry(x, torch.Generator().manual_seed(5))
    box = sample_crop_box(40, 40, generator=torch.Generator().manual_seed(5))  # same draws
    ref = TF.resized_crop(x, *box, [12, 18], antialias=True)
    assert out.shape == (3, 12, 18) and (out.int() - ref.int()).abs().max() <= 1


def test_photometry_with_everything_off_only_normalizes() -> None:
    spec = ViewSpec(8, **OFF)
    batch = _images(4, 3, 8)
    (out,) = MultiView([spec]).photometry([batch])
    assert_close_to_scale(out, TF.normalize(batch.float() / 255, IMAGENET_MEAN, IMAGENET_STD))
    assert batch.dtype == torch.uint8  # input untouched


def test_grayscale_and_blur_happen_with_their_probabilities() -> None:
    n = 400
    x = _images(n, 3, 12)
    gray_spec = ViewSpec(12, **{**OFF, **WHOLE, "grayscale_p": 0.3})
    blur_spec = ViewSpec(12, **{**OFF, **WHOLE, "blur_p": 0.5}, blur_sigma=(1.0, 2.0))
    gray, blur = MultiView([gray_spec, blur_spec])(x, torch.Generator().manual_seed(0))
    mean, std = (
        torch.tensor(IMAGENET_MEAN)[:, None, None],
        torch.tensor(IMAGENET_STD)[:, None, None],
    )
    rgb = gray * std + mean
    n_gray = int(((rgb[:, 0] - rgb[:, 1]).abs().amax(dim=(1, 2)) < 1e-5).sum())
    assert stats.binomtest(n_gray, n, 0.3).pvalue > 1e-3
    n_blur = int(((blur - _normalized(x, ViewSpec(12))).abs().amax(dim=(1, 2, 3)) > 1e-4).sum())
    assert stats.binomtest(n_blur, n, 0.5).pvalue > 1e-3


def test_solarize_and_brightness_through_the_pipeline() -> None:
    x = _images(16, 3, 10)
    sol, bright = MultiView(
        [
            ViewSpec(10, **{**OFF, **WHOLE, "solarize_p": 1.0}),
            ViewSpec(
                10,
                **{**OFF, **WHOLE, "jitter_p": 1.0},
                brightness=0.5,
                contrast=0,
                saturation=0,
                hue=0,
            ),
        ]
    )(x)
    assert_close_to_scale(sol, _normalized(TF.solarize(x, 128), ViewSpec(10)))
    # brightness only: each image scaled by its own factor in [0.5, 1.5] (unclipped pixels)
    mean, std = (
        torch.tensor(IMAGENET_MEAN)[:, None, None],
        torch.tensor(IMAGENET_STD)[:, None, None],
    )
    ratio = (bright * std + mean) / (x.float() / 255).clamp(min=1e-3)
    ok = (x > 20) & (x < 160)
    factors = torch.stack([r[m].median() for r, m in zip(ratio, ok)])
    assert ((factors > 0.5 - 1e-4) & (factors < 1.5 + 1e-4)).all()
    assert factors.unique().numel() == 16  # per-sample factors
    spread = torch.stack([(r[m] - f).abs().max() for r, m, f in zip(ratio, ok, factors)])
    assert spread.max() < 1e-3  # one factor per image


def test_views_of_identical_images_differ() -> None:
    x = _images(1, 3, 16).expand(32, -1, -1, -1)
    for view in build_views("simclr", size=16)(x):
        flat = view.reshape(32, -1)
        assert torch.cdist(flat, flat).add(torch.eye(32)).min() > 1e-3


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_same_seed_same_views(preset: str) -> None:
    views = build_views(preset, size=16)
    x = _images(4, 3, 20)
    a = views(x, torch.Generator().manual_seed(0))
    b = views(x, torch.Generator().manual_seed(0))
    c = views(x, torch.Generator().manual_seed(1))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not all(torch.equal(u, v) for u, v in zip(a, c))
    crops = [views.geometry(x[0], torch.Generator().manual_seed(2)) for _ in range(2)]
    assert all(torch.equal(u, v) for u, v in zip(*crops))
    batches = [torch.stack([views.geometry(im)[j] for im in x]) for j in range(len(views))]
    p = [views.photometry(batches, torch.Generator().manual_seed(4)) for _ in range(2)]
    assert all(torch.equal(u, v) for u, v in zip(*p))


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_on_fashion_mnist_shaped_input(preset: str) -> None:
    x = _images(4, 1, 28)
    views = build_views(preset, size=28)
    outs = views(x)
    assert len(outs) == {"multicrop": 8, "swav": 8, "dino": 10}.get(preset, 2)
    for spec, out in zip(views.specs, outs):
        assert out.shape == (4, 1, *spec.hw) and out.dtype == torch.float32
        assert out.isfinite().all() and out.min() >= -1 - 1e-6 and out.max() <= 1 + 1e-6
    rgb = build_views(preset, size=28, to_rgb=True)(x)
    assert all(o.shape[1] == 3 for o in rgb)
    assert_close_to_scale(rgb[0][:, 0] * 0.229 + 0.485, rgb[0][:, 2] * 0.225 + 0.406)


def test_presets_carry_the_papers_numbers() -> None:
    byol = build_views("byol", size=224).specs
    assert [s.blur_p for s in byol] == [1.0, 0.1] and [s.solarize_p for s in byol] == [0.0, 0.2]
    assert (byol[0].brightness, byol[0].contrast, byol[0].saturation, byol[0].hue) == (
        0.4,
        0.4,
        0.2,
        0.1,
    )
    assert build_views("moco_v3", size=224).specs == byol
    # DINO: 2 global crops scale (0.4, 1), blur 1.0 / 0.1, solarize 0 / 0.2; 8 local crops of 96
    # px, scale (0.05, 0.4), blur 0.5 (official DataAugmentationDINO). SwAV: 2 x 224 + 6 x 96.
    dino = build_views("dino", size=224).specs
    assert [s.size for s in dino] == [224, 224] + [96] * 8
    assert [s.crop_scale for s in dino] == [(0.4, 1.0)] * 2 + [(0.05, 0.4)] * 8
    assert [s.blur_p for s in dino] == [1.0, 0.1] + [0.5] * 8
    assert [s.solarize_p for s in dino] == [0.0, 0.2] + [0.0] * 8
    swav = build_views("swav", size=224).specs
    assert [s.size for s in swav] == [224, 224] + [96] * 6
    assert [s.crop_scale for s in swav] == [(0.14, 1.0)] * 2 + [(0.05, 0.14)] * 6
    assert (
        build_views("dino", size=32, local_views=3, local_size=16).specs[2:]
        == (dino[2].replace(size=16),) * 3
    )
    simclr = build_views("simclr", size=224).specs[0]
    assert (simclr.brightness, simclr.hue, simclr.blur_p, simclr.crop_scale) == (
        0.8,
        0.2,
        0.5,
        (0.08, 1.0),
    )
    assert build_views("simclr_cifar", size=32).specs[0].blur_p == 0.0
    moco = build_views("moco_v2", size=224).specs
    assert (
        moco[0].crop_scale == (0.2, 1.0)
        and moco[0].blur_p == 0.5
        and moco == build_views("simsiam", size=224).specs
    )
    multi = build_views("multicrop", size=224, local_views=4).specs
    assert [s.size for s in multi] == [224, 224, 96, 96, 96, 96]
    assert multi[0].crop_scale == (0.14, 1.0) and multi[2].crop_scale == (0.05, 0.14)


def test_overrides_and_bad_input_are_reported() -> None:
    views = build_views("byol", size=32, blur_p=0.0, mean=(0.5,) * 3, std=(0.25,) * 3)
    assert all(s.blur_p == 0.0 and s.std == (0.25,) * 3 for s in views.specs)
    assert views.specs[1].solarize_p == 0.2  # other fields keep the preset's values
    with pytest.raises(ValueError, match=r"valid presets: .*byol"):
        build_views("simclr_v9", size=32)
    with pytest.raises(ValueError, match=r"unknown ViewSpec field.*blur_prob.*valid fields"):
        build_views("simclr", size=32, blur_prob=0.5)
    with pytest.raises(ValueError, match="only apply to the multi-crop presets"):
        build_views("simclr", size=32, local_views=2)
    with pytest.raises(ValueError, match="hflip_p is a probability"):
        ViewSpec(32, hflip_p=1.5)
    with pytest.raises(ValueError, match="size must be a positive int"):
        ViewSpec(0)
    with pytest.raises(ValueError, match="crop_scale"):
        ViewSpec(32, crop_scale=(0.5, 0.2))
    with pytest.raises(dataclasses.FrozenInstanceError):
        ViewSpec(32).size = 16  # type: ignore[misc]
    with pytest.raises(ValueError, match="mean has 3 values but the views have 1 channels"):
        build_views("simclr", size=8, mean=IMAGENET_MEAN, std=IMAGENET_STD)(_images(2, 1, 8))
    with pytest.raises(ValueError, match="1 or 3 channels"):
        build_views("simclr", size=8)(torch.zeros(2, 4, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="2 view batches for 1 specs"):
        MultiView([ViewSpec(8)]).photometry([_images(2, 3, 8)] * 2)
    with pytest.raises(ValueError, match="does not match size"):
        MultiView([ViewSpec(8)]).photometry([_images(2, 3, 9)])


def test_default_normalization() -> None:
    assert ViewSpec(8).stats(3) == (IMAGENET_MEAN, IMAGENET_STD)
    assert ViewSpec(8).stats(1) == ((0.5,), (0.5,))
    assert ViewSpec(8, to_rgb=True).stats(1) == (IMAGENET_MEAN, IMAGENET_STD)


class _Folder(Dataset):
    """Stands in for an image folder: decodes (here: generates) and runs geometry per image."""

    def __init__(self, views: MultiView) -> None:
        self.views, self.images = views, _images(6, 3, 30)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> list[torch.Tensor]:
        return self.views.geometry(self.images[i])


def test_worker_geometry_then_device_photometry() -> None:
    views = build_views("multicrop", size=16, local_views=2)
    (batches,) = list(DataLoader(_Folder(views), batch_size=6))
    assert [tuple(b.shape) for b in batches] == [(6, 3, 16, 16)] * 2 + [(6, 3, 8, 8)] * 2
    assert all(b.dtype == torch.uint8 for b in batches)
    outs = views.photometry(batches)
    assert [o.shape for o in outs] == [b.shape for b in batches]
    assert all(o.dtype == torch.float32 and o.isfinite().all() for o in outs)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("preset", ["simclr", "byol"])
def test_photometry_on_uint8_equals_photometry_on_float(preset: str, channels: int) -> None:
    """The uint8 entry (image-folder batches) gives the views of the same images as float / 255,
    with the same random parameters: same seed, same views."""
    views = build_views(preset, size=24)
    batches = [_images(12, channels, 24, seed=s) for s in (5, 6)]
    from_u8 = views.photometry(batches, torch.Generator().manual_seed(9))
    from_float = views.photometry(
        [b.float() / 255 for b in batches], torch.Generator().manual_seed(9)
    )
    for u, f, b, spec in zip(from_u8, from_float, batches, views.specs):
        assert u.dtype == f.dtype == torch.float32
        assert u.shape == f.shape == (12, spec.out_channels(channels), 24, 24)
        # float32 colour ops on x / 255 computed two ways (the contrast's mean sums 24 x 24
        # pixels), then divided by the std: a few eps x sqrt(H x W) of the views' scale
        assert_close_to_scale(u, f, terms=24 * 24)
        # the colour ops did run: not just the normalised input
        assert not torch.allclose(u, _normalized(b, spec).expand_as(u), atol=1e-3)
    # inputs untouched (photometry works on its own copy)
    assert torch.equal(batches[0], _images(12, channels, 24, seed=5))


def test_rotation_rotates() -> None:
    x = torch.full((4, 1, 16, 16), 255, dtype=torch.uint8)
    (out,) = MultiView([ViewSpec(16, **{**OFF, **WHOLE}, rotation=45.0)])(x)
    corners = out[:, 0, [0, 0, -1, -1], [0, -1, 0, -1]]
    # a white square turned by up to 45 degrees shows the zero fill in its corners (mostly)
    assert (corners < 0.9).float().mean() > 0.5 and (out[:, 0, 8, 8] > 0.99).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_views_follow_the_generator() -> None:
    views = build_views("byol", size=16)
    x = _images(8, 3, 20).cuda()
    a = views(x, torch.Generator(device="cuda").manual_seed(0))
    b = views(x, torch.Generator(device="cuda").manual_seed(0))
    c = views(x, torch.Generator().manual_seed(0))  # CPU generator, CUDA images
    assert all(u.is_cuda and torch.equal(u, v) for u, v in zip(a, b)) and c[0].is_cuda
