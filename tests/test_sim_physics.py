"""Device physics of the simulator against the equations of crossbar_ctl.devices (curves, noise, spread, faults)."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from crossbar_ctl.config import config_from_dict
from crossbar_sim.backend import SimBackend

G_MIN, G_MAX = 3.0769e-9, 38.462e-9
R = G_MAX - G_MIN


def approx(expected: float, rel: float = 1e-6) -> object:
    """pytest.approx without its 1e-12 absolute floor, which would swallow quantities in siemens and amperes."""
    return pytest.approx(expected, rel=rel, abs=0)


def make(device: dict[str, Any], rows: int = 1, cols: int = 1, seed: int = 0, **sections: Any) -> SimBackend:
    cfg = {"seed": seed, "array": {"tiles": 1, "rows": rows, "cols": cols}, "device": device, **sections}
    return SimBackend(config_from_dict(cfg))


def g00(b: SimBackend) -> float:
    return float(b.true_conductance(0)[0, 0])


# ------------------------------------------------------------------------------------------- curves
def test_agsi_potentiation_follows_ltp_curve_point_by_point() -> None:
    b = make({"preset": "agsi", "sigma_c2c": 0.0})
    d = b.device
    B = R / (1 - math.exp(-d.pmax_ltp / d.a_ltp))
    assert g00(b) == G_MIN
    for P in range(1, 98):
        b.pulse_cell(0, 0, 0, 2.0, 1e-6)
        expected = B * (1 - math.exp(-P / d.a_ltp)) + G_MIN
        assert g00(b) == approx(expected, rel=1e-9), P
    assert g00(b) == approx(G_MAX, rel=1e-9)  # Pmax_p pulses land on Gmax
    b.pulse_cell(0, 0, 0, 2.0, 1e-6, count=5)
    assert g00(b) == G_MAX  # clipped, never above


def test_agsi_depression_follows_ltd_curve_from_gmax() -> None:
    b = make({"preset": "agsi", "sigma_c2c": 0.0})
    d = b.device
    b.pulse_cell(0, 0, 0, 2.0, 1e-6, count=200)
    assert g00(b) == G_MAX
    B = R / (1 - math.exp(-d.pmax_ltd / d.a_ltd))
    for k in range(1, 101):
        b.pulse_cell(0, 0, 0, -2.0, 1e-6)
        P = d.pmax_ltd - k  # position on the LTD curve
        expected = -B * (1 - math.exp((P - d.pmax_ltd) / d.a_ltd)) + G_MAX
        assert g00(b) == approx(expected, rel=1e-9), k
    assert g00(b) == approx(G_MIN, rel=1e-9)


def test_one_write_of_n_pulses_equals_n_single_pulses() -> None:
    a = make({"preset": "agsi", "sigma_c2c": 0.0})
    b = make({"preset": "agsi", "sigma_c2c": 0.0})
    a.pulse_cell(0, 0, 0, 2.0, 1e-6, count=37)
    for _ in range(37):
        b.pulse_cell(0, 0, 0, 2.0, 1e-6)
    assert g00(a) == approx(g00(b), rel=1e-12)


def test_soft_bounds_against_recurrence() -> None:
    dev = {"model": "soft-bounds", "levels": 50, "up_down": 0.2}
    b = make(dev)
    dg = R / 50
    g = G_MIN
    for n in range(1, 120):
        b.pulse_cell(0, 0, 0, 2.0, 1e-6)
        g += dg * 1.2 * (G_MAX - g) / R
        assert g00(b) == approx(g, rel=1e-9), n
    for n in range(1, 120):
        b.pulse_cell(0, 0, 0, -2.0, 1e-6)
        g -= dg * 0.8 * (g - G_MIN) / R
        assert g00(b) == approx(g, rel=1e-9), n


@pytest.mark.parametrize("gamma_up,gamma_down", [(0.0, 0.0), (0.5, 0.3), (0.0, 0.6)])
def test_linear_step_against_recurrence(gamma_up: float, gamma_down: float) -> None:
    dev = {"model": "linear-step", "levels": 40, "up_down": -0.1, "gamma_up": gamma_up, "gamma_down": gamma_down}
    b = make(dev)
    dg = R / 40
    g = G_MIN
    for n in range(1, 60):
        b.pulse_cell(0, 0, 0, 2.0, 1e-6)
        x = (g - G_MIN) / R
        g = min(g + dg * 0.9 * (1 - gamma_up * x), G_MAX)
        assert g00(b) == approx(g, rel=1e-9), n
    for n in range(1, 60):
        b.pulse_cell(0, 0, 0, -2.0, 1e-6)
        x = (g - G_MIN) / R
        g = max(g - dg * 1.1 * (1 - gamma_down * (1 - x)), G_MIN)
        assert g00(b) == pytest.approx(g, rel=1e-9, abs=1e-24), n


def test_ideal_is_linear_and_symmetric() -> None:
    b = make({"preset": "ideal"}, rows=2, cols=3)
    step = R / 1000
    counts = np.array([[0, 1, 7], [250, 999, 1000]], dtype=np.int32)
    b.program(0, counts)
    np.testing.assert_allclose(b.true_conductance(0), G_MIN + counts * step, rtol=1e-12)
    down = counts // 2
    b.program(0, -down)
    np.testing.assert_allclose(b.true_conductance(0), G_MIN + (counts - down) * step, rtol=1e-12)


# ------------------------------------------------------------------------------------------- pulse rule
def test_effective_pulse_rule_amplitude_and_width() -> None:
    dev = {"model": "linear-step", "levels": 1000}
    step = R / 1000
    b = make(dev)
    b.pulse_cell(0, 0, 0, 1.6, 1e-6)  # (1.6 − 1.2)/(2 − 1.2) = 0.5 nominal pulses
    assert g00(b) - G_MIN == approx(0.5 * step, rel=1e-9)
    b = make(dev)
    b.pulse_cell(0, 0, 0, 2.0, 3e-6)  # three times the reference width
    assert g00(b) - G_MIN == approx(3 * step, rel=1e-9)
    b = make(dev)
    b.pulse_cell(0, 0, 0, 2.4, 0.5e-6, count=4)  # 1.5 · 0.5 · 4 = 3
    assert g00(b) - G_MIN == approx(3 * step, rel=1e-9)
    b = make(dev)
    b.program(0, np.array([[2]], dtype=np.int32), v_set_V=2.8, width_s=1e-6)  # 2 · 2 = 4
    assert g00(b) - G_MIN == approx(4 * step, rel=1e-9)


@pytest.mark.parametrize("v", [1.2, 1.0, 0.3, -1.2, 0.0])
def test_subthreshold_pulses_change_nothing_not_even_noise(v: float) -> None:
    b = make({"preset": "agsi", "sigma_c2c": 0.2}, rows=3, cols=3)
    b.program(0, np.full((3, 3), 30, dtype=np.int32))
    before = b.true_conductance(0)
    b.pulse_cell(0, 1, 1, v, 1e-6, count=50)
    b.read_cell(0, 2, 2, v)  # a read at or below threshold is harmless too
    if v > 0:
        b.program(0, np.full((3, 3), 10, dtype=np.int32), v_set_V=v)
        b.outer_pulse(0, np.ones(3), np.ones(3), 1, 20, v_pulse_V=v)
    assert np.array_equal(b.true_conductance(0), before)


# ------------------------------------------------------------------------------------------- c2c noise
@pytest.mark.parametrize("n", [4, 30])
def test_c2c_noise_mean_and_variance(n: int) -> None:
    sigma = 0.01
    rows, cols = 150, 100
    b = make({"preset": "agsi", "sigma_c2c": sigma}, rows=rows, cols=cols, seed=3)
    d = b.device
    B = R / (1 - math.exp(-d.pmax_ltp / d.a_ltp))
    b.program(0, np.full((rows, cols), n, dtype=np.int32))
    dev_noise = b.true_conductance(0) - (B * (1 - math.exp(-n / d.a_ltp)) + G_MIN)
    N = rows * cols
    std = sigma * R * math.sqrt(n)
    assert abs(dev_noise.mean()) < 4 * std / math.sqrt(N)
    assert dev_noise.var() == approx(std**2, rel=5 * math.sqrt(2 / N))


def test_c2c_noise_of_a_linear_device_scales_with_effective_pulses() -> None:
    sigma, rows, cols = 0.002, 120, 100
    dev = {"model": "linear-step", "levels": 1000, "sigma_c2c": sigma}
    b = make(dev, rows=rows, cols=cols, seed=5)
    b.program(0, np.full((rows, cols), 100, dtype=np.int32), width_s=2e-6)  # n_eff = 200
    delta = b.true_conductance(0) - G_MIN
    N = rows * cols
    assert delta.mean() == approx(200 * R / 1000, rel=4 * sigma * math.sqrt(200) * 1000 / 200 / math.sqrt(N))
    assert delta.var() == approx(sigma**2 * R**2 * 200, rel=5 * math.sqrt(2 / N))


def test_bounds_are_never_crossed_under_hammering() -> None:
    rows, cols = 40, 30
    dev = {"preset": "agsi", "sigma_c2c": 0.5, "sigma_d2d_g_min": 0.2, "sigma_d2d_g_max": 0.2,
           "sigma_d2d_shape": 0.2}
    b = make(dev, rows=rows, cols=cols, seed=11)
    d = b.device_arrays(0)
    rng = np.random.default_rng(0)
    for _ in range(30):
        b.program(0, rng.integers(-300, 301, (rows, cols)).astype(np.int32))
        b.outer_pulse(0, rng.random(rows), rng.random(cols), int(rng.choice([-1, 1])), 50)
        g = b.true_conductance(0)
        assert np.all(g >= d.g_min) and np.all(g <= d.g_max)
        assert np.any(g == d.g_min) and np.any(g == d.g_max)


# ------------------------------------------------------------------------------------------- faults, spread
def test_stuck_devices_never_move_and_have_the_configured_fractions() -> None:
    rows, cols = 60, 50
    dev = {"preset": "agsi", "sigma_c2c": 0.1, "stuck_at_min_fraction": 0.1, "stuck_at_max_fraction": 0.15}
    b = make(dev, rows=rows, cols=cols, seed=2)
    stuck = b.device_arrays(0).stuck
    lo, hi = stuck == 1, stuck == 2
    N = rows * cols
    assert lo.mean() == pytest.approx(0.1, abs=4 * math.sqrt(0.1 * 0.9 / N))
    assert hi.mean() == pytest.approx(0.15, abs=4 * math.sqrt(0.15 * 0.85 / N))
    g0 = b.true_conductance(0)
    assert np.all(g0[lo] == G_MIN) and np.all(g0[hi] == G_MAX)
    rng = np.random.default_rng(1)
    for _ in range(10):
        b.program(0, rng.integers(-50, 51, (rows, cols)).astype(np.int32))
        b.outer_pulse(0, rng.random(rows), rng.random(cols), 1, 30)
        b.outer_pulse(0, rng.random(rows), rng.random(cols), -1, 30, mode="expected")
    g = b.true_conductance(0)
    assert np.array_equal(g[lo | hi], g0[lo | hi])
    assert np.mean(g[~(lo | hi)] != g0[~(lo | hi)]) > 0.5  # the free ones did move


def test_d2d_spread_has_the_configured_relative_std() -> None:
    rows, cols = 100, 100
    dev = {"preset": "agsi", "sigma_c2c": 0.0, "sigma_d2d_g_min": 0.1, "sigma_d2d_g_max": 0.05,
           "sigma_d2d_shape": 0.08}
    b = make(dev, rows=rows, cols=cols, seed=4)
    d = b.device_arrays(0)
    N = rows * cols
    tol = 5 / math.sqrt(2 * N)  # relative standard error of a standard deviation, ×5
    gmin = d.g_min / G_MIN
    gmax = d.g_max / G_MAX
    shape = 1.0 / (d.b_up * b.device.a_ltp)  # ρ↑ = 1/(f·A_p)
    for x, s in ((gmin, 0.1), (gmax, 0.05), (shape, 0.08)):
        assert x.mean() == pytest.approx(1.0, abs=5 * s / math.sqrt(N))
        assert x.std() == approx(s, rel=tol)
    np.testing.assert_allclose(1.0 / (d.b_down * b.device.a_ltd), shape, rtol=1e-12)  # one factor per device
    assert np.corrcoef(gmin.ravel(), gmax.ravel())[0, 1] == pytest.approx(0.0, abs=0.05)
    # every device still spans its own window in exactly Pmax_p pulses
    b.program(0, np.full((rows, cols), 96, dtype=np.int32))
    assert np.all(b.true_conductance(0) < d.g_max)
    b2 = make(dev, rows=rows, cols=cols, seed=4)
    b2.program(0, np.full((rows, cols), 97, dtype=np.int32))
    np.testing.assert_allclose(b2.true_conductance(0), d.g_max, rtol=1e-9)


def test_d2d_keeps_every_window_open() -> None:
    dev = {"preset": "agsi", "g_min_S": 1e-8, "g_max_S": 1.1e-8, "sigma_d2d_g_min": 0.5, "sigma_d2d_g_max": 0.5,
           "sigma_d2d_shape": 0.5}
    b = make(dev, rows=80, cols=80, seed=9)
    d = b.device_arrays(0)
    assert np.all(d.g_min > 0)
    assert np.all(d.g_max - d.g_min >= 0.01 * 0.1e-8 * (1 - 1e-12))
    assert np.all(np.isfinite(d.par))
    b.program(0, np.full((80, 80), 40, dtype=np.int32))
    g = b.true_conductance(0)
    assert np.all((g >= d.g_min) & (g <= d.g_max))
