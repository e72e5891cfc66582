"""The emulated smu-matrix rig: its TSP interpreter, its electrical model (reads and pulses against the simulator's
formulas), its hazard records, and the driver leaving it safe on every exit path."""
from __future__ import annotations

import re

import numpy as np
import pytest

from crossbar_ctl.config import config_from_dict
from crossbar_ctl.errors import InstrumentError
from crossbar_instruments.smu_rig import Rig
from crossbar_instruments.tsp_instruments import EmulatedMatrix, EmulatedSmu
from crossbar_instruments.testing import loopback_rig
from crossbar_instruments.tsp_interp import TspError, run_line, tokenize
from crossbar_sim.backend import SimBackend

BASE = {
    "seed": 5,
    "backend": {"kind": "smu-matrix", "address": "TCPIP::smu::5025::SOCKET"},
    "array": {"tiles": 1, "rows": 3, "cols": 4},
    "device": {"preset": "agsi", "sigma_c2c": 0.0, "width_ref_s": 1e-4},
    "pulse": {"width_s": 1e-4},
    "read": {"v_read_V": 0.2},
    "limits": {"compliance_current_A": 1e-5},
    "smu_matrix": {"matrix_address": "TCPIP::mx::5025::SOCKET", "row_pins": [["1:01-1:03"]],
                   "col_pins": [["2:01-2:04"]]},
}


def cfg(**change: object):
    data = {**BASE, **change}
    return config_from_dict(data)


def sim_twin(config) -> SimBackend:
    data = config.model_dump(mode="json", exclude_none=True)
    data["backend"] = {"kind": "sim"}
    return SimBackend(config_from_dict(data))


# ----------------------------------------------------------------------------- interpreter
def test_a_syntax_error_runs_nothing_and_queues_an_error() -> None:
    smu = EmulatedSmu(Rig(cfg()))
    assert smu.handle(b"smua.source.levelv = 1 smua.source.output = = 1 print(1)\n") is None
    assert smu.rig.smu["smua"]["levelv"] == 0.0  # parsed whole before anything ran
    assert smu.errors[0][0] == -285
    assert smu.handle(b"print(errorqueue.count)\n") == b"1.00000e+00\n"
    assert smu.handle(b"print(errorqueue.next())\n").startswith(b"-2.85000e+02\tTSP Syntax error")


def test_a_runtime_error_stops_the_line_after_the_statements_before_it() -> None:
    smu = EmulatedSmu(Rig(cfg()))
    assert smu.handle(b"smua.source.levelv = 0.1 smua.bogus = 2 smua.source.levelv = 0.3 print(1)\n") is None
    assert smu.rig.smu["smua"]["levelv"] == 0.1
    assert smu.errors == [(-286, "TSP Runtime error at line 1: cannot set 'smua.bogus'")]


def test_print_formats_like_the_instrument() -> None:
    smu = EmulatedSmu(Rig(cfg()))
    assert smu.handle(b"x = 1.5 print(x, true, nil, \"txt\", smua.OUTPUT_ON)\n") == b"1.50000e+00\ttrue\tnil\ttxt\t1.00000e+00\n"
    assert [k for k, _ in tokenize('trigger.timer[1].delay = -1e-06 f({1, 2})')] == \
        ["name", "punct", "num", "name", "punct", "punct", "num", "punct", "num", "punct", "punct"]
    with pytest.raises(TspError):
        run_line(smu, "print(", {}, [])


# ----------------------------------------------------------------------------- physics
def test_read_cell_is_the_device_current_and_read_conductance_matches_the_simulator() -> None:
    config = cfg()
    b, rig = loopback_rig(config)
    with b:
        g_true = rig.dut.read_conductance(0)  # read_noise 0: the truth
        assert b.read_cell(0, 2, 1) == pytest.approx(g_true[2, 1] * 0.2, rel=1e-5)  # 6 printed digits
        assert b.read_cell(0, 2, 1, v_read_V=-0.3) == pytest.approx(-g_true[2, 1] * 0.3, rel=1e-5)
        np.testing.assert_allclose(b.read_conductance(0), g_true, rtol=1e-5)
        v = np.array([0.1, -0.2, 0.05])
        np.testing.assert_allclose(b.read_vmm(0, v), v @ g_true, rtol=1e-4)
        np.testing.assert_allclose(b.read_vmm_t(0, np.ones(4) * 0.1), g_true @ (np.ones(4) * 0.1), rtol=1e-4)
    assert rig.hazards == [] and rig.is_safe


