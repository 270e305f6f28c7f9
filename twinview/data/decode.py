"""Decoding one image file into a uint8 (C, H, W) tensor, whatever its mode.

Pillow opens JPEG, PNG, WebP, BMP, TIFF and GIF; this module turns every mode into RGB (or
grayscale with ``channels=1``) the same, correct way:

- EXIF orientation is applied (``ImageOps.exif_transpose``), so phone photos stand upright.
- 16-bit grayscale (modes ``I;16*``, ``I``) is scaled to 8 bit by ``round(v / 257)``, which maps
  0..65535 onto 0..255 exactly (clipping or casting would saturate nearly every pixel).
- Transparency (RGBA, LA, palette with a transparent index) is composited onto a **white**
  background: transparent PNGs are usually dark drawings or logos meant for a light page.
- CMYK (Adobe-inverted JPEGs included, which Pillow handles), YCbCr, LAB, HSV, palette and 1-bit
  images go through Pillow's conversion to RGB.

Size limit: a file's header declares its size, and a 100-byte PNG can declare 12000x12000, which
decodes to gigabytes. :func:`decode_image` and :func:`check_image` read the header first and
refuse (:class:`ImageTooLargeError`) images over ``max_pixels`` before any pixel is decoded.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
BACKGROUND = (255, 255, 255)

#: Largest image (width x height) decoded by default: 8192 x 8192, about 67 megapixels. Every
#: consumer camera (24 MP is 6000x4000; 61 MP full-frame bodies), 48-50 MP phone sensors in
#: full-resolution mode and 8K frames pass; one such decode costs ~200 MB as RGB (more while
#: converting modes), so a few DataLoader workers stay within a laptop's memory. It is also below
#: Pillow's own decompression-bomb warning (~89.5 MP), so accepted files never trigger it.
DEFAULT_MAX_PIXELS = 8192 * 8192


class ImageTooLargeError(ValueError):
    """An image's header declares more pixels than ``max_pixels``; nothing was decoded."""


def _too_large(path: str | os.PathLike[str], pixels: int, size: str, max_pixels: int) -> str:
    # A file object (an image read from a tar shard) names itself with a ``name`` attribute.
    name = getattr(path, "name", "the image") if hasattr(path, "read") else os.fspath(path)
    return (
        f"{size} = {pixels / 1e6:.1f} megapixels is over the limit of max_pixels={max_pixels} "
        f"({max_pixels / 1e6:.1f} megapixels; decoding would take ~{3 * pixels / 2**30:.1f} GiB). "
        f"If {name} really is that large, raise the limit with "
        "data.max_pixels=<pixels> (max_pixels=... in Python), or downscale the image"
    )


def check_max_pixels(max_pixels: int | None) -> None:
    """Raise a clear ValueError unless ``max_pixels`` is a positive int or None."""
    if max_pixels is not None and (
        isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1
    ):
        raise ValueError(
            f"max_pixels must be a positive whole number of pixels (width * height) or None for "
            f"no limit, got {max_pixels!r}; e.g. data.max_pixels={DEFAULT_MAX_PIXELS}"
        )


@contextmanager
def open_image(
    path: str | os.PathLike[str], *, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> Iterator[Image.Image]:
    """``Image.open`` (header only, nothing decoded) that refuses images over ``max_pixels``.

    Raises :class:`ImageTooLargeError` before decoding when ``width * height > max_pixels``.
    With a limit set, Pillow's own decompression-bomb warning is silenced (this check replaces
    it); ``max_pixels=None`` turns the check off and leaves Pillow's protection as it is.
    """
    check_max_pixels(max_pixels)
    with warnings.catch_warnings():
        if max_pixels is not None:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(path)
        except Image.DecompressionBombError as error:
            # Over twice Pillow's MAX_IMAGE_PIXELS: Pillow refuses before we see the size.
            found = re.search(r"\((\d+) pixels\)", str(error))
            if max_pixels is None or found is None:
                raise
            pixels = int(found.group(1))
            if pixels > max_pixels:
                raise ImageTooLargeError(
                    _too_large(path, pixels, f"{pixels} pixels", max_pixels)
                ) from error
            raise ImageTooLargeError(
                f"{error} max_pixels={max_pixels} allows it, but Pillow refuses it too: also "
                "raise PIL.Image.MAX_IMAGE_PIXELS to use images this large"
            ) from error
    with img:
        width, height = img.size
        if max_pixels is not None and width * height > max_pixels:
            raise ImageTooLargeError(
                _too_large(path, width * height, f"{width}x{height}", max_pixels)
            )
        yield img


def _sixteen_bit_to_l(img: Image.Image) -> Image.Image:
    values = np.asarray(img, dtype=np.float64)
    if values.max(initial=0) > 65535 or values.min(initial=0) < 0:
        values = np.clip(values, 0, 65535)
    return Image.fromarray(np.rint(values / 257.0).astype(np.uint8), mode="L")


def to_rgb_or_l(img: Image.Image, channels: int = 3) -> Image.Image:
    """Convert a Pillow image of any mode to ``"RGB"`` (channels=3) or ``"L"`` (channels=1)."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        img = _sixteen_bit_to_l(img)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode == "L" and "transparency" in img.info:
        img = img.convert("LA")
    elif img.mode == "RGB" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (*BACKGROUND, 255))
        img = Image.alpha_composite(background, img)
    target = "RGB" if channels == 3 else "L"
    return img if img.mode == target else img.convert(target)


def decode_image(
    path: str | os.PathLike[str],
    *,
    channels: int = 3,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Tensor:
    """Read an image file into a uint8 tensor (channels, H, W), EXIF orientation applied.

    Raises the underlying error (``OSError``, ``SyntaxError``, ``ValueError``, ...) on unreadable
    files, and :class:`ImageTooLargeError` (a ``ValueError``), before decoding, when the header
    declares more than ``max_pixels`` pixels (None: no limit); callers that must not crash catch
    :data:`DECODE_ERRORS`.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    with open_image(path, max_pixels=max_pixels) as img:
        img.load()
        img = ImageOps.exif_transpose(img)
        img = to_rgb_or_l(img, channels)
        array = np.asarray(img, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


# Everything Pillow raises on broken input (truncated data, bad markers, decompression bombs...).
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    TypeError,
    KeyError,
    Image.DecompressionBombError,
)


def check_image(
    path: str | os.PathLike[str],
    *,
    full: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> str | None:
    """Cheap integrity check; returns None when fine, else the reason the file can't be used.

    Always: not empty, Pillow recognises the header, the declared size is at most ``max_pixels``
    (read from the header, nothing decoded). PNG: chunk CRCs and IEND (``verify``).
    JPEG: a full decode when the end-of-image marker is missing from the last KiB (truncated
    files; a trailer after the image decodes fine). ``full=True`` decodes every image, which
    catches everything but costs a full decode.
    """
    check_max_pixels(max_pixels)
    try:
        if os.path.getsize(path) == 0:
            return "zero-byte file"
        if full:
            decode_image(path, max_pixels=max_pixels)
            return None
        with open_image(path, max_pixels=max_pixels) as img:
            fmt = img.format
            if fmt == "PNG":
                img.verify()
        if fmt == "JPEG":
            with open(path, "rb") as f:
                f.seek(max(0, os.path.getsize(path) - 1024))
                tail = f.read()
            # No end-of-image marker near the end: truncated, or data appended after the image
            # (phones' "motion photos" do that). Only a full decode can tell; do it for these.
            if b"\xff\xd9" not in tail:
                decode_image(path, max_pixels=max_pixels)
    except DECODE_ERRORS as error:
        return f"{type(error).__name__}: {error}"
    return None
