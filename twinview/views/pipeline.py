"""One view's recipe (:class:`ViewSpec`) and the multi-view pipeline (:class:`MultiView`).

A view is random resized crop -> horizontal flip -> rotation (geometry), then colour jitter
(random order, probability ``jitter_p``) -> random grayscale -> Gaussian blur -> solarization
-> normalization (photometry), the order of SimCLR / BYOL / MoCo augmentations.

Two ways to run it (DESIGN.md, data flow):

- in-memory datasets (Fashion-MNIST, CIFAR): ``views = multiview(images)`` takes a uint8 batch
  (B, C, H, W) already on the training device and does everything batched there;
- image folders: ``multiview.geometry(image)`` runs per image in the DataLoader workers where
  images are decoded (crop / resize / flip / rotation, uint8 out, collated by the loader), and
  ``multiview.photometry(batches)`` runs the colour ops batched on the training device.

Every image gets its own parameters, drawn from ``generator`` (or the global RNG of the
images' device): the same seed gives the same views on the same device. Views of the same
size run as one batch of V * B images, each image with the parameters of its own view's spec
(BYOL's two recipes too): for two views, half the kernel launches and passes of small ops.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from twinview.views.ops import (
    _draw,
    bernoulli,
    blur_kernel_size,
    check_images,
    gaussian_blur,
    normalize,
    sample_blur_sigma,
    solarize,
    to_float,
    uniform,
)
from twinview.views.ops_color import (
    JitterParams,
    color_jitter_,
    random_grayscale,
    sample_jitter,
)
from twinview.views.ops_geometry import (
    resized_crop_one,
    resized_crop_transposed,
    rotate,
    sample_crop_box,
    sample_crop_boxes,
    transpose_float,
)
from twinview.views.spec import ViewSpec

__all__ = ["MultiView", "ViewSpec"]


class MultiView:
    """Specs -> list of views, one batch per spec (e.g. 2 for SimCLR, 2 + N for multi-crop)."""

    def __init__(self, specs: Sequence[ViewSpec]) -> None:
        specs = tuple(specs)
        if not specs or not all(isinstance(s, ViewSpec) for s in specs):
            raise ValueError(f"MultiView needs a non-empty sequence of ViewSpec, got {specs!r}")
        self.specs: tuple[ViewSpec, ...] = specs
        # views of the same size (and blur kernel) run as one batch: half the kernels for 2 views
        groups: dict[tuple, list[int]] = {}
        for i, spec in enumerate(specs):
            groups.setdefault((spec.hw, spec.blur_kernel_frac), []).append(i)
        self._groups: tuple[tuple[int, ...], ...] = tuple(tuple(g) for g in groups.values())

    def __len__(self) -> int:
        return len(self.specs)

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(s) for s in self.specs)
        return f"MultiView(\n  {inner}\n)"

    # ------------------------------------------------------------------ in-memory, all batched
    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> list[Tensor]:
        """uint8 (or float in [0, 1]) images (B, C, H, W) on any device -> one float normalised
        (B, C', h_v, w_v) tensor per view, every op batched on ``images.device``."""
        check_images(images)
        b, _, h, w = images.shape
        # cast (and transpose) once for all views; the 1/255 of uint8 input goes into the weights
        raw_t = transpose_float(images)
        value_scale = 1.0 if images.is_floating_point() else 1.0 / 255.0
        dev = images.device
        out: list[Tensor] = [images] * len(self.specs)
        for group in self._groups:
            boxes, flips, angles = [], [], []
            for spec in (self.specs[i] for i in group):
                boxes.append(
                    sample_crop_boxes(
                        b, h, w, scale=spec.crop_scale, ratio=spec.crop_ratio,
                        generator=generator, device=dev,
                    )
                )  # fmt: skip
                flips.append(bernoulli(b, spec.hflip_p, generator=generator, device=dev))
                rot = spec.rotation
                angles.append(
                    uniform((b,), -rot, rot, generator=generator, device=dev) if rot else None
                )
            source = torch.arange(b, device=dev).repeat(len(group))
            x = resized_crop_transposed(
                raw_t, torch.cat(boxes), self.specs[group[0]].size, flip=torch.cat(flips),
                value_scale=value_scale, source=source,
            )  # fmt: skip
            if any(a is not None for a in angles):
                zeros = torch.zeros(b, device=dev)
                x = rotate(x, torch.cat([zeros if a is None else a for a in angles]))
            for i, view in zip(
                group, self._photometry([self.specs[i] for i in group], x, generator)
            ):
                out[i] = view
        return out

    # -------------------------------------------------------------- worker side: one image
    def geometry(self, image: Tensor, generator: torch.Generator | None = None) -> list[Tensor]:
        """One decoded image (C, H, W), uint8 -> per view a (C, h_v, w_v) crop, resized, maybe
        flipped and rotated, same dtype. Runs in DataLoader workers (CPU)."""
        if image.ndim != 3:
            raise ValueError(f"geometry takes one image (C, H, W), got shape {tuple(image.shape)}")
        check_images(image[None], "image")
        _, h, w = image.shape
        out = []
        for spec in self.specs:
            box = sample_crop_box(
                h, w, scale=spec.crop_scale, ratio=spec.crop_ratio, generator=generator
            )
            view = resized_crop_one(image, box, spec.hw)
            flip, angle = _draw((2,), generator, None).tolist()
            if flip < spec.hflip_p:
                view = view.flip(-1)
            if spec.rotation > 0:
                view = rotate(view[None], spec.rotation * (2.0 * angle - 1.0))[0]
            out.append(view)
        return out

    # ---------------------------------------------------------- device side: colour, batched
    def photometry(
        self, views: list[Tensor], generator: torch.Generator | None = None
    ) -> list[Tensor]:
        """uint8 (or float) batches (B, C, h_v, w_v), one per view (collated ``geometry``
        output, on the training device) -> float normalised views (B, C', h_v, w_v)."""
        if len(views) != len(self.specs):
            raise ValueError(
                f"photometry got {len(views)} view batches for {len(self.specs)} specs"
            )
        for spec, v in zip(self.specs, views):
            check_images(v, "view batch")
            if tuple(v.shape[-2:]) != spec.hw or v.shape[:2] != views[0].shape[:2]:
                raise ValueError(
                    f"view batch of shape {tuple(v.shape)} does not match size {spec.hw} "
                    f"and batch / channels {tuple(views[0].shape[:2])}"
                )
        out: list[Tensor] = list(views)
        for group in self._groups:
            batches = [views[i] for i in group]
            if all(v.dtype == torch.uint8 for v in batches):
                # join the 1-byte pixels, then one uint8 -> float pass (bitwise the same as
                # converting each view and joining the floats, one float copy less)
                x = to_float(torch.cat(batches))
            else:
                x = torch.cat([to_float(v) for v in batches])
            # x is a new tensor, ours to modify in place
            for i, view in zip(
                group, self._photometry([self.specs[i] for i in group], x, generator)
            ):
                out[i] = view
        return out

    @staticmethod
    def _photometry(
        specs: list[ViewSpec], x: Tensor, generator: torch.Generator | None
    ) -> list[Tensor]:
        """Colour ops on float views in [0, 1] -> one normalised tensor per spec.

        x: (V * B, C, h, w), the B images of view 0, then of view 1, ... (owned: modified in
        place); every image gets its own parameters, drawn from its view's spec.
        """
        n, c, h, w = x.shape
        b, dev = n // len(specs), x.device

        def per_view(draw: Callable[[ViewSpec], Tensor]) -> Tensor:
            return torch.cat([draw(spec) for spec in specs])

        def jitter_on(s: ViewSpec) -> bool:
            return s.jitter_p > 0 and (s.brightness or s.contrast or s.saturation or s.hue) > 0

        if any(jitter_on(s) for s in specs) and b > 0:
            identity = JitterParams(
                torch.tensor([1.0, 1.0, 1.0, 0.0], device=dev).expand(b, 4),
                torch.arange(4, device=dev).expand(b, 4),
                torch.zeros(b, dtype=torch.bool, device=dev),
            )
            params = [
                sample_jitter(
                    b, brightness=s.brightness, contrast=s.contrast, saturation=s.saturation,
                    hue=s.hue, p=s.jitter_p, generator=generator, device=dev,
                ) if jitter_on(s) else identity
                for s in specs
            ]  # fmt: skip
            merged = JitterParams(*(torch.cat(t) for t in zip(*params)))
            x = color_jitter_(x, merged, hue=any(jitter_on(s) and s.hue > 0 for s in specs))
        if c == 3 and any(s.grayscale_p > 0 for s in specs):
            apply = per_view(lambda s: bernoulli(b, s.grayscale_p, generator=generator, device=dev))
            x = random_grayscale(x, apply)
        if any(s.blur_p > 0 for s in specs):
            apply = per_view(lambda s: bernoulli(b, s.blur_p, generator=generator, device=dev))
            sigma = per_view(
                lambda s: sample_blur_sigma(b, s.blur_sigma, generator=generator, device=dev)
            )
            frac = specs[0].blur_kernel_frac  # the same in a group
            kernel = (blur_kernel_size(h, frac), blur_kernel_size(w, frac))
            if all(s.blur_p >= 1.0 for s in specs):
                x = gaussian_blur(x, sigma, kernel)
            else:  # blur only the selected images
                idx = apply.nonzero().squeeze(1)
                if idx.numel():
                    x[idx] = gaussian_blur(x[idx], sigma[idx], kernel)
        if any(s.solarize_p > 0 for s in specs):
            apply = per_view(lambda s: bernoulli(b, s.solarize_p, generator=generator, device=dev))
            threshold = per_view(lambda s: torch.full((b,), s.solarize_threshold, device=dev))
            x = solarize(x, threshold, apply)
        out = []
        for spec, view in zip(specs, x.split(b)):
            mean, std = spec.stats(c)
            out.append(normalize(view, mean, std, channels=spec.out_channels(c)))
        return out