@pytest.mark.parametrize("unselected", ["half-select", "float"])
def test_pulses_through_the_rig_equal_the_same_pulses_on_the_simulator(unselected: str) -> None:
    """The selected device sees the full pulse (+V/2 on the row, -V/2 on the column in half-select); its
    neighbours see at most V/2, below threshold: the array ends bit-identical to the simulator given the same
    device-level operations."""
    rig_cfg = {**BASE["smu_matrix"], "unselected": unselected}
    config = cfg(smu_matrix=rig_cfg)
    twin = sim_twin(config)
    b, rig = loopback_rig(config)
    ops = [(0, 1, 2.0, 5), (2, 3, 2.0, 12), (0, 1, -2.0, 2), (1, 0, 2.3, 3)]  # 2.3 V: V/2 = 1.15 V, just below the 1.2 V threshold
    counts = np.zeros((3, 4), dtype=np.int32)
    counts[1, 2], counts[2, 0] = 7, -1
    with b:
        for r, c, v, n in ops:
            b.pulse_cell(0, r, c, v, 1e-4, n)
            twin.pulse_cell(0, r, c, v, 1e-4, n)
        b.program(0, counts)
        for i, j in zip(*np.nonzero(counts)):  # the rig programs device by device, row-major
            twin.pulse_cell(0, int(i), int(j), 2.0 if counts[i, j] > 0 else -2.0, 1e-4, abs(int(counts[i, j])))
    np.testing.assert_array_equal(rig.dut.read_conductance(0), twin.read_conductance(0))
    assert rig.pulses_applied == 5 + 12 + 2 + 3 + 7 + 1
    assert rig.hazards == [] and rig.is_safe


def test_outer_pulse_counts_follow_the_coincidence_statistics() -> None:
    """Binomial(slots, p q) per device, drawn on the host: the mean over many phases matches slots·p·q."""
    config = cfg(device={"preset": "ideal", "levels": 100000, "width_ref_s": 1e-4})
    b, rig = loopback_rig(config)
    p, q = np.array([1.0, 0.5, 0.0]), np.array([0.25, 1.0, 0.5, 0.0])
    with b:
        g0 = rig.dut.read_conductance(0)
        for _ in range(40):
            b.outer_pulse(0, p, q, 1, 8)
        g1 = rig.dut.read_conductance(0)
    step = (config.device.g_max_S - config.device.g_min_S) / 100000
    mean_pulses = (g1 - g0) / step / 40
    expected = 8 * np.outer(p, q)
    sd = np.sqrt(8 * np.outer(p, q) * (1 - np.outer(p, q)) / 40)
    assert np.all(np.abs(mean_pulses - expected) <= 4 * sd + 1e-6), mean_pulses
    assert np.all(mean_pulses[:, 3] == 0) and np.all(mean_pulses[2] == 0)


# ----------------------------------------------------------------------------- hazards and safety
def test_the_rig_records_shorts_hot_switching_and_dc_over_threshold() -> None:
    rig = Rig(cfg())
    smu, mx = EmulatedSmu(rig), EmulatedMatrix(rig)
    mx.handle(b'channel.exclusiveclose("1A01,1C01") print(errorqueue.count)\n')
    assert rig.hazards == ["matrix rows AC shorted together on pin 101"]
    mx.handle(b'channel.exclusiveclose("1A01,2B01") print(errorqueue.count)\n')
    smu.handle(b"smua.source.limiti = 1e-5 smua.source.output = 1 smub.source.output = 1 smua.source.levelv = 1.5 "
               b"print(errorqueue.count)\n")
    assert "DC 1.5 V across tile 0 device (0, 0) exceeds the threshold" in rig.hazards[-1]
    mx.handle(b'channel.open("allslots") print(errorqueue.count)\n')
    assert rig.hazards[-1] == "relays switched while smua drives 1.5 V"


