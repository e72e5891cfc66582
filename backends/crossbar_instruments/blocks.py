"""IEEE 488.2 definite-length blocks, typed arrays, and message framing on a ``\\n``-terminated byte stream.

A block is ``#<d><len><bytes>``: one digit ``d`` (1–9) giving the number of digits of ``len``, the decimal
byte count, then exactly that many bytes, which may contain any value including ``\\n``. An array travels as
three fields ``<dtype>,<shape>,<block>``: dtype one of :data:`DTYPES` (little-endian), shape the dimensions
joined by ``x`` (``1x785``), and the C-order bytes of the array in the block. On a slow link a mostly-zero
array may travel zero-suppressed instead (dtype ``Z<dtype>``, e.g. ``ZF32``): the block holds a bit mask of the
elements that are not zero, then only those elements (see :func:`encode_array`). Training sends many such arrays
(MNIST inputs, sparse pulse counts, drive vectors); a serial line moves every byte slowly, while on TCP packing
costs more time than it saves.

:func:`read_message` reads exactly one message from a source that offers ``read_line`` and ``read_exact``:
it follows the line to its terminator, and wherever a block starts (a ``#`` outside a quoted string) it reads
the declared number of bytes regardless of what they contain. Any framing fault raises
:class:`~crossbar_ctl.errors.ProtocolError` carrying the bytes read so far.
"""
from __future__ import annotations

import math
import re
from typing import Protocol

import numpy as np

from crossbar_ctl.errors import ProtocolError

#: Wire dtype names and their (little-endian) numpy dtypes.
DTYPES: dict[str, np.dtype] = {
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
    "I8": np.dtype("i1"),
    "I16": np.dtype("<i2"),
    "I32": np.dtype("<i4"),
}
FLOAT_DTYPES = ("F32", "F64")
INT_DTYPES = ("I8", "I16", "I32")
#: Prefix of a zero-suppressed array's dtype (``ZF32``: float32 elements, only the nonzero ones sent).
ZERO_SUPPRESSED = "Z"
#: Arrays smaller than this (bytes) always travel dense; larger ones, if asked, zero-suppressed when that makes
#: them at most SUPPRESS_MAX_RATIO of their size (on a pseudo-terminal a kB costs ~10 µs, packing one ~1 µs).
SUPPRESS_MIN_BYTES = 1024
SUPPRESS_MAX_RATIO = 0.75
_BITS = {1: np.dtype("u1"), 2: np.dtype("<u2"), 4: np.dtype("<u4"), 8: np.dtype("<u8")}  # element bit patterns

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


_NAMES = {(wire.kind, wire.itemsize): name for name, wire in DTYPES.items()}


def dtype_name(dtype: np.dtype) -> str:
    """The wire name of a numpy dtype (byte order ignored: arrays are sent little-endian)."""
    dt = np.dtype(dtype)
    name = _NAMES.get((dt.kind, dt.itemsize))
    if name is None:
        raise TypeError(f"dtype {dt} has no wire encoding (use one of {', '.join(DTYPES)})")
    return name


def encode_block(payload: bytes | memoryview) -> bytes:
    """``#<d><len><payload>`` for ``payload``."""
    n = len(payload)
    digits = str(n)
    if len(digits) > 9:
        raise ValueError(f"block of {n} bytes is too long for a definite-length header")
    return b"".join((b"#", str(len(digits)).encode(), digits.encode(), payload))


def parse_block_header(buf: bytes | bytearray, i: int, raw: bytes | None = None) -> tuple[int, int]:
    """(payload start, payload length) of the block whose ``#`` is at ``buf[i]`` (errors carry ``raw``, by
    default ``buf``)."""
    if i + 1 >= len(buf):
        raise ProtocolError("block header truncated after '#'", bytes(buf) if raw is None else raw, -161)
    d = buf[i + 1] - 0x30
    if d == 0:
        raise ProtocolError("indefinite-length block (#0) is not supported", bytes(buf) if raw is None else raw, -161)
    if not 1 <= d <= 9:
        raise ProtocolError("block header: digit count after '#' must be 1-9", bytes(buf) if raw is None else raw,
                            -161)
    digits = bytes(buf[i + 2:i + 2 + d])
    if len(digits) != d or not digits.isdigit():
        raise ProtocolError(f"block header: expected {d} length digits", bytes(buf) if raw is None else raw, -161)
    return i + 2 + d, int(digits)


