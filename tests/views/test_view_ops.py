"""Batched view ops against torchvision: sampled distributions (KS / chi-square tests) and each
op against torchvision's functional op for the same fixed parameters, on uint8 and float,
1 and 3 channels."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from scipy import stats
from tolerance import rounding, scale_of

from twinview.views import (
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    blur_kernel_size,
    color_jitter,
    gaussian_blur,
    hflip,
    normalize,
    random_grayscale,
    resized_crop,
    rgb_to_grayscale,
    rotate,
    sample_crop_box,
    sample_crop_boxes,
    sample_jitter,
    solarize,
)
from twinview.views.ops_color import JitterParams

B, H, W = 6, 18, 22


def _images(dtype: torch.dtype, channels: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (B, channels, H, W), generator=g, dtype=torch.uint8)
    return x if dtype == torch.uint8 else x.float() / 255


def _reference(fn, images: torch.Tensor, *params) -> torch.Tensor:
    """torchvision's op applied image by image with that image's parameters."""
    return torch.stack([fn(images[i], *(p[i] for p in params)) for i in range(len(images))])


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


# uint8 results may differ by one level: torchvision truncates after each op, we round once.
# float32 pixels lie in [0, 1] and round otherwise than torchvision's by a few eps; the contrast's
# mean and the blur sum up to H x W terms.
TOL = {torch.uint8: 1.0, torch.float32: rounding(torch.float32, terms=H * W)}
CASES = list(itertools.product([torch.uint8, torch.float32], [1, 3]))


# ----------------------------------------------------------------- sampled distributions
@pytest.mark.parametrize(
    ("height", "width", "scale", "ratio"),
    [(32, 32, (0.08, 1.0), (3 / 4, 4 / 3)), (20, 48, (0.3, 1.0), (0.5, 4.0))],
)
def test_crop_boxes_follow_torchvision(height, width, scale, ratio) -> None:
    n = 3000
    g = torch.Generator().manual_seed(0)
    batched = sample_crop_boxes(n, height, width, scale=scale, ratio=ratio, generator=g).double()
    one_by_one = torch.tensor(
        [sample_crop_box(height, width, scale=scale, ratio=ratio, generator=g) for _ in range(n)]
    ).double()
    torch.manual_seed(1)
    img = torch.empty(1, height, width)
    ref = torch.tensor(
        [T.RandomResizedCrop.get_params(img, list(scale), list(ratio)) for _ in range(n)]
    ).double()
    for ours in (batched, one_by_one):  # in-memory path and worker path
        for name, a, b in [
            ("area", ours[:, 2] * ours[:, 3], ref[:, 2] * ref[:, 3]),
            ("aspect", ours[:, 3] / ours[:, 2], ref[:, 3] / ref[:, 2]),
            ("top", ours[:, 0] / (height - ours[:, 2] + 1), ref[:, 0] / (height - ref[:, 2] + 1)),
            ("left", ours[:, 1] / (width - ours[:, 3] + 1), ref[:, 1] / (width - ref[:, 3] + 1)),
        ]:
            assert stats.ks_2samp(a.numpy(), b.numpy()).pvalue > 1e-3, name
        # boxes always lie inside the image
        assert (ours[:, 0] >= 0).all() and (ours[:, 0] + ours[:, 2] <= height).all()
        assert (ours[:, 1] >= 0).all() and (ours[:, 1] + ours[:, 3] <= width).all()


def test_crop_fallback_is_torchvision_central_crop() -> None:
    # no try can fit an aspect ratio >= 5 in a 10 x 40 image -> central crop with ratio 5
    boxes = sample_crop_boxes(50, 10, 40, scale=(0.9, 1.0), ratio=(5.0, 6.0))
    torch.manual_seed(0)
    ref = T.RandomResizedCrop.get_params(torch.empty(1, 10, 40), [0.9, 1.0], [5.0, 6.0])
    assert boxes.tolist() == [list(ref)] * 50
    assert sample_crop_box(10, 40, scale=(0.9, 1.0), ratio=(5.0, 6.0)) == tuple(ref)


def test_jitter_parameters_follow_torchvision() -> None:
    n = 4800
    ours = sample_jitter(
        n,
        brightness=0.4,
        contrast=0.3,
        saturation=0.2,
        hue=0.1,
        p=0.8,
        generator=torch.Generator().manual_seed(0),
    )
    torch.manual_seed(0)
    ranges = ([0.6, 1.4], [0.7, 1.3], [0.8, 1.2], [-0.1, 0.1])
    ref = [T.ColorJitter.get_params(*ranges) for _ in range(n)]
    ref_factors = torch.tensor([r[1:] for r in ref])
    for j in range(4):
        p = stats.ks_2samp(ours.factors[:, j].numpy(), ref_factors[:, j].numpy()).pvalue
        assert p > 1e-3, j
    # orders: every one of the 24 permutations, uniformly (chi-square), as randperm(4)
    perms = {p: i for i, p in enumerate(itertools.permutations(range(4)))}
    counts = torch.bincount(
        torch.tensor([perms[tuple(o)] for o in ours.order.tolist()]), minlength=24
    )
    assert stats.chisquare(counts.numpy()).pvalue > 1e-3
    ref_counts = torch.bincount(
        torch.tensor([perms[tuple(r[0].tolist())] for r in ref]), minlength=24
    )
    assert stats.chi2_contingency(torch.stack([counts, ref_counts]).numpy()).pvalue > 1e-3
    # apply ~ Bernoulli(0.8)
    assert stats.binomtest(int(ours.apply.sum()), n, 0.8).pvalue > 1e-3


def test_zero_strength_gives_identity_factors() -> None:
    params = sample_jitter(100, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, p=1.0)
    assert torch.equal(params.factors, torch.tensor([[1.0, 1.0, 1.0, 0.0]]).expand(100, 4))


def test_per_sample_parameters_differ_within_a_batch() -> None:
    g = torch.Generator().manual_seed(0)
    boxes = sample_crop_boxes(64, 64, 64, generator=g)
    assert len({tuple(b) for b in boxes.tolist()}) > 60
    params = sample_jitter(64, generator=g)
    assert params.factors[:, 0].unique().numel() == 64
    assert len({tuple(o) for o in params.order.tolist()}) > 10
    # identical images in, different views out
    images = _images(torch.float32, 3)[:1].expand(16, -1, -1, -1)
    crops = resized_crop(images, sample_crop_boxes(16, H, W, generator=g), 12)
    views = color_jitter(crops, JitterParams(*(t[:16] for t in params)))
    flat = views.reshape(16, -1)
    assert torch.cdist(flat, flat).add(torch.eye(16)).min() > 1e-3


def test_same_seed_same_parameters() -> None:
    a = sample_crop_boxes(32, 40, 40, generator=torch.Generator().manual_seed(7))
    b = sample_crop_boxes(32, 40, 40, generator=torch.Generator().manual_seed(7))
    c = sample_crop_boxes(32, 40, 40, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


# ------------------------------------------------------------- ops vs torchvision, fixed params
@pytest.mark.parametrize(("dtype", "channels"), CASES)
@pytest.mark.parametrize(
    ("ours", "ref", "factors"),
    [
        (adjust_brightness, TF.adjust_brightness, [0.0, 0.5, 1.0, 1.3, 1.7, 2.5]),
        (adjust_contrast, TF.adjust_contrast, [0.0, 0.5, 1.0, 1.3, 1.7, 2.5]),
        (adjust_saturation, TF.adjust_saturation, [0.0, 0.5, 1.0, 1.3, 1.7, 2.5]),
        (adjust_hue, TF.adjust_hue, [-0.5, -0.2, 0.0, 0.05, 0.3, 0.5]),
    ],
)
def test_colour_ops_match_torchvision(ours, ref, factors, dtype, channels) -> None:
    x = _images(dtype, channels)
    f = torch.tensor(factors)
    out = ours(x, f)
    assert out.dtype == dtype and out.shape == x.shape
    assert _max_diff(out, _reference(ref, x, f.tolist())) <= TOL[dtype] * (
        2 if ref is TF.adjust_hue else 1
    )


@pytest.mark.parametrize(("dtype", "channels"), CASES)
def test_grayscale_matches_torchvision(dtype, channels) -> None:
    x = _images(dtype, channels)
    if channels == 3:
        assert _max_diff(rgb_to_grayscale(x), TF.rgb_to_grayscale(x)) <= TOL[dtype]
    apply = torch.tensor([True, False, True, False, False, True])
    out = random_grayscale(x, apply)
    ref = torch.stack(
        [
            TF.rgb_to_grayscale(x[i], channels) if a and channels == 3 else x[i]
            for i, a in enumerate(apply)
        ]
    )
    assert out.shape == x.shape and _max_diff(out, ref) <= TOL[dtype]
    assert torch.equal(out[~apply], x[~apply])


def test_hue_keeps_gray_pixels_and_ties() -> None:
    x = torch.tensor([0.0, 0.25, 0.5, 1.0])[torch.randint(0, 4, (B, 3, H, W))]  # many ties
    x[0] = x[0, :1]  # a gray image
    shift = torch.tensor([0.1, -0.3, 0.5, 0.2, -0.5, 0.0])
    ref = _reference(TF.adjust_hue, x, shift.tolist())
    assert _max_diff(adjust_hue(x, shift), ref) <= TOL[torch.float32]
    assert torch.equal(adjust_hue(x, shift)[0], x[0])


@pytest.mark.parametrize(("dtype", "channels"), CASES)
def test_colour_jitter_matches_torchvision_sequence(dtype, channels) -> None:
    x = _images(dtype, channels)
    factors = torch.tensor(
        [
            [0.7, 1.3, 0.6, 0.1],
            [1.4, 0.6, 1.4, -0.1],
            [1.1, 1.2, 0.8, 0.05],
            [0.6, 0.9, 1.3, -0.07],
            [1.2, 0.7, 0.9, 0.0],
            [0.9, 1.1, 1.1, 0.09],
        ]
    )
    order = torch.tensor(
        [[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2], [2, 0, 3, 1], [3, 0, 1, 2], [0, 2, 3, 1]]
    )
    apply = torch.tensor([True, True, True, True, False, True])
    out = color_jitter(x, JitterParams(factors, order, apply))
    fns = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    ref = []
    for i in range(B):
        img = x[i]
        for op in order[i].tolist() if apply[i] else []:
            img = fns[op](img, factors[i, op].item())
        ref.append(img)
    # uint8: torchvision truncates after each of the 4 ops, we round once at the end
    assert _max_diff(out, torch.stack(ref)) <= (4.0 if dtype == torch.uint8 else TOL[dtype])
    assert torch.equal(out[4], x[4])


@pytest.mark.parametrize(("dtype", "channels"), CASES)
def test_gaussian_blur_matches_torchvision(dtype, channels) -> None:
    x = _images(dtype, channels)
    sigma = torch.tensor([0.1, 0.5, 1.0, 1.5, 2.0, 3.0])
    for k in (3, 5):
        ref = _reference(lambda im, s, k=k: TF.gaussian_blur(im, [k, k], [s, s]), x, sigma.tolist())
        assert _max_diff(gaussian_blur(x, sigma, k), ref) <= TOL[dtype]


def test_blur_kernel_is_ten_percent_of_the_side() -> None:
    assert [blur_kernel_size(s) for s in (28, 32, 96, 224)] == [3, 3, 9, 23]


@pytest.mark.parametrize(("dtype", "channels"), CASES)
def test_solarize_matches_torchvision(dtype, channels) -> None:
    x = _images(dtype, channels)
    threshold = 128 if dtype == torch.uint8 else 0.5
    apply = torch.tensor([True, False, True, True, False, True])
    out = solarize(x, 0.5, apply)
    ref = torch.stack([TF.solarize(x[i], threshold) if a else x[i] for i, a in enumerate(apply)])
    assert out.dtype == dtype and _max_diff(out, ref) == 0.0


@pytest.mark.parametrize(("dtype", "channels"), CASES)
def test_resized_crop_and_flip_match_torchvision(dtype, channels) -> None:
    x = _images(dtype, channels)
    boxes = torch.tensor(
        [[0, 0, H, W], [3, 4, 10, 6], [5, 2, 13, 20], [1, 1, 2, 3], [0, 7, 18, 15], [9, 0, 9, 22]]
    )
    flip = torch.tensor([False, True, False, True, True, False])
    for size in [(16, 16), (40, 30), (7, 9)]:  # down- and upsampling, antialiased
        out = resized_crop(x, boxes, size, flip=flip)
        ref = torch.stack(
            [
                TF.resized_crop(x[i], *boxes[i].tolist(), list(size), antialias=True)
                for i in range(B)
            ]
        )
        ref = torch.where(flip[:, None, None, None], TF.hflip(ref), ref)
        assert out.dtype == dtype and _max_diff(out, ref) <= TOL[dtype], size
    assert torch.equal(hflip(x, flip), torch.where(flip[:, None, None, None], TF.hflip(x), x))


@pytest.mark.parametrize(("dtype", "channels"), CASES)
def test_rotate_matches_torchvision(dtype, channels) -> None:
    x = _images(dtype, channels)
    angles = torch.tensor([-30.0, 0.0, 10.0, 45.0, 90.0, 170.0])
    ref = _reference(
        lambda im, a: TF.rotate(im, a, TF.InterpolationMode.BILINEAR), x, angles.tolist()
    )
    assert _max_diff(rotate(x, angles), ref) <= TOL[dtype] * 5  # grid rounding, as torchvision


@pytest.mark.parametrize(("dtype", "channels"), CASES)
def test_normalize_matches_torchvision(dtype, channels) -> None:
    x = _images(dtype, channels)
    mean, std = (0.4, 0.5, 0.6)[:channels], (0.2, 0.3, 0.25)[:channels]
    ref = TF.normalize(x.float() / (255 if dtype == torch.uint8 else 1), mean, std)
    # a few float32 eps of the normalised values (up to 3 here)
    assert _max_diff(normalize(x, mean, std), ref) <= rounding(torch.float32) * scale_of(ref)
    if channels == 1:  # expansion to RGB
        out = normalize(x, (0.5,) * 3, (0.5,) * 3, channels=3)
        assert out.shape[1] == 3 and torch.equal(out[:, 0], out[:, 2])
    with pytest.raises(ValueError, match="one per channel"):
        normalize(x, (0.5,) * 2, (0.5,) * 2)


def test_bad_input_is_reported() -> None:
    with pytest.raises(ValueError, match=r"hue shift must be in \[-0.5, 0.5\]"):
        adjust_hue(_images(torch.float32, 3), 0.7)
    with pytest.raises(TypeError, match="uint8 or floating"):
        adjust_brightness(torch.zeros(1, 3, 4, 4, dtype=torch.int32), 1.0)
    with pytest.raises(ValueError, match="odd"):
        gaussian_blur(_images(torch.float32, 3), 1.0, 4)
    assert math.isfinite(float(adjust_contrast(torch.zeros(1, 3, 4, 4), 2.0).sum()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    x = _images(torch.uint8, 3)
    boxes = sample_crop_boxes(B, H, W, generator=torch.Generator().manual_seed(0))
    params = sample_jitter(B, generator=torch.Generator().manual_seed(0))
    cpu = color_jitter(resized_crop(x, boxes, 16).float() / 255, params)
    gpu = color_jitter(
        resized_crop(x.cuda(), boxes.cuda(), 16).float() / 255,
        JitterParams(*(t.cuda() for t in params)),
    )
    assert _max_diff(cpu, gpu.cpu()) < 1e-4
