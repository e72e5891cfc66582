"""Fields and typed parameters of the tester's messages (the vocabulary of :mod:`crossbar_instruments.codec`).

A message body is a comma-separated list of fields: plain text (a number, a word), a quoted string (``"``
doubled inside) or an IEEE 488.2 block. A :class:`Param` turns one field (or three, for an :class:`Array`:
dtype, shape, block) into a Python value and back, validating strictly: anything malformed raises
:class:`~crossbar_ctl.errors.ProtocolError` with the raw message and the SCPI error code to report.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from crossbar_ctl.errors import ProtocolError
from crossbar_instruments.blocks import FLOAT_DTYPES, decode_array, encode_array, parse_block_header

_INT = re.compile(r"[+-]?[0-9]{1,18}\Z")
_NRF = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]{1,3})?\Z")
_WORD_CHAR = r"[\x21\x24-\x2b\x2d-\x3a\x3c-\x7e]"  # printable ASCII but space , ; " #
#: A word as sent: word characters, spaces inside only.
_WORD_OUT = re.compile(f"{_WORD_CHAR}(?:(?:{_WORD_CHAR}| )*{_WORD_CHAR})?\\Z")


# --------------------------------------------------------------------------- fields
#: One comma-separated field of a message, ``(kind, value)``: kind "text" (value: str), "str" (a quoted string,
#: value: its text) or "block" (value: a memoryview of the payload inside the message). A plain tuple: a message
#: has many fields and a class instance per field costs.
Field = tuple[str, Any]


def fail(msg: str, raw: bytes, code: int = -102) -> ProtocolError:
    return ProtocolError(msg, raw, code)


_WS = b" \t\r"
#: A run of plain fields (printable ASCII without ',', '"' and '#'; no tab inside), each followed by ','.
_PLAIN_RUN = re.compile(rb"(?:[ \t\r]*[\x20\x21\x24-\x2b\x2d-\x7e]*[\x21\x24-\x2b\x2d-\x7e][ \t\r]*,)*")
#: One plain field (the last of a message).
_PLAIN = re.compile(rb"[ \t\r]*([\x20\x21\x24-\x2b\x2d-\x7e]*[\x21\x24-\x2b\x2d-\x7e])[ \t\r]*")


def split_fields(raw: bytes, start: int, end: int) -> list[Field]:
    """The fields of ``raw[start:end]`` (``raw`` is the whole message: errors carry it; ``end`` excludes the
    terminator)."""
    fields: list[Field] = []
    i = start
    while i < end and raw[i] in _WS:
        i += 1
    if i == end:
        return fields
    while True:
        run = _PLAIN_RUN.match(raw, i, end).end()  # type: ignore[union-attr]  # always matches
        if run > i:  # plain fields up to a block, a string or the last field: split them in one go
            fields += [("text", f.strip(_WS).decode("ascii")) for f in raw[i:run - 1].split(b",")]
            i = run
            while i < end and raw[i] in _WS:
                i += 1
            if i == end:
                raise fail("missing field after ','", raw, -109)
        c = raw[i]
        if c == 0x22:  # quoted string; "" is an escaped quote
            out = bytearray()
            j = i + 1
            while True:
                k = raw.find(b'"', j, end)
                if k < 0:
                    raise fail("unterminated string", raw)
                out += raw[j:k]
                if k + 1 < end and raw[k + 1] == 0x22:
                    out += b'"'
                    j = k + 2
                    continue
                i = k + 1
                break
            try:
                text = out.decode("ascii")
            except UnicodeDecodeError:
                raise fail("non-ASCII string", raw) from None
            fields.append(("str", text))
        elif c == 0x23:  # '#': definite-length block
            s, length = parse_block_header(raw, i, raw)
            if s + length > end:
                raise fail(f"block declares {length} bytes but the message holds {end - s}", raw, -161)
            fields.append(("block", memoryview(raw)[s:s + length]))
            i = s + length
        else:
            m = _PLAIN.match(raw, i, end)
            if m is None:
                raise fail(f"malformed field {raw[i:i + 20]!r}", raw)
            fields.append(("text", m.group(1).decode("ascii")))
            i = m.end()
        while i < end and raw[i] in _WS:
            i += 1
        if i == end:
            return fields
        if raw[i] != 0x2C:
            raise fail(f"expected ',' between fields, got {raw[i:i + 20]!r}", raw)
        i += 1
        while i < end and raw[i] in _WS:
            i += 1
        if i == end:
            raise fail("missing field after ','", raw, -109)


# --------------------------------------------------------------------------- parameter types
@dataclass(frozen=True)
class Param:
    """A typed parameter (or reply value). ``limit`` names the ``[limits]`` key bounding its magnitude."""

    name: str
    limit: str | None = None
    nfields: int = field(default=1, init=False)

    def decode(self, fields: list[Field], raw: bytes) -> Any:
        raise NotImplementedError

    def encode(self, value: Any) -> list[bytes]:
        raise NotImplementedError

    def _text(self, f: Field, raw: bytes) -> str:
        kind, value = f
        if kind != "text":
            raise fail(f"{self.name}: expected a plain value, got a {kind}", raw, -104)
        return value


@dataclass(frozen=True)
class Int(Param):
    lo: int | None = None
    hi: int | None = None
    choices: tuple[int, ...] = ()

    def decode(self, fields: list[Field], raw: bytes) -> int:
        t = self._text(fields[0], raw)
        if not _INT.match(t):
            raise fail(f"{self.name}: expected an integer, got {t!r}", raw, -104)
        v = int(t)
        self._range(v, raw)
        return v

    def _range(self, v: int, raw: bytes) -> None:
        if (self.lo is not None and v < self.lo) or (self.hi is not None and v > self.hi) or (
                self.choices and v not in self.choices):
            raise fail(f"{self.name} = {v} out of range", raw, -222)

    def encode(self, value: Any) -> list[bytes]:
        if isinstance(value, (bool, float)) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{self.name} must be an integer, got {value!r}")
        v = int(value)
        if (self.lo is not None and v < self.lo) or (self.hi is not None and v > self.hi) or (
                self.choices and v not in self.choices):
            raise ValueError(f"{self.name} = {v} out of range")
        return [str(v).encode()]


@dataclass(frozen=True)
class Float(Param):
    positive: bool = False

    def decode(self, fields: list[Field], raw: bytes) -> float:
        t = self._text(fields[0], raw)
        if not _NRF.match(t):
            raise fail(f"{self.name}: expected a decimal number, got {t!r}", raw, -104)
        v = float(t)
        if not math.isfinite(v) or (self.positive and v <= 0):
            raise fail(f"{self.name} = {t} out of range", raw, -222)
        return v

    def encode(self, value: Any) -> list[bytes]:
        v = float(value)
        if not math.isfinite(v) or (self.positive and v <= 0):
            raise ValueError(f"{self.name} = {v!r} cannot be sent")
        return [repr(v).encode()]  # shortest text that round-trips the float64 exactly


@dataclass(frozen=True)
class Bool(Param):
    words: tuple[str, str] = ("1", "0")

    def decode(self, fields: list[Field], raw: bytes) -> bool:
        t = self._text(fields[0], raw).upper()
        if t in ("1", "ON"):
            return True
        if t in ("0", "OFF"):
            return False
        raise fail(f"{self.name}: expected ON, OFF, 1 or 0, got {t!r}", raw, -104)

    def encode(self, value: Any) -> list[bytes]:
        return [(self.words[0] if value else self.words[1]).encode()]


@dataclass(frozen=True)
class Word(Param):
    """Unquoted printable text (an identity field, a mode name)."""

    def decode(self, fields: list[Field], raw: bytes) -> str:
        return self._text(fields[0], raw)

    def encode(self, value: Any) -> list[bytes]:
        t = str(value)
        if not _WORD_OUT.match(t):
            raise ValueError(f"{self.name} = {t!r} is not a plain word")
        return [t.encode()]


@dataclass(frozen=True)
class Words(Word):
    """One or more words: the rest of the message (a list reply)."""

    nfields: int = field(default=-1, init=False)

    def decode(self, fields: list[Field], raw: bytes) -> tuple[str, ...]:
        return tuple(self._text(f, raw) for f in fields)

    def encode(self, value: Any) -> list[bytes]:
        out = [w for v in value for w in Word.encode(self, v)]
        if not out:
            raise ValueError(f"{self.name} needs at least one word")
        return out


@dataclass(frozen=True)
class Str(Param):
    """A quoted ASCII string (``"`` doubled inside)."""

    def decode(self, fields: list[Field], raw: bytes) -> str:
        if fields[0][0] != "str":
            raise fail(f"{self.name}: expected a quoted string", raw, -104)
        return fields[0][1]

    def encode(self, value: Any) -> list[bytes]:
        t = "".join(c if " " <= c <= "~" else "?" for c in str(value))
        return [b'"' + t.replace('"', '""').encode() + b'"']


@dataclass(frozen=True)
class Array(Param):
    """A numpy array as ``dtype,shape,block``; ``lo``/``hi`` bound every element."""

    dtypes: tuple[str, ...] = FLOAT_DTYPES
    ndim: int = 1
    lo: float | None = None
    hi: float | None = None
    nfields: int = field(default=3, init=False)

    def decode(self, fields: list[Field], raw: bytes) -> np.ndarray:
        dt, shape, block = fields
        if block[0] != "block":
            raise fail(f"{self.name}: expected a #-block after dtype and shape", raw, -104)
        try:
            return decode_array(self._text(dt, raw), self._text(shape, raw), block[1], self.dtypes, self.ndim,
                                raw, self.lo, self.hi)
        except ProtocolError as err:
            if err.code == -222:
                raise fail(f"{self.name} has elements outside [{self.lo}, {self.hi}]", raw, -222) from None
            raise

    def encode(self, value: Any, suppress_zeros: bool = False) -> list[bytes]:
        a = np.asarray(value)
        if a.ndim != self.ndim:
            raise ValueError(f"{self.name} must have {self.ndim} dimensions, got shape {a.shape}")
        return encode_array(a, self.dtypes, suppress_zeros)
