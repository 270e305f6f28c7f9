"""CIFAR pickles are read with a restricted unpickler: real batches load, tampered ones run nothing.

The official batches were written by Python 2's cPickle (protocol 2): bytes as ``str`` opcodes,
numpy arrays through ``numpy.core.multiarray._reconstruct``. ``_py2_pickle`` writes exactly that
layout, so the loader is checked against what the real tarball holds, not only against pickles
made by this Python.
"""

from __future__ import annotations

import builtins
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from twinview.data import CIFAR10
from twinview.data.cifar import CIFARUnpickler, UnsafePickleError

FOLDER = "cifar-10-batches-py"
TRAIN = [f"data_batch_{i}" for i in range(1, 6)]


def _py2_pickle(obj: Any) -> bytes:
    """``obj`` (dicts, lists, bytes, ints, uint8 arrays) pickled as Python 2 wrote CIFAR."""
    out = bytearray(b"\x80\x02")

    def put(o: Any) -> None:
        if isinstance(o, dict):
            out.extend(b"}(")
            for key, value in o.items():
                put(key)
                put(value)
            out.extend(b"u")
        elif isinstance(o, list):
            out.extend(b"](")
            for item in o:
                put(item)
            out.extend(b"e")
        elif isinstance(o, bytes):  # Python 2 str: SHORT_BINSTRING / BINSTRING
            out.extend(b"U" + bytes([len(o)]) if len(o) < 256 else b"T" + struct.pack("<i", len(o)))
            out.extend(o)
        elif isinstance(o, int):
            out.extend(b"K" + bytes([o]) if 0 <= o < 256 else b"J" + struct.pack("<i", o))
        elif isinstance(o, np.ndarray):
            assert o.dtype == np.uint8 and o.flags.c_contiguous and 1 <= o.ndim <= 3
            tuple_n = {1: b"\x85", 2: b"\x86", 3: b"\x87"}[o.ndim]
            out.extend(
                b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R"
            )
            out.extend(b"(K\x01")  # state: version, shape, dtype, fortran flag, raw bytes
            for n in o.shape:
                put(int(n))
            out.extend(tuple_n)
            out.extend(b"cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R")
            out.extend(b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")
            out.extend(b"\x89")
            put(o.tobytes())
            out.extend(b"tb")
        else:
            raise TypeError(type(o))

    put(obj)
    out.extend(b".")
    return bytes(out)


def _batches(rng: np.random.Generator, n: int = 2) -> dict[str, dict]:
    """Member name -> the dict it holds, in the official CIFAR-10 layout (small)."""
    batches = {}
    for i, member in enumerate([*TRAIN, "test_batch"]):
        images = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        batches[member] = {
            b"batch_label": f"batch {i}".encode(),
            b"labels": rng.integers(0, 10, n).tolist(),
            b"data": images,
            b"filenames": [f"img_{i}_{j}.png".encode() for j in range(n)],
        }
    batches["batches.meta"] = {
        b"num_cases_per_batch": n,
        b"label_names": [f"class{i}".encode() for i in range(10)],
        b"num_vis": 3072,
    }
    return batches


def _write(tmp_path: Path, contents: dict[str, bytes], packed: bool) -> Path:
    """The batches as ``cifar-10-batches-py/`` (packed=False) or as the tarball; returns root."""
    folder = tmp_path / FOLDER
    folder.mkdir()
    for member, raw in contents.items():
        (folder / member).write_bytes(raw)
    if not packed:
        return folder
    tarball = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(folder, arcname=FOLDER)
    return tarball


def _dump(protocol: str, obj: Any) -> bytes:
    return _py2_pickle(obj) if protocol == "py2" else pickle.dumps(obj, protocol=int(protocol))


def test_py2_writer_matches_stock_pickle() -> None:
    batch = _batches(np.random.default_rng(0))["data_batch_1"]
    loaded = pickle.loads(_py2_pickle(batch), encoding="bytes")
    assert loaded.keys() == batch.keys() and loaded[b"labels"] == batch[b"labels"]
    np.testing.assert_array_equal(loaded[b"data"], batch[b"data"])
    assert loaded[b"data"].dtype == np.uint8


@pytest.mark.parametrize("packed", [False, True], ids=["folder", "tarball"])
@pytest.mark.parametrize("protocol", ["py2", "2", "4", "5"])
def test_official_layout_loads(tmp_path: Path, protocol: str, packed: bool) -> None:
    batches = _batches(np.random.default_rng(0))
    root = _write(tmp_path, {m: _dump(protocol, b) for m, b in batches.items()}, packed)
    train = CIFAR10("train", root=root)
    expected = np.concatenate([batches[m][b"data"] for m in TRAIN]).reshape(-1, 3, 32, 32)
    np.testing.assert_array_equal(train.images.numpy(), expected)
    assert train.labels.tolist() == [y for m in TRAIN for y in batches[m][b"labels"]]
    assert train.classes == [f"class{i}" for i in range(10)]
    test = CIFAR10("test", root=root)
    np.testing.assert_array_equal(
        test.images.numpy().reshape(-1, 3072), batches["test_batch"][b"data"]
    )


class _Shell:
    """Pickles to ``os.system("touch <marker>")``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch '{self.marker}'",)


class _Exec:
    """Pickles to ``exec("open(<marker>, 'w')...")``, a builtin rather than a module function."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


@pytest.mark.parametrize(
    ("payload", "refused"),
    [(_Shell, r"(posix|nt|os)\.system"), (_Exec, r"(__builtin__|builtins)\.exec")],
    ids=["os.system", "exec"],
)
@pytest.mark.parametrize("packed", [False, True], ids=["folder", "tarball"])
def test_malicious_pickle_is_refused_and_not_run(
    tmp_path: Path, payload: type, refused: str, packed: bool
) -> None:
    # The payload is live: stock pickle.loads runs it.
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps({b"labels": payload(probe)}, protocol=2))
    assert probe.exists()

    marker = tmp_path / "pwned"
    batches = _batches(np.random.default_rng(0))
    batches["data_batch_3"][b"labels"] = payload(marker)
    contents = {m: pickle.dumps(b, protocol=2) for m, b in batches.items()}
    (tmp_path / "data").mkdir()
    root = _write(tmp_path / "data", contents, packed)
    where = r"cifar-10-python\.tar\.gz \(member cifar-10-batches-py/data_batch_3\)"
    if not packed:
        where = r"cifar-10-batches-py/data_batch_3"
    with pytest.raises(UnsafePickleError, match=f"{where}: refused global {refused}") as info:
        CIFAR10("train", root=root)
    assert "nothing in it was run" in str(info.value)
    assert not marker.exists()
    # The test split does not read data_batch_3 and still loads.
    assert len(CIFAR10("test", root=root)) == 2
    assert not marker.exists()


def test_codecs_encode_admits_only_latin1() -> None:
    """Python 3 protocol-2 pickles write bytes as _codecs.encode(text, 'latin1'); no other codec."""
    ok = pickle.dumps(b"\x00\xff", protocol=2)
    assert CIFARUnpickler(io.BytesIO(ok), encoding="bytes").load() == b"\x00\xff"
    bad = b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x05\x00\x00\x00rot13\x86R."
    assert pickle.loads(bad) == "nop"  # the stock unpickler runs the codec
    with pytest.raises(UnsafePickleError, match="rot13"):
        CIFARUnpickler(io.BytesIO(bad), encoding="bytes").load()
