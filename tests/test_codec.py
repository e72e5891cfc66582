"""The tester command codec: exact block bytes, round trips of every command and reply, strict validation,
framing of binary blocks that contain the terminator, and fuzzing of every parser with arbitrary bytes."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crossbar_ctl.config import LimitsSection
from crossbar_ctl.errors import InstrumentError, LimitError, ProtocolError
from crossbar_instruments import codec
from crossbar_instruments.blocks import (BufferSource, decode_array, encode_array, encode_block, frame,
                                         read_message)

F32 = np.float32
# One example of every command's arguments (tile None for commands without a suffix) and of every reply.
COMMAND_EXAMPLES: dict[str, tuple[int | None, dict]] = {
    "idn": (None, {}), "rst": (None, {}), "cls": (None, {}), "opc": (None, {}), "err": (None, {}),
    "err_count": (None, {}), "safe": (None, {}), "sync": (None, {"token": 17}), "output": (None, {"on": True}),
    "output_q": (None, {}), "tile_count": (None, {}), "tile_size": (3, {}), "outer_modes": (None, {}),
    "seq_last_q": (None, {}), "seq_last": (None, {"seq": 41}), "seq_status": (None, {}),
    "vmm": (0, {"seq": 1, "v": np.array([[0.1, -0.2, 0.0], [1.5, 2.0, -3.0]], dtype=F32)}),
    "vmm_t": (1, {"seq": 2, "v": np.array([[0.25, 10.0 / 3.0]], dtype=np.float64)}),
    "cond": (12, {"seq": 3}), "cond_true": (0, {}),
    "outer": (0, {"seq": 4, "p": np.array([0.0, 1.0, 1.0 / 3.0]), "q": np.array([0.1, 0.7]), "polarity": -1,
                  "slots": 32, "mode": "stochastic", "v": -2.0, "width": 1e-6}),
    "program": (1, {"seq": 5, "pulses": np.array([[1, -2, 0], [10, 0, -10]], dtype=np.int16), "v_set": 2.0,
                    "v_reset": -2.25, "width": 2.5e-7}),
    "cell_pulse": (0, {"seq": 6, "row": 3, "col": 4, "v": 1.75, "width": 1e-6, "count": 0}),
    "cell_read": (0, {"seq": 7, "row": 0, "col": 9, "v": 0.2}),
}
REPLY_EXAMPLES: dict[str, dict] = {
    "idn": {"maker": "CROSSBAR-CTL", "model": "XBAR-TESTER-EMU", "serial": "0", "firmware": "0.1.0"},
    "opc": {"done": 1}, "err": {"code": -113, "text": 'Undefined header; "BOGUS" #1'},
    "err_count": {"count": 2}, "safe": {"safe": True}, "sync": {"token": 17}, "output_q": {"on": False},
    "tile_count": {"count": 2}, "tile_size": {"rows": 785, "cols": 200},
    "outer_modes": {"modes": ("stochastic", "expected")}, "seq_last_q": {"seq": 12},
    "seq_status": {"seq": 12, "code": -222, "text": 'Data out of range; "max_voltage_V"'},
    "vmm": {"i": np.array([[1e-7, -2.5e-6]], dtype=F32)}, "vmm_t": {"i": np.array([[3e-9]], dtype=np.float64)},
    "cond": {"g": np.array([[3.0769e-9, 38.462e-9], [1e-8, 2e-8]])},
    "cond_true": {"g": np.array([[1.0, 2.0, 3.0]], dtype=F32)}, "cell_read": {"i": 7.692307692307693e-10},
}


def _same(a: object, b: object) -> bool:
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    return a == b


# --------------------------------------------------------------------------- blocks
def test_block_bytes_of_a_known_vector() -> None:
    fields = encode_array(np.array([1.0, 2.0], dtype=F32), ("F32",))
    assert fields == [b"F32", b"2", b"#18\x00\x00\x80?\x00\x00\x00@"]
    assert encode_array(np.array([[1, -2, 3]], dtype=np.int16), ("I16",)) == [
        b"I16", b"1x3", b"#16\x01\x00\xfe\xff\x03\x00"]
    assert encode_block(b"") == b"#10"
    assert encode_block(bytes(12)) == b"#212" + bytes(12)
    assert encode_block(bytes(1234)).startswith(b"#41234")
    big_endian = np.array([1.0], dtype=">f8")
    assert encode_array(big_endian, ("F64",))[2] == b"#18" + b"\x00" * 6 + b"\xf0?"  # always little-endian


def test_decode_array_rejects_wrong_length_dtype_and_shape() -> None:
    payload = b"\x00\x00\x80?\x00\x00\x00@"
    assert decode_array("F32", "1x2", payload, ("F32",), 2, b"").tolist() == [[1.0, 2.0]]
    with pytest.raises(ProtocolError, match="needs 12") as e:
        decode_array("F32", "3", payload, ("F32",), 1, b"raw")
    assert e.value.raw == b"raw" and e.value.code == -161
    with pytest.raises(ProtocolError, match="not allowed"):
        decode_array("F32", "2", payload, ("F64",), 1, b"")
    with pytest.raises(ProtocolError, match="unknown array dtype"):
        decode_array("F16", "4", payload, ("F32",), 1, b"")
    with pytest.raises(ProtocolError, match="dimensions"):
        decode_array("F32", "2", payload, ("F32",), 2, b"")
    with pytest.raises(ProtocolError, match="NaN"):
        decode_array("F32", "1", b"\x00\x00\xc0\x7f", ("F32",), 1, b"")


def test_zero_suppressed_block_bytes() -> None:
    # 300 float32 (1200 bytes), nonzero at 0 (1.0), 9 (-0.0: its sign bit is a nonzero byte) and 299 (2.0)
    a = np.zeros(300, dtype=F32)
    a[0], a[9], a[299] = 1.0, -0.0, 2.0
    mask = bytearray(38)  # ceil(300 / 8)
    mask[0], mask[1], mask[37] = 0x80, 0x40, 0x10  # element 8j+k is bit 7-k of byte j
    payload = bytes(mask) + b"\x00\x00\x80?" + b"\x00\x00\x00\x80" + b"\x00\x00\x00@"
    fields = encode_array(a, ("F32",), suppress_zeros=True)
    assert fields == [b"ZF32", b"300", b"#250" + payload]
    assert encode_array(a, ("F32",)) == [b"F32", b"300", encode_block(a.tobytes())]  # dense unless asked
    back = decode_array("ZF32", "300", payload, ("F32",), 1, b"")
    assert back.tobytes() == a.tobytes() and back.dtype == F32 and back.flags.writeable
    small = np.zeros(255, dtype=F32)  # 1020 bytes: below the size worth packing
    assert encode_array(small, ("F32",), suppress_zeros=True)[0] == b"F32"
    fifth = np.ones(300, dtype=F32)
    fifth[::5] = 0  # packed: 38 + 240 x 4 = 998 of 1200 bytes, more than SUPPRESS_MAX_RATIO (0.75)
    assert encode_array(fifth, ("F32",), suppress_zeros=True)[0] == b"F32"
    half = np.ones(300, dtype=F32)
    half[::2] = 0  # packed: 38 + 150 x 4 = 638 of 1200 bytes, 0.53
    assert encode_array(half, ("F32",), suppress_zeros=True)[0] == b"ZF32"


def test_zero_suppressed_round_trips_every_dtype_and_shape() -> None:
    rng = np.random.default_rng(5)
    for dtype in (np.float32, np.float64, np.int8, np.int16, np.int32):
        for shape in ((785,), (64, 785), (785, 200), (3, 0)):
            a = np.zeros(shape, dtype=dtype)
            if a.size:
                a.flat[rng.choice(a.size, a.size // 10, replace=False)] = rng.integers(-5, 5, a.size // 10)
            name, shape_text, block = encode_array(a, ("F32", "F64", "I8", "I16", "I32"), suppress_zeros=True)
            assert name.startswith(b"Z") == (a.nbytes >= 1024)
            start = 2 + block[1] - 0x30
            back = decode_array(name.decode(), shape_text.decode(), block[start:],
                                ("F32", "F64", "I8", "I16", "I32"), len(shape), b"")
            assert back.dtype == a.dtype and back.shape == a.shape and back.tobytes() == a.tobytes()


@pytest.mark.parametrize("payload,match", [
    (b"\x80", "shorter than its"),  # 9 elements need a 2-byte mask
    (b"\x80\x00", "needs 6"),  # one element set, its 4 bytes missing
    (b"\x80\x01\x00\x00\x80?", "beyond the 9 elements"),  # padding bit set
    (b"\x80\x00\x00\x00\x80?\x00", "needs 6"),  # a byte too many
])
def test_zero_suppressed_block_refuses_inconsistent_lengths(payload: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match) as e:
        decode_array("ZF32", "9", payload, ("F32",), 1, b"raw")
    assert e.value.code == -161 and e.value.raw == b"raw"
    with pytest.raises(ProtocolError, match="not allowed"):
        decode_array("ZI16", "9", payload, ("F32",), 1, b"")
    with pytest.raises(ProtocolError, match="NaN"):
        decode_array("ZF32", "9", b"\x80\x00\x00\x00\xc0\x7f", ("F32",), 1, b"")


def test_zero_suppressed_command_over_a_serial_link_decodes_the_same() -> None:
    p = np.zeros(785)
    p[[0, 10, 784]] = [0.5, 1.0, 0.25]
    q = np.zeros(200)
    q[:3] = 1.0 / 3.0
    args = dict(seq=4, p=p, q=q, polarity=-1, slots=32, mode="stochastic", v=-2.0, width=1e-6)
    dense = codec.encode_command("outer", tile=0, **args)
    packed = codec.encode_command("outer", tile=0, suppress_zeros=True, **args)
    assert packed.startswith(b"TILE0:OPUL 4,ZF64,785,#3123") and len(packed) < len(dense) // 10
    for raw in (dense, packed):
        cmd = codec.decode_command(raw)
        assert cmd.args["p"].tobytes() == p.tobytes() and cmd.args["q"].tobytes() == q.tobytes()
    with pytest.raises(ProtocolError) as e:  # the bounds [0, 1] hold for the suppressed form too
        codec.decode_command(packed.replace(b"\x00\x00\x00\x00\x00\x00\xe0?", b"\x00\x00\x00\x00\x00\x00\xe0\xbf", 1))
    assert e.value.code == -222


# --------------------------------------------------------------------------- round trips
def test_every_command_has_an_example() -> None:
    assert set(COMMAND_EXAMPLES) == set(codec.COMMANDS)
    assert set(REPLY_EXAMPLES) == {n for n, s in codec.COMMANDS.items() if s.reply is not None}


@pytest.mark.parametrize("name", sorted(COMMAND_EXAMPLES))
def test_command_round_trip(name: str) -> None:
    tile, args = COMMAND_EXAMPLES[name]
    raw = codec.encode_command(name, tile=tile, **args)
    assert raw.endswith(b"\n")
    cmd = codec.decode_command(raw)
    assert cmd.name == name and cmd.tile == tile and cmd.raw == raw
    assert set(cmd.args) == set(args)
    for k, v in args.items():
        assert _same(v, cmd.args[k]), (k, v, cmd.args[k])
    # framing reads exactly this message even when more follow it
    assert read_message(BufferSource(raw + raw)) == raw


@pytest.mark.parametrize("name", sorted(REPLY_EXAMPLES))
def test_reply_round_trip(name: str) -> None:
    raw = codec.encode_reply(name, **REPLY_EXAMPLES[name])
    got = codec.decode_reply(name, raw)
    for k, v in REPLY_EXAMPLES[name].items():
        assert _same(v, got[k]), (k, v, got[k])
    assert read_message(BufferSource(raw)) == raw


def test_exact_command_bytes() -> None:
    assert codec.encode_command("tile_size", tile=1) == b"ARR:TILE1:SIZE?\n"
    assert codec.encode_command("output", on=False) == b"OUTP OFF\n"
    assert codec.encode_command("cell_read", tile=0, seq=7, row=0, col=9, v=0.2) == b"TILE0:CELL:READ? 7,0,9,0.2\n"
    assert codec.encode_command("vmm", tile=0, seq=1, v=np.array([[1.0, 2.0]], dtype=F32)) == (
        b"TILE0:VMM? 1,F32,1x2,#18\x00\x00\x80?\x00\x00\x00@\n")
    assert codec.encode_reply("err", code=0, text="No error") == b'0,"No error"\n'
    assert codec.encode_error_reply(-222, 'Data out of range; "x"') == b'!-222,"Data out of range; ""x"""\n'


