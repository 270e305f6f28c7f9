"""CIFAR, STL-10, arrays, synthetic shapes and load_dataset: shapes, dtypes, labels, pixels."""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from twinview.data import (
    CIFAR10,
    CIFAR100,
    STL10,
    ArraySource,
    FashionMNIST,
    ImageFolder,
    SyntheticShapes,
    load_dataset,
)


def _cifar_batch(
    rng: np.random.Generator, n: int, label_keys: dict[str, int]
) -> tuple[dict, np.ndarray]:
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    batch = {b"data": images.reshape(n, 3072)}  # official layout: R plane, G plane, B plane
    for key, classes in label_keys.items():
        batch[key.encode()] = rng.integers(0, classes, n).tolist()
    return batch, images


def _make_cifar10(folder: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    expected = {"train": [], "train_labels": [], "test": []}
    for i in range(1, 6):
        batch, images = _cifar_batch(rng, 2, {"labels": 10})
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
        expected["train"].append(images)
        expected["train_labels"] += batch[b"labels"]
    batch, images = _cifar_batch(rng, 3, {"labels": 10})
    (folder / "test_batch").write_bytes(pickle.dumps(batch))
    expected["test"].append(images)
    names = [f"class{i}".encode() for i in range(10)]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}))
    return {
        k: np.concatenate(v) if k != "train_labels" else np.array(v) for k, v in expected.items()
    }


