"""Every protocol on the simulator, asserting the device physics it measures."""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from crossbar_ctl.config import config_from_dict
from crossbar_protocols import make_protocol
from crossbar_sim.backend import SimBackend

G_MIN, G_MAX = 3.0769e-9, 38.462e-9
V_TH = 1.2


def sim(rows: int = 2, cols: int = 4, seed: int = 5, **device: Any) -> SimBackend:
    dev = {"preset": "agsi", **device}
    return SimBackend(config_from_dict({"seed": seed, "array": {"tiles": 1, "rows": rows, "cols": cols},
                                        "device": dev}))


def pulses_sent(ops: list[Any]) -> np.ndarray:
    """Pulses per device of tile 0 (2 x 4) counted from the operations themselves."""
    n = np.zeros((2, 4), dtype=np.int64)
    for rec in ops:
        if rec.kind == "pulse_cell":
            n[rec.params["row"], rec.params["col"]] += rec.params["count"]
        elif rec.kind == "program":
            n += np.abs(rec.params["pulses"])
    return n


# ------------------------------------------------------------------------------------------------ ltp-ltd
@pytest.mark.parametrize("v", [1.0, V_TH])
def test_ltp_ltd_sub_threshold_pulses_leave_g_unchanged(v: float) -> None:
    b = sim()
    res = make_protocol("ltp-ltd", {"v_set_V": v, "v_reset_V": -v, "pulses_ltp": 10, "pulses_ltd": 10,
                                    "cycles": 2}).run(b, [(0, 0, 0), (0, 1, 3)])
    assert np.all(res.table["G_S"] == G_MIN)
    assert np.all(b.true_conductance(0) == G_MIN)
    assert res.summary["max_abs_change_S"] == 0.0


def test_ltp_ltd_above_threshold_potentiates_then_depresses_along_the_curve() -> None:
    b = sim(sigma_c2c=0.0)
    res = make_protocol("ltp-ltd", {"pulses_ltp": 100, "pulses_ltd": 100, "cycles": 2}).run(b, [(0, 0, 0)])
    g = res.arrays["G_S"][:, :, 0]
    up, down = g[:, :101], g[:, 100:]
    assert np.all(np.diff(up, axis=1) >= 0) and np.all(np.diff(down, axis=1) <= 0)
    assert g[0, 0] == G_MIN and up[0, 97] == pytest.approx(G_MAX, rel=1e-9)  # Pmax_p = 97 pulses to Gmax
    assert down[0, -1] == pytest.approx(G_MIN, rel=1e-9)
    # the first potentiating step: A_p = 48.42 pulses, B_p = (Gmax − Gmin)/(1 − e^(−97/A_p))
    a_p = 0.499181 * 97
    b_p = (G_MAX - G_MIN) / (1 - np.exp(-97 / a_p))
    assert up[0, 1] - G_MIN == pytest.approx(b_p * (1 - np.exp(-1 / a_p)), rel=1e-9)
    np.testing.assert_allclose(g[0], g[1], rtol=1e-9, atol=0)  # noise-free: cycles repeat


def test_ltp_ltd_cell_and_parallel_modes_measure_the_same_device() -> None:
    params = {"pulses_ltp": 12, "pulses_ltd": 12, "pulses_per_step": 3, "cycles": 2}
    cells = [(0, 0, 1), (0, 1, 2), (0, 1, 3)]
    a = make_protocol("ltp-ltd", params).run(sim(sigma_c2c=0.0), cells)
    b = make_protocol("ltp-ltd", {**params, "mode": "parallel"}).run(sim(sigma_c2c=0.0), cells)
    np.testing.assert_allclose(a.table["G_S"], b.table["G_S"], rtol=1e-12, atol=0)
    assert a.table["pulse"].max() == 24


