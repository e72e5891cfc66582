"""The smu-matrix driver against the exact bytes it sends (Keithley 2600B TSP + 707B matrix, hil/PROTOCOL.md).

A 2 x 2 tile wired rows -> pins 1:01-1:02, columns -> 1:03-1:04; matrix row A = drive SMU (smua), B = sense
SMU (smub), C = ground; unselected lines grounded (half-select) unless a test says otherwise.
"""
from __future__ import annotations

import numpy as np
import pytest

from crossbar_ctl.config import config_from_dict
from crossbar_ctl.errors import (BackendError, ConfigError, InstrumentError, InstrumentTimeoutError, LimitError,
                                 ProtocolError)
from crossbar_instruments.smu_matrix import SmuMatrixBackend
from crossbar_instruments.testing import ScriptedTransport, expected_rig_protocol

RIG = {
    "backend": {"kind": "smu-matrix", "address": "TCPIP::smu::5025::SOCKET"},
    "array": {"tiles": 1, "rows": 2, "cols": 2},
    "device": {"preset": "ideal", "width_ref_s": 1e-4},
    "pulse": {"width_s": 1e-4},
    "read": {"v_read_V": 0.2},
    "limits": {"compliance_current_A": 1e-5},
    "smu_matrix": {"matrix_address": "TCPIP::mx::5025::SOCKET", "row_pins": [["1:01-1:02"]],
                   "col_pins": [["1:03-1:04"]]},
}
OK = b"0.00000e+00\n"
SMU_OPEN = [
    (b"*IDN?\n", b"Keithley Instruments Inc., Model 2602B, 4406555, 3.3.5\n"),
    (b"reset() errorqueue.clear() smua.source.func = smua.OUTPUT_DCVOLTS smua.source.autorangev = smua.AUTORANGE_OFF "
     b"smua.source.rangev = 3 "
     b"smua.measure.autorangei = smua.AUTORANGE_ON smua.measure.nplc = 1 smua.source.levelv = 0 "
     b"smua.source.limiti = 1e-05 smub.source.func = smub.OUTPUT_DCVOLTS smub.source.autorangev = "
     b"smub.AUTORANGE_OFF smub.source.rangev = 3 smub.measure.autorangei = smub.AUTORANGE_ON smub.measure.nplc = 1 smub.source.levelv = 0 "
     b"smub.source.limiti = 1e-05 print(errorqueue.count)\n", OK),
    # pulse trains: timer 1 (started by the arm event) starts each pulse, timer 2 (started by the source action's
    # completion) ends it
    (b"smua.trigger.measure.action = smua.DISABLE smua.trigger.source.action = smua.ENABLE "
     b"smua.trigger.source.stimulus = trigger.timer[1].EVENT_ID "
     b"smua.trigger.endpulse.action = smua.SOURCE_IDLE smua.trigger.endpulse.stimulus = trigger.timer[2].EVENT_ID "
     b"trigger.timer[1].passthrough = false trigger.timer[1].stimulus = smua.trigger.ARMED_EVENT_ID "
     b"trigger.timer[2].count = 1 trigger.timer[2].passthrough = false "
     b"trigger.timer[2].stimulus = smua.trigger.SOURCE_COMPLETE_EVENT_ID smua.trigger.arm.count = 1 "
     b"print(errorqueue.count)\n", OK),
]
MATRIX_OPEN = [
    (b"*IDN?\n", b"Keithley Instruments Inc., Model 707B, 1234567, 1.4.1\n"),
    (b"reset() errorqueue.clear() channel.connectrule = channel.BREAK_BEFORE_MAKE print(errorqueue.count)\n", OK),
]
OUTPUTS_ON = (b"smua.source.levelv = 0 smua.source.limiti = 1e-05 smua.source.output = smua.OUTPUT_ON "
              b"smub.source.levelv = 0 smub.source.limiti = 1e-05 smub.source.output = smub.OUTPUT_ON "
              b"print(errorqueue.count)\n", OK)
SMU_SAFE = [(b"smua.source.levelv = 0 smua.source.output = smua.OUTPUT_OFF smub.source.levelv = 0 "
             b"smub.source.output = smub.OUTPUT_OFF print(errorqueue.count)\n", OK)]
MATRIX_SAFE = [(b'channel.open("allslots") print(errorqueue.count)\n', OK)]


