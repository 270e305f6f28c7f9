"""Embedding files: the right rows, in the right order, with the right labels and paths."""

from __future__ import annotations

import copy
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from tolerance import assert_close_to_scale

from twinview.embed import embed, write_embeddings
from twinview.export import save_backbone
from twinview.nn.backbones import build_backbone


def _matrix(n: int = 7, d: int = 5) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_npy_holds_the_float32_matrix_in_order(tmp_path):
    x = _matrix()
    path = write_embeddings(tmp_path / "sub" / "e.npy", x)
    loaded = np.load(path)
    assert loaded.dtype == np.float32 and loaded.shape == (7, 5)
    np.testing.assert_array_equal(loaded, x.float().numpy())
    with pytest.warns(UserWarning, match="labels, paths not written.*parquet"):
        write_embeddings(tmp_path / "f.npy", x.numpy(), labels=[0] * 7, paths=["a"] * 7)
    np.testing.assert_array_equal(np.load(tmp_path / "f.npy"), x.float().numpy())


def test_parquet_columns_rows_and_null_labels(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    pa = pytest.importorskip("pyarrow")
    x = _matrix()
    indices = [6, 0, 5, 1, 4, 2, 3]
    labels = torch.tensor([2, -1, 0, 1, -1, 2, 0])
    paths = [f"img/{i}.png" for i in indices]
    path = write_embeddings(tmp_path / "e.parquet", x, indices=indices, labels=labels, paths=paths)
    table = pq.read_table(path)
    assert table.column_names == ["index", "path", "label", "embedding"]
    assert table.schema.field("index").type == pa.int64()
    assert table.schema.field("label").type == pa.int64()
    assert table.schema.field("embedding").type == pa.list_(pa.float32())
    assert table.column("index").to_pylist() == indices
    assert table.column("path").to_pylist() == paths
    assert table.column("label").to_pylist() == [2, None, 0, 1, None, 2, 0]
    rows = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    np.testing.assert_array_equal(rows, x.float().numpy())


def test_parquet_minimal_columns_default_index(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    x = _matrix(3, 2).float().numpy()
    table = pq.read_table(write_embeddings(tmp_path / "e.parquet", x))
    assert table.column_names == ["index", "embedding"]
    assert table.column("index").to_pylist() == [0, 1, 2]
    np.testing.assert_array_equal(np.array(table.column("embedding").to_pylist(), np.float32), x)


def test_bad_input_is_named(tmp_path):
    x = _matrix()
    with pytest.raises(ValueError, match=r"e\.csv': unknown suffix '\.csv'; use \.npy.*\.parquet"):
        write_embeddings(tmp_path / "e.csv", x)
    with pytest.raises(ValueError, match="unknown suffix '\\(none\\)'"):
        write_embeddings(tmp_path / "e", x)
    with pytest.raises(ValueError, match=r"labels must have one entry per embedding \(7\)"):
        write_embeddings(tmp_path / "e.npy", x, labels=[1, 2])
    with pytest.raises(ValueError, match=r"shape \(N, D\)"):
        write_embeddings(tmp_path / "e.npy", x[None])
    assert not list(tmp_path.iterdir())


# --- embed(): a run's backbone over an image folder --------------------------------------------

SPEC = {
    "name": "convnet", "in_channels": 3, "cifar_stem": False, "kwargs": {"width": 4},
    "image_size": 16, "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3],
}  # fmt: skip


def _folder(tmp_path, sizes: dict[str, list[tuple[int, int]]]):
    """root/<class>/<k>.png random RGB images; sizes per class as (width, height)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for name, class_sizes in sizes.items():
        (root / name).mkdir(parents=True)
        for k, (w, h) in enumerate(class_sizes):
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{k}.png")
    return root


def _run(tmp_path):
    torch.manual_seed(0)
    backbone, _ = build_backbone("convnet", width=4)
    run = tmp_path / "runs" / "demo"
    save_backbone(backbone, SPEC, run / "backbone.pt")
    return run, backbone.eval()


def _reference(backbone, file) -> np.ndarray:
    """One image through a float64 copy of the backbone, preprocessed by hand: [0, 1], mean/std
    normalised."""
    x = torch.from_numpy(np.array(Image.open(file).convert("RGB"))).permute(2, 0, 1)
    x = x.double().div(255)
    mean, std = (torch.tensor(SPEC[k], dtype=torch.float64).view(3, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        return copy.deepcopy(backbone).double()(((x - mean) / std)[None])[0].numpy()


# float32 embeddings (in batches) against the float64 reference, or two float32 runs with other
# batch sizes: a few eps x sqrt(fan-in) of the embeddings' scale (the widest convolution here
# sums 16 channels x 3 x 3).
FAN_IN = 16 * 9


def _assert_float32_close(rows: np.ndarray, expected: np.ndarray) -> None:
    got, ref = torch.from_numpy(rows).double(), torch.from_numpy(expected).double()
    assert_close_to_scale(got, ref, dtype=torch.float32, terms=FAN_IN)


def test_embed_folder_rows_order_labels_paths(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    root = _folder(tmp_path, {"cat": [(16, 16)] * 3, "dog": [(16, 16)] * 4})
    run, backbone = _run(tmp_path)
    path = embed(run, data=str(root), out=tmp_path / "e.parquet", batch_size=3, device="cpu")
    table = pq.read_table(path)
    files = table.column("path").to_pylist()
    names = [("cat", k) for k in range(3)] + [("dog", k) for k in range(4)]
    assert files == [str(root / c / f"{k}.png") for c, k in names]
    assert table.column("index").to_pylist() == list(range(7))
    assert table.column("label").to_pylist() == [0, 0, 0, 1, 1, 1, 1]
    rows = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    expected = np.stack([_reference(backbone, f) for f in files])
    _assert_float32_close(rows, expected)

    # Without data=..., the dataset comes from the run's config.yaml; .npy keeps the same rows.
    from twinview.config import load_config, save_config

    save_config(load_config(None, [f"data.dataset={root}"]), run / "config.yaml")
    npy = np.load(embed(run / "backbone.pt", out=tmp_path / "e.npy", device="cpu"))
    _assert_float32_close(npy, rows)


def test_embed_unlabeled_folder_of_mixed_sizes(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    root = _folder(tmp_path, {"x": [(16, 16), (40, 24), (20, 30)]})
    run, backbone = _run(tmp_path)
    table = pq.read_table(embed(run, data=str(root / "x"), out=tmp_path / "e.parquet"))
    assert table.column_names == ["index", "path", "embedding"]  # no labels to write
    rows = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    assert rows.shape == (3, 32)
    # The 16 px image needs no resize: its row is exactly the hand-made reference.
    _assert_float32_close(rows[0], _reference(backbone, root / "x" / "0.png"))


def test_embed_errors_before_the_work(tmp_path):
    run, _ = _run(tmp_path)
    with pytest.raises(ValueError, match=r"unknown suffix '\.txt'"):
        embed(run, out=tmp_path / "e.txt")
    with pytest.raises(ValueError, match=r"no config\.yaml.*data="):
        embed(run, out=tmp_path / "e.npy")
    gray = tmp_path / "gray"
    (gray).mkdir()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(gray / "a.png")
    spec1 = {**SPEC, "in_channels": 1, "mean": [0.5], "std": [0.5]}
    save_backbone(build_backbone("convnet", in_channels=1, width=4)[0], spec1, tmp_path / "g.pt")
    out = embed(tmp_path / "g.pt", data=str(gray), out=tmp_path / "g.npy")  # folder: 1 channel
    assert np.load(out).shape == (1, 32)


def test_parquet_without_pyarrow_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(ImportError, match="pip install pyarrow"):
        write_embeddings(tmp_path / "e.parquet", _matrix())
    assert not list(tmp_path.iterdir())
