"""Batched colour ops: brightness, contrast, saturation, hue, colour jitter, grayscale.

Semantics are torchvision's tensor ops (``adjust_brightness`` ... ``adjust_hue``,
``rgb_to_grayscale`` with ITU-R 601 weights 0.2989 / 0.587 / 0.114, clamping to [0, 1] after
each op), with one factor per image. On one-channel images brightness and contrast act on
the luminance and saturation, hue and grayscale are identities, as in torchvision.

:func:`color_jitter` applies the four ops in a random order per image, like
``torchvision.transforms.ColorJitter`` draws ``fn_idx = randperm(4)`` per call, without a loop
over images: at each of the 4 positions, brightness, contrast and saturation are one fused
per-image blend ``clamp(a * x + beta * gray(x) + gamma * mean(gray(x)))`` (brightness:
``a = f``; contrast: ``a = f, gamma = 1 - f``; saturation: ``a = f, beta = 1 - f``; an image
whose op at that position is hue gets the identity), and images are sorted by the position
of their hue op so that hue runs in place on a contiguous slice.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from twinview.views.ops import _draw, _per_sample, permutations, restore_dtype, to_float

#: ITU-R 601-2 luma weights, as torchvision's ``rgb_to_grayscale``.
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)
#: Index of each op in a jitter order (torchvision's ``ColorJitter`` numbering).
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3


def gray(x: Tensor) -> Tensor:
    """Float (B, 3, H, W) -> luminance (B, 1, H, W); one-channel input is returned as is."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    out = torch.mul(r, GRAY_WEIGHTS[0])
    out.add_(g, alpha=GRAY_WEIGHTS[1]).add_(b, alpha=GRAY_WEIGHTS[2])
    return out.unsqueeze(1)


def rgb_to_grayscale(images: Tensor, num_output_channels: int = 1) -> Tensor:
    """Luminance of (B, C, H, W) images, repeated to ``num_output_channels`` channels."""
    out = gray(to_float(images))
    if num_output_channels != 1:
        out = out.expand(-1, num_output_channels, -1, -1).contiguous()
    return restore_dtype(out, images.dtype)


def random_grayscale(images: Tensor, apply: Tensor) -> Tensor:
    """Replace images where ``apply`` (B,) is True by their luminance, keeping C channels."""
    if images.shape[1] == 1:
        return images
    x = to_float(images)
    weight = apply.to(x.dtype).reshape(-1, 1, 1, 1)  # lerp by 0 / 1 is exact, and fast
    return restore_dtype(torch.lerp(x, gray(x), weight), images.dtype)


def adjust_brightness(images: Tensor, factor: Tensor | float) -> Tensor:
    """clamp(x * factor); factor scalar or (B,) >= 0 (0 gives black, 1 the original)."""
    x = to_float(images)
    return restore_dtype((x * _per_sample(factor, x)).clamp_(0.0, 1.0), images.dtype)


def adjust_contrast(images: Tensor, factor: Tensor | float) -> Tensor:
    """Blend with the mean luminance of each image: clamp(f * x + (1 - f) * mean)."""
    x = to_float(images)
    f = _per_sample(factor, x)
    mean = gray(x).mean(dim=(1, 2, 3), keepdim=True)
    return restore_dtype(torch.lerp(mean, x, f).clamp_(0.0, 1.0), images.dtype)


def adjust_saturation(images: Tensor, factor: Tensor | float) -> Tensor:
    """Blend with the luminance image: clamp(f * x + (1 - f) * gray(x)); identity on 1 channel."""
    if images.shape[1] == 1:
        return images
    x = to_float(images)
    return restore_dtype(torch.lerp(gray(x), x, _per_sample(factor, x)).clamp_(0, 1), images.dtype)


def _hue_shift_(x: Tensor, shift: Tensor) -> None:
    """Rotate the HSV hue of float RGB images ``x`` (n, 3, H, W) by ``shift`` (n,) turns, in
    place, as torchvision's ``adjust_hue`` (RGB -> HSV, h += shift mod 1, HSV -> RGB).

    Value (max) and chroma (max - min) are unchanged, so the round trip reduces to: hue
    h in [0, 6) from the channel that is the max (torchvision's tie order r, g, b), then
    ``r = min + chroma * (clamp(|h - 3|, 1, 2) - 1)``, ``g = max - chroma * (clamp(|h - 2|, 1, 2)
    - 1)``, ``b`` likewise with 4. Only float arithmetic, no boolean masks (much slower on CPU).
    """
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(dim=1), x.amin(dim=1)
    chroma = maxc - minc
    # indicators as floats: is_r = [r is the max]; is_g = [g is the max and r is not]
    is_r = torch.sub(maxc, r).sign_().neg_().add_(1.0)
    not_r = 1.0 - is_r
    is_g = torch.sub(maxc, g).sign_().neg_().add_(1.0).mul_(not_r)
    is_b = not_r.sub_(is_g)
    hc = torch.mul(is_r, g - b)  # hue * chroma, per sextant formula
    hc.addcmul_(is_g, torch.sub(b, r).add_(chroma, alpha=2.0))
    hc.addcmul_(is_b, torch.sub(r, g).add_(chroma, alpha=4.0))
    h = hc.div_(chroma.clamp(min=1e-12)).add_((6.0 * shift).reshape(-1, 1, 1))
    h.sub_(torch.div(h, 6.0).floor_().mul_(6.0))  # mod 6
    low, high = minc - chroma, maxc + chroma
    torch.addcmul(low, chroma, (h - 3.0).abs_().clamp_(1.0, 2.0), out=r)
    torch.addcmul(high, chroma, (h - 2.0).abs_().clamp_(1.0, 2.0), value=-1.0, out=g)
    torch.addcmul(high, chroma, (h - 4.0).abs_().clamp_(1.0, 2.0), value=-1.0, out=b)


