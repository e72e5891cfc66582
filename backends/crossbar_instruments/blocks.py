"""IEEE 488.2 definite-length blocks, typed arrays, and message framing on a ``\\n``-terminated byte stream.

A block is ``#<d><len><bytes>``: one digit ``d`` (1–9) giving the number of digits of ``len``, the decimal
byte count, then exactly that many bytes, which may contain any value including ``\\n``. An array travels as
three fields ``<dtype>,<shape>,<block>``: dtype one of :data:`DTYPES` (little-endian), shape the dimensions
joined by ``x`` (``1x785``), and the C-order bytes of the array in the block.

:func:`read_message` reads exactly one message from a source that offers ``read_line`` and ``read_exact``:
it follows the line to its terminator, and wherever a block starts (a ``#`` outside a quoted string) it reads
the declared number of bytes regardless of what they contain. Any framing fault raises
:class:`~crossbar_ctl.errors.ProtocolError` carrying the bytes read so far.
"""
from __future__ import annotations

import re
from typing import Protocol

import numpy as np

from crossbar_ctl.errors import ProtocolError

#: Wire dtype names and their (little-endian) numpy dtypes.
DTYPES: dict[str, np.dtype] = {
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
    "I16": np.dtype("<i2"),
    "I32": np.dtype("<i4"),
}
FLOAT_DTYPES = ("F32", "F64")
INT_DTYPES = ("I16", "I32")

#: Largest message either side accepts (bytes); a block header declaring more is refused before reading it.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
MAX_DIM = 1 << 24

_SPECIAL = re.compile(rb'["#\n]')
_SHAPE = re.compile(r"[0-9]{1,8}(x[0-9]{1,8}){0,3}\Z")


class ByteSource(Protocol):
    """What :func:`read_message` reads from (a transport, or the emulator's side of a connection)."""

    def read_line(self, max_bytes: int) -> bytes:
        """Bytes up to and including the next ``\\n``, or ``max_bytes`` bytes if no ``\\n`` comes first."""

    def read_exact(self, n: int) -> bytes:
        """Exactly ``n`` bytes."""


def dtype_name(dtype: np.dtype) -> str:
    """The wire name of a numpy dtype (byte order ignored: arrays are sent little-endian)."""
    dt = np.dtype(dtype)
    for name, wire in DTYPES.items():
        if dt.kind == wire.kind and dt.itemsize == wire.itemsize:
            return name
    raise TypeError(f"dtype {dt} has no wire encoding (use one of {', '.join(DTYPES)})")


def encode_block(payload: bytes | memoryview) -> bytes:
    """``#<d><len><payload>`` for ``payload``."""
    n = len(payload)
    digits = str(n)
    if len(digits) > 9:
        raise ValueError(f"block of {n} bytes is too long for a definite-length header")
    return b"#" + str(len(digits)).encode() + digits.encode() + bytes(payload)


def parse_block_header(buf: bytes | bytearray, i: int, raw: bytes | None = None) -> tuple[int, int]:
    """(payload start, payload length) of the block whose ``#`` is at ``buf[i]`` (errors carry ``raw``, by
    default ``buf``)."""
    raw = bytes(buf) if raw is None else raw
    if i + 1 >= len(buf):
        raise ProtocolError("block header truncated after '#'", raw, -161)
    d = buf[i + 1] - 0x30
    if d == 0:
        raise ProtocolError("indefinite-length block (#0) is not supported", raw, -161)
    if not 1 <= d <= 9:
        raise ProtocolError("block header: digit count after '#' must be 1-9", raw, -161)
    digits = bytes(buf[i + 2:i + 2 + d])
    if len(digits) != d or not digits.isdigit():
        raise ProtocolError(f"block header: expected {d} length digits", raw, -161)
    return i + 2 + d, int(digits)


def encode_array(arr: np.ndarray, allowed: tuple[str, ...]) -> list[bytes]:
    """The three fields ``dtype, shape, block`` of ``arr`` (whose dtype must be one of ``allowed``)."""
    a = np.asarray(arr)
    name = dtype_name(a.dtype)
    if name not in allowed:
        raise TypeError(f"array dtype {name} not allowed here (expected {', '.join(allowed)})")
    if a.ndim == 0:
        raise ValueError("scalars are not sent as arrays")
    data = np.ascontiguousarray(a, dtype=DTYPES[name])
    shape = "x".join(str(s) for s in a.shape)
    return [name.encode(), shape.encode(), encode_block(data.tobytes())]