@pytest.mark.parametrize("packed", [False, True])
def test_cifar10_folder_and_tarball(tmp_path: Path, packed: bool) -> None:
    expected = _make_cifar10(tmp_path / "cifar-10-batches-py")
    root = tmp_path
    if packed:
        root = tmp_path / "cifar-10-python.tar.gz"
        with tarfile.open(root, "w:gz") as tar:
            tar.add(tmp_path / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    train = CIFAR10("train", root=root)
    assert train.images.shape == (10, 3, 32, 32) and train.images.dtype == torch.uint8
    np.testing.assert_array_equal(train.images.numpy(), expected["train"])
    np.testing.assert_array_equal(train.labels.numpy(), expected["train_labels"])
    # Pixel (row 0, col 1) of image 0: byte 1 of the R plane, byte 1025 of the G plane.
    raw = expected["train"][0].reshape(3072)
    assert train[0][0][0, 0, 1] == raw[1] and train[0][0][1, 0, 1] == raw[1025]
    assert train.classes == [f"class{i}" for i in range(10)] and train.num_classes == 10
    test = CIFAR10("test", root=root)
    np.testing.assert_array_equal(test.images.numpy(), expected["test"])


def test_cifar100_fine_and_coarse(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(1)
    batch, images = _cifar_batch(rng, 4, {"fine_labels": 100, "coarse_labels": 20})
    (folder / "train").write_bytes(pickle.dumps(batch))
    meta = {
        b"fine_label_names": [f"f{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"c{i}".encode() for i in range(20)],
    }
    (folder / "meta").write_bytes(pickle.dumps(meta))
    fine = CIFAR100("train", root=folder)
    coarse = CIFAR100("train", root=tmp_path, label_type="coarse")
    np.testing.assert_array_equal(fine.images.numpy(), images)
    assert fine.labels.tolist() == batch[b"fine_labels"] and fine.num_classes == 100
    assert coarse.labels.tolist() == batch[b"coarse_labels"] and coarse.num_classes == 20


def test_cifar_missing_names_the_download(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"cifar-10-python\.tar\.gz"):
        CIFAR10("train", root=tmp_path)


def test_stl10_column_major_layout_and_unlabeled(tmp_path: Path) -> None:
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (3, 3, 96, 96), dtype=np.uint8)
    # The official files store each channel column-major: write the transpose.
    (folder / "train_X.bin").write_bytes(images.transpose(0, 1, 3, 2).tobytes())
    (folder / "train_y.bin").write_bytes(bytes([1, 10, 4]))
    (folder / "unlabeled_X.bin").write_bytes(images[:2].transpose(0, 1, 3, 2).tobytes())
    train = STL10("train", root=tmp_path)
    assert train.images.shape == (3, 3, 96, 96) and train.images.dtype == torch.uint8
    np.testing.assert_array_equal(train.images.numpy(), images)
    assert train.labels.tolist() == [0, 9, 3] and train.classes[0] == "airplane"
    image, label = train[1]
    assert torch.equal(image, torch.from_numpy(images[1])) and label == 9
    unlabeled = load_dataset("stl10", split="unlabeled", root=folder)
    assert len(unlabeled) == 2 and unlabeled.labels.tolist() == [-1, -1]
    np.testing.assert_array_equal(unlabeled.images.numpy(), images[:2])
    (folder / "test_X.bin").write_bytes(bytes(100))
    with pytest.raises(ValueError, match="not a multiple"):
        STL10("test", root=folder)


@pytest.mark.parametrize(
    ("shape", "layout"),
    [((4, 6, 5), "auto"), ((4, 3, 6, 5), "auto"), ((4, 6, 5, 3), "auto"), ((4, 6, 5, 4), "nhwc")],
)
def test_array_source_layouts(shape: tuple[int, ...], layout: str) -> None:
    rng = np.random.default_rng(3)
    array = rng.integers(0, 256, shape, dtype=np.uint8)
    source = ArraySource(array, np.arange(4) % 2, layout=layout)
    channels = 1 if len(shape) == 3 else 3
    assert source.images.shape == (4, channels, 6, 5) and source.channels == channels
    if len(shape) == 3:
        expected = array[:, None]
    elif shape[1] == 3:
        expected = array
    else:
        expected = array.transpose(0, 3, 1, 2)[:, :3]
    np.testing.assert_array_equal(source.images.numpy(), expected)
    assert source.labels.tolist() == [0, 1, 0, 1] and source.num_classes == 2


def test_array_source_float_torch_and_errors() -> None:
    floats = torch.tensor([0.0, 0.5, 1.0, 0.2]).view(1, 1, 2, 2)
    source = ArraySource(floats)
    assert source.images.flatten().tolist() == [0, 128, 255, 51]
    assert source.labels.tolist() == [-1] and source.classes is None and source[0][1] == -1
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ArraySource(floats * 255)
    with pytest.raises(ValueError, match="2 labels"):
        ArraySource(torch.zeros(3, 1, 2, 2, dtype=torch.uint8), [0, 1])
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        ArraySource(np.full((1, 2, 2), 300, dtype=np.int32))


def test_synthetic_shapes_deterministic_balanced_and_split_differs() -> None:
    a = SyntheticShapes(60, size=16, num_classes=6, seed=5)
    b = SyntheticShapes(60, size=16, num_classes=6, seed=5)
    c = SyntheticShapes(60, size=16, num_classes=6, seed=6)
    test = SyntheticShapes(60, size=16, num_classes=6, seed=5, split="test")
    assert a.images.shape == (60, 3, 16, 16) and a.images.dtype == torch.uint8
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images) and not torch.equal(a.images, test.images)
    assert torch.equal(a.labels.bincount(), torch.full((6,), 10))
    assert a.classes[:2] == ["red_disk", "red_square"] and a.num_classes == 6
    gray = SyntheticShapes(10, size=16, channels=1)
    assert gray.images.shape == (10, 1, 16, 16)
    # Red-family shapes are red: in the pixels that differ most from the border, R dominates.
    red = a.images[a.labels == 0].float()
    assert (red[:, 0] - red[:, 1]).amax(dim=(1, 2)).min() > 60


def test_load_dataset_names_paths_and_errors(tmp_path: Path) -> None:
    synthetic = load_dataset("synthetic", n=20, size=12)
    assert isinstance(synthetic, SyntheticShapes) and len(synthetic) == 20
    assert not torch.equal(
        synthetic.images, load_dataset("synthetic", split="test", n=20, size=12).images
    )
    if Path("/usr/share/datasets/fashion-mnist").exists():
        assert isinstance(load_dataset(split="test"), FashionMNIST)
    with pytest.raises(ValueError, match=r"fashion_mnist, cifar10.*folder of images"):
        load_dataset("imagenet-22k")
    with pytest.raises(ValueError, match="train_val_split"):
        load_dataset("synthetic", split="val")
    with pytest.raises(ValueError, match="only for stl10"):
        load_dataset("cifar10", split="unlabeled")
    from PIL import Image

    for split in ("train", "test"):
        (tmp_path / split).mkdir()
        Image.new("RGB", (4, 4), (1, 2, 3)).save(tmp_path / split / "a.png")
    assert isinstance(load_dataset(str(tmp_path), split="test"), ImageFolder)
    listing = tmp_path / "list.txt"
    listing.write_text("train/a.png\ntest/a.png\n")
    source = load_dataset(str(listing))
    assert len(source) == 2 and source.paths[0].endswith("train/a.png")


@pytest.mark.slow
def test_synthetic_shapes_learnable_but_not_from_raw_pixels() -> None:
    """A small ConvNet trained for 300 steps clearly beats a raw-pixel kNN (~0.26 here)."""
    from sklearn.neighbors import KNeighborsClassifier

    torch.manual_seed(0)
    train = SyntheticShapes(2000, size=16)
    test = SyntheticShapes(500, size=16, split="test")
    knn = KNeighborsClassifier(20).fit(train.images.flatten(1).numpy(), train.labels.numpy())
    knn_acc = (knn.predict(test.images.flatten(1).numpy()) == test.labels.numpy()).mean()
    assert 0.15 < knn_acc < 0.4  # above chance (colour families), far from solved
    block = lambda i, o: [
        torch.nn.Conv2d(i, o, 3, padding=1),
        torch.nn.BatchNorm2d(o),
        torch.nn.ReLU(),
    ]
    net = torch.nn.Sequential(
        *block(3, 32), torch.nn.MaxPool2d(2), *block(32, 64), torch.nn.MaxPool2d(2),
        *block(64, 64), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(64, 10),
    )  # fmt: skip
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    x, y = train.images.float() / 255, train.labels
    generator = torch.Generator().manual_seed(0)
    for _ in range(300):
        i = torch.randint(0, len(train), (64,), generator=generator)
        loss = torch.nn.functional.cross_entropy(net(x[i]), y[i])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()
    with torch.no_grad():
        cnn_acc = (net(test.images.float() / 255).argmax(1) == test.labels).float().mean().item()
    assert cnn_acc > knn_acc + 0.1


def test_load_dataset_channels_option_matches_pillow(tmp_path: Path) -> None:
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    images = np.random.default_rng(4).integers(0, 256, (2, 3, 96, 96), dtype=np.uint8)
    (folder / "test_X.bin").write_bytes(images.transpose(0, 1, 3, 2).tobytes())
    (folder / "test_y.bin").write_bytes(bytes([1, 2]))
    gray = load_dataset("stl10", split="test", root=tmp_path, channels=1)
    reference = np.asarray(Image.fromarray(images[1].transpose(1, 2, 0)).convert("L"))
    assert gray.channels == 1 and np.array_equal(gray.images[1, 0].numpy(), reference)
    rgb = ArraySource(images[:, :1]).images  # stand-in check of the replication path
    from twinview.data.registry import with_channels

    replicated = with_channels(ArraySource(images[:, :1]), 3)
    assert replicated.channels == 3 and torch.equal(replicated.images[:, 2:], rgb)


def test_load_dataset_unknown_option_names_it_lists_options_and_suggests(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as error:
        load_dataset("synthetic", bogus=1)
    message = str(error.value)
    assert message.startswith("dataset 'synthetic' has no option 'bogus'; its options are: ")
    assert "n, size, channels, num_classes, seed" in message
    assert "data.options.<name>=" in message and "did you mean" not in message
    with pytest.raises(ValueError, match=r"no option 'sede' \(did you mean 'seed'\?\)"):
        load_dataset("synthetic", n=4, sede=1)
    # Checked before any file is looked for: no download, no missing-file error first.
    with pytest.raises(ValueError, match=r"'fashion_mnist' has no option 'n'.*download, channels"):
        load_dataset("fashion_mnist", root=tmp_path / "nowhere", n=5)
    with pytest.raises(ValueError, match=r"'cifar10' has no option 'label_type'.*: channels \("):
        load_dataset("cifar10", root=tmp_path, label_type="coarse")
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    with pytest.raises(ValueError, match=r"\(an image folder\) has no option 'foo'.*max_pixels"):
        load_dataset(str(tmp_path), foo=1)
    (tmp_path / "list.txt").write_text("a.png\n")
    with pytest.raises(ValueError, match=r"\(a file list\) has no option 'chanels'.*'channels'"):
        load_dataset(str(tmp_path / "list.txt"), chanels=1)
    assert len(load_dataset("synthetic", n=4, size=8, channels=1, num_classes=2, seed=3)) == 4
    assert len(load_dataset(str(tmp_path), max_pixels=100, verify="full", labeled=False)) == 1
