"""Device-model configs: nominal pulse maps, step sizes, symmetry point and pulse planning against formulas."""
from __future__ import annotations

import math

import numpy as np
import pytest

from crossbar_ctl.devices import IdealDevice, LinearStepDevice, NeuroSimExpDevice, SoftBoundsDevice, expand_preset


def agsi() -> NeuroSimExpDevice:
    return NeuroSimExpDevice(**{k: v for k, v in expand_preset({"preset": "agsi"}).items() if k != "model"})


def g_ltp(d: NeuroSimExpDevice, p: np.ndarray) -> np.ndarray:
    b = d.g_range_S / (1 - math.exp(-d.pmax_ltp / d.a_ltp))
    return b * (1 - np.exp(-p / d.a_ltp)) + d.g_min_S


def g_ltd(d: NeuroSimExpDevice, p: np.ndarray) -> np.ndarray:
    b = d.g_range_S / (1 - math.exp(-d.pmax_ltd / d.a_ltd))
    return -b * (1 - np.exp((p - d.pmax_ltd) / d.a_ltd)) + d.g_max_S


def test_neurosim_maps_follow_the_ltp_and_ltd_curves() -> None:
    d = agsi()
    (t_up, r_up), (t_dn, r_dn) = d.nominal_maps()
    p = np.arange(0, 97.0)
    g = g_ltp(d, p)
    np.testing.assert_allclose(g[1:], g[:-1] + r_up * (t_up - g[:-1]), rtol=1e-12, atol=0)
    q = np.arange(100.0, 0, -1)  # depression walks the LTD curve from Pmax down
    h = g_ltd(d, q)
    np.testing.assert_allclose(h[1:], h[:-1] + r_dn * (t_dn - h[:-1]), rtol=1e-12, atol=0)
    np.testing.assert_allclose(d.pulses_between(d.g_min_S, g), p, atol=1e-9)
    np.testing.assert_allclose(d.pulses_between(d.g_max_S, h), -(100 - q), atol=1e-9)


def test_symmetry_point_equalises_up_and_down_steps() -> None:
    d = agsi()
    gs = d.symmetry_point_S()
    up, down = d.step_S(gs)
    assert up == pytest.approx(down, rel=1e-9, abs=0)
    # closed form for two affine maps: r_u (T_u − g) = r_d (g − T_d)
    (t_up, r_up), (t_dn, r_dn) = d.nominal_maps()
    assert gs == pytest.approx((r_up * t_up + r_dn * t_dn) / (r_up + r_dn), rel=1e-9, abs=0)
    assert d.g_min_S < gs < 0.5 * (d.g_min_S + d.g_max_S)  # agsi depresses harder: its point sits low
    for sym in (IdealDevice(), SoftBoundsDevice(), LinearStepDevice(gamma_up=0.5, gamma_down=0.5)):
        assert sym.symmetry_point_S() == pytest.approx(0.5 * (sym.g_min_S + sym.g_max_S), rel=1e-9, abs=0)


def test_linear_models_step_and_plan() -> None:
    d = IdealDevice(levels=100)
    step = d.g_range_S / 100
    assert d.step_S(d.g_min_S) == pytest.approx((step, step), rel=1e-12, abs=0)
    assert d.pulses_between(d.g_min_S, d.g_min_S + 7 * step) == pytest.approx(7, rel=1e-9, abs=0)
    assert d.pulses_between(d.g_max_S, d.g_max_S - 3 * step) == pytest.approx(-3, rel=1e-9, abs=0)
    sb = SoftBoundsDevice(levels=50, up_down=0.2)
    up, down = sb.step_S(sb.g_min_S)
    assert up == pytest.approx(1.2 / 50 * sb.g_range_S, rel=1e-12, abs=0) and down == 0.0