def decode_array(dtype: str, shape_text: str, payload: bytes, allowed: tuple[str, ...], ndim: int,
                 raw: bytes) -> np.ndarray:
    """Validate and decode the three fields of an array into a writable native-endian numpy array."""
    if dtype not in DTYPES:
        raise ProtocolError(f"unknown array dtype {dtype!r} (expected one of {', '.join(DTYPES)})", raw, -104)
    if dtype not in allowed:
        raise ProtocolError(f"array dtype {dtype} not allowed here (expected {', '.join(allowed)})", raw, -104)
    if not _SHAPE.match(shape_text):
        raise ProtocolError(f"malformed array shape {shape_text!r} (expected e.g. 1x785)", raw, -104)
    shape = tuple(int(s) for s in shape_text.split("x"))
    if len(shape) != ndim:
        raise ProtocolError(f"array shape {shape_text} has {len(shape)} dimensions, expected {ndim}", raw, -104)
    if any(s > MAX_DIM for s in shape):
        raise ProtocolError(f"array shape {shape_text} too large", raw, -161)
    wire = DTYPES[dtype]
    need = int(np.prod(shape, dtype=np.int64)) * wire.itemsize
    if len(payload) != need:
        raise ProtocolError(f"block holds {len(payload)} bytes but {dtype} {shape_text} needs {need}", raw, -161)
    out = np.frombuffer(payload, dtype=wire).reshape(shape).astype(wire.newbyteorder("="), copy=True)
    if wire.kind == "f" and out.size and not np.isfinite(out).all():
        raise ProtocolError(f"{dtype} block contains NaN or infinity", raw, -224)
    return out


def read_message(src: ByteSource, max_bytes: int = MAX_MESSAGE_BYTES) -> bytes:
    """Read one complete ``\\n``-terminated message (blocks read by their declared length) from ``src``."""
    buf = bytearray(src.read_line(max_bytes))
    pos = 0
    while True:
        m = _SPECIAL.search(buf, pos)
        if m is None:
            what = "longer than the limit" if len(buf) >= max_bytes else "not terminated by \\n"
            raise ProtocolError(f"message {what}", bytes(buf), -363 if len(buf) >= max_bytes else -102)
        i = m.start()
        c = buf[i]
        if c == 0x0A:  # "\n" outside strings and blocks: the end
            if i != len(buf) - 1:
                raise ProtocolError("bytes after the terminator", bytes(buf), -102)
            return bytes(buf)
        if c == 0x22:  # '"': skip the string ("" inside is an escaped quote: two strings back to back)
            j = buf.find(b'"', i + 1)
            nl = buf.find(b"\n", i + 1)
            if j < 0 or 0 <= nl < j:
                raise ProtocolError("unterminated string", bytes(buf), -102)
            pos = j + 1
            continue
        start, length = parse_block_header(buf, i)
        end = start + length
        if end + 1 > max_bytes:
            raise ProtocolError(f"block of {length} bytes exceeds the {max_bytes}-byte message limit",
                                bytes(buf[:i + 12]), -363)
        if end >= len(buf):
            if end > len(buf):
                buf += src.read_exact(end - len(buf))
            buf += src.read_line(max_bytes - len(buf))
        pos = end


class BufferSource:
    """A :class:`ByteSource` over bytes already in memory (tests, fuzzing, and parsing captured traffic).
    Running out of bytes raises :class:`ProtocolError` (truncated input), never blocks."""

    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)
        self._pos = 0

    @property
    def remaining(self) -> bytes:
        return self._data[self._pos:]

    def read_line(self, max_bytes: int) -> bytes:
        end = self._data.find(b"\n", self._pos, self._pos + max_bytes)
        stop = self._pos + max_bytes if end < 0 else end + 1
        if end < 0 and stop > len(self._data):
            raise ProtocolError("input ended before the terminator", self._data[self._pos:], -102)
        out = self._data[self._pos:stop]
        self._pos = stop
        return out

    def read_exact(self, n: int) -> bytes:
        if self._pos + n > len(self._data):
            raise ProtocolError(f"input ended inside a block ({n} bytes expected)", self._data, -161)
        out = self._data[self._pos:self._pos + n]
        self._pos += n
        return out
