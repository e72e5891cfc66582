"""Reader and writer for the IDX array format used by MNIST and Fashion-MNIST.

An IDX file is a 4-byte magic number, one big-endian uint32 per dimension, then the
payload in C order, big-endian::

    byte 0-1   0x00 0x00
    byte 2     type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64)
    byte 3     number of dimensions
    4 bytes    size of dimension 0, then dimension 1, ...
    payload    prod(sizes) items

Files whose name ends in ``.gz`` are gzip-compressed; all others are read as they are.
Every size is taken from the header, so a 10,000-item file and a 60,000-item file are
read by the same code.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path
from typing import Union

import numpy as np

__all__ = ["IDXFormatError", "read_idx", "parse_idx", "write_idx", "IDX_TYPE_CODES"]

PathLike = Union[str, "os.PathLike[str]"]

#: IDX type code -> big-endian numpy dtype of one payload item.
IDX_TYPE_CODES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_MAGIC_SIZE_BYTES = 4
_DIM_SIZE_BYTES = 4
_MAX_DIM_SIZE = 2**32 - 1
_GZIP_MAGIC = b"\x1f\x8b"


class IDXFormatError(ValueError):
    """An IDX file is corrupt or not an IDX file; the message names the file and the fault."""


def _is_gzip_name(name: str) -> bool:
    return name.lower().endswith(".gz")


def _decompress(raw: bytes, source: str) -> bytes:
    """Gunzip ``raw``, turning every gzip failure into an :class:`IDXFormatError`."""
    if not raw:
        raise IDXFormatError(f"{source}: empty file (0 bytes); expected a gzip-compressed IDX file")
    if raw[:2] != _GZIP_MAGIC:
        raise IDXFormatError(
            f"{source}: name ends in .gz but the file is not gzip-compressed "
            f"(first bytes {raw[:4].hex(' ')}, gzip starts with 1f 8b)"
        )
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise IDXFormatError(f"{source}: corrupt or truncated gzip stream ({exc})") from exc


def parse_idx(raw: bytes, source: str = "<bytes>", compressed: bool | None = None) -> np.ndarray:
    """Decode the bytes of one IDX file into a native-endian array of the header's shape.

    ``source`` is the name used in error messages. ``compressed`` says whether ``raw`` is
    gzip data; ``None`` decides from ``source`` ending in ``.gz``.
    """
    if compressed is None:
        compressed = _is_gzip_name(source)
    data = _decompress(raw, source) if compressed else raw
    if not data:
        what = "gzip stream decompresses to 0 bytes" if compressed else "empty file (0 bytes)"
        raise IDXFormatError(f"{source}: {what}; expected an IDX header")
    if len(data) < _MAGIC_SIZE_BYTES:
        raise IDXFormatError(
            f"{source}: only {len(data)} bytes, too short for the 4-byte IDX magic number"
        )

    magic = data[:_MAGIC_SIZE_BYTES]
    if magic[0] != 0 or magic[1] != 0:
        hint = ""
        if not compressed and magic[:2] == _GZIP_MAGIC:
            hint = "; the file looks gzip-compressed, so its name should end in .gz"
        raise IDXFormatError(
            f"{source}: bad magic number {magic.hex(' ')}; an IDX file starts with 00 00{hint}"
        )
    type_code, n_dims = magic[2], magic[3]
    if type_code not in IDX_TYPE_CODES:
        known = ", ".join(f"0x{code:02X}" for code in IDX_TYPE_CODES)
        raise IDXFormatError(f"{source}: unknown IDX type code 0x{type_code:02X} (known: {known})")
    if n_dims == 0:
        raise IDXFormatError(f"{source}: header declares 0 dimensions")

    header_size_bytes = _MAGIC_SIZE_BYTES + _DIM_SIZE_BYTES * n_dims
    if len(data) < header_size_bytes:
        raise IDXFormatError(
            f"{source}: truncated header: {n_dims} dimensions need {header_size_bytes} header bytes, "
            f"file has {len(data)}"
        )
    shape = tuple(
        int.from_bytes(data[offset : offset + _DIM_SIZE_BYTES], "big")
        for offset in range(_MAGIC_SIZE_BYTES, header_size_bytes, _DIM_SIZE_BYTES)
    )

    item_dtype = IDX_TYPE_CODES[type_code]
    n_items = math.prod(shape)
    expected_payload_bytes = n_items * item_dtype.itemsize
    actual_payload_bytes = len(data) - header_size_bytes
    if actual_payload_bytes < expected_payload_bytes:
        raise IDXFormatError(
            f"{source}: truncated payload: expected {expected_payload_bytes} bytes for shape "
            f"{shape} of {item_dtype.name}, found {actual_payload_bytes}"
        )
    if actual_payload_bytes > expected_payload_bytes:
        raise IDXFormatError(
            f"{source}: {actual_payload_bytes - expected_payload_bytes} trailing bytes after the payload: "
            f"expected {expected_payload_bytes} bytes for shape {shape} of {item_dtype.name}, "
            f"found {actual_payload_bytes}"
        )

    items = np.frombuffer(data, dtype=item_dtype, count=n_items, offset=header_size_bytes)
    # astype copies: the result is writable, native-endian and owns its memory.
    return items.reshape(shape).astype(item_dtype.newbyteorder("="))


def read_idx(path: PathLike) -> np.ndarray:
    """Read an IDX file (gunzipped first if the name ends in ``.gz``) into a numpy array.

    Raises :class:`IDXFormatError` naming the file if it is empty, not gzip though named
    ``.gz``, has a bad magic number or unknown type code, or its payload is shorter or
    longer than the header's sizes require.
    """
    file_path = Path(path)
    return parse_idx(file_path.read_bytes(), source=str(file_path))


def write_idx(path: PathLike, array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file (gzip-compressed if the name ends in ``.gz``); return the path.

    The dtype must be one of uint8, int8, int16, int32, float32, float64; the array needs
    1 to 255 dimensions, each at most 2**32 - 1 long.
    """
    file_path = Path(path)
    values = np.asarray(array)
    native_dtype = values.dtype.newbyteorder("=")
    type_code = next(
        (code for code, dtype in IDX_TYPE_CODES.items() if dtype.newbyteorder("=") == native_dtype),
        None,
    )
    if type_code is None:
        supported = ", ".join(dtype.name for dtype in IDX_TYPE_CODES.values())
        raise TypeError(f"write_idx: dtype {values.dtype} has no IDX type code (supported: {supported})")
    if not 1 <= values.ndim <= 255:
        raise ValueError(f"write_idx: IDX needs 1 to 255 dimensions, array has {values.ndim}")
    if any(size > _MAX_DIM_SIZE for size in values.shape):
        raise ValueError(f"write_idx: shape {values.shape} has a dimension over {_MAX_DIM_SIZE}")

    header = bytes([0, 0, type_code, values.ndim]) + b"".join(
        size.to_bytes(_DIM_SIZE_BYTES, "big") for size in values.shape
    )
    payload = np.ascontiguousarray(values, dtype=IDX_TYPE_CODES[type_code]).tobytes()
    encoded = header + payload
    if _is_gzip_name(file_path.name):
        encoded = gzip.compress(encoded, mtime=0)
    file_path.write_bytes(encoded)
    return file_path