def test_floats_travel_exactly() -> None:
    for v in (0.1, 1.0 / 3.0, 2.5e-7, -1.2345678901234567e-9, 5e-324, 1.7976931348623157e308):
        raw = codec.encode_command("cell_read", tile=0, seq=1, row=0, col=0, v=v)
        assert codec.decode_command(raw).args["v"] == v


@pytest.mark.parametrize("text,name,tile", [
    (b":SYSTem:ERRor?\n", "err", None), (b"syst:err?\n", "err", None), (b"SYSTEM:ERROR:COUNT?\n", "err_count", None),
    (b"OUTPUT on\n", "output", None), (b"ARRAY:TILE12:SIZE?\n", "tile_size", 12), (b"*idn?\n", "idn", None),
    (b"tile2:conductance:true?\n", "cond_true", 2), (b"SEQuence:LAST  7 \r\n", "seq_last", None),
    (b"*IDN?\r\n", "idn", None),
])
def test_long_forms_case_and_whitespace(text: bytes, name: str, tile: int | None) -> None:
    cmd = codec.decode_command(text)
    assert cmd.name == name and cmd.tile == tile


def test_error_reply_raises_instrument_error() -> None:
    with pytest.raises(InstrumentError) as e:
        codec.decode_reply("vmm", b'!-222,"Data out of range; limit max_voltage_V"\n')
    assert e.value.code == -222 and e.value.text == "Data out of range; limit max_voltage_V"


