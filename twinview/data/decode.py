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
"""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
BACKGROUND = (255, 255, 255)


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


def decode_image(path: str | os.PathLike[str], *, channels: int = 3) -> Tensor:
    """Read an image file into a uint8 tensor (channels, H, W), EXIF orientation applied.

    Raises the underlying error (``OSError``, ``SyntaxError``, ``ValueError``, ...) on unreadable
    files; callers that must not crash catch :data:`DECODE_ERRORS`.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    with Image.open(path) as img:
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


def check_image(path: str | os.PathLike[str], *, full: bool = False) -> str | None:
    """Cheap integrity check; returns None when fine, else the reason the file is unreadable.

    Always: not empty, Pillow recognises the header. PNG: chunk CRCs and IEND (``verify``).
    JPEG: a full decode when the end-of-image marker is missing from the last KiB (truncated
    files; a trailer after the image decodes fine). ``full=True`` decodes every image, which
    catches everything but costs a full decode.
    """
    try:
        if os.path.getsize(path) == 0:
            return "zero-byte file"
        if full:
            decode_image(path)
            return None
        with Image.open(path) as img:
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
                decode_image(path)
    except DECODE_ERRORS as error:
        return f"{type(error).__name__}: {error}"
    return None