def route(chans: str) -> tuple[bytes, bytes]:
    return (f'channel.exclusiveclose("{chans}") print(errorqueue.count)\n'.encode(), OK)


def read(v: str, reply: bytes) -> tuple[bytes, bytes]:
    return (f"smua.source.levelv = {v} xb_i = smub.measure.i() xb_k = smua.source.compliance or "
            f"smub.source.compliance smua.source.levelv = 0 print(xb_i, xb_k, errorqueue.count)\n".encode(), reply)


def ramp(*levels: str, ch: str = "smub") -> tuple[bytes, bytes]:
    """A ramped DC level change through ``levels`` (1 ms apart)."""
    body = " delay(0.001) ".join(f"{ch}.source.levelv = {v}" for v in levels)
    return (f"{body} print(errorqueue.count)\n".encode(), OK)


def sent(b, smu: list, mx: list) -> bool:
    """Every line of both scripts was written, in order, and nothing else."""
    return b.smu.t.written == [w for w, _ in smu] and b.matrix.t.written == [w for w, _ in mx]


def train(v: str, n: int, width: str = "0.0001", period: str = "0.0002") -> tuple[bytes, bytes]:
    """n pulses of v: one every ``period`` (timer 1, n events), each ``width`` long (timer 2)."""
    return (f"smua.trigger.source.linearv({v}, {v}, {n}) smua.trigger.source.limiti = 1e-05 "
            f"trigger.timer[1].delay = {period} trigger.timer[1].count = {n} trigger.timer[2].delay = {width} "
            f"smua.trigger.count = {n} smua.trigger.initiate() waitcomplete() print(errorqueue.count)\n".encode(), OK)


def cfg(**rig: object):
    data = {**RIG, "smu_matrix": {**RIG["smu_matrix"], **rig}}
    return config_from_dict(data)


def measured(i: bytes) -> bytes:
    """The read line's reply: sense current, not in compliance, no error."""
    return i + b"\tfalse\t0.00000e+00\n"


def test_opening_and_closing_send_exactly_the_setup_and_the_safe_state() -> None:
    with expected_rig_protocol(cfg(), SMU_OPEN + SMU_SAFE, MATRIX_OPEN + MATRIX_SAFE) as b:
        assert b.describe()["idn"].startswith("Keithley Instruments Inc., Model 2602B")
        assert b.capabilities.slow and not b.capabilities.native_vmm
        b.close()


def test_read_cell_routes_grounds_the_rest_and_returns_minus_the_sense_current() -> None:
    smu = SMU_OPEN + [OUTPUTS_ON, read("0.2", b"-1.23450e-09\tfalse\t0.00000e+00\n")] + SMU_SAFE
    mx = MATRIX_OPEN + [route("1A02,1B03,1C01,1C04")] + MATRIX_SAFE
    with expected_rig_protocol(cfg(), smu, mx) as b:
        assert b.read_cell(0, 1, 0) == pytest.approx(1.2345e-9, rel=1e-12)
        b.close()


def test_float_mode_leaves_unselected_lines_open_and_pulses_the_full_voltage() -> None:
    smu = SMU_OPEN + [OUTPUTS_ON, train("2", 3)] + SMU_SAFE
    mx = MATRIX_OPEN + [route("1A01,1B04")] + MATRIX_SAFE
    with expected_rig_protocol(cfg(unselected="float", ground_row=""), smu, mx) as b:
        b.pulse_cell(0, 0, 1, 2.0, 1e-4, 3)
        b.close()
        assert sent(b, smu, mx)


def test_half_select_pulse_ramps_the_column_to_minus_half_and_pulses_the_row_to_plus_half() -> None:
    ramp_down = ramp("-0.5", "-1")
    ramp_up = ramp("-0.5", "0")
    smu = SMU_OPEN + [OUTPUTS_ON, ramp_down, train("1", 4), ramp_up,
                      read("0.2", b"-2.00000e-09\tfalse\t0.00000e+00\n")] + SMU_SAFE
    mx = MATRIX_OPEN + [route("1A01,1B03,1C02,1C04")] + MATRIX_SAFE
    with expected_rig_protocol(cfg(), smu, mx) as b:
        b.pulse_cell(0, 0, 0, 2.0, 1e-4, 4)
        assert b.read_cell(0, 0, 0) == pytest.approx(2e-9)  # same cell: no re-routing, outputs stay on
        b.close()