def test_blocks_containing_terminators_frame_correctly() -> None:
    v = np.array([[np.frombuffer(b"\n\n\n\n", dtype=F32)[0], np.frombuffer(b'"#,\n', dtype=F32)[0]]], dtype=F32)
    one = codec.encode_command("vmm", tile=0, seq=1, v=v)
    two = codec.encode_command("outer", tile=1, seq=2, p=np.array([np.frombuffer(b"\n" * 8)[0] * 0 + 0.5]),
                               q=np.array([1.0]), polarity=1, slots=1, mode="expected", v=2.0, width=1e-6)
    stream = one + two + b'0,"No error"\n'
    src = BufferSource(stream)
    assert read_message(src) == one and read_message(src) == two and read_message(src) == b'0,"No error"\n'
    assert codec.decode_command(one).args["v"].tobytes() == v.tobytes()

    class Trickle(BufferSource):  # a source that returns one byte per read_line call at most, like a slow link
        def read_line(self, max_bytes: int) -> bytes:
            return super().read_line(1) if self.remaining[:1] != b"\n" else super().read_line(max_bytes)

    src = Trickle(one)
    with pytest.raises(ProtocolError):  # read_line must return whole lines; a 1-byte "line" is not terminated
        read_message(src)


BAD_COMMANDS = [
    (b"FOO:BAR?\n", -113), (b"TILE0:VMM\n", -113), (b"TILE:VMM? 1\n", -113), (b"\xff\xfe?\n", -113),
    (b"ARR:TILE1234567:SIZE?\n", -114), (b"SYST:SYNC?\n", -109), (b"SYST:SYNC? 1,2\n", -108),
    (b"SYST:SYNC? x\n", -104), (b"SYST:SYNC? -1\n", -222), (b"OUTP MAYBE\n", -104), (b"SEQ:LAST 1,\n", -109),
    (b"TILE0:VMM? 1,F32,1x1,#14\x00\x00\x80\n", -161), (b"TILE0:VMM? 1,F32,2,#18" + bytes(8) + b"\n", -104),
    (b"TILE0:VMM? 1,I16,1x2,#14\x00\x00\x00\x00\n", -104), (b"TILE0:VMM? 1,F32,1x2,#0\n", -161),
    (b"TILE0:VMM? 1,F32,1y2,#18" + bytes(8) + b"\n", -104), (b"TILE0:VMM? 0,F32,1x1,#14" + bytes(4) + b"\n", -222),
    (b"TILE0:VMM? 1,F32,1x1,#14\x00\x00\xc0\x7f\n", -224), (b"TILE0:VMM? 1,F32,1x1,\"x\"\n", -104),
    (b"TILE0:OPUL 1,F32,1,#14" + bytes(4) + b",F64,1,#18" + bytes(8) + b",1,1,expected,2.0,1e-06\n", -104),
    (b"TILE0:OPUL 1,F64,1,#18\x00\x00\x00\x00\x00\x00\x00@,F64,1,#18" + bytes(8) + b",1,1,expected,2.0,1e-06\n",
     -222),
    (b"TILE0:OPUL 1,F64,1,#18" + bytes(8) + b",F64,1,#18" + bytes(8) + b",0,1,expected,2.0,1e-06\n", -222),
    (b"TILE0:PROG 1,I16,1x1,#12\x01\x00,2.0,-2.0,0\n", -222), (b"TILE0:CELL:READ? 1,0,0,nan\n", -104),
    (b"TILE0:CELL:READ? 1,0,0,1e999\n", -222), (b'SYST:SYNC? "1\n', -102), (b"SYST:SYNC? 1 2\n", -104),
    (b"SYST:SYNC? 1", -102),
]