def adjust_hue(images: Tensor, shift: Tensor | float) -> Tensor:
    """Rotate the hue by ``shift`` in [-0.5, 0.5] turns (scalar or (B,)); identity on 1 channel."""
    s = torch.as_tensor(shift, dtype=torch.float32, device=images.device).reshape(-1)
    if bool((s.abs() > 0.5).any()):
        raise ValueError("hue shift must be in [-0.5, 0.5]")
    if images.shape[1] == 1:
        return images
    x = to_float(images).clone()
    _hue_shift_(x, s.expand(x.shape[0]) if s.numel() == 1 else s)
    return restore_dtype(x, images.dtype)


class JitterParams(NamedTuple):
    """Per-image colour jitter parameters.

    factors: (B, 4) brightness, contrast, saturation factors and hue shift;
    order:   (B, 4) int64 permutation of the op indices 0..3 (application order);
    apply:   (B,) bool, whether the image is jittered at all (probability p).
    """

    factors: Tensor
    order: Tensor
    apply: Tensor


def sample_jitter(
    batch: int,
    *,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.4,
    hue: float = 0.1,
    p: float = 0.8,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> JitterParams:
    """Draw ``ColorJitter(brightness, contrast, saturation, hue)`` parameters, applied with
    probability ``p`` (``RandomApply``): factors ~ U[max(0, 1 - v), 1 + v], hue ~ U[-v, v],
    order a uniform random permutation per image."""
    for name, v in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
        if v < 0:
            raise ValueError(f"{name} must be >= 0, got {v}")
    if not 0 <= hue <= 0.5:
        raise ValueError(f"hue must be in [0, 0.5], got {hue}")
    u = _draw((batch, 5), generator, device)
    lo = torch.tensor(
        [max(0.0, 1 - brightness), max(0.0, 1 - contrast), max(0.0, 1 - saturation), -hue]
    )
    hi = torch.tensor([1 + brightness, 1 + contrast, 1 + saturation, hue])
    lo, hi = lo.to(u.device), hi.to(u.device)
    factors = lo + (hi - lo) * u[:, :4]
    order = permutations(batch, 4, generator=generator, device=device)
    return JitterParams(factors, order, u[:, 4] < p)


def _position_of(order: Tensor, op: int) -> Tensor:
    """(B,) position (0..3) of ``op`` in each image's order."""
    return (order == op).to(torch.int64).argmax(dim=1)


def color_jitter_(x: Tensor, params: JitterParams, *, hue: bool = True) -> Tensor:
    """Jitter float images ``x`` (B, C, H, W) in [0, 1] in place and return ``x``.

    ``hue=False`` skips the hue op (a jitter configured with hue = 0). Images not selected by
    ``params.apply`` are left exactly as they are.
    """
    factors, order, apply = params
    rgb = x.shape[1] == 3
    hue = hue and rgb
    # sort the jittered images by the position of their hue op (5 groups incl. "not jittered")
    key = torch.where(apply, _position_of(order, HUE) if hue else torch.zeros_like(order[:, 0]), 4)
    idx = torch.argsort(key, stable=True)
    counts = torch.bincount(key, minlength=5).tolist()  # the only host sync
    n = sum(counts[:4])
    if n == 0:
        return x
    idx = idx[:n]
    xs, f, o = x[idx], factors[idx], order[idx]  # jittered images, sorted by hue position
    f_b, f_c, f_s, f_h = f.unbind(1)
    offsets = [0, counts[0], counts[0] + counts[1], counts[0] + counts[1] + counts[2], n]
    for k in range(4):
        op = o[:, k]
        one = torch.ones_like(f_b)
        a = torch.where(op == BRIGHTNESS, f_b, torch.where(op == CONTRAST, f_c, one))
        gamma = torch.where(op == CONTRAST, 1.0 - f_c, 0.0).reshape(-1, 1, 1, 1)
        if rgb:
            a = torch.where(op == SATURATION, f_s, a)
            beta = torch.where(op == SATURATION, 1.0 - f_s, 0.0).reshape(-1, 1, 1, 1)
            g = gray(xs)
            t = torch.mul(g, beta).add_(gamma * g.mean(dim=(2, 3), keepdim=True))
        else:
            t = gamma * xs.mean(dim=(2, 3), keepdim=True)
        xs = torch.addcmul(t, xs, a.reshape(-1, 1, 1, 1)).clamp_(0.0, 1.0)
        if hue and counts[k]:
            lo, hi = offsets[k], offsets[k + 1]
            _hue_shift_(xs[lo:hi], f_h[lo:hi])
    x[idx] = xs
    return x


def color_jitter(images: Tensor, params: JitterParams) -> Tensor:
    """Colour jitter of a uint8 or float batch with per-image ``params`` (see
    :func:`sample_jitter`); same dtype out."""
    x = to_float(images)
    x = x.clone() if x is images else x
    return restore_dtype(color_jitter_(x, params), images.dtype)
