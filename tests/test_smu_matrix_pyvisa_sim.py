"""The smu-matrix driver through the real pyvisa layer, on the canned pyvisa-sim model of a 2602B SMU and a 707B
matrix (hil/emulators/smu_matrix.yaml, config hil/configs/pyvisa-sim-smu-matrix.toml).

The model keeps the SMU's output state and the matrix's closed relays in the pyvisa-sim library object, which every
ResourceManager of the same "path@sim" shares while one is alive. Each test therefore opens its own copy of the YAML
(a new path: a new library, outputs off and relays open), and a second pyvisa session opened by a test sees the
state the driver left.
"""
from __future__ import annotations

import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest
import pyvisa

from crossbar_ctl.backend import connect
from crossbar_ctl.errors import BackendError, InstrumentError, InstrumentTimeoutError, ProtocolError
from crossbar_instruments.smu_matrix import SmuMatrixBackend, TspLink
from crossbar_instruments.transport import VisaTransport

ROOT = Path(__file__).resolve().parents[1]
YAML = ROOT / "hil" / "emulators" / "smu_matrix.yaml"
TOML = ROOT / "hil" / "configs" / "pyvisa-sim-smu-matrix.toml"
SMU = "TCPIP0::192.0.2.20::5025::SOCKET"
MATRIX = "TCPIP0::192.0.2.21::5025::SOCKET"
SMU_IDN = "Keithley Instruments Inc., Model 2602B, 4406555, 3.3.5"
MATRIX_IDN = "Keithley Instruments Inc., Model 707B, 1234567, 1.4.1"
OUTPUT_STATE = "print(smua.source.output, smub.source.output)"
CLOSED = 'print(channel.getclose("allslots"))'
CELL = (0, 1, 0)  # the canned cell: routed by exclusiveclose("1A02,1B03,1C01,1C04")
RAMP_DOWN = "smub.source.levelv = -0.5 delay(0.001) smub.source.levelv = -1 print(errorqueue.count)"
TRAIN_2 = ("smua.trigger.source.linearv(1, 1, 2) smua.trigger.source.limiti = 1e-05 trigger.timer[1].delay = 0.0002 "
           "trigger.timer[1].count = 2 trigger.timer[2].delay = 0.0001 smua.trigger.count = 2 smua.trigger.initiate() "
           "waitcomplete() print(errorqueue.count)")
RAMP_UP = "smub.source.levelv = -0.5 delay(0.001) smub.source.levelv = 0 print(errorqueue.count)"
SMU_RESET = ("reset() errorqueue.clear() smua.source.func = smua.OUTPUT_DCVOLTS "
             "smua.source.autorangev = smua.AUTORANGE_OFF smua.source.rangev = 3 "
             "smua.measure.autorangei = smua.AUTORANGE_ON smua.measure.nplc = 1 "
             "smua.source.levelv = 0 smua.source.limiti = 1e-05 smub.source.func = smub.OUTPUT_DCVOLTS "
             "smub.source.autorangev = smub.AUTORANGE_OFF smub.source.rangev = 3 smub.measure.autorangei = "
             "smub.AUTORANGE_ON smub.measure.nplc = 1 smub.source.levelv = 0 smub.source.limiti = 1e-05 "
             "print(errorqueue.count)")
PULSE_SETUP = ("smua.trigger.measure.action = smua.DISABLE smua.trigger.source.action = smua.ENABLE "
               "smua.trigger.source.stimulus = trigger.timer[1].EVENT_ID "
               "smua.trigger.endpulse.action = smua.SOURCE_IDLE "
               "smua.trigger.endpulse.stimulus = trigger.timer[2].EVENT_ID trigger.timer[1].passthrough = false "
               "trigger.timer[1].stimulus = smua.trigger.ARMED_EVENT_ID trigger.timer[2].count = 1 "
               "trigger.timer[2].passthrough = false trigger.timer[2].stimulus = smua.trigger.SOURCE_COMPLETE_EVENT_ID "
               "smua.trigger.arm.count = 1 print(errorqueue.count)")
OUTPUTS_OFF = ("smua.source.levelv = 0 smua.source.output = smua.OUTPUT_OFF smub.source.levelv = 0 "
               "smub.source.output = smub.OUTPUT_OFF print(errorqueue.count)")
