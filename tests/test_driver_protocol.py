"""The tester driver's exact bytes (expected_protocol style): every operation, the opening handshake, error
handling, limits, reconnection; and the driver through the real VISA layer on the pyvisa-sim tester."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from crossbar_ctl.config import config_from_dict
from crossbar_ctl.errors import (BackendError, ConnectionLostError, InstrumentError, InstrumentTimeoutError,
                                 LimitError, ProtocolError)
from crossbar_instruments.testing import expected_protocol
from crossbar_instruments.visa_backend import VisaBackend

YAML = Path(__file__).resolve().parents[1] / "hil" / "emulators" / "tester.yaml"


def cfg(pipeline: bool = False, **limits: float):
    """The scripted tester's config; writes wait for their status unless ``pipeline``."""
    return config_from_dict({"array": {"tiles": 1, "rows": 2, "cols": 3}, "limits": limits,
                             "backend": {"kind": "visa", "address": "scripted", "retries": 2, "backoff_s": 0.0,
                                         "pipeline_writes": pipeline}})


OPENING = [
    (b"SYST:SYNC? 1\n", b"1\n"),
    (b"SEQ:LAST?\n", b"17\n"),  # what the last session left: a resumed run compares it with its op log
    (b"*RST\n*CLS\n*IDN?\n", b"ACME,XT-1,42,1.0\n"),
    (b"ARR:TILE:COUN?\n", b"1\n"),
    (b"ARR:TILE0:SIZE?\n", b"2,3\n"),
    (b"ARR:OMOD?\n", b"stochastic,expected\n"),
]
SAFE = (b"OUTP OFF\nSYST:SAFE?\n", b"1\n")
OK = b'0,"No error"\n'


def done(seq: int, error: bytes = b'0,"No error"') -> bytes:
    """The SEQ:STAT? reply: last applied sequence number and the oldest queued error."""
    return b"%d," % seq + error + b"\n"


STATUS = b"SEQ:STAT?\n"
I_VMM = struct.pack("<3f", 1e-6, 2e-6, -3e-6)
G = struct.pack("<6d", 3e-9, 4e-9, 5e-9, 6e-9, 7e-9, 8e-9)
VMM_1 = b"OUTP ON\nTILE0:VMM? 1,F32,1x2,#18\x00\x00\x80?\x00\x00\x00@\n"  # v = [1.0, 2.0] V
PROG_1 = (b"TILE0:PROG 1,I16,2x3,#212\x01\x00\xfe\xff\x00\x00\x00\x00\x00\x00\x03\x00,2.0,-2.0,1e-06\n")
PULSES = np.array([[1, -2, 0], [0, 0, 3]])


def test_opening_handshake_reads_identity_and_geometry() -> None:
    with expected_protocol(VisaBackend, cfg(), OPENING + [SAFE]) as b:
        assert b.tile_shapes == ((2, 3),)
        assert b.capabilities.outer_modes == ("stochastic", "expected") and b.capabilities.slow
        assert b.describe()["idn"] == "ACME,XT-1,42,1.0" and b.instrument_seq_at_open == 17
        b.close()
        b.close()  # idempotent: nothing more is sent