def test_program_pulses_each_nonzero_device_in_row_major_order_with_its_polarity() -> None:
    smu = SMU_OPEN + [OUTPUTS_ON,
                      ramp("-0.5", "-1"),
                      train("1", 2),
                      ramp("-0.5", "0"),
                      ramp("0.5", "1"),
                      train("-1", 5),
                      ramp("0.5", "0"),
                      ] + SMU_SAFE
    mx = MATRIX_OPEN + [route("1A01,1B04,1C02,1C03"), route("1A02,1B03,1C01,1C04")] + MATRIX_SAFE
    with expected_rig_protocol(cfg(), smu, mx) as b:
        b.program(0, np.array([[0, 2], [-5, 0]], dtype=np.int32))
        b.close()
        assert sent(b, smu, mx)


def test_read_conductance_and_read_vmm_compose_device_reads() -> None:
    currents = [b"-2.00000e-09", b"-4.00000e-09", b"-6.00000e-09", b"-8.00000e-09"]
    routes = ["1A01,1B03,1C02,1C04", "1A01,1B04,1C02,1C03", "1A02,1B03,1C01,1C04", "1A02,1B04,1C01,1C03"]
    smu = SMU_OPEN + [OUTPUTS_ON] + [read("0.2", i + b"\tfalse\t0.00000e+00\n") for i in currents * 2] + SMU_SAFE
    mx = MATRIX_OPEN + [route(r) for r in routes * 2] + MATRIX_SAFE
    with expected_rig_protocol(cfg(), smu, mx) as b:
        g = b.read_conductance(0)
        np.testing.assert_allclose(g, [[1e-8, 2e-8], [3e-8, 4e-8]], rtol=1e-12)
        i = b.read_vmm(0, np.array([0.1, -0.2]))
        np.testing.assert_allclose(i, np.array([0.1, -0.2]) @ g, rtol=1e-6)
        b.close()


def test_outer_pulse_nearest_mode_programs_the_rounded_coincidence_counts() -> None:
    # slots 4, p = (1, 0.5), q = (0.5, 0): counts round(4 * p_i q_j) = [[2, 0], [1, 0]], polarity +1
    smu = SMU_OPEN + [OUTPUTS_ON,
                      ramp("-0.5", "-1"),
                      train("1", 2),
                      ramp("-0.5", "0"),
                      ramp("-0.5", "-1"),
                      train("1", 1),
                      ramp("-0.5", "0"),
                      ] + SMU_SAFE
    mx = MATRIX_OPEN + [route("1A01,1B03,1C02,1C04"), route("1A02,1B03,1C01,1C04")] + MATRIX_SAFE
    with expected_rig_protocol(cfg(), smu, mx) as b:
        b.outer_pulse(0, np.array([1.0, 0.5]), np.array([0.5, 0.0]), 1, 4, mode="nearest")
        b.close()
        assert sent(b, smu, mx)


def test_limits_and_rig_bounds_are_refused_before_anything_is_sent() -> None:
    with expected_rig_protocol(cfg(), SMU_OPEN + SMU_SAFE, MATRIX_OPEN + MATRIX_SAFE) as b:
        with pytest.raises(LimitError, match="max_voltage_V"):
            b.pulse_cell(0, 0, 0, 3.5, 1e-4, 1)
        with pytest.raises(LimitError, match="min_pulse_width_s"):
            b.pulse_cell(0, 0, 0, 2.0, 1e-5, 1)
        with pytest.raises(LimitError, match="v_threshold_V"):  # V/2 = 1.4 V > the 1.2 V threshold
            b.pulse_cell(0, 0, 0, 2.8, 1e-4, 1)
        with pytest.raises(LimitError, match="max_pulses_per_device"):
            b.program(0, np.array([[1001, 0], [0, 0]], dtype=np.int32))
        with pytest.raises(LimitError, match="min_pulse_width_s"):
            b.outer_pulse(0, np.ones(2), np.ones(2), 1, 1, width_s=5e-5)
        assert b.seq == 0
        b.close()


