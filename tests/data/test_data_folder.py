"""Image folders: a zoo of good, odd and broken files made here; file lists; detection."""

from __future__ import annotations

import io
import os
import struct
import sys
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from twinview.data import FolderLoader, ImageFolder, decode_image, load_dataset
from twinview.data.decode import (
    DECODE_ERRORS,
    DEFAULT_MAX_PIXELS,
    ImageTooLargeError,
    check_image,
)

try:
    from messy_folder import make_messy_folder
except ImportError:  # tests/ is on sys.path only once a test at its top level was collected
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from messy_folder import make_messy_folder

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


def test_messy_folder_loads_every_readable_image_and_names_each_broken_file_once(
    tmp_path: Path,
) -> None:
    info = make_messy_folder(tmp_path / "photos")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source = load_dataset(str(info["root"]))
    messages = [str(w.message) for w in caught]
    assert source.classes == info["classes"] and len(source) == info["n_images"]
    assert sorted(source.paths) == sorted(info["images"])
    for i, path in enumerate(source.paths):
        image, label = source[i]
        assert image.dtype == torch.uint8 and image.shape == (3, *info["images"][path]), path
        assert source.classes[label] == Path(path).relative_to(info["root"]).parts[0]
    rotated, _ = source[source.paths.index(info["rotated"])]
    assert rotated.shape == (3, 48, 24)  # stored 48 wide x 24 high; EXIF 6 turns it upright
    assert sorted(p for p, _ in source.skipped) == sorted(info["broken"])
    for path in info["broken"]:
        assert sum(path in m for m in messages) == 1, path
    for path in info["ignored"]:
        assert not any(path in m for m in messages), path
    total = info["n_images"] + len(info["broken"])
    counts = [m for m in messages if m.startswith(f"{info['root']}: skipped")]
    assert len(counts) == 1 and f"skipped {len(info['broken'])} of {total} files" in counts[0]