def test_every_operation_exact_bytes() -> None:
    script = OPENING + [
        (VMM_1, b"F32,1x3,#212" + I_VMM + b"\n"),
        (b"TILE0:VMMT? 2,F32,2x3,#224" + b"\x00\x00\x00?" * 3 + bytes(12) + b"\n",
         b"F32,2x2,#216" + struct.pack("<4f", 1e-7, 2e-7, 0.0, 0.0) + b"\n"),
        (b"TILE0:OPUL 3,F64,2,#216\x00\x00\x00\x00\x00\x00\xf0?\x00\x00\x00\x00\x00\x00\xe0?,F64,3,#224"
         + bytes(8) + b"\x00\x00\x00\x00\x00\x00\xd0?\x00\x00\x00\x00\x00\x00\xf0?,1,4,stochastic,2.0,1e-06\n"
         + STATUS, done(3)),
        (PROG_1.replace(b"PROG 1,", b"PROG 4,") + STATUS, done(4)),
        (b"TILE0:COND? 5\n", b"F64,2x3,#248" + G + b"\n"),
        (b"TILE0:CELL:PULS 6,1,2,2.0,1e-06,3\n" + STATUS, done(6)),
        (b"TILE0:CELL:READ? 7,1,2,0.2\n", b"2.5e-09\n"),
        (b"TILE0:COND:TRUE?\n", b"F64,2x3,#248" + G + b"\n"),
        SAFE,
        (VMM_1.replace(b"VMM? 1,", b"VMM? 8,"), b"F32,1x3,#212" + I_VMM + b"\n"),  # outputs re-enabled
        SAFE,
    ]
    seen: list[tuple[int, str]] = []
    with expected_protocol(VisaBackend, cfg(), script) as b:
        b.add_listener(lambda r: seen.append((r.seq, r.kind)))
        i = b.read_vmm(0, [1.0, 2.0])
        assert i.dtype == np.float32 and i.tolist() == list(np.frombuffer(I_VMM, "<f4"))
        assert b.read_vmm_t(0, [[0.5, 0.5, 0.5], [0, 0, 0]]).shape == (2, 2)
        b.outer_pulse(0, [1.0, 0.5], [0.0, 0.25, 1.0], 1, 4)
        b.program(0, PULSES)
        g = b.read_conductance(0)
        assert g.dtype == np.float64 and g.tolist() == [[3e-9, 4e-9, 5e-9], [6e-9, 7e-9, 8e-9]]
        b.pulse_cell(0, 1, 2, 2.0, 1e-6, 3)
        assert b.read_cell(0, 1, 2) == 2.5e-09
        assert np.array_equal(b.true_conductance(0), g)
        b.safe_state()
        b.read_vmm(0, [1.0, 2.0])
        b.close()
    assert seen == list(enumerate(["read_vmm", "read_vmm_t", "outer_pulse", "program", "read_conductance",
                                   "pulse_cell", "read_cell", "read_vmm"], start=1))


def test_large_pulse_counts_travel_as_int32() -> None:
    counts = np.array([[40000, 0, 0], [0, 0, -1]])
    payload = struct.pack("<6i", 40000, 0, 0, 0, 0, -1)
    script = OPENING + [(b"OUTP ON\nTILE0:PROG 1,I32,2x3,#224" + payload + b",2.0,-2.0,1e-06\n" + STATUS,
                         done(1))]
    with expected_protocol(VisaBackend, cfg(max_pulses_per_device=100000), script) as b:
        b.program(0, counts)


def test_limit_errors_send_nothing() -> None:
    with expected_protocol(VisaBackend, cfg(max_voltage_V=3.0), OPENING) as b:
        sent = list(b.transport.written)
        with pytest.raises(LimitError, match="max_voltage_V"):
            b.read_vmm(0, [5.0, 0.0])  # the Backend's own check
        # the driver's second check, reached directly (as a buggy subclass or caller would):
        with pytest.raises(LimitError, match="max_voltage_V"):
            b._read_vmm(0, np.array([[5.0, 0.0]], dtype=np.float32))
        with pytest.raises(LimitError, match="max_pulses_per_device"):
            b._program(0, np.full((2, 3), 5000, dtype=np.int32), 2.0, -2.0, 1e-6)
        with pytest.raises(LimitError, match="max_pulse_width_s"):
            b._outer_pulse(0, np.ones(2), np.ones(3), 1, 4, "stochastic", 2.0, 1.0)
        with pytest.raises(LimitError, match="max_voltage_V"):
            b._pulse_cell(0, 0, 0, -9.0, 1e-6, 1)
        with pytest.raises(LimitError, match="max_voltage_V"):
            b._read_cell(0, 0, 0, 4.0)
        assert b.transport.written == sent and b.seq == 0


def test_command_error_raises_instrument_error_and_keeps_the_sequence() -> None:
    script = OPENING + [
        (b"OUTP ON\n" + PROG_1 + STATUS, done(0, b'-222,"Data out of range; too many pulses"')),
        (b"SYST:ERR?\n", b'-350,"Queue overflow"\n'),
        (b"SYST:ERR?\n", OK),
        (PROG_1 + STATUS, done(1)),  # the same sequence number again, outputs already on
    ]
    with expected_protocol(VisaBackend, cfg(), script) as b:
        with pytest.raises(InstrumentError) as e:
            b.program(0, PULSES)
        assert e.value.code == -222 and e.value.text.startswith("Data out of range; too many pulses")
        assert "-350" in e.value.text and b.seq == 0
        b.program(0, PULSES)
        assert b.seq == 1