def test_an_instrument_error_is_raised_with_its_code_and_the_rig_is_left_safe() -> None:
    smu = SMU_OPEN + [OUTPUTS_ON, (read("0.2", b"")[0], b"-1.00000e-09\tfalse\t2.00000e+00\n"),
                      (b"print(errorqueue.next())\n", b"-2.21000e+02\tSettings conflict\t2.00000e+00\t0.00000e+00\n"),
                      (b"print(errorqueue.next())\n", b"1.10200e+03\tParameter too big\t2.00000e+00\t0.00000e+00\n"),
                      ] + SMU_SAFE + SMU_SAFE
    mx = MATRIX_OPEN + [route("1A01,1B03,1C02,1C04")] + MATRIX_SAFE + MATRIX_SAFE
    with expected_rig_protocol(cfg(), smu, mx) as b:
        with pytest.raises(InstrumentError, match="Settings conflict.*also queued: 1102") as err:
            b.read_cell(0, 0, 0)
        assert err.value.code == -221
        b.close()


def test_a_read_in_compliance_is_an_error_not_a_number() -> None:
    smu = SMU_OPEN + [OUTPUTS_ON, read("0.2", b"-1.00000e-05\ttrue\t0.00000e+00\n")] + SMU_SAFE + SMU_SAFE
    mx = MATRIX_OPEN + [route("1A01,1B03,1C02,1C04")] + MATRIX_SAFE + MATRIX_SAFE
    with expected_rig_protocol(cfg(), smu, mx) as b:
        with pytest.raises(InstrumentError, match="compliance") as err:
            b.read_cell(0, 0, 0)
        assert err.value.code == 110
        b.close()


@pytest.mark.parametrize("reply", [b"-1.0e-9\tfalse\n", b"garbage\tfalse\t0\n", b"-1e-9\tmaybe\t0\n", b"-1e-9\tfalse\t0"])
def test_garbled_replies_raise_protocol_error_with_the_raw_bytes(reply: bytes) -> None:
    smu = SMU_OPEN + [OUTPUTS_ON, read("0.2", reply)] + SMU_SAFE + SMU_SAFE
    mx = MATRIX_OPEN + [route("1A01,1B03,1C02,1C04")] + MATRIX_SAFE + MATRIX_SAFE
    with expected_rig_protocol(cfg(), smu, mx) as b:
        with pytest.raises(ProtocolError) as err:
            b.read_cell(0, 0, 0)
        assert err.value.raw == reply
        b.close()


def test_a_line_that_fails_to_run_times_out_and_is_explained_from_the_error_queue() -> None:
    smu = SMU_OPEN + [(OUTPUTS_ON[0], InstrumentTimeoutError("no answer")),
                      (b"print(errorqueue.count)\n", b"1.00000e+00\n"),
                      (b"print(errorqueue.next())\n", b"-2.85000e+02\tTSP Syntax error at line 1\t2.00000e+00\t0.00000e+00\n"),
                      ] + SMU_SAFE + SMU_SAFE
    mx = MATRIX_OPEN + [route("1A01,1B03,1C02,1C04")] + MATRIX_SAFE + MATRIX_SAFE
    with expected_rig_protocol(cfg(), smu, mx) as b:
        with pytest.raises(InstrumentError, match="TSP Syntax error") as err:
            b.read_cell(0, 0, 0)
        assert isinstance(err.value.__cause__, InstrumentTimeoutError)
        b.close()


ACCEPTED = "2602B, 2604B, 2612B, 2614B, 2634B, 2636B, 2602A, 2612A, 2636A"


def refused(smu_script: list, mx_script: list) -> tuple[BackendError, ScriptedTransport, ScriptedTransport]:
    """Open the backend on the scripts expecting the identity check to refuse: (error, SMU link, matrix link);
    every scripted line was sent and both links are closed again."""
    smu, mx = ScriptedTransport(smu_script), ScriptedTransport(mx_script)
    with pytest.raises(BackendError) as err:
        SmuMatrixBackend(cfg(), smu_transport=lambda: smu, matrix_transport=lambda: mx)
    smu.check_done()
    mx.check_done()
    assert not smu.is_open and not mx.is_open
    return err.value, smu, mx


@pytest.mark.parametrize("idn", [b"ACME,PSU,1,1", b"Keithley Instruments Inc., Model 2601B, 1, 3.3.5",
                                 b"Keithley Instruments Inc., Model 2611B, 1, 3.3.5",
                                 b"Keithley Instruments Inc., Model 2635B, 1, 3.3.5",
                                 b"Keithley Instruments Inc., Model 2651A, 1, 1.0.0",
                                 b"Keithley Instruments Inc., Model 2657A, 1, 1.0.0"])
