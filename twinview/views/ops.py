"""Batched per-sample image ops shared by every view: random draws, dtype handling, Gaussian
blur, solarization and normalization.

Every op takes a batch ``(B, C, H, W)`` on any device, uint8 (0..255) or float (0..1), and
per-sample parameters as ``(B,)`` tensors, so one call transforms the whole batch with a
different parameter for each image and no Python loop over samples. Ops return the input's
dtype; inside the view pipeline everything stays float in [0, 1] and the conversions are no-ops.

Random parameters are drawn from a ``torch.Generator`` on the generator's own device (a CPU
generator can feed CUDA images) and moved to the images' device, so the same seed gives the
same parameters and, on the same device, the same views. The distributions are those of the
torchvision transforms (``RandomResizedCrop``, ``ColorJitter``, ``GaussianBlur``, ...).

Geometry (crop, resize, flip, rotation) is in :mod:`twinview.views.ops_geometry`, colour
(jitter, grayscale) in :mod:`twinview.views.ops_color`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

#: ImageNet channel statistics, the default normalisation for RGB views.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ---------------------------------------------------------------- random draws (per sample)
def _draw(
    shape: Sequence[int], generator: torch.Generator | None, device: torch.device | str | None
) -> Tensor:
    """U[0, 1) float32 of ``shape`` from ``generator`` (on its device), placed on ``device``."""
    source = generator.device if generator is not None else device
    u = torch.rand(tuple(shape), generator=generator, device=source)
    return u.to(device) if device is not None else u


def uniform(
    shape: Sequence[int],
    low: float,
    high: float,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """U[low, high) samples, as ``torch.empty(shape).uniform_(low, high)`` draws them."""
    return low + (high - low) * _draw(shape, generator, device)


def bernoulli(
    batch: int,
    p: float,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """(B,) bool, True with probability ``p`` (torchvision's ``torch.rand(1) < p``)."""
    return _draw((batch,), generator, device) < p


def permutations(
    batch: int,
    n: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """(B, n) int64, one uniformly random permutation of ``0..n-1`` per row (``randperm``)."""
    return _draw((batch, n), generator, device).argsort(dim=1)


# ------------------------------------------------------------------------------ dtype handling
def to_float(images: Tensor) -> Tensor:
    """uint8 0..255 -> float32 0..1; floating tensors are returned unchanged."""
    if images.is_floating_point():
        return images
    if images.dtype != torch.uint8:
        raise TypeError(f"images must be uint8 or floating point, got dtype {images.dtype}")
    return images.to(torch.float32).mul_(1.0 / 255.0)


def restore_dtype(images: Tensor, dtype: torch.dtype) -> Tensor:
    """Inverse of :func:`to_float`: float 0..1 -> ``dtype`` (uint8 rounds and saturates)."""
    if dtype == images.dtype:
        return images
    if dtype == torch.uint8:
        return images.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
    return images.to(dtype)


def check_images(images: Tensor, name: str = "images") -> None:
    """Raise a clear error unless ``images`` is a (B, C, H, W) batch with 1 or 3 channels."""
    if images.ndim != 4:
        raise ValueError(
            f"{name} must be a batch (B, C, H, W), got shape {tuple(images.shape)}; "
            "add a batch dimension with images[None] for a single image"
        )
    if images.shape[1] not in (1, 3):
        raise ValueError(
            f"{name} must have 1 or 3 channels (dim 1), got shape {tuple(images.shape)}; "
            "convert RGBA / palette images to RGB, and use channels-first (B, C, H, W)"
        )


def _per_sample(value: Tensor | float, images: Tensor) -> Tensor:
    """A scalar or (B,) parameter as a (B, 1, 1, 1) float tensor on the images' device."""
    v = torch.as_tensor(value, dtype=torch.float32, device=images.device)
    return v.reshape(-1, 1, 1, 1) if v.ndim else v.reshape(1, 1, 1, 1)


# -------------------------------------------------------------------------------- Gaussian blur
def blur_kernel_size(side: int, fraction: float = 0.1) -> int:
    """Odd kernel size of about ``fraction`` of ``side``, at least 3 (SimCLR: 10% of the side,
    so 23 for 224 px, 3 for 28 and 32 px)."""
    k = int(fraction * side)
    k = k + 1 if k % 2 == 0 else k
    return max(k, 3)


def gaussian_kernels(sigma: Tensor, size: int) -> Tensor:
    """(B, size) normalised 1-d Gaussian kernels, one per sigma in ``sigma`` (B,), sampled at
    integer offsets as torchvision's ``gaussian_blur`` does."""
    half = (size - 1) * 0.5
    x = torch.linspace(-half, half, size, device=sigma.device, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x[None, :] / sigma[:, None]) ** 2)
    return kernel / kernel.sum(dim=1, keepdim=True)


def gaussian_blur(
    images: Tensor, sigma: Tensor | float, kernel_size: int | tuple[int, int]
) -> Tensor:
    """Blur each image with its own Gaussian: separable, reflect padding (as torchvision).

    images: (B, C, H, W); sigma: scalar or (B,); kernel_size: odd int or (kh, kw).
    A (B,) sigma turns into a grouped convolution with one kernel per image and channel.
    """
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    if kh % 2 == 0 or kw % 2 == 0 or kh < 1 or kw < 1:
        raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
    if images.shape[0] == 0:
        return images
    b, c, h, w = images.shape
    x = to_float(images)
    sig = torch.as_tensor(sigma, dtype=torch.float32, device=images.device).reshape(-1)
    sig = sig.expand(b) if sig.numel() == 1 else sig
    if kh // 2 >= h or kw // 2 >= w:
        raise ValueError(f"kernel_size {kernel_size} too large for images of size {h}x{w}")
    # one kernel per (image, channel) group
    ky = gaussian_kernels(sig, kh).repeat_interleave(c, dim=0)
    kx = ky if kw == kh else gaussian_kernels(sig, kw).repeat_interleave(c, dim=0)
    y = F.pad(x.reshape(1, b * c, h, w), (kw // 2, kw // 2, kh // 2, kh // 2), mode="reflect")
    y = F.conv2d(y, kx.reshape(b * c, 1, 1, kw), groups=b * c)
    y = F.conv2d(y, ky.reshape(b * c, 1, kh, 1), groups=b * c)
    return restore_dtype(y.reshape(b, c, h, w), images.dtype)


def sample_blur_sigma(
    batch: int,
    sigma: tuple[float, float],
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """(B,) sigmas ~ U[sigma_min, sigma_max] (torchvision ``GaussianBlur.get_params``)."""
    return uniform((batch,), sigma[0], sigma[1], generator=generator, device=device)


# ---------------------------------------------------------------------- solarize and normalize
def solarize(
    images: Tensor, threshold: Tensor | float = 0.5, apply: Tensor | None = None
) -> Tensor:
    """Invert pixels at or above ``threshold`` (scalar or (B,), on the [0, 1] scale; uint8
    uses ``threshold * 255``), only in images where ``apply`` (B,) bool is True (all if None)."""
    x = to_float(images)
    # hit = [x >= threshold] as float arithmetic (boolean tensors are slow on CPU)
    hit = torch.sub(_per_sample(threshold, x), x).sign_().clamp_(min=0.0).neg_().add_(1.0)
    if apply is not None:
        hit.mul_(apply.to(x.dtype).reshape(-1, 1, 1, 1))
    out = torch.addcmul(x, hit, 1.0 - 2.0 * x)  # x or 1 - x
    return restore_dtype(out, images.dtype)


def normalize(
    images: Tensor, mean: Sequence[float], std: Sequence[float], *, channels: int | None = None
) -> Tensor:
    """(x - mean) / std per channel; uint8 input is scaled to [0, 1] first.

    ``channels`` > C expands a 1-channel batch (grayscale) to that many channels on the fly.
    Returns float32 (B, channels or C, H, W).
    """
    x = to_float(images)
    c = channels or x.shape[1]
    if len(mean) != c or len(std) != c:
        raise ValueError(f"mean {tuple(mean)} / std {tuple(std)} need {c} values, one per channel")
    if any(s <= 0 for s in std):
        raise ValueError(f"std must be positive, got {tuple(std)}")
    if c != x.shape[1]:
        if x.shape[1] != 1:
            raise ValueError(f"can only expand 1-channel images, got {x.shape[1]} channels")
        x = x.expand(-1, c, -1, -1)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).reshape(1, c, 1, 1)
    scale = torch.tensor([1.0 / s for s in std], dtype=x.dtype, device=x.device)
    # two binary ops, each with one broadcast operand, stay vectorised on CPU (a ternary
    # addcmul with two broadcast operands does not)
    return torch.sub(x, m).mul_(scale.reshape(1, c, 1, 1))


def default_stats(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Default (mean, std): ImageNet statistics for 3 channels, (0.5,), (0.5,) for one channel
    (maps [0, 1] to [-1, 1] without assuming anything about the dataset)."""
    if channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    if channels == 1:
        return (0.5,), (0.5,)
    raise ValueError(f"no default normalisation for {channels} channels; pass mean= and std=")