def test_error_queued_by_an_applied_command_is_raised_and_the_op_logged() -> None:
    script = OPENING + [(b"OUTP ON\n" + PROG_1 + STATUS, done(1, b'-240,"Hardware error; relay"')),
                        (b"SYST:ERR?\n", OK)]
    with expected_protocol(VisaBackend, cfg(), script) as b:
        with pytest.raises(InstrumentError, match="relay"):
            b.program(0, PULSES)
        assert b.seq == 1


def test_query_error_reply_raises_instrument_error() -> None:
    script = OPENING + [
        (VMM_1, b'!-221,"Settings conflict; outputs are off"\n'),
        (VMM_1, b"F32,1x3,#212" + I_VMM + b"\n"),  # OUTP ON is sent again
    ]
    with expected_protocol(VisaBackend, cfg(), script) as b:
        with pytest.raises(InstrumentError) as e:
            b.read_vmm(0, [1.0, 2.0])
        assert (e.value.code, e.value.text) == (-221, "Settings conflict; outputs are off") and b.seq == 0
        b.read_vmm(0, [1.0, 2.0])


def test_current_above_compliance_is_refused_and_the_tester_left_safe() -> None:
    script = OPENING + [(VMM_1, b"F32,1x3,#212" + struct.pack("<3f", 0.0, 2e-3, 0.0) + b"\n"), SAFE]
    with expected_protocol(VisaBackend, cfg(compliance_current_A=1e-3), script) as b:
        with pytest.raises(InstrumentError) as e:
            b.read_vmm(0, [1.0, 2.0])
        assert e.value.code == 110 and "compliance_current_A" in e.value.text
        assert b.seq == 1  # it was executed: logged


def test_garbled_reply_raises_protocol_error_then_resolves_on_reconnect() -> None:
    garbage = b"F32,1x3,#14abcd\n"
    script = OPENING + [
        (VMM_1, garbage),
        (b"SYST:SYNC? 2\n", b"F32,1x1,#14abcd\n2\n"),  # a stale message before the token is skipped
        (b"*CLS\nSEQ:LAST?\n", b"1\n"),  # the read was applied: logged late, the next op is seq 2
        (VMM_1.replace(b"VMM? 1,", b"VMM? 2,"), b"F32,1x3,#212" + I_VMM + b"\n"),
    ]
    with expected_protocol(VisaBackend, cfg(), script) as b:
        with pytest.raises(ProtocolError) as e:
            b.read_vmm(0, [1.0, 2.0])
        assert e.value.raw == garbage and b.seq == 0
        b.read_vmm(0, [1.0, 2.0])
        assert b.seq == 2 and b.reconnects == 1 and b.transport.opens == 2


@pytest.mark.parametrize("applied", [False, True])
def test_lost_connection_during_a_write_resends_only_if_not_applied(applied: bool) -> None:
    lost = ConnectionLostError("connection reset by peer")
    script = OPENING + [(b"OUTP ON\n" + PROG_1 + STATUS, lost), (b"SYST:SYNC? 2\n", b"2\n"),
                        (b"*CLS\nSEQ:LAST?\n", b"1\n" if applied else b"0\n")]
    vmm_2 = VMM_1.replace(b"VMM? 1,", b"VMM? 2,")
    if not applied:
        script.append((b"OUTP ON\n" + PROG_1 + STATUS, done(1)))
        vmm_2 = vmm_2.replace(b"OUTP ON\n", b"")  # outputs were switched on by the re-sent write
    script.append((vmm_2, b"F32,1x3,#212" + I_VMM + b"\n"))
    with expected_protocol(VisaBackend, cfg(), script) as b:
        b.program(0, PULSES)
        b.read_vmm(0, [1.0, 2.0])
        assert b.seq == 2 and b.reconnects == 1


def test_lost_connection_during_an_applied_query_replays_it() -> None:
    script = OPENING + [(VMM_1, ConnectionLostError("reset")), (b"SYST:SYNC? 2\n", b"2\n"),
                        (b"*CLS\nSEQ:LAST?\n", b"1\n"),
                        (VMM_1, b"F32,1x3,#212" + I_VMM + b"\n")]  # same bytes, same seq: the cached reply
    with expected_protocol(VisaBackend, cfg(), script) as b:
        b.read_vmm(0, [1.0, 2.0])
        assert b.seq == 1