def test_an_smu_that_is_not_a_dual_channel_2600_is_refused_after_idn_alone(idn: bytes) -> None:
    """Single-channel 2601B/2611B/2635B have no smub and 2651A/2657A are other instruments: the rig always uses
    two channels (drive_smu != sense_smu), so they are refused; nothing but *IDN? is sent to either instrument
    (not even the safe state: the lines mean nothing certain to an instrument that is not the expected one)."""
    model = idn.split(b",")[1].strip().removeprefix(b"Model ").decode()
    err, smu, mx = refused([(b"*IDN?\n", idn + b"\n")], [])
    assert str(err).endswith(f"identifies as {idn.decode()!r} (model {model}); expected a Keithley {ACCEPTED}")
    assert smu.written == [b"*IDN?\n"] and mx.written == []


@pytest.mark.parametrize("model", ACCEPTED.split(", "))
def test_every_dual_channel_2600_model_is_accepted(model: str) -> None:
    smu = [(b"*IDN?\n", f"Keithley Instruments Inc., Model {model}, 4406555, 3.3.5\n".encode()), *SMU_OPEN[1:],
           *SMU_SAFE]
    with expected_rig_protocol(cfg(), smu, MATRIX_OPEN + MATRIX_SAFE) as b:
        assert f"Model {model}," in b.describe()["idn"]
        b.close()


def test_ramps_split_large_level_changes_into_steps_no_larger_than_the_configured_size() -> None:
    from crossbar_instruments.tsp import ramp_levels

    assert ramp_levels(0.0, -1.0, 0.5) == [-0.5, -1.0]
    assert ramp_levels(0.0, 0.2, 0.5) == [0.2]
    assert ramp_levels(-1.3, 0.0, 0.5) == pytest.approx([-1.3 + 1.3 / 3, -1.3 + 2.6 / 3, 0.0])
    assert ramp_levels(0.4, 0.4, 0.5) == []
    steps = np.diff([0.0, *ramp_levels(0.0, 2.9, 0.25)])
    assert np.all(np.abs(steps) <= 0.25 + 1e-12) and len(steps) == 12


@pytest.mark.parametrize("change, message", [
    ({"smu_matrix": {"row_pins": [["1:01-1:02"]], "col_pins": [["1:02-1:03"]]}}, "wired twice"),
    ({"smu_matrix": {"row_pins": [["1:01-1:03"]], "col_pins": [["1:04-1:05"]]}}, "3 rows x 2 columns"),
    ({"smu_matrix": {"row_pins": [["1:01", "9:02"]], "col_pins": [["1:03-1:04"]]}}, "not 'slot:column'"),
    ({"smu_matrix": {"row_pins": [["1:01-1:02"]], "col_pins": [["1:03-1:04"]], "ground_row": ""}}, "needs a ground_row"),
    ({"smu_matrix": {"row_pins": [["1:01-1:02"]], "col_pins": [["1:03-1:04"]], "sense_row": "A"}}, "must differ"),
    ({"smu_matrix": {"row_pins": [["1:01-1:02"]], "col_pins": [["1:03-1:04"]], "sense_smu": "smua"}}, "different SMU"),
    ({"smu_matrix": None}, r"needs an \[smu_matrix\] section"),
    ({"pulse": {"width_s": 1e-6}}, "shorter than the SMU's shortest pulse"),
])
def test_config_errors_name_what_is_wrong(change: dict, message: str) -> None:
    data = {**RIG, **change}
    if data["smu_matrix"] is None:
        del data["smu_matrix"]
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data)


@pytest.mark.parametrize("name", ["lab-smu-matrix.toml", "emulated-smu-matrix.toml"])
def test_the_shipped_rig_configs_are_valid_and_wire_every_line(name: str) -> None:
    from pathlib import Path

    from crossbar_ctl.config import load_config

    c = load_config(Path(__file__).resolve().parents[1] / "hil" / "configs" / name)
    rows, cols = c.smu_matrix.pins(0)
    assert (len(rows), len(cols)) == c.array.shapes()[0] and not set(rows) & set(cols)
    assert c.smu_matrix.op_time_s(c.array.shapes())["read_conductance"] == pytest.approx(64 * c.smu_matrix.cell_read_s)


