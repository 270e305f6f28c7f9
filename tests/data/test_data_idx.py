"""IDX parsing and Fashion-MNIST discovery (cache folder, Debian folder, download, error)."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from twinview.data import fashion_mnist
from twinview.data.fashion_mnist import FashionMNIST
from twinview.data.idx import parse_idx, read_idx

_TYPE = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D}


def write_idx(path: Path, array: np.ndarray, *, compress: bool) -> None:
    """Independent IDX writer (format from the MNIST page): magic, big-endian dims, data."""
    header = bytes([0, 0, _TYPE[array.dtype.type], array.ndim])
    header += b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32])
@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path: Path, dtype, compress: bool) -> None:
    rng = np.random.default_rng(0)
    array = (rng.random((3, 5, 4)) * 100 - (0 if dtype == np.uint8 else 50)).astype(dtype)
    path = tmp_path / "a.idx"
    write_idx(path, array, compress=compress)
    got = read_idx(path)
    assert got.dtype == array.dtype and got.shape == (3, 5, 4)
    np.testing.assert_array_equal(got, array)
    assert got.flags.writeable


def test_idx_one_dimensional_labels() -> None:
    raw = bytes([0, 0, 8, 1]) + struct.pack(">I", 4) + bytes([3, 1, 4, 1])
    np.testing.assert_array_equal(parse_idx(raw), [3, 1, 4, 1])


def test_idx_rejects_bad_magic_type_and_truncation() -> None:
    good = bytes([0, 0, 8, 2]) + struct.pack(">II", 2, 3) + bytes(6)
    with pytest.raises(ValueError, match="not an IDX file"):
        parse_idx(b"\x1f\x8b" + good, name="x.gz")
    with pytest.raises(ValueError, match="unknown IDX data type"):
        parse_idx(bytes([0, 0, 0x42, 1]) + struct.pack(">I", 1) + bytes(1))
    with pytest.raises(ValueError, match=r"truncated\.idx.*declares shape \(2, 3\)"):
        parse_idx(good[:-1], name="truncated.idx")


def _fake_fashion(folder: Path, split: str, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Tiny Fashion-MNIST-format files (the real ones are 28x28 as well)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    prefix = "train" if split == "train" else "t10k"
    write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images, compress=True)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels, compress=True)
    return images, labels


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Empty cache folder, no system folder, an unreachable mirror."""
    monkeypatch.setenv("TWINVIEW_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIRS", [tmp_path / "system"])
    monkeypatch.setattr(fashion_mnist, "MIRRORS", ["http://127.0.0.1:9/"])
    monkeypatch.setattr(fashion_mnist, "DOWNLOAD_TIMEOUT_S", 2.0)
    return tmp_path


def test_fashion_mnist_from_root(tmp_path: Path) -> None:
    images, labels = _fake_fashion(tmp_path, "test", 7)
    source = FashionMNIST("test", root=tmp_path, download=False)
    assert len(source) == 7 and source.channels == 1 and source.num_classes == 10
    assert source.images.shape == (7, 1, 28, 28) and source.images.dtype == torch.uint8
    assert source.labels.dtype == torch.long
    image, label = source[3]
    np.testing.assert_array_equal(image[0].numpy(), images[3])
    assert label == labels[3]
    assert source.classes[0] == "T-shirt/top" and source.classes[9] == "Ankle boot"


def test_fashion_mnist_cache_folder_comes_before_system_folder(isolated: Path) -> None:
    _fake_fashion(isolated / "system", "train", 4, seed=1)
    from_system = FashionMNIST("train")
    assert len(from_system) == 4
    cached, _ = _fake_fashion(isolated / "cache" / "fashion-mnist", "train", 5, seed=2)
    from_cache = FashionMNIST("train")
    assert len(from_cache) == 5
    np.testing.assert_array_equal(from_cache.images[:, 0].numpy(), cached)


def test_fashion_mnist_missing_gives_one_actionable_error(isolated: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        FashionMNIST("test")
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "t10k-images-idx3-ubyte.gz" in message and "t10k-labels-idx1-ubyte.gz" in message
    assert str(isolated / "cache" / "fashion-mnist") in message
    assert "download failed" in message


def test_fashion_mnist_downloads_and_verifies_md5(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = isolated / "served"
    images, labels = _fake_fashion(served, "test", 6, seed=3)
    md5 = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in served.iterdir()}
    files = {
        "test": {key: (name, md5[name]) for key, (name, _) in fashion_mnist.FILES["test"].items()}
    }

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(served), **kwargs)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setattr(fashion_mnist, "MIRRORS", [f"http://127.0.0.1:{server.server_port}/"])
        # A wrong checksum is refused and nothing is left behind.
        bad = {"test": {k: (n, "0" * 32) for k, (n, _) in files["test"].items()}}
        monkeypatch.setattr(fashion_mnist, "FILES", bad)
        with pytest.raises(FileNotFoundError, match="MD5 mismatch"):
            FashionMNIST("test")
        assert not list((isolated / "cache" / "fashion-mnist").glob("*"))
        monkeypatch.setattr(fashion_mnist, "FILES", files)
        source = FashionMNIST("test")
    finally:
        server.shutdown()
        server.server_close()
    np.testing.assert_array_equal(source.images[:, 0].numpy(), images)
    np.testing.assert_array_equal(source.labels.numpy(), labels)
    assert (isolated / "cache" / "fashion-mnist" / "t10k-images-idx3-ubyte.gz").is_file()


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").exists(),
    reason="Debian package dataset-fashion-mnist not installed",
)
def test_real_fashion_mnist_test_split(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TWINVIEW_DATA", str(tmp_path))  # force the Debian folder
    source = FashionMNIST("test", download=False)
    assert source.images.shape == (10000, 1, 28, 28)
    assert torch.equal(source.labels.bincount(), torch.full((10,), 1000))
    assert 0 < source.images.float().mean() < 255
