"""The command codec of the crossbar array tester, shared by the driver and the emulator.

The grammar is the table :data:`COMMANDS`: one :class:`CommandSpec` per command with its SCPI header, its
typed parameters and (for queries) its typed reply. Everything else here is generic over that table:

* client side: :func:`encode_command` (name + arguments → bytes), :func:`decode_reply` (bytes → values);
* server side: :func:`decode_command` (bytes → :class:`Command`), :func:`encode_reply`,
  :func:`encode_error_reply`;
* both sides: :func:`check_limits` against ``[limits]`` (parameters and replies carry the limit that bounds
  them), and :func:`~crossbar_instruments.blocks.read_message` for framing.

Malformed input of any kind raises :class:`~crossbar_ctl.errors.ProtocolError` (with the raw bytes and the
SCPI error code a tester reports for it); an error reply (``!<code>,"<text>"``) raises
:class:`~crossbar_ctl.errors.InstrumentError`. See ``hil/PROTOCOL.md`` for the command set in prose.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from crossbar_ctl.config import LimitsSection
from crossbar_ctl.errors import InstrumentError, LimitError
from crossbar_ctl.peaks import abs_peak
from crossbar_ctl.pulse_counts import abs_peak_total
from crossbar_instruments.blocks import INT_DTYPES
from crossbar_instruments.params import (Array, Bool, Field, Float, Int, Param, Str, Word, Words, fail,
                                         split_fields)

#: SCPI standard (negative) and tester-specific (positive) error numbers with their standard text.
ERRORS: dict[int, str] = {
    0: "No error",
    -102: "Syntax error",
    -104: "Data type error",
    -108: "Parameter not allowed",
    -109: "Missing parameter",
    -113: "Undefined header",
    -114: "Header suffix out of range",
    -161: "Invalid block data",
    -200: "Execution error",
    -221: "Settings conflict",
    -222: "Data out of range",
    -224: "Illegal parameter value",
    -350: "Queue overflow",
    -363: "Input buffer overrun",
    -365: "Time out error",
    101: "Sequence error",
    102: "Diagnostic not available",
    110: "Compliance exceeded",
}

_MNEMONIC = re.compile(r"(\*?[A-Za-z]+)([0-9]*)\Z")


# --------------------------------------------------------------------------- command table
SEQ = Int("seq", lo=1, hi=10**18)


@dataclass(frozen=True)
class CommandSpec:
    """One command: ``header`` spells the long form with its short form in capitals (``ARRay``), ``#`` marks
    the tile suffix; a header ending in ``?`` is a query and has a ``reply``. ``sequenced`` commands take the
    client sequence number as their first parameter (see ``hil/PROTOCOL.md``)."""

    name: str
    header: str
    params: tuple[Param, ...] = ()
    reply: tuple[Param, ...] | None = None
    sequenced: bool = False
    doc: str = ""

    @functools.cached_property
    def is_query(self) -> bool:
        return self.header.endswith("?")

    @functools.cached_property
    def has_suffix(self) -> bool:
        return "#" in self.header

    @functools.cached_property
    def all_params(self) -> tuple[Param, ...]:
        return ((SEQ,) + self.params) if self.sequenced else self.params

    @functools.cached_property
    def param_names(self) -> frozenset[str]:
        return frozenset(p.name for p in self.all_params)

    def short_header(self, tile: int | None = None) -> str:
        """The header as sent: short forms, the tile number in place of ``#``."""
        return _short_header(self.header, self.is_query, tile)


@functools.lru_cache(maxsize=1024)
def _short_header(header: str, is_query: bool, tile: int | None) -> str:
    parts = []
    for mn in header.rstrip("?").split(":"):
        short = "".join(c for c in mn if c.isupper() or c in "*")
        parts.append(short + (str(tile) if mn.endswith("#") else ""))
    return ":".join(parts) + ("?" if is_query else "")