def test_retries_are_bounded_and_the_op_resolved_later() -> None:
    lost = ConnectionLostError("refused")
    script = OPENING + [(b"OUTP ON\n" + PROG_1 + STATUS, lost), (b"SYST:SYNC? 2\n", lost),
                        (b"SYST:SYNC? 3\n", lost),  # retries = 2: three attempts in all
                        (b"SYST:SYNC? 4\n", b"4\n"), (b"*CLS\nSEQ:LAST?\n", b"1\n"),
                        (b"OUTP ON\nTILE0:CELL:READ? 2,0,0,0.2\n", b"1e-09\n")]
    with expected_protocol(VisaBackend, cfg(), script) as b:
        with pytest.raises(ConnectionLostError):
            b.program(0, PULSES)
        assert b.seq == 0
        assert b.read_cell(0, 0, 0) == 1e-09
        assert b.seq == 2  # the program was applied after all: logged (seq 1) before the read (seq 2)


def test_timeout_is_not_retried() -> None:
    script = OPENING + [(VMM_1, InstrumentTimeoutError("no answer within 1 s")), (b"SYST:SYNC? 2\n", b"2\n"),
                        (b"*CLS\nSEQ:LAST?\n", b"0\n"), SAFE]
    with expected_protocol(VisaBackend, cfg(), script) as b:
        with pytest.raises(InstrumentTimeoutError):
            b.read_vmm(0, [1.0, 2.0])
        assert b.transport.opens == 1 and not b.transport.is_open
        with pytest.raises(LimitError):
            b.read_vmm(0, [5.0, 0.0])
        assert b.transport.opens == 1  # refused before reconnecting: nothing sent
        b.close()  # reconnects to leave the tester safe
        assert b.seq == 0


def test_sequence_mismatch_after_reconnect_is_an_error() -> None:
    script = OPENING + [(VMM_1, ConnectionLostError("reset")), (b"SYST:SYNC? 2\n", b"2\n"),
                        (b"*CLS\nSEQ:LAST?\n", b"7\n")]
    with expected_protocol(VisaBackend, cfg(), script) as b:
        with pytest.raises(BackendError, match="last applied sequence number is 7"):
            b.read_vmm(0, [1.0, 2.0])


def test_resumed_sequence_numbers_are_synchronised() -> None:
    script = OPENING + [(b"SEQ:LAST 41\nOUTP ON\nTILE0:CELL:READ? 42,0,0,0.2\n", b"1e-09\n"),
                        (b"TILE0:CELL:READ? 43,0,0,0.2\n", b"1e-09\n")]
    with expected_protocol(VisaBackend, cfg(), script) as b:
        b.seq = 41  # e.g. a simulator state or checkpoint restored the op counter
        b.read_cell(0, 0, 0)
        b.read_cell(0, 0, 0)


# --------------------------------------------------------------------------- pipelined writes
VMM_2 = VMM_1.replace(b"VMM? 1,", b"VMM? 2,").replace(b"OUTP ON\n", b"")
REPLY_VMM = b"F32,1x3,#212" + I_VMM + b"\n"


def test_pipelined_write_returns_before_its_status_and_is_recorded_when_it_arrives() -> None:
    script = OPENING + [(b"OUTP ON\n" + PROG_1 + STATUS, done(1)),
                        (VMM_2, REPLY_VMM)]  # sent before the program's status is read
    records = []
    with expected_protocol(VisaBackend, cfg(pipeline=True), script) as b:
        b.add_listener(records.append)
        b.program(0, PULSES)
        assert b.seq == 0 and not records and b.transport.pos == len(OPENING) + 1  # sent, status unread
        np.testing.assert_array_equal(b.read_vmm(0, [1.0, 2.0]), np.frombuffer(I_VMM, "<f4"))
        assert b.seq == 2 and [(r.seq, r.kind, r.status) for r in records] == [(1, "program", "ok"),
                                                                             (2, "read_vmm", "ok")]


def test_settle_and_close_read_the_pending_status() -> None:
    script = OPENING + [(b"OUTP ON\n" + PROG_1 + STATUS, done(1)),
                        (PROG_1.replace(b"PROG 1,", b"PROG 2,") + STATUS, done(2)), SAFE]
    with expected_protocol(VisaBackend, cfg(pipeline=True), script) as b:
        b.program(0, PULSES)
        b.settle()
        assert b.seq == 1
        b.program(0, PULSES)
        b.close()  # settles (seq 2) before OUTP OFF
        assert b.seq == 2