@pytest.mark.parametrize("raw,code", BAD_COMMANDS)
def test_malformed_commands_raise_protocol_error_with_raw_bytes(raw: bytes, code: int) -> None:
    with pytest.raises(ProtocolError) as e:
        codec.decode_command(raw)
    assert e.value.code == code, e.value
    assert e.value.raw == raw


@pytest.mark.parametrize("name,raw", [
    ("vmm", b"I16,1x1,#12\x00\x00\n"), ("vmm", b"F32,1x2,#14\x00\x00\x00\x00\n"), ("vmm", b"F32,1,#14abcd\n"),
    ("tile_size", b"785\n"), ("tile_size", b"785,200,1\n"), ("err", b"0,No error\n"), ("safe", b"2\n"),
    ("cell_read", b"-\n"), ("sync", b"1"), ("opc", b"!1\n"), ("err", b'!-1,"x"'),
])
def test_malformed_replies_raise_protocol_error(name: str, raw: bytes) -> None:
    with pytest.raises(ProtocolError) as e:
        codec.decode_reply(name, raw)
    assert e.value.raw == raw


def test_framing_refuses_truncated_and_oversized_input() -> None:
    with pytest.raises(ProtocolError, match="inside a block"):
        read_message(BufferSource(b"F32,1,#18\x00\x00\n"))
    with pytest.raises(ProtocolError, match="exceeds"):
        read_message(BufferSource(b"F32,1,#9999999999\n"), max_bytes=1 << 20)
    with pytest.raises(ProtocolError):
        read_message(BufferSource(b"no terminator"))
    with pytest.raises(ProtocolError, match="limit"):
        read_message(BufferSource(b"x" * 100 + b"\n"), max_bytes=50)