MATRIX_RESET = "reset() errorqueue.clear() channel.connectrule = channel.BREAK_BEFORE_MAKE print(errorqueue.count)"
OPEN_ALL = 'channel.open("allslots") print(errorqueue.count)'
ERRCOUNT = "print(errorqueue.count)"
ERRNEXT = "print(errorqueue.next())"
SYNTAX_ERROR = ("-2.85000e+02\tTSP Syntax error at line 1 (pyvisa-sim: a line smu_matrix.yaml does not model)"
                "\t2.00000e+00\t0.00000e+00")


@pytest.fixture
def library(tmp_path: Path) -> str:
    """A private copy of the model: a pyvisa-sim library of its own, in its opening state."""
    copy = tmp_path / "smu_matrix.yaml"
    shutil.copyfile(YAML, copy)
    return f"{copy}@sim"


def rig(library: str, **smu_matrix: Any) -> dict[str, Any]:
    """The shipped rig config with the model's absolute path (and ``smu_matrix`` overrides)."""
    data = tomllib.loads(TOML.read_text(encoding="utf-8"))
    data["backend"]["visa_library"] = library
    data["smu_matrix"].update(smu_matrix)
    return data


def session(library: str, address: str) -> Any:
    """A second pyvisa session on a resource of the model (the same simulated instrument as the driver's)."""
    rm = pyvisa.ResourceManager(library)
    return rm.open_resource(address, read_termination="\n", write_termination="\n", timeout=100)


def test_the_shipped_config_opens_the_model_from_the_repository_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # visa_library = "hil/emulators/smu_matrix.yaml@sim" is relative to the CWD
    b = connect(TOML)
    try:
        assert isinstance(b, SmuMatrixBackend)
        assert b.describe()["idn"] == SMU_IDN
        assert b.describe()["matrix_idn"] == MATRIX_IDN
        assert (b.describe()["address"], b.describe()["matrix_address"]) == (SMU, MATRIX)
        assert b.read_cell(*CELL) == 1.2345e-09
    finally:
        b.close()


def test_opening_identifies_both_instruments_and_finds_the_rig_safe(library: str) -> None:
    b = connect(rig(library))
    try:
        assert b.describe()["idn"] == SMU_IDN
        assert b.describe()["matrix_idn"] == MATRIX_IDN
        assert b.tile_shapes == ((2, 2),)
        assert b.outputs_on() is False
        assert b.is_safe() is True
        assert b.smu.lines == ["*IDN?", SMU_RESET, PULSE_SETUP, OUTPUT_STATE, OUTPUT_STATE]
        assert b.matrix.lines == ["*IDN?", MATRIX_RESET, CLOSED]
    finally:
        b.close()


def test_read_cell_returns_minus_the_canned_sense_current_and_close_leaves_outputs_off_relays_open(
        library: str) -> None:
    b = connect(rig(library))
    smu = session(library, SMU)
    mx = session(library, MATRIX)
    try:
        assert b.read_cell(*CELL) == 1.2345e-09  # the model prints I_sense = -1.23450e-09
        assert b.matrix.lines[-1] == 'channel.exclusiveclose("1A02,1B03,1C01,1C04") print(errorqueue.count)'
        assert b.outputs_on() is True
        assert b.is_safe() is False
        # another session on the same simulated instruments sees the state the driver set
        assert smu.query(OUTPUT_STATE) == "1.00000e+00\t1.00000e+00"
        assert mx.query(CLOSED) == "1A02;1B03;1C01;1C04"
    finally:
        b.close()
    assert b.smu.lines[-1] == OUTPUTS_OFF
    assert b.matrix.lines[-1] == OPEN_ALL
    assert smu.query(OUTPUT_STATE) == "0.00000e+00\t0.00000e+00"
    assert mx.query(CLOSED) == "nil"
    # and so does a session opened after close()
    assert session(library, SMU).query(OUTPUT_STATE) == "0.00000e+00\t0.00000e+00"
    assert session(library, MATRIX).query(CLOSED) == "nil"
    assert smu.query(ERRCOUNT) == "0.00000e+00" and mx.query(ERRCOUNT) == "0.00000e+00"


def test_half_select_pulse_train_of_two_pulses_on_the_canned_cell(library: str) -> None:
    b = connect(rig(library))
    try:
        b.pulse_cell(*CELL, 2.0, 1e-4, 2)
        assert b.smu.lines[-3:] == [RAMP_DOWN, TRAIN_2, RAMP_UP]  # column to -V/2, 2 x +V/2 on the row, back
        assert b.outputs_on() is True
        assert b.read_cell(*CELL) == 1.2345e-09  # same cell: not routed again
        assert sum(line.startswith("channel.exclusiveclose(") for line in b.matrix.lines) == 1
    finally:
        b.close()
    assert session(library, SMU).query(OUTPUT_STATE) == "0.00000e+00\t0.00000e+00"