def test_pipelined_write_error_is_raised_by_settle_and_the_tester_still_made_safe() -> None:
    script = OPENING + [(b"OUTP ON\n" + PROG_1 + STATUS, done(0, b'-222,"Data out of range"')),
                        (b"SYST:ERR?\n", OK), SAFE]
    with expected_protocol(VisaBackend, cfg(pipeline=True), script) as b:
        b.program(0, PULSES)
        with pytest.raises(InstrumentError) as e:
            b.close()
        assert e.value.code == -222 and b.seq == 0 and b.transport.pos == len(script)  # SAFE was sent


@pytest.mark.parametrize("applied", [False, True])
def test_link_lost_with_a_pending_write_applies_it_exactly_once(applied: bool) -> None:
    script = OPENING + [(b"OUTP ON\n" + PROG_1 + STATUS, ConnectionLostError("reset")),
                        (VMM_2, None),  # goes out behind the program; reading the program's status fails
                        (b"SYST:SYNC? 2\n", b"2\n"), (b"*CLS\nSEQ:LAST?\n", b"1\n" if applied else b"0\n")]
    if applied:  # logged late; the read is sent again, outputs first (a disconnect left the tester safe)
        script.append((b"OUTP ON\n" + VMM_2, REPLY_VMM))
    else:  # the program is sent again and confirmed before the read
        script += [(b"OUTP ON\n" + PROG_1 + STATUS, done(1)), (VMM_2, REPLY_VMM)]
    records = []
    with expected_protocol(VisaBackend, cfg(pipeline=True), script) as b:
        b.add_listener(records.append)
        b.program(0, PULSES)
        b.read_vmm(0, [1.0, 2.0])
        assert b.seq == 2 and b.reconnects == 1
        assert [(r.seq, r.status) for r in records] == [(1, "late" if applied else "ok"), (2, "ok")]


def test_geometry_that_disagrees_with_the_config_is_refused() -> None:
    script = OPENING[:4] + [(b"ARR:TILE0:SIZE?\n", b"4,4\n"), (b"ARR:OMOD?\n", b"stochastic\n")]
    with pytest.raises(BackendError, match=r"tiles \[\(4, 4\)\]"):
        with expected_protocol(VisaBackend, cfg(), script):
            pass


# --------------------------------------------------------------------------- through pyvisa-sim
def test_pyvisa_sim_tester_through_the_visa_layer() -> None:
    import pyvisa

    rm = pyvisa.ResourceManager(f"{YAML}@sim")
    inst = rm.open_resource("ASRL1::INSTR", read_termination="\n", write_termination="\n")
    try:
        assert inst.query("*IDN?") == "CROSSBAR-CTL,XBAR-TESTER-SIM,1,0.1.0"
        assert inst.query("ARR:TILE:COUN?") == "1" and inst.query("ARR:TILE0:SIZE?") == "2,3"
        assert inst.query("OUTP?") == "OFF" and inst.query("SYST:SAFE?") == "1"
        inst.write("OUTP ON")
        assert inst.query("OUTP?") == "ON"
        inst.write("OUTP OFF")
        assert inst.query("OUTP?") == "OFF"
        assert inst.query("SEQ:STAT?") == '0,0,"No error"'
        inst.write("NOT:A:COMMAND")
        assert inst.query("SYST:ERR?") == '-113,"Undefined header"'
        assert inst.query("SYST:ERR?") == '0,"No error"'
    finally:
        inst.close()


def test_driver_on_the_pyvisa_sim_tester() -> None:
    c = config_from_dict({"array": {"tiles": 1, "rows": 2, "cols": 3},
                          "backend": {"kind": "visa", "address": "ASRL1::INSTR", "visa_library": f"{YAML}@sim",
                                      "timeout_s": 0.5}})
    with VisaBackend(c) as b:
        assert b.describe()["idn"] == "CROSSBAR-CTL,XBAR-TESTER-SIM,1,0.1.0" and b.tile_shapes == ((2, 3),)
        g = b.true_conductance(0)
        assert g.dtype == np.float32 and g.shape == (2, 3)
        assert g[0, 0] == np.float32(2.0 ** -27 * 1.25)
        assert b.read_cell(0, 1, 2) == 2.5e-9
        assert b.scpi("OUTP?") == "ON"
        b.safe_state()
        assert b.scpi("OUTP?") == "OFF"