def test_swapped_addresses_are_caught_by_the_identity_check() -> None:
    err, _, _ = refused([(b"*IDN?\n", b"Keithley Instruments Inc., Model 707B, 1234567, 1.4.1\n")], [])
    assert "identifies as 'Keithley Instruments Inc., Model 707B, 1234567, 1.4.1' (model 707B)" in str(err)
    # the SMU identifies; the matrix address answers as the SMU: refused, nothing but *IDN? sent to either
    err, smu, mx = refused([SMU_OPEN[0]], [(b"*IDN?\n", b"Keithley Instruments Inc., Model 2602B, 4406555, 3.3.5\n")])
    assert str(err).startswith("matrix at scripted identifies as")
    assert str(err).endswith("(model 2602B); expected a Keithley 707* or 708*")
    assert smu.written == [b"*IDN?\n"] and mx.written == [b"*IDN?\n"]


def test_after_a_ramp_fails_part_way_the_safe_state_asks_the_level_and_ramps_from_there() -> None:
    """The ramp to -1 V dies in the middle (its reply lost): the driver does not know where the level is, so it
    asks the SMU (-0.5 V) and ramps back from there instead of stepping to 0 V with the output-off line."""
    ramp_line = ramp("-0.5", "-1")[0]
    smu = SMU_OPEN + [OUTPUTS_ON, (ramp_line, InstrumentTimeoutError("no answer")),
                      (b"print(errorqueue.count)\n", OK),
                      (b"print(smub.source.levelv)\n", b"-5.00000e-01\n"),
                      (b"smub.source.levelv = 0 print(errorqueue.count)\n", OK)] + SMU_SAFE + SMU_SAFE
    mx = MATRIX_OPEN + [route("1A01,1B03,1C02,1C04")] + MATRIX_SAFE + MATRIX_SAFE
    with expected_rig_protocol(cfg(), smu, mx) as b:
        with pytest.raises(InstrumentTimeoutError):
            b.pulse_cell(0, 0, 0, 2.0, 1e-4, 1)
        b.close()


def test_dry_run_estimates_with_the_rigs_per_device_times_and_op_time_overrides_them() -> None:
    from crossbar_ctl.dryrun import dry_run

    data = {**RIG, "array": {"tiles": 2, "rows": [17, 9], "cols": [16, 20]},
            "training": {"pool_px": 7, "hidden": [8], "limit_train": 64, "limit_test": 10},
            "smu_matrix": {**RIG["smu_matrix"], "row_pins": [["1:01-1:12", "2:01-2:05"], ["5:01-5:09"]],
                           "col_pins": [["2:06-2:12", "3:01-3:09"], ["3:10-3:12", "4:01-4:12", "6:01-6:05"]],
                           "cell_read_s": 0.02}}
    cfg = config_from_dict(data)
    report = dry_run(cfg)
    assert report.ok, report.errors
    times = report.info["duration"]["op_time_s"]
    # a composed pulse operation: every device gets a train of up to outer_slots pulses, off times included
    train_s = cfg.training.outer_slots * (cfg.pulse.width_s + cfg.smu_matrix.pulse_off_s) + cfg.pulse.width_s
    assert times["read_vmm"] == pytest.approx(17 * 16 * 0.02)
    assert times["program"] == pytest.approx(17 * 16 * (0.05 + train_s))
    assert dry_run(config_from_dict(data), {"read_vmm": 1.0}).info["duration"]["op_time_s"]["read_vmm"] == 1.0


# ----------------------------------------------------------------------------- pulse trains and their timing
def test_the_off_time_between_pulses_is_the_period_timer_and_is_configurable() -> None:
    """pulse_off_s = 300 us: 3 pulses of 100 us, one every 400 us (timer 1 delay, 3 events), each 100 us long."""
    smu = SMU_OPEN + [OUTPUTS_ON, train("2", 3, width="0.0001", period="0.0004")] + SMU_SAFE
    mx = MATRIX_OPEN + [route("1A01,1B04")] + MATRIX_SAFE
    with expected_rig_protocol(cfg(unselected="float", ground_row="", pulse_off_s=3e-4), smu, mx) as b:
        b.pulse_cell(0, 0, 1, 2.0, 1e-4, 3)
        b.close()
        assert sent(b, smu, mx)