def _frame_all(data: bytes, max_bytes: int = 1 << 20) -> list[bytes]:
    """Messages of ``data`` by :func:`frame` (as a buffering transport reads them); ProtocolError as read_message."""
    out, buf = [], bytearray(data)
    while buf:
        n = frame(buf, max_bytes)
        if n == 0:
            raise ProtocolError("input ended before the message did", bytes(buf))
        out.append(bytes(buf[:n]))
        del buf[:n]
    return out


def test_frame_finds_whole_messages_in_a_buffer() -> None:
    msgs = VALID + [r for _, r in REPLIES] + [b'"a""b,#",1\n', b"F32,1,#14\n\n\n\n\n"]
    stream = b"".join(msgs)
    assert _frame_all(stream) == msgs
    for cut in range(len(msgs[0])):  # any prefix is "not yet", never an error
        assert frame(msgs[0][:cut]) == 0
    with pytest.raises(ProtocolError, match="exceeds") as e:
        frame(b"F32,1,#9999999999\n", 1 << 20)
    assert e.value.code == -363
    with pytest.raises(ProtocolError, match="limit"):
        frame(b"x" * 100, 50)
    with pytest.raises(ProtocolError, match="unterminated") as e:
        frame(b'"ab\ncd"\n')
    assert e.value.raw == b'"ab\n'
    with pytest.raises(ProtocolError, match="indefinite") as e:
        frame(b"#0\nmore\n")
    assert e.value.raw == b"#0\n" and e.value.code == -161


