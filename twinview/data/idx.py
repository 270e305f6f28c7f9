"""Reader for the IDX format of (Fashion-)MNIST, written here so no torchvision download code runs.

IDX layout (LeCun et al., http://yann.lecun.com/exdb/mnist/): a 4-byte big-endian magic number
``0x00 0x00 <type> <ndim>``, then ``ndim`` big-endian uint32 dimension sizes, then the data in
row-major (C) order, big-endian for multi-byte types. Files may be gzip-compressed (``.gz``).
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

# IDX type byte -> numpy dtype (big-endian where it matters).
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def parse_idx(data: bytes, *, name: str = "<bytes>") -> np.ndarray:
    """Decode the bytes of one (uncompressed) IDX file into an array of its declared shape.

    ``name`` only serves error messages. Raises ``ValueError`` naming the file when the magic
    number, type byte or size does not match the format.
    """
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(
            f"{name}: not an IDX file (the first two bytes must be zero, got {data[:4]!r}); "
            "is it still gzip-compressed or a different format?"
        )
    type_code, ndim = data[2], data[3]
    if type_code not in _IDX_DTYPES:
        raise ValueError(f"{name}: unknown IDX data type byte 0x{type_code:02x}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{name}: truncated IDX header ({len(data)} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[type_code]
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(
            f"{name}: IDX header declares shape {shape} of {dtype} ({expected} bytes in all) "
            f"but the file has {len(data)} bytes; the file is truncated or corrupt, "
            "delete it and fetch it again"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    # A writable copy in native byte order (frombuffer views are read-only).
    return np.array(array, dtype=dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file, gzip-compressed or not (detected from the gzip magic bytes)."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as error:
            raise ValueError(
                f"{path}: corrupt gzip stream ({error}); delete it and fetch it again"
            ) from error
    return parse_idx(raw, name=str(path))