def test_the_estimates_include_the_off_time_of_the_pulse_trains() -> None:
    c = cfg(pulse_off_s=3e-4)
    assert c.smu_matrix.train_s(10, 1e-4) == pytest.approx(10 * 4e-4 + 1e-4)
    assert c.smu_matrix.train_s(0, 1e-4) == 0.0
    with expected_rig_protocol(c, SMU_OPEN + SMU_SAFE, MATRIX_OPEN + MATRIX_SAFE) as b:
        times = b.capabilities.op_time_s  # trains of outer_slots = 32 pulses of [pulse].width_s
        assert times["pulse_cell"] == pytest.approx(0.05 + 32 * 4e-4 + 1e-4)
        assert times["outer_pulse"] == pytest.approx(4 * (0.05 + 32 * 4e-4 + 1e-4))
        assert times["read_vmm"] == pytest.approx(4 * 0.05)
        b.close()


@pytest.mark.parametrize("backend, limits, rig, ok", [
    ({"timeout_s": 1.25}, {}, {}, True),  # 1000 x (1 ms + 100 us) + 1 ms = 1.101 s, + 0.1 s
    ({"timeout_s": 1.0}, {}, {}, False),
    ({"timeout_s": 1.25}, {}, {"pulse_off_s": 1e-3}, False),  # 2.001 s
    ({"timeout_s": 1.0}, {"max_pulses_per_device": 500}, {}, True),  # 0.551 s
    ({"timeout_s": 1.0}, {"max_pulse_width_s": 2e-3}, {}, False),
])
def test_a_timeout_shorter_than_the_longest_pulse_train_is_a_config_error(backend, limits, rig, ok) -> None:
    data = {**RIG, "backend": {**RIG["backend"], **backend}, "limits": {**RIG["limits"], **limits},
            "smu_matrix": {**RIG["smu_matrix"], **rig}}
    if ok:
        config_from_dict(data)
        return
    with pytest.raises(ConfigError, match=r"backend\.timeout_s = [\d.]+ s is shorter than the longest pulse train"
                                          r".*limits\.max_pulses_per_device = \d+ pulses of limits\.max_pulse_width_s"):
        config_from_dict(data)


def test_the_off_time_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="pulse_off_s"):
        cfg(pulse_off_s=0.0)


# ----------------------------------------------------------------------------- composed operations, routing
G_READS = [b"-2.00000e-09", b"-4.00000e-09", b"-6.00000e-09", b"-8.00000e-09"]  # G = [[1, 2], [3, 4]] x 1e-8 S
G_ROUTES = ["1A01,1B03,1C02,1C04", "1A01,1B04,1C02,1C03", "1A02,1B03,1C01,1C04", "1A02,1B04,1C01,1C03"]


def test_read_vmm_t_reads_every_device_and_returns_g_times_v() -> None:
    smu = SMU_OPEN + [OUTPUTS_ON] + [read("0.2", measured(i)) for i in G_READS] + SMU_SAFE
    mx = MATRIX_OPEN + [route(r) for r in G_ROUTES] + MATRIX_SAFE
    with expected_rig_protocol(cfg(), smu, mx) as b:
        i = b.read_vmm_t(0, np.array([0.1, -0.2]))  # one value per row: sum_j G_ij v_j
        np.testing.assert_allclose(i, [1e-9 - 4e-9, 3e-9 - 8e-9], rtol=1e-6)
        b.close()
        assert sent(b, smu, mx)


def test_a_read_above_one_ramp_step_ramps_the_row_up_measures_and_ramps_it_down() -> None:
    smu = SMU_OPEN + [OUTPUTS_ON, ramp("0.45", "0.9", ch="smua"),
                      (b"xb_i = smub.measure.i() xb_k = smua.source.compliance or smub.source.compliance "
                       b"print(xb_i, xb_k, errorqueue.count)\n", measured(b"-9.00000e-09")),
                      ramp("0.45", "0", ch="smua")] + SMU_SAFE
    mx = MATRIX_OPEN + [route("1A01,1B03,1C02,1C04")] + MATRIX_SAFE
    with expected_rig_protocol(cfg(), smu, mx) as b:
        assert b.read_cell(0, 0, 0, v_read_V=0.9) == pytest.approx(9e-9)
        b.close()
        assert sent(b, smu, mx)


