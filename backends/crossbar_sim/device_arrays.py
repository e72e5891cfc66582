"""Per-device parameter arrays: a device config + a tile shape + a Generator, turned into arrays once.

Every model of :mod:`crossbar_ctl.devices` is an affine pulse map per polarity. We store it per device as

* saturating polarity:  ``a`` = target G* (S), ``b`` = ρ (per nominal pulse);
  ``n`` effective pulses give  G_n = G* − (G* − G)·exp(−n·ρ)
* linear polarity:      ``a`` = signed step ΔG (S), ``b`` unused (0);  G_n = G + n·ΔG

(whether a polarity is linear is a property of the model, so it is one flag per tile and polarity), plus
``g_min`` and ``g_max`` of each device (c2c noise is σ_c2c·(g_max − g_min) per √pulse). The arrays live in one
float64 block ``par`` of shape (6, rows, cols) (planes :data:`P_GMIN` … :data:`P_B_DOWN`) that the kernels
take as is; the named attributes are views into it.

Each device's map is ``device.pulse_maps(Gmin', Gmax', f)`` of :mod:`crossbar_ctl.devices` (where every model's
equations are), evaluated on the per-device windows and the d2d shape factor f; a rate r ≥ 1 (possible only with
a large shape spread) is capped at ρ = ``RHO_MAX`` (a jump to G*).

Device-to-device spread, drawn once per tile in this order (each only if its σ is nonzero): z for Gmin, z' for
Gmax, z'' for the shape, all N(0, 1) of shape (rows, cols); Gmin' = Gmin(1 + σ_gmin·z), Gmax' = Gmax(1 + σ_gmax·z'),
f = 1 + σ_shape·z''. Redraw rules: a factor 1 + σz below :data:`MIN_FACTOR` is redrawn at once (a normal
truncated in its far lower tail: beyond 4.75 standard deviations for σ = 0.2); devices whose window would be too
narrow (Gmax' − Gmin' < :data:`MIN_WINDOW`·(Gmax − Gmin), a hundredth of the nominal window) redraw z and z'
before z'' is drawn (up to 64 rounds, after which Gmax' = Gmin' + MIN_WINDOW·(Gmax − Gmin)). One shape factor per
device scales both polarities (A_p and A_d, or the step).

A ``tabular`` device has no affine map: its a↑ and a↓ planes hold the shape factor f (b = 0) and
:mod:`crossbar_sim.tabular` reads the table itself.

Stuck devices (drawn after the spread, if either fraction is nonzero): u ~ U(0, 1) per device; u < f_min is stuck
at its Gmin, f_min ≤ u < f_min + f_max is stuck at its Gmax. A stuck device starts at that value, its window
collapses to it (g_min = g_max = the stuck value, hence no c2c noise) and a = b = 0, so every kernel leaves it
bit-exactly unchanged (0 − (0 − G)·e⁰ = G, G + n·0 = G, clip to [G, G]).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from crossbar_ctl.devices import _DeviceBase

P_GMIN, P_GMAX, P_A_UP, P_B_UP, P_A_DOWN, P_B_DOWN = range(6)
N_PLANES = 6
MIN_FACTOR = 0.05
MIN_WINDOW = 0.01

STUCK_NONE, STUCK_MIN, STUCK_MAX = 0, 1, 2


@dataclass
class DeviceArrays:
    """The per-device parameters of one tile (SI units); see the module docstring for their meaning."""

    par: np.ndarray  # (6, rows, cols) float64
    linear_up: bool
    linear_down: bool
    stuck: np.ndarray  # (rows, cols) int8: 0 free, 1 stuck at Gmin, 2 stuck at Gmax

    @property
    def shape(self) -> tuple[int, int]:
        return self.par.shape[1], self.par.shape[2]

    @property
    def g_min(self) -> np.ndarray:
        return self.par[P_GMIN]

    @property
    def g_max(self) -> np.ndarray:
        return self.par[P_GMAX]

    @property
    def a_up(self) -> np.ndarray:
        return self.par[P_A_UP]

    @property
    def b_up(self) -> np.ndarray:
        return self.par[P_B_UP]

    @property
    def a_down(self) -> np.ndarray:
        return self.par[P_A_DOWN]

    @property
    def b_down(self) -> np.ndarray:
        return self.par[P_B_DOWN]

    def uniform_rates(self) -> tuple[float, float]:
        """(ρ↑, ρ↓) if every free device shares it (no shape spread), else NaN: lets kernels tabulate exp(−n·ρ)."""
        free = self.stuck == STUCK_NONE
        out = []
        for plane in (P_B_UP, P_B_DOWN):
            b = self.par[plane][free]
            out.append(float(b.flat[0]) if b.size and np.all(b == b.flat[0]) else float("nan"))
        return out[0], out[1]

    def initial_conductance(self) -> np.ndarray:
        """A fresh state array: every device at its Gmin (stuck devices at their stuck value)."""
        return self.g_min.copy()


def pulse_scale(device: _DeviceBase, v_V: float, width_s: float) -> float:
    """Nominal pulses one pulse of amplitude ``v_V`` and width ``width_s`` counts as (the effective-pulse rule):
    n_eff = 0 if |V| ≤ V_th, else (|V| − V_th)/(V_ref − V_th) · t/t_ref."""
    a = abs(float(v_V))
    if a <= device.v_threshold_V:
        return 0.0
    return (a - device.v_threshold_V) / (device.v_ref_V - device.v_threshold_V) * (float(width_s) / device.width_ref_s)


def _factor(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """1 + σ·z with z ~ N(0, 1), entries below MIN_FACTOR redrawn."""
    if sigma == 0.0:
        return np.ones(shape)
    f = 1.0 + sigma * rng.standard_normal(shape)
    for _ in range(256):
        bad = f < MIN_FACTOR
        nbad = int(bad.sum())
        if nbad == 0:
            break
        f[bad] = 1.0 + sigma * rng.standard_normal(nbad)
    return np.maximum(f, MIN_FACTOR)


def make_device_arrays(device: _DeviceBase, shape: tuple[int, int], rng: np.random.Generator) -> DeviceArrays:
    """Draw the d2d spread and stuck devices of one tile from ``rng`` and derive every device's pulse map."""
    rows, cols = int(shape[0]), int(shape[1])
    shp = (rows, cols)
    gmin = device.g_min_S * _factor(rng, shp, device.sigma_d2d_g_min)
    gmax = device.g_max_S * _factor(rng, shp, device.sigma_d2d_g_max)
    w_min = MIN_WINDOW * device.g_range_S
    for _ in range(64):
        bad = gmax - gmin < w_min
        if not bad.any():
            break
        nbad = int(bad.sum())
        for g, nominal, sigma in ((gmin, device.g_min_S, device.sigma_d2d_g_min),
                                  (gmax, device.g_max_S, device.sigma_d2d_g_max)):
            if sigma:
                g[bad] = nominal * np.maximum(1.0 + sigma * rng.standard_normal(nbad), MIN_FACTOR)
    gmax = np.maximum(gmax, gmin + w_min)
    f = _factor(rng, shp, device.sigma_d2d_shape)

    par = np.zeros((N_PLANES, rows, cols))
    par[P_GMIN] = gmin
    par[P_GMAX] = gmax
    if getattr(device, "model", None) == "tabular":  # no affine map: planes a↑, a↓ hold f (crossbar_sim.tabular)
        (a_up, b_up, lin_up), (a_down, b_down, lin_down) = (f, 0.0, True), (f, 0.0, True)
    else:
        (a_up, b_up, lin_up), (a_down, b_down, lin_down) = device.pulse_maps(gmin, gmax, f)
    par[P_A_UP], par[P_B_UP] = a_up, b_up
    par[P_A_DOWN], par[P_B_DOWN] = a_down, b_down

    stuck = np.zeros(shp, dtype=np.int8)
    f_lo, f_hi = device.stuck_at_min_fraction, device.stuck_at_max_fraction
    if f_lo > 0 or f_hi > 0:
        u = rng.random(shp)
        stuck[u < f_lo] = STUCK_MIN
        stuck[(u >= f_lo) & (u < f_lo + f_hi)] = STUCK_MAX
        lo, hi = stuck == STUCK_MIN, stuck == STUCK_MAX
        par[P_GMAX][lo] = par[P_GMIN][lo]
        par[P_GMIN][hi] = par[P_GMAX][hi]
        for plane in (P_A_UP, P_B_UP, P_A_DOWN, P_B_DOWN):
            par[plane][lo | hi] = 0.0
    return DeviceArrays(par=np.ascontiguousarray(par), linear_up=lin_up, linear_down=lin_down, stuck=stuck)