# ------------------------------------------------------------------------------------------------ iv-sweep
def test_iv_loop_switches_at_the_threshold_and_only_above_it() -> None:
    b = sim(sigma_c2c=0.0)
    res = make_protocol("iv-sweep", {"v_max_V": 2.0, "v_min_V": -2.0, "step_V": 0.05}).run(b, [(0, 0, 0)])
    v, i = res.arrays["v_V"], res.arrays["i_A"][0, 0]
    g = np.where(v != 0, i / np.where(v != 0, v, 1), np.nan)
    # carry G over the 0 V points, then find where it changed
    filled = g.copy()
    for k in range(1, len(filled)):
        if np.isnan(filled[k]):
            filled[k] = filled[k - 1]
    changed = np.abs(np.diff(filled)) > 1e-6 * G_MIN
    moved_at = v[1:][changed]
    assert moved_at.size > 10
    assert np.all(np.abs(moved_at) > V_TH)  # never at or below threshold
    assert moved_at[0] == pytest.approx(1.25)  # the first staircase step above 1.2 V
    assert res.summary["v_set_detected_V"] == [pytest.approx(1.25)]
    assert res.summary["v_reset_detected_V"][0] < -V_TH
    br = res.table["branch"][: len(v)]
    # the loop is open: at +0.5 V the return branch (after the set) carries more current than the way up, and at
    # −0.5 V the way back (after the reset) carries less than the way down
    up = i[(br == 0) & np.isclose(v, 0.5)][0]
    back = i[(br == 1) & np.isclose(v, 0.5)][0]
    down = i[(br == 2) & np.isclose(v, -0.5)][0]
    ret = i[(br == 3) & np.isclose(v, -0.5)][0]
    assert back > 2 * up and abs(ret) < 0.8 * abs(down)
    assert up == pytest.approx(G_MIN * 0.5, rel=1e-9)  # Ohmic before any switching


def test_iv_sweep_to_the_threshold_is_a_closed_ohmic_line() -> None:
    b = sim(sigma_c2c=0.0)
    res = make_protocol("iv-sweep", {"v_max_V": V_TH, "v_min_V": -V_TH, "step_V": 0.1}).run(b, [(0, 0, 0)])
    g = res.table["G_S"][np.isfinite(res.table["G_S"])]
    assert np.allclose(g, G_MIN, rtol=1e-12, atol=0)
    assert res.summary["v_set_detected_V"] == [None] and res.summary["v_reset_detected_V"] == [None]


def test_iv_sweep_flags_compliance_without_clamping() -> None:
    b = sim(sigma_c2c=0.0)
    comp = 2e-8
    res = make_protocol("iv-sweep", {"compliance_A": comp}).run(b, [(0, 0, 0)])
    i, flag = res.table["i_A"], res.table["compliance"]
    assert res.summary["compliance_hits"] == int(flag.sum()) > 0
    np.testing.assert_array_equal(flag == 1, np.abs(i) >= comp)  # exactly the points at or above compliance
    assert np.abs(i).max() > 1.5 * comp  # the measured current is reported as measured, not clamped
    v = res.table["v_V"]
    np.testing.assert_allclose(i[v != 0], res.table["G_S"][v != 0] * v[v != 0], rtol=1e-12)  # I = G·V


@pytest.mark.parametrize("width_s", [1e-6, 2e-6])
def test_iv_pulsed_reads_the_remanent_state_after_each_pulse(width_s: float) -> None:
    b = sim(sigma_c2c=0.0)
    ops: list[Any] = []
    b.add_listener(ops.append)
    res = make_protocol("iv-sweep", {"step_V": 0.05, "mode": "pulsed", "width_s": width_s}).run(b, [(0, 0, 0)])
    v, g = res.arrays["v_V"], res.arrays["G_S"][0, 0]
    # every step: one pulse at the step voltage (none at 0 V), then a read at [read].v_read_V = 0.2 V
    pulses = [r for r in ops if r.kind == "pulse_cell"]
    reads = [r for r in ops if r.kind == "read_cell"]
    assert [r.params["v_pulse_V"] for r in pulses] == pytest.approx(v[v != 0].tolist())
    assert all(r.params["width_s"] == width_s and r.params["count"] == 1 for r in pulses)
    assert len(reads) == len(v) and all(r.params["v_read_V"] == 0.2 for r in reads)
    assert res.summary["pulse_cell_pulses"] == len(pulses) == len(v) - 2
    np.testing.assert_allclose(res.table["i_A"], res.table["G_S"] * 0.2, rtol=1e-12)
    assert np.all(res.table["v_read_V"] == 0.2)
    # G stays at Gmin through the pulses at or below 1.2 V; the first above (1.25 V) counts as
    # s = (1.25 − 1.2)/(2.0 − 1.2) · width_s/1 µs pulses: ΔG = B_p(1 − e^(−s/A_p))
    first = int(np.argmax(v > V_TH))
    assert v[first] == pytest.approx(1.25) and np.all(g[:first] == G_MIN)
    a_p = 0.499181 * 97
    b_p = (G_MAX - G_MIN) / (1 - np.exp(-97 / a_p))
    s = 0.05 / 0.8 * width_s / 1e-6
    assert g[first] - G_MIN == pytest.approx(b_p * (1 - np.exp(-s / a_p)), rel=1e-9)
    assert res.summary["v_set_detected_V"] == [pytest.approx(1.25)]
    assert res.summary["v_reset_detected_V"][0] < -V_TH