def test_check_limits_names_the_limit() -> None:
    lim = LimitsSection(max_voltage_V=1.0, max_pulses_per_device=10)
    spec = codec.COMMANDS["vmm"]
    codec.check_limits(spec.all_params, {"seq": 1, "v": np.array([[1.0, -1.0]], dtype=F32)}, lim, "x")
    with pytest.raises(LimitError) as e:
        codec.check_limits(spec.all_params, {"seq": 1, "v": np.array([[0.5, -1.5]], dtype=F32)}, lim, "TILE0:VMM?")
    assert e.value.limit == "max_voltage_V" and e.value.value == 1.5
    p = codec.COMMANDS["program"].all_params
    with pytest.raises(LimitError, match="max_pulses_per_device"):
        codec.check_limits(p, {"pulses": np.array([[0, -11]]), "v_set": 1.0, "v_reset": -1.0, "width": 1e-6}, lim, "")
    with pytest.raises(LimitError, match="compliance_current_A"):
        codec.check_limits(codec.COMMANDS["cell_read"].reply, {"i": -1.0}, lim, "reply")


@pytest.mark.parametrize("make", [
    lambda a: a.astype(np.float32), lambda a: a.astype(np.float64), lambda a: a.astype(np.int32),
    lambda a: a.astype(np.int16), lambda a: np.asfortranarray(a.astype(np.float32)),
    lambda a: a.astype(np.float32)[:, ::2], lambda a: a.astype(np.int32)[::-1],
])
def test_check_limits_finds_the_peak_of_every_array_kind(make: Any) -> None:
    """The Numba fast path (C-contiguous float32/int32) and the numpy path agree: the largest magnitude, either
    sign, wherever it sits."""
    lim = LimitsSection(max_voltage_V=5.0, max_pulses_per_device=5)
    p = codec.COMMANDS["program"].all_params
    base = np.zeros((4, 6))
    codec.check_limits(p, {"pulses": make(base)}, lim, "")
    for pos, val in (((0, 0), 6), ((3, 4), -6), ((2, 2), 7)):
        a = base.copy()
        a[pos] = val
        with pytest.raises(LimitError) as e:
            codec.check_limits(p, {"pulses": make(a)}, lim, "")
        assert e.value.value == abs(val)
    a = base.copy()
    a[1, 2] = -5
    codec.check_limits(p, {"pulses": make(a)}, lim, "")  # at the limit is allowed