def test_the_driver_never_creates_a_hazard_and_uses_only_what_the_rig_understands() -> None:
    b, rig = loopback_rig(cfg())
    with b:
        b.program(0, np.array([[3, 0, -2, 0], [0, 1, 0, 0], [0, 0, 0, 4]], dtype=np.int32))
        b.read_conductance(0)
        b.pulse_cell(0, 2, 2, -2.0, 2e-4, 2)
        b.read_cell(0, 0, 0, v_read_V=0.9)  # above one ramp step: ramped up and down
    assert rig.hazards == [] and rig.is_safe
    smu_errors = b.smu.t.instrument.errors
    assert smu_errors == [] and b.matrix.t.instrument.errors == []


def test_an_error_in_the_middle_of_an_operation_leaves_the_rig_safe() -> None:
    b, rig = loopback_rig(cfg())
    b.pulse_cell(0, 0, 0, 2.0, 1e-4, 1)
    assert not rig.is_safe  # outputs stay on between operations

    def broken(*_: object) -> float:
        raise RuntimeError("the DUT exploded")

    rig.current_out = broken  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="exploded"):
        b.read_cell(0, 1, 1)
    assert rig.is_safe and rig.smu["smub"]["levelv"] == 0.0
    b.close()


def test_an_instrument_error_mid_pulse_leaves_the_rig_safe_and_names_the_error() -> None:
    b, rig = loopback_rig(cfg())
    rig.smu["smua"]["trigger"]["endpulse.action"] = 1.0  # someone changed the trigger model behind our back
    with pytest.raises(InstrumentError, match="not set up for timed pulses"):
        b.pulse_cell(0, 0, 0, 2.0, 1e-4, 1)
    assert rig.is_safe and rig.smu["smub"]["levelv"] == 0.0 and rig.pulses_applied == 0
    b.close()


def test_a_dropped_client_leaves_the_instruments_as_they_were_and_the_next_session_resets_them() -> None:
    config = cfg()
    b, rig = loopback_rig(config)
    b.pulse_cell(0, 0, 0, 2.0, 1e-4, 1)
    smu = b.smu.t.instrument
    smu.disconnected("dropped")
    assert not rig.is_safe  # a real SMU keeps its outputs on: the driver's close() is what makes it safe
    b.close()
    assert rig.is_safe


# ----------------------------------------------------------------------------- protocols and training on the rig
def test_ltp_ltd_runs_on_the_rig_and_measures_what_the_simulator_measures() -> None:
    """The protocol uses only device-level operations; on the emulated rig its table equals the same protocol on
    the simulator (read_noise 0) within the 6 digits the SMU prints."""
    from crossbar_protocols import make_protocol, run_protocol

    config = cfg()
    proto = make_protocol("ltp-ltd", {"cycles": 2, "pulses_ltp": 15, "pulses_ltd": 15, "width_s": 1e-4})
    b, rig = loopback_rig(config)
    with b:
        res = run_protocol(proto, config, "0:1:2,0:2:0", backend=b, plots=False)
    twin = sim_twin(config)
    ref = run_protocol(proto, config, "0:1:2,0:2:0", backend=twin, plots=False)
    np.testing.assert_allclose(res.table["G_S"], ref.table["G_S"], rtol=1e-5)
    from crossbar_protocols.fit import _traces

    g, pol = _traces(res)  # (cell, cycle, step): a read before the train, then 15 up and 15 down
    assert g.shape == (2, 2, 31) and list(pol[1:]) == [1] * 15 + [-1] * 15
    assert np.all(g[:, :, 15] > g[:, :, 0] + 5e-9) and np.all(g[:, :, 30] < g[:, :, 15] - 5e-9)
    assert rig.hazards == [] and rig.is_safe