def test_iv_pulsed_and_staircase_see_the_same_device_at_the_reference_width() -> None:
    """A staircase read above threshold is a pulse of width_ref_s (1 µs) at that voltage: pulsed mode with
    width_s = 1 µs drives the device through the same states, read at 0.2 V instead of at the step voltage."""
    params = {"step_V": 0.1, "cycles": 2}
    st = make_protocol("iv-sweep", params).run(sim(sigma_c2c=0.0), [(0, 0, 0)])
    pu = make_protocol("iv-sweep", {**params, "mode": "pulsed", "width_s": 1e-6}).run(sim(sigma_c2c=0.0),
                                                                                       [(0, 0, 0)])
    v = st.table["v_V"]
    np.testing.assert_allclose(pu.table["G_S"][v != 0], st.table["G_S"][v != 0], rtol=1e-12)
    assert pu.table["G_S"].max() > 3 * G_MIN  # the loop opened


# ------------------------------------------------------------------------------------------------ retention
def test_retention_has_no_drift_on_the_simulator_and_does_not_wait() -> None:
    b = sim()
    t0 = time.monotonic()
    res = make_protocol("retention", {"duration_s": 1e5, "interval_s": 1e3, "program_pulses": 40}).run(
        b, [(0, 0, 0), (0, 1, 2)])
    assert time.monotonic() - t0 < 2.0
    np.testing.assert_array_equal(res.arrays["t_s"], np.arange(101) * 1e3)
    g = res.arrays["G_S"]
    assert g[0, 0] > 3 * G_MIN  # programmed up first
    assert np.all(g == g[0]) and res.summary["relative_drift_max_abs"] == 0.0
    assert res.summary["clock"] == "SimulatedClock"


def test_retention_with_real_time_waits() -> None:
    t0 = time.monotonic()
    res = make_protocol("retention", {"duration_s": 0.06, "interval_s": 0.02, "simulated_time": False,
                                      "program_pulses": 0}).run(sim(), [(0, 0, 0)])
    assert time.monotonic() - t0 >= 0.06
    assert res.summary["clock"] == "WallClock" and len(res.arrays["t_s"]) == 4


# ------------------------------------------------------------------------------------------------ endurance
def test_endurance_counts_cycles_and_stuck_devices_fail_at_once() -> None:
    b = sim(seed=2, stuck_at_min_fraction=0.25, stuck_at_max_fraction=0.15)
    stuck = b.device_arrays(0).stuck
    assert 0 < np.count_nonzero(stuck) < 8
    cells = [(0, r, c) for r in range(2) for c in range(4)]
    ops: list[Any] = []
    b.add_listener(ops.append)
    res = make_protocol("endurance", {"cycles": 12}).run(b, cells)
    ctf = res.summary["cycles_to_failure"]
    for k, (_, r, c) in enumerate(cells):
        n_rows = int(np.sum(res.table["cell"] == k))
        if stuck[r, c]:
            assert ctf[k] == 1 and n_rows == 3  # closed window from the first cycle, 3 cycles to confirm it
        else:
            assert ctf[k] is None and n_rows == 12
    assert res.summary["cycles_run"] == 12
    sent = pulses_sent(ops)
    assert res.summary["pulses_sent"] == sent.sum()
    assert np.all(sent[stuck > 0] == 3 * 200) and np.all(sent[stuck == 0] == 12 * 200)


