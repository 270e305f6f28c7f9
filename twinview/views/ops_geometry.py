"""Batched geometry ops: random resized crop, horizontal flip, rotation.

The crop of a whole batch, each image with its own box, is separable: the columns, then the
rows, of image b are resampled with per-sample sparse weights, ``out[b, c] = Wy[b] @ image[b, c]
@ Wx[b]^T`` where each row of ``Wy[b]`` (h_out, H) and ``Wx[b]`` (w_out, W) holds the few taps
of torchvision's bilinear resize with ``antialias=True`` (PyTorch's ``_upsample_bilinear2d_aa``):
a triangle filter on the pixel centres of the crop box, widened by the scale factor when
shrinking (the antialiasing pre-filter) and renormalised at the box edges. Each pass is one
``embedding_bag`` kernel (weighted sums of rows) over the whole batch. The result equals
``torchvision.transforms.functional.resized_crop(..., antialias=True)`` up to float rounding,
for upsampling and downsampling alike; a horizontal flip reverses the output taps and costs
nothing. No Python loop over samples, any device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from twinview.views.ops import _draw, restore_dtype, to_float

#: torchvision's number of tries before ``RandomResizedCrop`` falls back to a central crop.
CROP_TRIES = 10


def sample_crop_boxes(
    batch: int,
    height: int,
    width: int,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """(B, 4) int64 boxes ``(top, left, h, w)`` distributed as ``RandomResizedCrop.get_params``.

    Per try: area fraction ~ U[scale], log aspect ratio ~ U[log ratio]; the first of
    :data:`CROP_TRIES` tries that fits in the image wins, at a uniformly random position;
    samples without a fitting try get torchvision's central-crop fallback (clamped ratio).
    All tries of all samples are drawn at once.
    """
    if not (0 < scale[0] <= scale[1]):
        raise ValueError(f"crop scale must satisfy 0 < min <= max, got {scale}")
    if not (0 < ratio[0] <= ratio[1]):
        raise ValueError(f"crop ratio must satisfy 0 < min <= max, got {ratio}")
    u = _draw((batch, 2 * CROP_TRIES + 2), generator, device)
    area = height * width
    target = area * (scale[0] + (scale[1] - scale[0]) * u[:, :CROP_TRIES])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[:, CROP_TRIES : 2 * CROP_TRIES])
    w = torch.sqrt(target * aspect).round()  # round half to even, as Python's round()
    h = torch.sqrt(target / aspect).round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # first fitting try
    found = fits.any(dim=1)
    h = h.gather(1, first).squeeze(1)
    w = w.gather(1, first).squeeze(1)
    fh, fw = _fallback(height, width, ratio)
    h = torch.where(found, h, torch.full_like(h, fh))
    w = torch.where(found, w, torch.full_like(w, fw))
    # randint(0, H - h + 1): floor of a uniform draw on H - h + 1 positions
    top = torch.minimum((u[:, -2] * (height - h + 1)).floor(), height - h)
    left = torch.minimum((u[:, -1] * (width - w + 1)).floor(), width - w)
    top = torch.where(found, top, (height - h).div(2, rounding_mode="floor"))
    left = torch.where(found, left, (width - w).div(2, rounding_mode="floor"))
    return torch.stack([top, left, h, w], dim=1).to(torch.int64)


def _fallback(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int]:
    """torchvision's fallback (h, w): the whole image, cut to the nearest allowed ratio."""
    in_ratio = width / height
    if in_ratio < ratio[0]:
        return round(width / ratio[0]), width
    if in_ratio > ratio[1]:
        return height, round(height * ratio[1])
    return height, width


def sample_crop_box(
    height: int,
    width: int,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
) -> tuple[int, int, int, int]:
    """One box ``(top, left, h, w)`` as :func:`sample_crop_boxes`, with one draw of random
    numbers and scalar arithmetic: the cheap path for one image in a DataLoader worker."""
    u = _draw((2 * CROP_TRIES + 2,), generator, None).tolist()
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for t in range(CROP_TRIES):
        target = area * (scale[0] + (scale[1] - scale[0]) * u[t])
        aspect = math.exp(log_lo + (log_hi - log_lo) * u[CROP_TRIES + t])
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = min(int(u[-2] * (height - h + 1)), height - h)
            left = min(int(u[-1] * (width - w + 1)), width - w)
            return top, left, h, w
    h, w = _fallback(height, width, ratio)
    return (height - h) // 2, (width - w) // 2, h, w