_CMDS = [
    CommandSpec("idn", "*IDN?", reply=(Word("maker"), Word("model"), Word("serial"), Word("firmware")),
                doc="identity"),
    CommandSpec("rst", "*RST", doc="reset: output off (safe), sequence counter to 0, reply cache dropped"),
    CommandSpec("cls", "*CLS", doc="clear the error queue"),
    CommandSpec("opc", "*OPC?", reply=(Int("done"),), doc="1 once every previous command has completed"),
    CommandSpec("err", "SYSTem:ERRor?", reply=(Int("code"), Str("text")), doc="oldest error of the queue"),
    CommandSpec("err_count", "SYSTem:ERRor:COUNt?", reply=(Int("count"),), doc="errors in the queue"),
    CommandSpec("safe", "SYSTem:SAFE?", reply=(Bool("safe"),), doc="1 if outputs are off and every line grounded"),
    CommandSpec("sync", "SYSTem:SYNC?", params=(Int("token", lo=0, hi=2**31 - 1),), reply=(Int("token"),),
                doc="echo the token (stream resynchronisation)"),
    CommandSpec("output", "OUTPut", params=(Bool("on", words=("ON", "OFF")),), doc="enable / disable outputs"),
    CommandSpec("output_q", "OUTPut?", reply=(Bool("on"),), doc="output state"),
    CommandSpec("tile_count", "ARRay:TILE:COUNt?", reply=(Int("count"),), doc="number of tiles"),
    CommandSpec("tile_size", "ARRay:TILE#:SIZE?", reply=(Int("rows"), Int("cols")), doc="rows, cols of a tile"),
    CommandSpec("outer_modes", "ARRay:OMODes?", reply=(Words("modes"),), doc="supported outer-pulse modes"),
    CommandSpec("seq_last_q", "SEQuence:LAST?", reply=(Int("seq"),), doc="last applied sequence number"),
    CommandSpec("seq_last", "SEQuence:LAST", params=(Int("seq", lo=0, hi=10**18),),
                doc="set the last applied sequence number (session start / resync); drops the reply cache"),
    CommandSpec("seq_status", "SEQuence:STATus?", reply=(Int("seq"), Int("code"), Str("text")),
                doc="the status of a write in one reply: last applied sequence number and the oldest queued error "
                    "(taken from the queue, as SYST:ERR? does)"),
    CommandSpec("vmm", "TILE#:VMM?", params=(Array("v", limit="max_voltage_V", ndim=2),),
                reply=(Array("i", limit="compliance_current_A", ndim=2),), sequenced=True,
                doc="forward multiply: row voltages (batch, rows) V -> column currents (batch, cols) A"),
    CommandSpec("vmm_t", "TILE#:VMMT?", params=(Array("v", limit="max_voltage_V", ndim=2),),
                reply=(Array("i", limit="compliance_current_A", ndim=2),), sequenced=True,
                doc="transpose multiply: column voltages (batch, cols) V -> row currents (batch, rows) A"),
    CommandSpec("cond", "TILE#:CONDuctance?", reply=(Array("g", ndim=2),), sequenced=True,
                doc="read every device: G (rows, cols) S, with read noise"),
    CommandSpec("cond_true", "TILE#:CONDuctance:TRUE?", reply=(Array("g", ndim=2),),
                doc="diagnostic (emulator): noise-free G (rows, cols) S; not an array operation"),
    CommandSpec("outer", "TILE#:OPULse",
                params=(Array("p", dtypes=("F64",), lo=0.0, hi=1.0), Array("q", dtypes=("F64",), lo=0.0, hi=1.0),
                        Int("polarity", choices=(-1, 1)), Int("slots", lo=1, limit="max_pulses_per_device"),
                        Word("mode"), Float("v", limit="max_voltage_V"),
                        Float("width", positive=True, limit="max_pulse_width_s")),
                sequenced=True, doc="one stochastic rank-1 pulse phase"),
    CommandSpec("program", "TILE#:PROGram",
                params=(Array("pulses", dtypes=INT_DTYPES, ndim=2, limit="max_pulses_per_device"),
                        Float("v_set", limit="max_voltage_V"), Float("v_reset", limit="max_voltage_V"),
                        Float("width", positive=True, limit="max_pulse_width_s")),
                sequenced=True, doc="signed pulse counts per device, row by row"),
    CommandSpec("cell_pulse", "TILE#:CELL:PULSe",
                params=(Int("row", lo=0), Int("col", lo=0), Float("v", limit="max_voltage_V"),
                        Float("width", positive=True, limit="max_pulse_width_s"),
                        Int("count", lo=0, limit="max_pulses_per_device")),
                sequenced=True, doc="count pulses on one device"),
    CommandSpec("cell_read", "TILE#:CELL:READ?",
                params=(Int("row", lo=0), Int("col", lo=0), Float("v", limit="max_voltage_V")),
                reply=(Float("i", limit="compliance_current_A"),), sequenced=True,
                doc="current (A) through one device at v (V)"),
]
COMMANDS: dict[str, CommandSpec] = {c.name: c for c in _CMDS}


def _mnemonic_forms(mn: str) -> tuple[str, str]:
    """(short, long) upper-case forms of a spec mnemonic like ``ARRay`` or ``*IDN``."""
    base = mn.rstrip("#")
    return "".join(c for c in base if c.isupper() or c == "*"), base.upper()


