"""A small folder like the ones users really have, for end-to-end tests of folder handling.

:func:`make_messy_folder` writes a labeled folder (three class subfolders, one with a nested
sub-subfolder) of images in mixed sizes, formats (JPEG, PNG, WebP, BMP, TIFF) and modes (RGB,
gray, RGBA, palette with transparency, CMYK JPEG, 16-bit grayscale, an EXIF-rotated JPEG), plus
broken files that must be skipped and named once, and non-image files that must be ignored.
It is tiny (about 15 files, well under 200 KB) so tests using it stay fast.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

CLASSES = ["cat", "dog", "fox"]


def _noise(width: int, height: int, seed: int) -> np.ndarray:
    """(height, width, 3) uint8 noise: a different picture for every file."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _rgb(width: int, height: int, seed: int) -> Image.Image:
    return Image.fromarray(_noise(width, height, seed), "RGB")


def make_messy_folder(root: Path) -> dict[str, Any]:
    """Write the messy folder under ``root`` and describe it.

    Returns a dict:
        ``root``: the folder (a :class:`~pathlib.Path`, as given);
        ``classes``: the class subfolder names, sorted;
        ``n_images``: how many readable images it holds;
        ``images``: ``{path: (H, W)}`` per readable image, the decoded height and width (EXIF
            orientation applied);
        ``rotated``: the EXIF-rotated JPEG's path (stored 48 wide x 24 high, decodes 24 x 48);
        ``broken``: paths of the unreadable image files (zero-byte, truncated, text), each of
            which a loader must skip and name once;
        ``ignored``: paths of non-image files a scan must not even look at.
    Paths are ``str``, as :class:`~twinview.data.ImageFolder` reports them.
    """
    root = Path(root)
    for folder in ("cat", "dog", "dog/puppies", "fox"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    images: dict[str, tuple[int, int]] = {}

    def save(relative: str, image: Image.Image, decoded_hw: tuple[int, int], **kwargs) -> None:
        image.save(root / relative, **kwargs)
        images[str(root / relative)] = decoded_hw

    # cat: RGB JPEG, grayscale PNG, RGBA PNG, CMYK JPEG.
    save("cat/tabby.jpg", _rgb(20, 31, 0), (31, 20), quality=90)
    gray = Image.fromarray(_noise(48, 48, 1)[:, :, 0], "L")
    save("cat/gray.png", gray, (48, 48))
    rgba = np.concatenate([_noise(64, 40, 2), np.full((40, 64, 1), 128, np.uint8)], axis=2)
    rgba[:, :32, 3] = 0  # left half fully transparent
    save("cat/transparent.png", Image.fromarray(rgba, "RGBA"), (40, 64))
    save("cat/print.jpg", _rgb(33, 17, 3).convert("CMYK"), (17, 33), quality=90)

    # dog: palette PNG with a transparent index, 16-bit PNG, EXIF-rotated JPEG, WebP.
    palette = Image.new("P", (40, 24), 1)
    palette.putpalette([0, 0, 0, 200, 120, 40] + [0] * 762)
    palette.paste(0, (0, 0, 40, 12))
    save("dog/palette.png", palette, (24, 40), transparency=0)
    sixteen = np.random.default_rng(4).integers(0, 65536, (22, 30), dtype=np.uint16)
    save("dog/scan16.png", Image.fromarray(sixteen), (22, 30))
    assert Image.open(root / "dog/scan16.png").mode.startswith("I;16")  # really 16-bit on disk
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    save("dog/phone.jpg", _rgb(48, 24, 5), (48, 24), quality=90, exif=exif)
    save("dog/web.webp", _rgb(36, 36, 6), (36, 36), quality=80)

    # dog/puppies (a nested sub-subfolder, still class "dog"): BMP, TIFF.
    save("dog/puppies/old.bmp", _rgb(25, 19, 7), (19, 25))
    save("dog/puppies/scan.tiff", _rgb(28, 44, 8), (44, 28))

    # fox: JPEG and PNG of other sizes.
    save("fox/wide.jpg", _rgb(50, 30, 9), (30, 50), quality=90)
    save("fox/small.png", _rgb(12, 16, 10), (16, 12))

    # Broken image files, one per kind of damage users meet.
    broken = [root / "cat/empty.jpg", root / "dog/notes.jpg", root / "dog/puppies/cut.png"]
    broken[0].write_bytes(b"")
    broken[1].write_text("this is a text file with an image extension\n")
    buffer = io.BytesIO()
    _rgb(32, 32, 11).save(buffer, "PNG")
    broken[2].write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])

    # Not images: never looked at.
    ignored = [root / "README.txt", root / "fox/labels.txt", root / ".hidden.jpg"]
    ignored[0].write_text("photos from the shelter\n")
    ignored[1].write_text("fox\n")
    ignored[2].write_bytes(b"")  # hidden: skipped by the scan, so not broken either
    return {
        "root": root,
        "classes": list(CLASSES),
        "n_images": len(images),
        "images": images,
        "rotated": str(root / "dog/phone.jpg"),
        "broken": [str(path) for path in broken],
        "ignored": [str(path) for path in ignored],
    }