def _write_images(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.new("RGB", (4, 4), (i * 30, 0, 0)).save(folder / name)


def test_symlink_loop_back_to_root_yields_each_image_once(tmp_path: Path) -> None:
    _write_images(tmp_path, ["a.png"])
    _write_images(tmp_path / "sub", ["b.png"])
    (tmp_path / "sub" / "self").symlink_to("..", target_is_directory=True)
    source = ImageFolder(tmp_path)
    assert source.paths == [str(tmp_path / "a.png"), str(tmp_path / "sub" / "b.png")]


def test_two_symlink_loops_terminate_quickly(tmp_path: Path) -> None:
    _write_images(tmp_path / "x", ["a.png", "b.png"])
    _write_images(tmp_path / "y", ["c.png"])
    (tmp_path / "x" / "to_y").symlink_to("../y", target_is_directory=True)
    (tmp_path / "y" / "to_x").symlink_to("../x", target_is_directory=True)
    (tmp_path / "y" / "up").symlink_to("..", target_is_directory=True)
    start = time.perf_counter()
    source = ImageFolder(tmp_path, labeled=False)
    assert time.perf_counter() - start < 5.0
    assert len(source) == 3
    names = sorted(Path(p).name for p in source.paths)
    assert names == ["a.png", "b.png", "c.png"]


def test_file_linked_twice_is_used_once_under_its_first_path(tmp_path: Path) -> None:
    _write_images(tmp_path / "cat", ["a.png", "b.png"])
    _write_images(tmp_path / "dog", ["c.png"])
    (tmp_path / "dog" / "link1.png").symlink_to(tmp_path / "cat" / "a.png")
    (tmp_path / "dog" / "link2.png").symlink_to("../cat/a.png")
    source = ImageFolder(tmp_path)
    assert source.paths == [str(tmp_path / p) for p in ("cat/a.png", "cat/b.png", "dog/c.png")]
    assert source.labels.tolist() == [0, 0, 1]


def test_unreadable_subfolder_is_named_in_one_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_images(tmp_path / "ok", ["a.png"])
    _write_images(tmp_path / "locked", ["b.png", "c.png"])
    _write_images(tmp_path / "locked2", ["d.png"])
    locked = [tmp_path / "locked", tmp_path / "locked2"]
    for folder in locked:
        folder.chmod(0)
    try:
        if os.access(locked[0], os.R_OK):  # root reads anything: make listing fail by hand
            real_scandir = os.scandir

            def scandir(path=".", *args, **kwargs):
                if Path(os.fspath(path)) in locked:
                    raise PermissionError(13, "Permission denied", os.fspath(path))
                return real_scandir(path, *args, **kwargs)

            monkeypatch.setattr(os, "scandir", scandir)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            source = ImageFolder(tmp_path, labeled=False)
    finally:
        for folder in locked:
            folder.chmod(0o755)
    assert source.paths == [str(tmp_path / "ok" / "a.png")]
    assert [f for f, _ in source.unreadable_folders] == [str(f) for f in locked]
    about = [str(w.message) for w in caught if "could not be read" in str(w.message)]
    assert len(about) == 1
    assert all(str(f) in about[0] for f in locked)
    assert "not used" in about[0] and "permission" in about[0] and "chmod" in about[0]


def _png_declaring(width: int, height: int) -> bytes:
    """A valid 16x16 PNG whose header (IHDR, CRC fixed) declares ``width`` x ``height``."""
    data = bytearray(_png_bytes(Image.new("RGB", (16, 16), RED)))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_max_pixels_skips_images_declaring_a_huge_size_without_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_images(tmp_path, ["a.png", "b.png"])
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_declaring(12000, 12000))
    assert len(bomb.read_bytes()) < 200 and DEFAULT_MAX_PIXELS >= 6000 * 4000
    camera = tmp_path / "camera.png"
    camera.write_bytes(_png_declaring(6000, 4000))  # a 24 MP photo's size passes the default
    loads = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loads.append(self))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source = load_dataset(str(tmp_path))
    messages = [str(w.message) for w in caught]
    assert str(bomb) not in source.paths and str(camera) in source.paths
    assert [p for p, _ in source.skipped] == [str(bomb)]
    reason = source.skipped[0][1]
    assert "12000x12000" in reason and f"max_pixels={DEFAULT_MAX_PIXELS}" in reason
    assert "data.max_pixels=" in reason
    assert sum(str(bomb) in m for m in messages) == 1
    assert any("skipped 1 of 4 files" in m for m in messages)
    assert not any("DecompressionBomb" in m for m in messages)  # our check replaces Pillow's
    with pytest.raises(ImageTooLargeError, match=r"12000x12000.*data\.max_pixels") as error:
        decode_image(bomb)
    assert isinstance(error.value, DECODE_ERRORS) and loads == []  # refused before decoding
    # The limit is what stops it: without one, the header check lets the bomb through.
    with pytest.warns(Image.DecompressionBombWarning):  # only Pillow's warning is left then
        assert str(bomb) in ImageFolder(tmp_path, max_pixels=None, warn=False).paths
    with pytest.raises(ValueError, match="no readable image"):  # 4x4 and 16x16 files: > 15
        load_dataset(str(tmp_path), max_pixels=15, warn=False)
    assert check_image(bomb, max_pixels=12000 * 12000) is None


def test_max_pixels_refused_at_load_time_with_verify_none_and_bad_values(tmp_path: Path) -> None:
    _write_images(tmp_path, ["a.png"])
    (tmp_path / "b_bomb.png").write_bytes(_png_declaring(12000, 12000))
    source = ImageFolder(tmp_path, verify="none")
    assert len(source) == 2  # not opened at scan time
    with pytest.warns(UserWarning, match=r"b_bomb\.png: ImageTooLargeError: 12000x12000"):
        image, _ = source[1]
    assert image.shape == (3, 4, 4)  # replaced by the next readable sample, a.png
    for bad in (0, -5, 1.5, "big", True):
        with pytest.raises(ValueError, match="max_pixels must be a positive whole number"):
            ImageFolder(tmp_path, max_pixels=bad)