def test_training_on_a_slow_backend_warns_with_the_estimated_time(caplog: pytest.LogCaptureFixture,
                                                                   tmp_path) -> None:
    from crossbar_ctl.backend import Capabilities
    from crossbar_ctl.training.trainer import Trainer

    config = config_from_dict({"array": {"tiles": 2, "rows": [785, 9], "cols": [16, 20]},
                               "training": {"limit_train": 64, "limit_test": 32, "hidden": [8], "epochs": 2,
                                            "batch_size": 32}, "logging": {"progress": False}})

    class Slow(SimBackend):
        def _capabilities(self) -> Capabilities:
            return Capabilities(tile_shapes=tuple(config.array.shapes()), native_vmm=False, slow=True,
                                op_time_s={"read_vmm": 2.0, "read_vmm_t": 2.0, "outer_pulse": 3.0, "program": 5.0,
                                           "read_conductance": 1.0})

    with caplog.at_level("WARNING"):
        tr = Trainer(config, tmp_path, backend=Slow(config), progress=False)
    msg = [r.getMessage() for r in caplog.records if "is slow" in r.getMessage()]
    assert len(msg) == 1 and "composes read_vmm from device operations" in msg[0]
    from crossbar_ctl.dryrun import count_ops, estimate_duration

    est = estimate_duration(config, count_ops(config, tr.sizes, 64, 32), tr.backend.capabilities.op_time_s)
    assert tr.estimated_s == pytest.approx(est["run_s"]) and est["run_s"] > 2 * est["epoch_s"] > 0
    assert f"{est['run_s']:.3g} s for the run (2 epochs)" in msg[0]


def test_a_link_lost_in_the_middle_of_a_pulse_is_reopened_to_ramp_down_and_switch_off() -> None:
    """The SMU link drops right after the sense channel was ramped to -V/2: the pulse fails with the lost
    connection, and the driver reopens the link, ramps the level down (not a step), switches off, opens relays."""
    from crossbar_ctl.errors import ConnectionLostError

    b, rig = loopback_rig(cfg())
    t = b.smu.t
    sent: list[bytes] = []
    state = {"dropped": False, "dead": False}
    real_write, real_open = type(t).write, type(t).open

    def flaky(data: bytes) -> None:  # the link dies at the pulse line and stays dead until reopened
        sent.append(bytes(data))
        if state["dead"] or (b"trigger.initiate" in data and not state["dropped"]):
            state["dropped"] = state["dead"] = True
            raise ConnectionLostError("peer reset")
        real_write(t, data)

    def reopen() -> None:
        state["dead"] = False
        real_open(t)

    t.write, t.open = flaky, reopen  # type: ignore[method-assign]
    with pytest.raises(ConnectionLostError):
        b.pulse_cell(0, 1, 1, 2.0, 1e-4, 3)
    assert rig.smu["smub"]["levelv"] == 0.0 and rig.is_safe and rig.pulses_applied == 0 and t.opens == 2
    after = [s for s in sent if s.startswith(b"smub.source.levelv = -0.5 delay(0.001) smub.source.levelv = 0 ")]
    assert len(after) == 2  # refused by the dead link, then sent again on the reopened one: ramped through -0.5 V
    assert rig.hazards == []
    b.close()


def rig_with(config, idn: str):
    """An smu-matrix backend on the emulated rig whose SMU identifies as ``idn``: (backend, rig, SMU)."""
    from crossbar_instruments.smu_matrix import SmuMatrixBackend
    from crossbar_instruments.testing import LoopbackTransport

    rig = Rig(config)
    smu, mx = EmulatedSmu(rig, idn=idn), EmulatedMatrix(rig)
    b = SmuMatrixBackend(config, smu_transport=lambda: LoopbackTransport(smu),
                         matrix_transport=lambda: LoopbackTransport(mx))
    return b, rig, smu