def _build_index() -> tuple[dict[str, str], dict[tuple[tuple[str, ...], bool], CommandSpec]]:
    forms: dict[str, str] = {}
    index: dict[tuple[tuple[str, ...], bool], CommandSpec] = {}
    for spec in _CMDS:
        key = []
        for mn in spec.header.rstrip("?").split(":"):
            short, long = _mnemonic_forms(mn)
            for f in (short, long):
                if forms.setdefault(f, short) != short:
                    raise RuntimeError(f"mnemonic {f} is ambiguous in the command table")
            key.append(short + ("#" if mn.endswith("#") else ""))
        index[(tuple(key), spec.is_query)] = spec
        if spec.reply is None and spec.is_query or spec.reply is not None and not spec.is_query:
            raise RuntimeError(f"{spec.name}: queries (and only queries) have replies")
    return forms, index


_FORMS, _INDEX = _build_index()


# --------------------------------------------------------------------------- commands
@dataclass(frozen=True)
class Command:
    """A decoded command: its spec, tile suffix (or None) and named arguments."""

    spec: CommandSpec
    tile: int | None
    args: dict[str, Any]
    raw: bytes

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def seq(self) -> int | None:
        return self.args.get("seq") if self.spec.sequenced else None


def encode_command(name: str, tile: int | None = None, *, suppress_zeros: bool = False, **args: Any) -> bytes:
    """The bytes of command ``name`` (``\\n``-terminated) with ``args`` named as in its spec; with
    ``suppress_zeros`` mostly-zero arrays travel zero-suppressed (for slow links, see
    :func:`~crossbar_instruments.blocks.encode_array`)."""
    spec = COMMANDS[name]
    if spec.has_suffix != (tile is not None):
        raise ValueError(f"{name}: tile suffix {'required' if spec.has_suffix else 'not allowed'}")
    if tile is not None and (not isinstance(tile, (int, np.integer)) or tile < 0):
        raise ValueError(f"tile must be a non-negative integer, got {tile!r}")
    if not spec.param_names.issuperset(args):
        raise TypeError(f"{name}: unexpected arguments {sorted(set(args) - spec.param_names)}")
    head = spec.short_header(None if tile is None else int(tile)).encode()
    return _join(head + b" ", spec.all_params, args, suppress_zeros)


def _join(head: bytes, params: tuple[Param, ...], values: dict[str, Any], suppress_zeros: bool = False) -> bytes:
    """``head`` and the encoded values joined by ``,`` and terminated, in one copy (blocks can be large)."""
    pieces = [head]
    for p in params:
        v = values[p.name]
        for w in (p.encode(v, suppress_zeros) if suppress_zeros and isinstance(p, Array) else p.encode(v)):
            pieces.append(w)
            pieces.append(b",")
    if len(pieces) == 1:
        return head.rstrip(b" ") + b"\n"
    pieces[-1] = b"\n"
    return b"".join(pieces)


def _end(raw: bytes) -> int:
    """The index of the terminator of a complete message (ProtocolError if there is none)."""
    if not isinstance(raw, (bytes, bytearray)) or not raw.endswith(b"\n"):
        raise fail("message not terminated by \\n", bytes(raw) if isinstance(raw, (bytes, bytearray)) else b"")
    return len(raw) - 1


def looks_like_query(raw: bytes) -> bool:
    """Whether a (possibly undecodable) command's header ends in ``?``: its error goes in the reply."""
    words = bytes(raw).split(b"\n", 1)[0].split(None, 1)
    return bool(words) and words[0].endswith(b"?")


_HEADER = re.compile(rb"[^ \t\r]*")
_HEADER_CACHE: dict[bytes, tuple[CommandSpec, int | None]] = {}  # header bytes -> (spec, tile), bounded


def _parse_header(head: bytes, raw: bytes) -> tuple[CommandSpec, int | None]:
    try:
        header = head.decode("ascii")
    except UnicodeDecodeError:
        raise fail("non-ASCII header", raw, -113) from None
    query = header.endswith("?")
    key: list[str] = []
    tile: int | None = None
    for mn in (header[:-1] if query else header).lstrip(":").split(":"):
        m = _MNEMONIC.match(mn)
        if not m:
            raise fail(f"undefined header {header!r}", raw, -113)
        alpha, digits = m.group(1).upper(), m.group(2)
        short = _FORMS.get(alpha)
        if short is None:
            raise fail(f"undefined header {header!r}", raw, -113)
        if digits:
            if len(digits) > 6 or tile is not None:
                raise fail(f"header suffix out of range in {header!r}", raw, -114)
            tile = int(digits)
        key.append(short + ("#" if digits else ""))
    spec = _INDEX.get((tuple(key), query))
    if spec is None:
        raise fail(f"undefined header {header!r}", raw, -113)
    return spec, tile


