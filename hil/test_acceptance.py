"""Acceptance of a rig (``pytest hil --rig CONFIG``): identity, geometry, limits, read / program / pulse round
trips, a potentiation train, a short training run with its op log, and the safe state at the end. Every test
runs on array testers (kinds visa, serial) and on cell-level rigs (kind smu-matrix, whose array-wide operations
are composed from device reads and pulses), except the training run, which needs an array that holds the
network.

Tolerances follow the rig's own config: ``[read].read_noise`` (relative) and ``adc_bits`` bound how far a
read may stray; ``[device].sigma_c2c`` how far one pulse may step backwards. Devices touched: tile 0, rows 0-3,
columns 0-7 (the training run uses tiles 0 and 1 as its config says).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from crossbar_ctl.backend import Backend
from crossbar_ctl.config import RunConfig
from crossbar_ctl.errors import LimitError
from crossbar_ctl.oplog_summary import summarize
from crossbar_ctl.training.trainer import Trainer


def read_tol(cfg: RunConfig, lines: int) -> tuple[float, float]:
    """(rtol, atol in A) for a current summed over ``lines`` devices."""
    rd = cfg.read
    rtol = 5 * rd.read_noise + 1e-5  # float32 currents; noise is per device, its sum averages out
    fs = rd.adc_full_scale_A or rd.v_read_V * cfg.device.g_max_S * lines
    atol = fs * 2.0 ** -rd.adc_bits if rd.adc_bits else 1e-18
    if rd.dac_bits:
        rtol += 2.0 ** -rd.dac_bits
    return rtol, atol


def g_tol(cfg: RunConfig) -> float:
    """How far one conductance read (or one nominal pulse) may stray from the truth (S)."""
    dev = cfg.device
    return 4 * cfg.read.read_noise * dev.g_max_S + 3 * dev.sigma_c2c * dev.g_range_S


def still(cfg: RunConfig, after: np.ndarray, before: np.ndarray) -> np.ndarray:
    """How far two reads of an untouched device may differ (S): the difference of two reads has standard
    deviation sqrt(2)·read_noise·G; 6 read_noise·G is 4.2 of those (a false alarm in ~1 of 40,000 devices)."""
    return 6 * cfg.read.read_noise * np.maximum(after, before)


def test_identity(backend: Backend) -> None:
    idn = backend.describe()["idn"].split(",")
    assert len(idn) == 4 and all(idn), idn


def test_geometry_matches_the_config(backend: Backend, rig) -> None:
    assert [tuple(s) for s in backend.tile_shapes] == [tuple(s) for s in rig.config.array.shapes()]
    assert "stochastic" in backend.capabilities.outer_modes


def test_limits_are_refused_before_anything_is_sent(backend: Backend, rig) -> None:
    lim = rig.config.limits
    rows, cols = backend.shape(0)
    with pytest.raises(LimitError, match="max_voltage_V"):
        backend.read_vmm(0, np.full(rows, 1.5 * lim.max_voltage_V))
    with pytest.raises(LimitError, match="max_pulses_per_device"):
        backend.pulse_cell(0, 0, 0, rig.config.pulse.v_set_V, rig.config.pulse.width_s,
                           lim.max_pulses_per_device + 1)
    assert backend.seq == 0 and not backend.outputs_on()  # nothing was sent, outputs never enabled


def test_reads_agree_with_each_other(backend: Backend, rig) -> None:
    cfg = rig.config
    rows, cols = backend.shape(0)
    g = backend.read_conductance(0)
    dev = cfg.device
    assert g.shape == (rows, cols) and g.dtype == np.float64
    assert np.all(g > 0.5 * dev.g_min_S) and np.all(g < 1.5 * dev.g_max_S)
    v = np.zeros(rows)
    k = min(16, rows)
    v[:k] = cfg.read.v_read_V * np.linspace(-1, 1, k)
    rtol, atol = read_tol(cfg, rows)
    slack = atol + rtol * float(np.max(np.abs(v) @ g))  # noise scales with the currents summed, not their net
    np.testing.assert_allclose(backend.read_vmm(0, v), v @ g, rtol=rtol, atol=slack)
    vc = np.zeros(cols)
    k = min(8, cols)
    vc[:k] = cfg.read.v_read_V * np.linspace(1, -1, k)
    rtol, atol = read_tol(cfg, cols)
    slack = atol + rtol * float(np.max(g @ np.abs(vc)))
    np.testing.assert_allclose(backend.read_vmm_t(0, vc), g @ vc, rtol=rtol, atol=slack)
    assert np.all(np.abs(backend.read_vmm(0, np.zeros((2, rows)))) <= atol)
    i = backend.read_cell(0, 1, 2)
    assert i == pytest.approx(g[1, 2] * cfg.read.v_read_V, rel=5 * cfg.read.read_noise + 1e-6)
    assert backend.seq == 5


def test_program_round_trip(backend: Backend, rig) -> None:
    """+n on rows 0-1, −n on rows 2-3 of columns 0-3 (after lifting them off the window's floor): the first
    rise, the second fall, every other device stays where it was."""
    rows, cols = backend.shape(0)
    lift = np.zeros((rows, cols), dtype=np.int32)
    lift[:4, :4] = 20
    backend.program(0, lift)
    before = backend.read_conductance(0)
    counts = np.zeros((rows, cols), dtype=np.int32)
    counts[0:2, 0:4] = 5
    counts[2:4, 0:4] = -5
    backend.program(0, counts)
    after = backend.read_conductance(0)
    tol = g_tol(rig.config)
    assert np.all(after[0:2, 0:4] > before[0:2, 0:4] + tol), after[0:2, 0:4] - before[0:2, 0:4]
    assert np.all(after[2:4, 0:4] < before[2:4, 0:4] - tol), after[2:4, 0:4] - before[2:4, 0:4]
    rest = np.ones((rows, cols), dtype=bool)
    rest[:4, :4] = False
    assert np.all(np.abs(after - before)[rest] <= still(rig.config, after, before)[rest])


def test_outer_pulse_round_trip(backend: Backend, rig) -> None:
    """A rank-1 phase with one row and one column driven moves exactly the device where they cross."""
    rows, cols = backend.shape(0)
    r, c = 1, 5
    before = backend.read_conductance(0)
    p, q = np.zeros(rows), np.zeros(cols)
    p[r] = q[c] = 1.0
    backend.outer_pulse(0, p, q, 1, 4, mode="expected")
    after = backend.read_conductance(0)
    tol = g_tol(rig.config)
    assert after[r, c] > before[r, c] + tol
    others = np.ones((rows, cols), dtype=bool)
    others[r, c] = False
    noise = still(rig.config, after, before)
    if rig.config.device.half_select_disturb == 0:
        assert np.all(np.abs(after - before)[others] <= noise[others])


def test_potentiation_train_is_monotone(backend: Backend, rig) -> None:
    """Depress one device towards the bottom of its window, then 10 single potentiating pulses, read back after
    each: every step up (within the rig's noise), and clearly up overall."""
    cfg = rig.config
    r, c = 3, 7
    v_read = cfg.read.v_read_V
    backend.pulse_cell(0, r, c, cfg.pulse.v_reset_V, cfg.pulse.width_s, min(60, cfg.limits.max_pulses_per_device))
    g = [backend.read_cell(0, r, c) / v_read]
    for _ in range(10):
        backend.pulse_cell(0, r, c, cfg.pulse.v_set_V, cfg.pulse.width_s, 1)
        g.append(backend.read_cell(0, r, c) / v_read)
    steps = np.diff(g)
    tol = g_tol(cfg)
    assert np.all(steps > -tol), steps
    assert g[-1] - g[0] > max(10 * tol, 0.0), g
    if tol == 0:
        assert np.all(steps > 0), steps  # noise-free: strictly monotone
    assert backend.seq == 1 + 1 + 20


@pytest.mark.holds_network
def test_short_training_run(rig, tmp_path: Path) -> None:
    """The rig's [training] run: completes, learns above chance, and its op log is whole. Runs on the rigs whose
    array holds the [training] network (conftest: a cell-level rig such as the emulated 8 x 8 smu-matrix one is
    not given this test)."""
    res = Trainer(rig.config, tmp_path, progress=False).run()
    assert res["complete"] and res["backend"]["kind"] == rig.config.backend.kind
    assert all(math.isfinite(e["train_loss"]) for e in res["epochs"])
    assert res["final_test_accuracy"] > 0.2, res["epochs"]  # chance is 0.1
    s = summarize(tmp_path / "oplog.h5")
    assert s["sequence"]["ok"] and s["sequence"]["first"] == 1, s["sequence"]
    assert s["per_kind"]["read_vmm"] > 0 and s["per_status"] == {"ok": s["operations"]}


def test_safe_state_at_the_end(rig) -> None:
    """Outputs on, then the backend's safe state: the tester reports it, in session and on a fresh link after
    the session closed."""
    b = rig.connect()
    try:
        b.read_vmm(0, np.zeros(b.shape(0)[0]))
        assert b.outputs_on()
        b.safe_state()
        assert b.is_safe() and not b.outputs_on()
        b.read_cell(0, 0, 0)
        assert b.outputs_on()
    finally:
        b.close()
    assert rig.fresh_is_safe()