@pytest.mark.parametrize("model, range_V", [("2602B", 6.0), ("2604B", 6.0), ("2612B", 20.0), ("2636B", 20.0)])
def test_the_fixed_source_range_is_the_next_range_up_and_not_a_voltage_limit(model: str, range_V: float) -> None:
    """``rangev = 3`` (max_voltage_V) selects the lowest range covering 3 V: 6 V on a 2602B/2604B (100 mV, 1 V, 6 V,
    40 V), 20 V on a 2612B/2636B (200 mV, 2 V, 20 V, 200 V). The SMU then sources 5 V if told to (up to 101 % of
    the range): the guard is the driver's own limit check, which refuses 5 V before sending anything."""
    from crossbar_ctl.errors import LimitError

    b, rig, smu = rig_with(cfg(), f"Keithley Instruments Inc., Model {model}, EMULATED, 3.3.5")
    assert rig.smu["smua"]["rangev"] == rig.smu["smub"]["rangev"] == range_V
    sent = len(b.smu.t.log)
    with pytest.raises(LimitError, match="max_voltage_V"):
        b.pulse_cell(0, 0, 0, 5.0, 1e-4, 1)
    assert len(b.smu.t.log) == sent and len(b.matrix.t.log) == 2  # *IDN?, reset: nothing sent for the pulse
    assert smu.handle(b"smua.source.levelv = 5 print(errorqueue.count)\n") == b"0.00000e+00\n"
    assert rig.smu["smua"]["levelv"] == 5.0  # accepted: what a real SMU does with the range the driver set
    over = 1.01 * range_V * 1.001
    assert smu.handle(f"smua.source.levelv = {over:.6g} print(errorqueue.count)\n".encode()) is None
    assert rig.smu["smua"]["levelv"] == 5.0 and smu.errors.pop()[0] == 1102
    assert smu.handle(b"smua.source.rangev = 250 print(errorqueue.count)\n") is None  # beyond the top range
    assert rig.smu["smua"]["rangev"] == range_V and smu.errors.pop()[0] == 1102
    assert smu.handle(b"smua.source.levelv = 0 print(errorqueue.count)\n") == b"0.00000e+00\n"
    b.close()
    assert rig.hazards == [] and rig.is_safe and smu.errors == []


def test_the_emulated_smu_knows_only_the_2600_models_it_has_ranges_for() -> None:
    with pytest.raises(ValueError, match="no emulated 2600 SMU model '2651A'"):
        EmulatedSmu(Rig(cfg()), idn="Keithley Instruments Inc., Model 2651A, 1, 1.0.0")


def test_a_pulse_train_runs_one_pulse_per_period_timer_event_with_the_configured_off_time() -> None:
    """The emulator reads the train from the trigger model: level, width (timer 2), period (timer 1) and count."""
    b, rig = loopback_rig(cfg(smu_matrix={**BASE["smu_matrix"], "pulse_off_s": 3e-4}))
    with b:
        b.pulse_cell(0, 1, 2, 2.0, 2e-4, 5)
        b.pulse_cell(0, 0, 0, -2.0, 1e-4, 1)
    smu = b.smu.t.instrument
    assert smu.trains == [("smua", 1.0, 2e-4, 5e-4, 5), ("smua", -1.0, 1e-4, 4e-4, 1)]
    assert rig.pulses_applied == 6 and rig.hazards == [] and rig.is_safe and smu.errors == []


@pytest.mark.parametrize("change, message", [
    # the pre-audit train: no source stimulus, the pulses run back to back (one long pulse on a real SMU)
    ("smua.trigger.source.stimulus = 0", "source.stimulus is not a timer: the pulses would run back to back"),
    ("trigger.timer[1].delay = 0.0001", r"period 0.0001 s \(timer 1\) is not longer than the width 0.0001 s"),
    ("trigger.timer[1].delay = 5e-05", r"period 5e-05 s \(timer 1\) is not longer than the width"),
    ("trigger.timer[1].count = 2", "timer 1 gives 2 source event.s. for smua.trigger.count = 3 pulses"),
    ("trigger.timer[1].stimulus = smua.trigger.SOURCE_COMPLETE_EVENT_ID", "not set up for timed pulses"),
    ("smua.trigger.endpulse.stimulus = trigger.timer[1].EVENT_ID", "not set up for timed pulses"),
    ("trigger.timer[2].count = 3", "not set up for timed pulses"),
])
def test_the_emulated_smu_refuses_a_pulse_train_a_real_one_would_run_wrongly(change: str, message: str) -> None:
    """Each change of the driver's train (3 pulses of 100 us every 200 us) is refused like a failing TSP line
    (nothing printed, -221 queued) and applies no pulse."""
    from crossbar_instruments import tsp

    b, rig = loopback_rig(cfg())
    b.pulse_cell(0, 0, 0, 2.0, 1e-4, 1)  # routed, outputs on, column back at 0 V
    smu = b.smu.t.instrument
    applied = rig.pulses_applied
    line = tsp.pulse_train("smua", 1.0, 1e-4, 1e-4, 3, 1e-5)
    line = line.replace("waitcomplete()", "").replace("smua.trigger.initiate()", f"{change} smua.trigger.initiate()")
    assert smu.handle(line.encode() + b"\n") is None
    code, text = smu.errors.pop()
    assert code == -221 and re.search(message, text), text
    assert rig.pulses_applied == applied and smu.errors == []
    b.close()
    assert rig.is_safe and rig.hazards == []