# ------------------------------------------------------------------------------------------------ read-disturb
@pytest.mark.parametrize("v_read", [0.2, -0.2, V_TH])
def test_read_disturb_no_drift_at_or_below_threshold(v_read: float) -> None:
    res = make_protocol("read-disturb", {"v_read_V": v_read, "reads": 200}).run(sim(), [(0, 0, 0), (0, 1, 1)])
    g = res.arrays["G_S"]
    assert np.all(g == g[:, :1]) and g[0, 0] > G_MIN
    assert res.summary["relative_drift_per_read_max_abs"] == 0.0


@pytest.mark.parametrize("v_read,sign", [(1.5, 1), (-1.5, -1)])
def test_read_disturb_above_threshold_drifts_with_the_read_polarity(v_read: float, sign: int) -> None:
    res = make_protocol("read-disturb", {"v_read_V": v_read, "reads": 100}).run(sim(sigma_c2c=0.0), [(0, 0, 0)])
    g = res.arrays["G_S"][0]
    assert np.all(sign * np.diff(g) > 0)
    assert sign * res.summary["drift_per_read_S"][0] > 0


# ------------------------------------------------------------------------------------------------ array-map
def test_array_map_flags_exactly_the_stuck_devices() -> None:
    b = sim(rows=8, cols=8, seed=11, stuck_at_min_fraction=0.1, stuck_at_max_fraction=0.08)
    truth = b.device_arrays(0).stuck
    assert np.count_nonzero(truth == 1) > 0 and np.count_nonzero(truth == 2) > 0
    res = make_protocol("array-map").run(b, [(0, r, c) for r in range(8) for c in range(8)])
    np.testing.assert_array_equal(res.arrays["t0_stuck"], truth)
    assert res.summary["stuck_low"] == np.count_nonzero(truth == 1)
    assert res.summary["stuck_high"] == np.count_nonzero(truth == 2)
    ok = truth == 0
    assert np.all(res.arrays["t0_Gmax_S"][ok] > 25e-9) and np.all(res.arrays["t0_Gmin_S"][ok] < 8e-9)


def test_array_map_read_only_sends_no_pulses_and_maps_g() -> None:
    b = sim(rows=3, cols=4, seed=1, sigma_d2d_g_min=0.2)
    ops: list[Any] = []
    b.add_listener(ops.append)
    res = make_protocol("array-map", {"pulse_response": False}).run(b, [(0, 1, c) for c in range(4)])
    assert [r.kind for r in ops] == ["read_conductance"]
    expect = np.full((3, 4), np.nan)
    expect[1] = b.true_conductance(0)[1]
    np.testing.assert_array_equal(res.arrays["t0_G0_S"], expect)
    assert np.all(res.arrays["t0_stuck"][[0, 2]] == -1)  # not mapped


# ------------------------------------------------------------------------------------------------ write-verify
@pytest.mark.parametrize("mode", ["cell", "parallel"])
def test_write_verify_on_an_ideal_device_succeeds_and_reports_the_pulses_sent(mode: str) -> None:
    b = SimBackend(config_from_dict({"seed": 4, "array": {"tiles": 1, "rows": 2, "cols": 4},
                                     "device": {"preset": "ideal"}}))
    ops: list[Any] = []
    b.add_listener(ops.append)
    cells = [(0, r, c) for r in range(2) for c in range(4)]
    res = make_protocol("write-verify", {"tolerance_S": 0.2e-9, "mode": mode}).run(b, cells,
                                                                                   np.random.default_rng(1))
    assert res.summary["success_rate"] >= 0.95
    sent = pulses_sent(ops)
    np.testing.assert_array_equal(res.table["pulses"], [sent[r, c] for _, r, c in cells])
    assert res.summary["pulses_total"] == sent.sum()
    g = b.true_conductance(0)
    ok = res.table["success"] == 1
    err = np.array([g[r, c] for _, r, c in cells]) - res.table["target_S"]
    assert np.all(np.abs(err[ok]) <= 0.2e-9)


def test_write_verify_respects_the_pulse_budget() -> None:
    b = sim(sigma_c2c=0.0)
    res = make_protocol("write-verify", {"targets_S": [30e-9], "max_pulses": 5}).run(b, [(0, 0, 0), (0, 0, 1)])
    assert res.summary["success_rate"] == 0.0
    assert np.all(res.table["pulses"] == 5)