def encode_array(arr: np.ndarray, allowed: tuple[str, ...], suppress_zeros: bool = False) -> list[bytes]:
    """The three fields ``dtype, shape, block`` of ``arr`` (whose dtype must be one of ``allowed``).

    With ``suppress_zeros``, an array of at least :data:`SUPPRESS_MIN_BYTES` whose zero-suppressed form is at most
    :data:`SUPPRESS_MAX_RATIO` of its size is sent zero-suppressed: dtype ``Z<dtype>``, block = ``ceil(n/8)`` mask bytes
    (``numpy.packbits`` order: element ``8j+k`` is bit ``7-k`` of byte ``j``; set if any byte of the element is
    nonzero, so ``-0.0`` is a value) and then the nonzero elements in C order. Both forms decode to the same
    bits."""
    a = np.asarray(arr)
    name = dtype_name(a.dtype)
    if name not in allowed:
        raise TypeError(f"array dtype {name} not allowed here (expected {', '.join(allowed)})")
    if a.ndim == 0:
        raise ValueError("scalars are not sent as arrays")
    data = np.ascontiguousarray(a, dtype=DTYPES[name])
    shape = "x".join(map(str, a.shape)).encode()
    if suppress_zeros and data.nbytes >= SUPPRESS_MIN_BYTES:
        flat = data.reshape(-1)
        nonzero = flat.view(_BITS[flat.itemsize]) != 0
        nnz = int(np.count_nonzero(nonzero))
        if (flat.size + 7) // 8 + nnz * flat.itemsize <= SUPPRESS_MAX_RATIO * data.nbytes:
            payload = np.packbits(nonzero).tobytes() + flat[nonzero].tobytes()
            return [(ZERO_SUPPRESSED + name).encode(), shape, encode_block(payload)]
    return [name.encode(), shape, encode_block(data.data.cast("B") if data.size else b"")]