def test_outer_pulse_expected_mode_rounds_each_mean_up_or_down_from_the_run_seed() -> None:
    """slots 4, p = (0.6, 0.5), q = (0.5, 0.7): means [[1.2, 1.68], [1, 1.4]]. The run seed's stream (seed 0,
    SeedSequence spawn key 7) draws u = [[0.305, 0.024], [0.618, 0.118]]: counts floor + (u < frac) =
    [[1, 2], [1, 2]] (neither the nearest [[1, 2], [1, 1]] nor the ceiling [[2, 2], [1, 2]])."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(0, spawn_key=(7,))))
    mean = 4 * np.outer([0.6, 0.5], [0.5, 0.7])
    assert (np.floor(mean) + (rng.random((2, 2)) < mean - np.floor(mean))).tolist() == [[1, 2], [1, 2]]
    smu = SMU_OPEN + [OUTPUTS_ON]
    for n in (1, 2, 1, 2):  # row-major: (0, 0), (0, 1), (1, 0), (1, 1)
        smu += [ramp("-0.5", "-1"), train("1", n), ramp("-0.5", "0")]
    smu += SMU_SAFE
    mx = MATRIX_OPEN + [route(r) for r in G_ROUTES] + MATRIX_SAFE
    with expected_rig_protocol(cfg(), smu, mx) as b:
        b.outer_pulse(0, np.array([0.6, 0.5]), np.array([0.5, 0.7]), 1, 4, mode="expected")
        b.close()
        assert sent(b, smu, mx)


def test_outer_pulse_stochastic_mode_draws_binomial_counts_from_the_run_seed_and_resets_with_polarity_minus() -> None:
    """Binomial(4, p q) from the run seed's stream: [[1, 0], [1, 0]] for these p, q; polarity -1 pulses each at
    [pulse].v_reset_V = -2 V: the column is ramped to +1 V and the row pulsed to -1 V."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(0, spawn_key=(7,))))
    assert rng.binomial(4, np.outer([0.6, 0.5], [0.5, 0.7])).tolist() == [[1, 0], [1, 0]]
    smu = SMU_OPEN + [OUTPUTS_ON,
                      ramp("0.5", "1"), train("-1", 1), ramp("0.5", "0"),
                      ramp("0.5", "1"), train("-1", 1), ramp("0.5", "0"),
                      ] + SMU_SAFE
    mx = MATRIX_OPEN + [route("1A01,1B03,1C02,1C04"), route("1A02,1B03,1C01,1C04")] + MATRIX_SAFE
    with expected_rig_protocol(cfg(), smu, mx) as b:
        b.outer_pulse(0, np.array([0.6, 0.5]), np.array([0.5, 0.7]), -1, 4, mode="stochastic")
        b.close()
        assert sent(b, smu, mx)


def test_two_tiles_are_routed_through_their_own_pins_and_only_their_own_lines_are_grounded() -> None:
    """Tile 0 on pins 1:01-1:04, tile 1 on 2:01-2:04: a cell of tile 1 closes slot 2 crosspoints only (tile 0's
    lines stay open); going back to tile 0 routes again."""
    data = {**RIG, "array": {"tiles": 2, "rows": 2, "cols": 2},
            "smu_matrix": {**RIG["smu_matrix"], "row_pins": [["1:01-1:02"], ["2:01-2:02"]],
                           "col_pins": [["1:03-1:04"], ["2:03-2:04"]]}}
    smu = SMU_OPEN + [OUTPUTS_ON, read("0.2", measured(b"-5.00000e-09")),
                      ramp("-0.5", "-1"), train("1", 2), ramp("-0.5", "0"),
                      read("0.2", measured(b"-7.00000e-09"))] + SMU_SAFE
    mx = MATRIX_OPEN + [route("2A01,2B04,2C02,2C03"), route("1A02,1B04,1C01,1C03"),
                        route("2A01,2B04,2C02,2C03")] + MATRIX_SAFE
    with expected_rig_protocol(config_from_dict(data), smu, mx) as b:
        assert b.tile_shapes == ((2, 2), (2, 2))
        assert b.read_cell(1, 0, 1) == pytest.approx(5e-9)
        b.pulse_cell(0, 1, 1, 2.0, 1e-4, 2)
        assert b.read_cell(1, 0, 1) == pytest.approx(7e-9)
        b.close()
        assert sent(b, smu, mx)
