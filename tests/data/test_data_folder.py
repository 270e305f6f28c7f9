"""Image folders: a zoo of good, odd and broken files made here; file lists; detection."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from twinview.data import FolderLoader, ImageFolder, decode_image, load_dataset

RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 200, 0)


def _jpeg_bytes(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95, **kwargs)
    return buffer.getvalue()


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _make_zoo(root: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    """Writes the zoo; returns expected (H, W, 3) pixels per good file and the bad names."""
    (root / "nested" / "deeper").mkdir(parents=True)
    expected: dict[str, np.ndarray] = {}

    def solid(color, h=8, w=8):
        return np.broadcast_to(np.array(color, dtype=np.uint8), (h, w, 3))

    Image.new("RGB", (8, 8), RED).save(root / "red.jpg", quality=95)
    expected["red.jpg"] = solid(RED)
    # Data appended after the end-of-image marker (phones' motion photos): still a good image.
    trailer = _jpeg_bytes(Image.new("RGB", (8, 8), RED)) + bytes(4096)
    (root / "trailer.jpg").write_bytes(trailer)
    expected["trailer.jpg"] = solid(RED)
    Image.new("RGB", (8, 8), BLUE).save(root / "nested" / "blue.webp", lossless=True)
    expected["nested/blue.webp"] = solid(BLUE)
    Image.new("RGB", (8, 8), GREEN).save(root / "nested" / "deeper" / "green.bmp")
    expected["nested/deeper/green.bmp"] = solid(GREEN)
    Image.new("RGB", (8, 8), (10, 20, 30)).save(root / "nested" / "deeper" / "dark.tiff")
    expected["nested/deeper/dark.tiff"] = solid((10, 20, 30))
    Image.new("L", (8, 8), 77).save(root / "gray.png")
    expected["gray.png"] = solid((77, 77, 77))

    # RGBA: left half opaque red, right half fully transparent, bottom row half transparent blue.
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[:, :4] = (*RED, 255)
    rgba[7] = (*BLUE, 128)
    Image.fromarray(rgba, "RGBA").save(root / "rgba.png")
    want = np.full((8, 8, 3), 255, dtype=np.float64)  # white background
    want[:, :4] = RED
    want[7] = np.array(BLUE) * 128 / 255 + 255 * (1 - 128 / 255)
    expected["rgba.png"] = np.rint(want).astype(np.uint8)

    # CMYK JPEG of pure red (C=0, M=Y=255, K=0).
    (root / "cmyk.jpg").write_bytes(_jpeg_bytes(Image.new("CMYK", (8, 8), (0, 255, 255, 0))))
    expected["cmyk.jpg"] = solid(RED)

    # 16-bit grayscale PNG: round(v / 257) maps 0..65535 to 0..255.
    sixteen = np.array([[0, 257 * 100, 65535, 300]] * 2, dtype=np.uint16)
    Image.fromarray(sixteen).save(root / "sixteen.png")
    assert Image.open(root / "sixteen.png").mode.startswith("I")  # really 16-bit on disk
    expected["sixteen.png"] = np.repeat(
        np.array([[0, 100, 255, 1]] * 2, dtype=np.uint8)[:, :, None], 3, axis=2
    )

    # EXIF orientation 6: stored row 0 is the visual right side, stored column 0 the visual top.
    stored = np.zeros((16, 32, 3), dtype=np.uint8)
    stored[:, :16] = RED
    stored[:, 16:] = BLUE
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(root / "rotated.jpg", quality=95, exif=exif)
    upright = np.zeros((32, 16, 3), dtype=np.uint8)
    upright[:16] = RED
    upright[16:] = BLUE
    expected["rotated.jpg"] = upright

    # Palette PNG with a transparent index, and a palette GIF.
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, *GREEN] + [0] * 762)
    palette.paste(0, (0, 0, 8, 4))
    palette.save(root / "nested" / "palette.png", transparency=0)
    want = np.zeros((8, 8, 3), dtype=np.uint8)
    want[:4] = 255
    want[4:] = GREEN
    expected["nested/palette.png"] = want
    gif = Image.new("P", (8, 8), 1)
    gif.putpalette([0, 0, 0, *BLUE] + [0] * 762)
    gif.save(root / "palette.gif")
    expected["palette.gif"] = solid(BLUE)

    # Broken files.
    (root / "empty.jpg").write_bytes(b"")
    (root / "text.jpg").write_text("this is not an image\n")
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff" + bytes(range(256)) * 4)
    good_png = _png_bytes(Image.fromarray(np.arange(192, dtype=np.uint8).reshape(8, 8, 3)))
    (root / "nested" / "truncated.png").write_bytes(good_png[: len(good_png) // 2])
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    jpeg = _jpeg_bytes(noisy)
    (root / "nested" / "truncated.jpg").write_bytes(jpeg[: len(jpeg) * 2 // 3])
    (root / "notes.txt").write_text("ignored: not an image extension")
    bad = ["empty.jpg", "text.jpg", "corrupt.jpg", "nested/truncated.png", "nested/truncated.jpg"]
    return expected, bad


def test_zoo_good_files_load_right_bad_files_reported(tmp_path: Path) -> None:
    expected, bad = _make_zoo(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source = ImageFolder(tmp_path)
    messages = [str(w.message) for w in caught]
    for name in bad:
        assert any(str(tmp_path / name) in m for m in messages), name
    assert any(f"skipped {len(bad)} of {len(bad) + len(expected)} files" in m for m in messages)
    assert sorted(p for p, _ in source.skipped) == sorted(str(tmp_path / b) for b in bad)
    assert source.classes is None and source.num_classes is None  # root holds images: unlabeled
    assert sorted(source.paths) == sorted(str(tmp_path / name) for name in expected)
    lossy = {"red.jpg", "trailer.jpg", "cmyk.jpg", "rotated.jpg"}
    for i, path in enumerate(source.paths):
        image, label = source[i]
        name = Path(path).relative_to(tmp_path).as_posix()
        want = torch.from_numpy(np.ascontiguousarray(expected[name])).permute(2, 0, 1)
        assert image.dtype == torch.uint8 and image.shape == want.shape, name
        error = (image.int() - want.int()).abs()
        if name == "rotated.jpg":  # JPEG ringing at the colour edge; judge away from it
            error = torch.cat([error[:, :12], error[:, 20:]], dim=1)
        assert error.max() <= (12 if name in lossy else 1), (name, error.max())
        assert label == -1


def test_decode_matches_pillow_reference_and_channels_1(tmp_path: Path) -> None:
    array = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(array).save(tmp_path / "x.png")
    rgb = decode_image(tmp_path / "x.png")
    assert torch.equal(rgb, torch.from_numpy(array).permute(2, 0, 1))
    gray = decode_image(tmp_path / "x.png", channels=1)
    reference = np.asarray(Image.fromarray(array).convert("L"))
    assert gray.shape == (1, 5, 7) and torch.equal(gray[0], torch.from_numpy(reference.copy()))


def test_labeled_detection_explicit_choice_and_file_lists(tmp_path: Path) -> None:
    for cls, color in (("cat", RED), ("dog", BLUE)):
        (tmp_path / cls / "sub").mkdir(parents=True)
        Image.new("RGB", (4, 4), color).save(tmp_path / cls / "a.png")
        Image.new("RGB", (4, 4), color).save(tmp_path / cls / "sub" / "b.png")
    labeled = ImageFolder(tmp_path)
    assert labeled.classes == ["cat", "dog"] and labeled.labels.tolist() == [0, 0, 1, 1]
    assert labeled[2][0][:, 0, 0].tolist() == list(BLUE)
    assert ImageFolder(tmp_path, labeled=False).labels.tolist() == [-1] * 4
    Image.new("RGB", (4, 4)).save(tmp_path / "loose.png")
    assert ImageFolder(tmp_path).classes is None  # a loose image: detected as unlabeled
    with pytest.raises(ValueError, match=r"loose\.png.*labeled=False"):
        ImageFolder(tmp_path, labeled=True)
    listing = tmp_path / "list.csv"
    listing.write_text("path,label\ndog/a.png,dog\ncat/sub/b.png,cat\nmissing.png,cat\n")
    with pytest.warns(UserWarning) as record:
        from_csv = load_dataset(str(listing))
    assert any("missing.png: file not found" in str(w.message) for w in record)
    assert any("skipped 1 of 3 files" in str(w.message) for w in record)
    assert from_csv.classes == ["cat", "dog"] and from_csv.labels.tolist() == [1, 0]
    assert from_csv.paths[0] == str(tmp_path / "dog" / "a.png")
    numbered = tmp_path / "numbered.csv"
    numbered.write_text("path,label\ndog/a.png,10\ncat/a.png,2\n")
    assert ImageFolder(numbered).classes == ["2", "10"]
    assert ImageFolder(numbered).labels.tolist() == [1, 0]


def test_folder_without_readable_images_fails_before_training(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "b.png").write_text("nope")
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="no readable image"):
        ImageFolder(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolder(tmp_path / "nowhere")


def test_file_failing_at_decode_time_is_replaced_and_counted(tmp_path: Path) -> None:
    for i in range(5):
        Image.new("RGB", (4, 4), (i * 40, 0, 0)).save(tmp_path / f"{i}.png")
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    png = _png_bytes(Image.fromarray(noise))
    (tmp_path / "2.png").write_bytes(png[: len(png) // 2])  # header fine, data truncated
    source = ImageFolder(tmp_path, verify="none")
    assert len(source) == 5  # not caught at scan time with verify="none"
    with pytest.warns(UserWarning, match=r"2\.png"):
        image, _ = source[2]
    assert image[0, 0, 0] == 120  # the next readable sample, 3.png
    loader = FolderLoader(
        ImageFolder(tmp_path, verify="none"),
        batch_size=5,
        geometry=None,
        photometry=None,
        num_workers=0,
        drop_last=False,
        shuffle=False,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = list(loader)
    assert len(batches) == 1 and batches[0].views[0].shape == (5, 3, 4, 4)
    assert loader.skipped_files == [str(tmp_path / "2.png")]
    assert any("1 unreadable file(s) skipped" in str(w.message) for w in caught)