def decode_command(raw: bytes) -> Command:
    """Parse one complete command message (server side)."""
    raw = bytes(raw) if isinstance(raw, bytearray) else raw
    end = _end(raw)
    k = _HEADER.match(raw, 0, end).end()  # type: ignore[union-attr]  # always matches
    head = raw[:k]
    found = _HEADER_CACHE.get(head)
    if found is None:
        found = _parse_header(head, raw)
        if len(_HEADER_CACHE) < 1024:
            _HEADER_CACHE[head] = found
    spec, tile = found
    return Command(spec, tile, _decode_params(spec.all_params, split_fields(raw, k, end), raw), raw)


def _decode_params(params: tuple[Param, ...], fields: list[Field], raw: bytes) -> dict[str, Any]:
    out: dict[str, Any] = {}
    i = 0
    for p in params:
        take = len(fields) - i if p.nfields < 0 else p.nfields
        if take < 1 or i + take > len(fields):
            raise fail(f"missing parameter {p.name}", raw, -109)
        out[p.name] = p.decode(fields[i:i + take], raw)
        i += take
    if i != len(fields):
        raise fail(f"{len(fields) - i} unexpected parameter field(s)", raw, -108)
    return out


# --------------------------------------------------------------------------- replies
def encode_reply(name: str, **values: Any) -> bytes:
    """The reply bytes of query ``name`` (server side)."""
    spec = COMMANDS[name]
    if spec.reply is None:
        raise ValueError(f"{name} is not a query")
    return _join(b"", spec.reply, values)


def format_error(code: int, detail: str = "") -> str:
    """``<standard text>[; detail]`` for an error number."""
    text = ERRORS.get(code, "Device-specific error")
    return f"{text}; {detail}" if detail else text


def encode_error_reply(code: int, text: str) -> bytes:
    """``!<code>,"<text>"``: what a failed query returns instead of its reply."""
    return b"!" + str(int(code)).encode() + b"," + Str("text").encode(text)[0] + b"\n"


_ERROR_FIELDS = (Int("code"), Str("text"))
NO_ERROR = b'0,"No error"\n'  #: the ``SYST:ERR?`` reply of an empty error queue


def decode_error(raw: bytes, start: int = 0, end: int | None = None) -> tuple[int, str]:
    """(code, text) of the error reply body ``<code>,"<text>"`` in ``raw[start:end]`` (errors carry ``raw``)."""
    vals = _decode_params(_ERROR_FIELDS, split_fields(raw, start, len(raw) if end is None else end), raw)
    return vals["code"], vals["text"]


def decode_reply(name: str, raw: bytes) -> dict[str, Any]:
    """Parse the reply to query ``name`` (client side); an error reply raises InstrumentError."""
    spec = COMMANDS[name]
    if spec.reply is None:
        raise ValueError(f"{name} is not a query")
    end = _end(raw)
    if raw[:1] == b"!":
        code, text = decode_error(raw, 1, end)
        raise InstrumentError(code, text)
    return _decode_params(spec.reply, split_fields(raw, 0, end), raw)


# --------------------------------------------------------------------------- limits
def check_limits(params: tuple[Param, ...], values: dict[str, Any], limits: LimitsSection, what: str) -> None:
    """Raise LimitError if any value whose param names a ``[limits]`` key exceeds it in magnitude."""
    for p in params:
        if p.limit is None or p.name not in values:
            continue
        allowed = float(getattr(limits, p.limit))
        v = values[p.name]
        if isinstance(v, np.ndarray):
            peak = _array_peak(v)
        else:
            peak = abs(float(v))
        if not peak <= allowed:
            raise LimitError(p.limit, peak, allowed, f"{what} {p.name}")


_F32, _I32 = np.dtype(np.float32), np.dtype(np.int32)


def _array_peak(v: np.ndarray) -> float:
    """max |v| (0.0 if empty; NaN if v holds a NaN, which then fails every limit): one Numba pass for the
    C-contiguous float32 and int32 arrays every read and program carries, two numpy reductions otherwise."""
    if not v.size:
        return 0.0
    if v.flags.c_contiguous:
        if v.dtype is _F32:
            return abs_peak(v)
        if v.dtype is _I32:
            return float(abs_peak_total(v)[0])
    return max(float(v.max()), -float(v.min()))