def decode_array(dtype: str, shape_text: str, payload: bytes | memoryview, allowed: tuple[str, ...], ndim: int,
                 raw: bytes, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Validate and decode the three fields of an array (dense or zero-suppressed) into a writable
    native-endian numpy array; float elements must be finite, and every element within [``lo``, ``hi``]."""
    suppressed = dtype.startswith(ZERO_SUPPRESSED)
    name = dtype[1:] if suppressed else dtype
    if name not in DTYPES:
        raise ProtocolError(f"unknown array dtype {dtype!r} (expected one of {', '.join(DTYPES)}, or Z and one of "
                            "them)", raw, -104)
    if name not in allowed:
        raise ProtocolError(f"array dtype {dtype} not allowed here (expected {', '.join(allowed)})", raw, -104)
    shape, n = _SHAPES.get(shape_text) or _parse_shape(shape_text, raw)
    if len(shape) != ndim:
        raise ProtocolError(f"array shape {shape_text} has {len(shape)} dimensions, expected {ndim}", raw, -104)
    wire = DTYPES[name]
    if suppressed:
        out, values = _unsuppress(payload, n, wire, dtype, raw)
    else:
        if len(payload) != n * wire.itemsize:
            raise ProtocolError(f"block holds {len(payload)} bytes but {dtype} {shape_text} needs "
                                f"{n * wire.itemsize}", raw, -161)
        out = values = (np.frombuffer(bytearray(payload), dtype=wire) if wire.isnative  # one copy, writable
                        else np.frombuffer(payload, dtype=wire).astype(wire.newbyteorder("=")))
    if values.size and (wire.kind == "f" or lo is not None or hi is not None):
        low, high = _MIN(values), _MAX(values)  # NaN propagates into both
        if wire.kind == "f" and not (math.isfinite(low) and math.isfinite(high)):
            raise ProtocolError(f"{dtype} block contains NaN or infinity", raw, -224)
        if values.size < n:  # the suppressed zeros count too
            low, high = min(low, 0), max(high, 0)
        if (lo is not None and low < lo) or (hi is not None and high > hi):
            raise ProtocolError(f"elements outside [{lo}, {hi}]", raw, -222)
    return out.reshape(shape) if ndim > 1 else out


_MIN, _MAX = np.minimum.reduce, np.maximum.reduce
_SHAPES: dict[str, tuple[tuple[int, ...], int]] = {}  # shape text -> (shape, element count): a few recur


def _parse_shape(shape_text: str, raw: bytes) -> tuple[tuple[int, ...], int]:
    if not _SHAPE.match(shape_text):
        raise ProtocolError(f"malformed array shape {shape_text!r} (expected e.g. 1x785)", raw, -104)
    shape = tuple(map(int, shape_text.split("x")))
    if max(shape) > MAX_DIM:
        raise ProtocolError(f"array shape {shape_text} too large", raw, -161)
    if len(_SHAPES) < 256:
        _SHAPES[shape_text] = (shape, math.prod(shape))
    return shape, math.prod(shape)


def _unsuppress(payload: bytes | memoryview, n: int, wire: np.dtype, dtype: str,
                raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    """The flat array of ``n`` elements of a zero-suppressed block (mask, then the nonzero elements), and the
    nonzero elements."""
    n_mask = (n + 7) // 8
    if len(payload) < n_mask:
        raise ProtocolError(f"{dtype} block of {len(payload)} bytes is shorter than its {n_mask}-byte mask", raw, -161)
    mask_bytes = np.frombuffer(payload, dtype=np.uint8, count=n_mask)
    if n % 8 and mask_bytes[-1] & (0xFF >> (n % 8)):
        raise ProtocolError(f"{dtype} block: mask bits set beyond the {n} elements", raw, -161)
    mask = np.unpackbits(mask_bytes, count=n).view(bool)
    nnz = int(np.count_nonzero(mask))
    if len(payload) != n_mask + nnz * wire.itemsize:
        raise ProtocolError(f"{dtype} block holds {len(payload)} bytes but its mask ({nnz} of {n} elements) "
                            f"needs {n_mask + nnz * wire.itemsize}", raw, -161)
    values = np.frombuffer(payload, dtype=wire, count=nnz, offset=n_mask)
    out = np.zeros(n, dtype=wire.newbyteorder("="))
    out[mask] = values
    return out, values


def read_message(src: ByteSource, max_bytes: int = MAX_MESSAGE_BYTES) -> bytes:
    """Read one complete ``\\n``-terminated message (blocks read by their declared length) from ``src``."""
    parts: list[bytes] = []  # the lines and block tails read before ``line``
    size = 0  # their total length
    line = src.read_line(max_bytes)
    pos = 0
    while True:
        m = _SPECIAL.search(line, pos)
        if m is None:
            over = size + len(line) >= max_bytes
            what = "longer than the limit" if over else "not terminated by \\n"
            raise ProtocolError(f"message {what}", b"".join(parts) + line, -363 if over else -102)
        i = m.start()
        c = line[i]
        if c == 0x0A:  # "\n" outside strings and blocks: the end
            if i != len(line) - 1:
                raise ProtocolError("bytes after the terminator", b"".join(parts) + line, -102)
            if not parts:
                return bytes(line)
            parts.append(line)
            return b"".join(parts)
        if c == 0x22:  # '"': skip the string ("" inside is an escaped quote: two strings back to back)
            j = line.find(b'"', i + 1)
            nl = line.find(b"\n", i + 1)
            if j < 0 or 0 <= nl < j:
                raise ProtocolError("unterminated string", b"".join(parts) + line, -102)
            pos = j + 1
            continue
        start, length = parse_block_header(line, i, b"".join(parts) + line if parts else None)
        end = start + length
        if size + end + 1 > max_bytes:
            raise ProtocolError(f"block of {length} bytes exceeds the {max_bytes}-byte message limit",
                                (b"".join(parts) + line)[:size + i + 12], -363)
        if end < len(line):
            pos = end
            continue
        parts.append(line)
        size += len(line)
        if end > len(line):
            parts.append(src.read_exact(end - len(line)))
            size += end - len(line)
        line = src.read_line(max_bytes - size)
        pos = 0


def frame(buf: bytes | bytearray, max_bytes: int = MAX_MESSAGE_BYTES) -> int:
    """The length of the complete message at the start of ``buf``, or 0 while ``buf`` holds only its beginning:
    :func:`read_message` for a source that buffers what it receives (the transports and the emulator), without a
    call per line and per block. Blocks are skipped by their declared length; a framing fault raises the same
    ProtocolError as soon as the bytes show it (``raw``: the bytes of the message up to and including the line
    where it shows, which the caller discards)."""
    n = len(buf)
    pos = 0
    while True:
        m = _SPECIAL.search(buf, pos, min(n, max_bytes))
        if m is None:
            if n >= max_bytes:
                raise ProtocolError("message longer than the limit", bytes(buf[:max_bytes]), -363)
            return 0
        i = m.start()
        c = buf[i]
        if c == 0x0A:  # "\n" outside strings and blocks: the end
            return i + 1
        if c == 0x22:  # '"': skip the string ("" inside is an escaped quote: two strings back to back)
            j = buf.find(b'"', i + 1)
            nl = buf.find(b"\n", i + 1)
            if nl >= 0 and not 0 <= j < nl:
                raise ProtocolError("unterminated string", bytes(buf[:nl + 1]), -102)
            if j < 0:
                pos = n  # wait for the closing quote (or the limit)
                continue
            pos = j + 1
            continue
        if i + 1 >= n or (1 <= buf[i + 1] - 0x30 <= 9 and i + 2 + buf[i + 1] - 0x30 > n):
            pos = n  # the block header is not all there yet
            continue
        try:
            start, length = parse_block_header(buf, i, b"")
        except ProtocolError as err:
            nl = buf.find(b"\n", i)
            raise ProtocolError(err.message, bytes(buf[:nl + 1 if nl >= 0 else n]), err.code) from None
        end = start + length
        if end + 1 > max_bytes:
            raise ProtocolError(f"block of {length} bytes exceeds the {max_bytes}-byte message limit",
                                bytes(buf[:i + 12]), -363)
        if end >= n:
            return 0
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