def test_check_limits_refuses_nan_and_accepts_empty() -> None:
    lim = LimitsSection(max_voltage_V=1.0)
    spec = codec.COMMANDS["vmm"]
    for dt in (F32, np.float64):
        with pytest.raises(LimitError):
            codec.check_limits(spec.all_params, {"v": np.array([[0.1, np.nan]], dtype=dt)}, lim, "")
    codec.check_limits(spec.all_params, {"v": np.zeros((0, 3), dtype=F32)}, lim, "")


# --------------------------------------------------------------------------- fuzzing
FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
VALID = [codec.encode_command(n, tile=t, **a) for n, (t, a) in sorted(COMMAND_EXAMPLES.items())]
REPLIES = [(n, codec.encode_reply(n, **v)) for n, v in sorted(REPLY_EXAMPLES.items())]


def _mutate(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    b = bytearray(data)
    for kind, pos, val in edits:
        if not b:
            break
        i = pos % len(b)
        if kind == 0:
            b[i] = val
        elif kind == 1:
            del b[i]
        elif kind == 2:
            b.insert(i, val)
        else:
            del b[i:]
    return bytes(b)


BYTE = st.one_of(st.integers(0, 255), st.sampled_from(list(b',#"\n ;:?!0123456789.+-eExFI')))
EDITS = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 10**6), BYTE), max_size=4)


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_server_side_parser_with_arbitrary_bytes(data: bytes) -> None:
    for raw in (data, data + b"\n"):
        try:
            codec.decode_command(raw)
        except ProtocolError as e:
            assert e.raw == raw


@FUZZ
@given(st.sampled_from(VALID), EDITS)
def test_fuzz_server_side_parser_with_mutated_commands(raw: bytes, edits: list) -> None:
    bad = _mutate(raw, edits)
    try:
        codec.decode_command(bad)
    except ProtocolError as e:
        assert e.raw == bad
    src = BufferSource(bad)
    try:
        while src.remaining:
            read_message(src)
    except ProtocolError:
        pass


@FUZZ
@given(st.lists(st.sampled_from(VALID + [r for _, r in REPLIES]), min_size=1, max_size=4), EDITS)
def test_fuzz_frame_agrees_with_read_message(msgs: list, edits: list) -> None:
    data = _mutate(b"".join(msgs), edits)
    src, by_line = BufferSource(data), []
    try:
        while src.remaining:
            by_line.append(read_message(src, max_bytes=4096))
    except ProtocolError:
        by_line.append(None)
    by_frame: list = []
    buf = bytearray(data)
    try:
        while buf:
            n = frame(buf, 4096)
            if n == 0:  # the end of the data inside a message: read_message reports it as truncated
                raise ProtocolError("truncated", bytes(buf))
            by_frame.append(bytes(buf[:n]))
            del buf[:n]
    except ProtocolError:
        by_frame.append(None)
    assert by_frame == by_line


HEADERS = sorted({codec.COMMANDS[n].short_header(t) for n, (t, _) in COMMAND_EXAMPLES.items()})
ARGS = st.text(alphabet=st.sampled_from(list(',#"; .+-eExFI0123456789abc\t')), max_size=40)


@FUZZ
@given(st.sampled_from(HEADERS), ARGS)
def test_fuzz_server_side_parser_with_random_arguments(header: str, args: str) -> None:
    raw = f"{header} {args}\n".encode()
    try:
        codec.decode_command(raw)
    except ProtocolError as e:
        assert e.raw == raw


@FUZZ
@given(st.sampled_from(REPLIES), EDITS, st.binary(max_size=60))
def test_fuzz_client_side_parser(reply: tuple[str, bytes], edits: list, junk: bytes) -> None:
    name, raw = reply
    for bad in (_mutate(raw, edits), junk, b"!" + junk):
        try:
            codec.decode_reply(name, bad)
        except (ProtocolError, InstrumentError):
            pass
        try:
            read_message(BufferSource(bad))
        except ProtocolError as e:
            assert isinstance(e.raw, bytes)