def test_a_small_training_run_on_the_rig_learns_and_leaves_it_safe(caplog: pytest.LogCaptureFixture) -> None:
    """784 inputs do not fit a switch matrix; pooled 7x7 (4x4 = 16 inputs), a 16-8-10 MLP needs 17x16 and 9x20
    devices: 62 matrix pins. Every read is composed device by device; the run learns above chance (10 %) and the
    trainer warns with the rig's estimated duration."""
    from crossbar_ctl.training.trainer import Trainer

    config = config_from_dict({
        "seed": 1,
        "backend": {"kind": "smu-matrix", "address": "TCPIP::smu::5025::SOCKET"},
        "array": {"tiles": 2, "rows": [17, 9], "cols": [16, 20]},
        "device": {"preset": "ideal", "width_ref_s": 1e-4},
        "pulse": {"width_s": 1e-4},
        "limits": {"compliance_current_A": 1e-5},
        "training": {"pool_px": 7, "hidden": [8], "limit_train": 300, "limit_test": 200, "epochs": 2,
                     "batch_size": 30, "learning_rate": 0.1},
        "logging": {"progress": False, "op_log": False},
        "smu_matrix": {"matrix_address": "TCPIP::mx::5025::SOCKET",
                       "row_pins": [["1:01-1:12", "2:01-2:05"], ["5:01-5:09"]],
                       "col_pins": [["2:06-2:12", "3:01-3:09"], ["3:10-3:12", "4:01-4:12", "6:01-6:05"]]},
    })
    b, rig = loopback_rig(config)
    with caplog.at_level("WARNING"), b:
        res = Trainer(config, None, backend=b, progress=False).run()
    assert res["complete"] and res["final_test_accuracy"] >= 0.2, res["epochs"]
    assert any("'smu-matrix' is slow; it composes read_vmm and outer_pulse" in r.getMessage() for r in caplog.records)
    assert rig.hazards == [] and rig.is_safe and rig.pulses_applied > 0


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_in_the_middle_of_a_protocol_leaves_the_rig_ramped_down_off_and_open(sig: str, tmp_path) -> None:
    """``crossbar-ctl protocol run ltp-ltd`` against the emulated rig over TCP (pyvisa-py), signalled while it
    pulses: the operation in flight completes, the column level is ramped back, both outputs go off and every
    relay opens before the process exits; the instruments themselves never make anything safe."""
    import signal
    import subprocess
    import sys
    import time

    from crossbar_ctl.config import dump_toml
    from crossbar_instruments.launch import child_env, with_address
    from crossbar_instruments.smu_rig import EmulatedRig

    config = cfg(backend={**BASE["backend"], "timeout_s": 10.0})
    with EmulatedRig(config).start() as emu:
        run_cfg = tmp_path / "rig.toml"
        run_cfg.write_text(dump_toml(with_address(config, "smu-matrix", emu.address)))
        proc = subprocess.Popen([sys.executable, "-m", "crossbar_ctl.cli", "protocol", "run", "ltp-ltd", "--config",
                                 str(run_cfg), "--set", "width_s=1e-4", "--set", "cycles=50", "--cells", "0:*:*",
                                 "--out", str(tmp_path / "out")],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
        try:
            deadline = time.monotonic() + 60
            while emu.rig.pulses_applied < 50 and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            assert proc.poll() is None, proc.communicate()
            proc.send_signal(getattr(signal, sig))
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == (130 if sig == "SIGINT" else 128 + signal.SIGTERM), err
        assert f"{sig}: stopping" in err
        rig = emu.rig
        assert rig.is_safe and rig.hazards == [] and all(s["levelv"] == 0.0 for s in rig.smu.values())
        assert emu.smu.safe_events == [] and emu.matrix.safe_events == []  # the client did it, not a shutdown