def resize_taps(
    start: Tensor, length: Tensor, in_size: int, out_size: int, flip: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Sparse 1-d resampling of the segments ``[start, start + length)`` (each (B,)) of an axis
    of ``in_size`` pixels to ``out_size`` samples: bilinear, antialiased when shrinking.

    Returns ``(index, weight)``, both (B, out_size, K): output sample o of row b is
    ``sum_k weight[b, o, k] * pixel[index[b, o, k]]``. K = ceil(2 * max(in / out, 1)) taps
    cover the triangle filter of the largest possible crop, so K is known without looking at
    the boxes (no device sync). Outputs are reversed where ``flip`` (B,) is True.
    """
    dev = start.device
    start = start.to(torch.float32)
    length = length.to(torch.float32)
    support = (length / out_size).clamp(min=1.0)  # triangle half-width, widened when shrinking
    taps = math.ceil(2 * max(in_size / out_size, 1.0))
    o = torch.arange(out_size, device=dev, dtype=torch.float32) + 0.5
    centre = start[:, None] + o * (length / out_size)[:, None]  # (B, out)
    first = (centre - support[:, None] + 0.5).floor_()
    pos = first[:, :, None] + torch.arange(taps, device=dev, dtype=torch.float32)  # (B, out, K)
    weight = (1.0 - (pos + 0.5 - centre[:, :, None]).abs_() / support[:, None, None]).clamp_(min=0)
    inside = (pos >= start[:, None, None]) & (pos < (start + length)[:, None, None])
    weight = weight.mul_(inside)
    weight = weight.div_(weight.sum(dim=2, keepdim=True))
    index = pos.clamp_(0, in_size - 1).to(torch.int64)
    if flip is not None:
        flip = flip.reshape(-1, 1, 1)
        index = torch.where(flip, index.flip(1), index)
        weight = torch.where(flip, weight.flip(1), weight)
    return index, weight


def _resample_rows(
    table: Tensor, index: Tensor, weight: Tensor, source: Tensor | None = None
) -> Tensor:
    """Weighted sums of rows of ``table`` (B, C, N, L): (S, C, out, L) with
    ``out[s, c, o] = sum_k weight[s, o, k] * table[source[s], c, index[s, o, k]]``, one fused
    ``embedding_bag`` kernel (a sparse matrix product). ``source`` (S,) picks the image of each
    output (default: output s from image s), so several views share one table."""
    b, c, n, length = table.shape
    s, out, taps = index.shape
    if source is None:
        source = torch.arange(s, device=index.device)
    base = (source[:, None] * c + torch.arange(c, device=index.device)).mul_(n)  # (S, C)
    rows = (index[:, None] + base[:, :, None, None]).reshape(-1, taps)
    w = weight[:, None].expand(s, c, out, taps).reshape(-1, taps)
    res = F.embedding_bag(rows, table.reshape(b * c * n, length), per_sample_weights=w, mode="sum")
    return res.reshape(s, c, out, length)


def resized_crop_transposed(
    images_t: Tensor,
    boxes: Tensor,
    size: int | tuple[int, int],
    *,
    flip: Tensor | None = None,
    value_scale: float = 1.0,
    source: Tensor | None = None,
) -> Tensor:
    """:func:`resized_crop` of float images given transposed, ``images_t`` (B, C, W, H)
    contiguous: columns are resampled first as rows of ``images_t``, one transpose, then rows.

    boxes: (S, 4), flip: (S,); ``source`` (S,) int64 says which image each box is cut from
    (default: box s from image s), so the crops of several views come out of one call.
    Returns (S, C, h_out, w_out).
    """
    oh, ow = (size, size) if isinstance(size, int) else size
    w, h = images_t.shape[-2:]
    boxes = boxes.to(images_t.device)
    ix, wx = resize_taps(boxes[:, 1], boxes[:, 3], w, ow, flip)
    iy, wy = resize_taps(boxes[:, 0], boxes[:, 2], h, oh)
    if value_scale != 1.0:
        wx = wx * value_scale
    cols = _resample_rows(images_t, ix, wx.to(images_t.dtype), source)  # (S, C, ow, H)
    cols = cols.transpose(2, 3).contiguous()  # (S, C, H, ow)
    return _resample_rows(cols, iy, wy.to(images_t.dtype))  # (S, C, oh, ow)


def transpose_float(images: Tensor) -> Tensor:
    """(B, C, H, W) -> contiguous float (B, C, W, H), uint8 values kept in 0..255 (one copy)."""
    b, c, h, w = images.shape
    dtype = images.dtype if images.is_floating_point() else torch.float32
    out = torch.empty((b, c, w, h), dtype=dtype, device=images.device)
    return out.copy_(images.transpose(2, 3))


def resized_crop(
    images: Tensor,
    boxes: Tensor,
    size: int | tuple[int, int],
    *,
    flip: Tensor | None = None,
) -> Tensor:
    """Crop box ``boxes[b] = (top, left, h, w)`` out of image b and resize it to ``size``.

    images: (B, C, H, W) uint8 or float; boxes: (B, 4) int; flip: optional (B,) bool, flips
    those outputs horizontally. Returns (B, C, h_out, w_out) in the input dtype. Bilinear
    with antialias, equal to torchvision's ``resized_crop(..., antialias=True)`` up to float
    rounding (uint8: within 1).
    """
    scale = 1.0 if images.is_floating_point() else 1.0 / 255.0
    out = resized_crop_transposed(
        transpose_float(images), boxes, size, flip=flip, value_scale=scale
    )
    return restore_dtype(out, images.dtype)


def hflip(images: Tensor, apply: Tensor | None = None) -> Tensor:
    """Mirror left-right the images where ``apply`` (B,) bool is True (all if None)."""
    if apply is None:
        return images.flip(-1)
    return torch.where(apply.reshape(-1, 1, 1, 1), images.flip(-1), images)


def rotate(images: Tensor, angles: Tensor | float) -> Tensor:
    """Rotate each image counter-clockwise by its own angle in degrees about its centre.

    images: (B, C, H, W); angles: scalar or (B,). Bilinear, zero fill, same size: as
    ``torchvision.transforms.functional.rotate(..., InterpolationMode.BILINEAR)``.
    """
    b, _, h, w = images.shape
    x = to_float(images)
    theta = torch.as_tensor(angles, dtype=torch.float32, device=x.device).reshape(-1)
    theta = torch.deg2rad(theta.expand(b) if theta.numel() == 1 else theta)
    cos, sin = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    # output pixel centres relative to the image centre, in pixels (y down)
    xs = (torch.arange(w, device=x.device, dtype=torch.float32) - (w - 1) * 0.5)[None, None, :]
    ys = (torch.arange(h, device=x.device, dtype=torch.float32) - (h - 1) * 0.5)[None, :, None]
    src_x = (cos * xs - sin * ys) / (w * 0.5)
    src_y = (sin * xs + cos * ys) / (h * 0.5)
    grid = torch.stack([src_x, src_y], dim=-1).to(x.dtype)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return restore_dtype(out, images.dtype)


def resized_crop_one(
    image: Tensor, box: tuple[int, int, int, int], size: tuple[int, int]
) -> Tensor:
    """Crop and resize one image (C, H, W) keeping its dtype: the worker-side path.

    On CPU uint8 stays uint8 (PyTorch's integer antialiased kernel, what torchvision uses);
    elsewhere the crop goes through float and is rounded back.
    """
    top, left, h, w = box
    crop = image[None, :, top : top + h, left : left + w]
    if image.dtype == torch.uint8 and image.device.type != "cpu":
        out = F.interpolate(crop.float(), size=size, mode="bilinear", antialias=True)
        return out.round_().clamp_(0, 255).to(torch.uint8)[0]
    out = F.interpolate(crop, size=size, mode="bilinear", align_corners=False, antialias=True)
    return out[0]