def test_a_pulse_train_the_model_does_not_know_is_the_instruments_syntax_error_and_the_rig_is_left_safe(
        library: str) -> None:
    b = connect(rig(library))
    smu = session(library, SMU)
    mx = session(library, MATRIX)
    try:
        with pytest.raises(InstrumentError) as err:
            b.pulse_cell(*CELL, 2.0, 1e-4, 3)  # no reply to the 3-pulse line: timeout, then the queued error
        assert err.value.code == -285
        assert err.value.text.startswith("SMU: TSP Syntax error at line 1")
        assert isinstance(err.value.__cause__, InstrumentTimeoutError)
        # the driver ramped the column back (a canned line), switched the outputs off and opened the relays
        assert b.smu.lines[-4:] == [ERRCOUNT, ERRNEXT, RAMP_UP, OUTPUTS_OFF]
        assert smu.query(OUTPUT_STATE) == "0.00000e+00\t0.00000e+00"
        assert mx.query(CLOSED) == "nil"
        assert b.is_safe() is True
    finally:
        b.close()


def test_a_cell_the_model_does_not_route_fails_at_the_matrix(library: str) -> None:
    b = connect(rig(library))
    try:
        with pytest.raises(InstrumentError) as err:
            b.read_cell(0, 0, 0)
        assert err.value.code == -285 and err.value.text.startswith("matrix: TSP Syntax error")
        assert b.matrix.lines[-4:] == ['channel.exclusiveclose("1A01,1B03,1C02,1C04") print(errorqueue.count)',
                                       ERRCOUNT, ERRNEXT, OPEN_ALL]
        assert not any("OUTPUT_ON" in line for line in b.smu.lines)  # routing failed before any output went on
        assert b.is_safe() is True
    finally:
        b.close()


def test_a_matrix_address_that_is_the_smu_is_refused_by_the_identity_check(
        library: str, caplog: pytest.LogCaptureFixture) -> None:
    # The 2602B answers the matrix's *IDN?: the driver wants a 707*/708* there and refuses before any set-up line
    # and without a safe-state line (nothing was changed; an unexpected instrument is sent nothing but *IDN?):
    # the model saw two *IDN? and nothing it does not know.
    with pytest.raises(BackendError, match=r"matrix at .* identifies as .*Model 2602B.*\(model 2602B\); "
                                           r"expected a Keithley 707\* or 708\*$"):
        connect(rig(library, matrix_address=SMU))
    assert [r.getMessage() for r in caplog.records if r.name == "crossbar_instruments.smu_matrix"] == []
    smu = session(library, SMU)
    assert smu.query(ERRCOUNT) == "0.00000e+00" and smu.query(OUTPUT_STATE) == "0.00000e+00\t0.00000e+00"


def test_a_reply_with_the_wrong_number_of_fields_raises_protocol_error_with_the_raw_bytes(library: str) -> None:
    link = TspLink("SMU", VisaTransport(SMU, 0.25, library))
    link.open()
    try:
        with pytest.raises(ProtocolError) as err:
            link.run(OUTPUT_STATE)  # run() expects one field (an error count); the output state has two
        assert err.value.raw == b"0.00000e+00\t0.00000e+00\n"
        assert "expected 1 tab-separated value(s), got 2" in str(err.value)
    finally:
        link.close()


def test_the_model_answers_nothing_to_an_unknown_line_and_queues_one_syntax_error(library: str) -> None:
    rm = pyvisa.ResourceManager(library)
    try:
        smu = rm.open_resource(SMU, read_termination="\n", write_termination="\n", timeout=100)
        smu.write("smua.source.levelv = 5 print(errorqueue.count)")
        with pytest.raises(pyvisa.VisaIOError) as err:
            smu.read()
        assert err.value.error_code == pyvisa.constants.StatusCode.error_timeout
        assert smu.query(ERRCOUNT) == "1.00000e+00"
        assert smu.query(ERRNEXT) == SYNTAX_ERROR
        assert smu.query(ERRCOUNT) == "0.00000e+00"
        assert smu.query(ERRNEXT) == "0.00000e+00\tQueue Is Empty\t0.00000e+00\t0.00000e+00"
        assert smu.query(OUTPUT_STATE) == "0.00000e+00\t0.00000e+00"  # the unknown line changed nothing
    finally:
        rm.close()
