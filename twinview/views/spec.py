"""One view's recipe: :class:`ViewSpec`, a frozen dataclass with the papers' parameter names.

Validation happens at construction, so a bad value fails where it is written (a config key,
a preset override) with a message naming the field and the allowed range.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from twinview.views.ops import default_stats


def _check_probability(name: str, p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"ViewSpec.{name} is a probability in [0, 1], got {p}")


def _check_range(name: str, r: tuple[float, float], low: float) -> None:
    if len(r) != 2 or not (low < r[0] <= r[1]):
        raise ValueError(f"ViewSpec.{name} must be (min, max) with {low} < min <= max, got {r}")


@dataclass(frozen=True)
class ViewSpec:
    """The recipe of one view; defaults are MoCo v2's colour distortion on a SimCLR crop.

    size:            output side, or (height, width).
    crop_scale:      range of the crop's area as a fraction of the image (RandomResizedCrop).
    crop_ratio:      range of the crop's aspect ratio w / h, sampled log-uniformly.
    hflip_p:         probability of a horizontal flip.
    rotation:        rotation angle ~ U[-rotation, rotation] degrees (0 = off).
    jitter_p:        probability of colour jitter; brightness / contrast / saturation factors
                     ~ U[max(0, 1 - v), 1 + v], hue shift ~ U[-hue, hue] (ColorJitter).
    grayscale_p:     probability of converting to grayscale (kept with C channels).
    blur_p:          probability of Gaussian blur with sigma ~ U[blur_sigma]; the kernel is an
                     odd size of about ``blur_kernel_frac`` of the view's side (SimCLR: 10%).
    solarize_p:      probability of solarization above ``solarize_threshold`` (on [0, 1]).
    mean, std:       normalization; None: ImageNet statistics for 3 output channels,
                     (0.5,), (0.5,) for 1 channel (maps [0, 1] to [-1, 1]).
    to_rgb:          expand 1-channel images to 3 channels (at normalization, after the colour
                     ops, which is equivalent and cheaper); no effect on 3-channel images.
    """

    size: int | tuple[int, int]
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip_p: float = 0.5
    rotation: float = 0.0
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel_frac: float = 0.1
    solarize_p: float = 0.0
    solarize_threshold: float = 0.5
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    to_rgb: bool = False

    def __post_init__(self) -> None:
        size = self.size
        sides = (size, size) if isinstance(size, int) else tuple(size)
        if len(sides) != 2 or not all(isinstance(s, int) and s > 0 for s in sides):
            raise ValueError(f"ViewSpec.size must be a positive int or (h, w), got {size!r}")
        _check_range("crop_scale", self.crop_scale, 0.0)
        if self.crop_scale[1] > 1.0:
            raise ValueError(f"ViewSpec.crop_scale max must be <= 1, got {self.crop_scale}")
        _check_range("crop_ratio", self.crop_ratio, 0.0)
        _check_range("blur_sigma", self.blur_sigma, 0.0)
        for name in ("hflip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p"):
            _check_probability(name, getattr(self, name))
        for name in ("brightness", "contrast", "saturation", "rotation"):
            if getattr(self, name) < 0:
                raise ValueError(f"ViewSpec.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"ViewSpec.hue must be in [0, 0.5], got {self.hue}")
        if not 0.0 < self.blur_kernel_frac <= 1.0:
            raise ValueError(
                f"ViewSpec.blur_kernel_frac must be in (0, 1], got {self.blur_kernel_frac}"
            )
        if (self.mean is None) != (self.std is None):
            raise ValueError("ViewSpec.mean and ViewSpec.std must be given together (or neither)")
        if self.mean is not None and len(self.mean) != len(self.std):
            raise ValueError(f"ViewSpec.mean {self.mean} and std {self.std} differ in length")

    @property
    def hw(self) -> tuple[int, int]:
        """(height, width) of the view."""
        return (self.size, self.size) if isinstance(self.size, int) else tuple(self.size)

    def out_channels(self, channels: int) -> int:
        """Channels of this view for input images with ``channels`` channels."""
        return 3 if self.to_rgb and channels == 1 else channels

    def stats(self, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) used to normalise a view of ``channels``-channel input."""
        c = self.out_channels(channels)
        if self.mean is None:
            return default_stats(c)
        if len(self.mean) != c:
            raise ValueError(
                f"ViewSpec.mean has {len(self.mean)} values but the views have {c} channels; "
                f"give {c} values (or mean=None for the defaults)"
            )
        return self.mean, self.std

    def replace(self, **changes: object) -> ViewSpec:
        """A copy with some fields replaced; unknown names raise a ValueError listing fields."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ValueError(f"unknown ViewSpec field(s) {unknown}; valid fields: {sorted(names)}")
        return dataclasses.replace(self, **changes)
