"""Simulator kernels of the ``tabular`` device model (:class:`crossbar_ctl.devices.TabularDevice`).

The affine kernels of :mod:`crossbar_sim.kernels` cannot represent a table, so these apply pulses one at a time.
Inputs: the table of :func:`table_arrays` (``grid`` (B,), ``mu`` and ``sd`` (2, B), row 0 up, row 1 down, in S),
the nominal window (G0, G1), and the per-device planes ``par`` of :mod:`crossbar_sim.device_arrays`
(lo = Gmin', hi = Gmax', shape factor f in plane a↑ = a↓; a stuck device has hi = lo). One pulse of polarity r
at device (i, j):

    k = (hi − lo)/(G1 − G0),   u = G0 + (G − lo)/k          (u = G on a nominal window, k = 1)
    G ← clip(G + k·(f·μ_r(u) + σ_r(u)·ξ), lo, hi),   ξ ~ N(0, 1)

μ_r, σ_r linear between grid points, constant beyond its ends. A stuck device never moves.

Counts. A write of n_eff effective pulses (count·rule(V, t) by the effective-pulse rule, plus half-select
disturb pulses counted exactly as in :mod:`crossbar_sim.kernels`) applies m = stochastic_round(n_eff) pulses:
E[m] = n_eff, and m = n_eff exactly for nominal pulses (rule(V, t) = 1).

Random streams, as in kernels (whose helpers are imported, not copied): one 64-bit key per operation; device
k = i·cols + j owns ``seed = device_seed(key, k)``; slots :data:`~crossbar_sim.kernels.M_COUNT` and ``M_DIST_*``
as there, :data:`M_ROUND` + r for the rounding uniform of polarity r; pulse p of the set (reset) phase draws ξ as
the first normal of the stream seeded ``word(seed, M_NOISE1 + p)`` (``M_NOISE2 + p``). No draw where σ = 0.

Numba caches a function keyed on its own source file only, so a change to the helpers in kernels.py would not
invalidate the compiled kernels here: :func:`ensure_fresh` (called by the backend once per process) compares the
helpers as compiled into this module with kernels' own and recompiles this module's kernels if they differ.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from crossbar_ctl.devices import TabularDevice
from crossbar_sim import kernels as K
from crossbar_sim.kernels import (M_NOISE1, M_NOISE2, _line_loads, binomial, binomial_n, coincidences, device_seed,
                                  mix64, normal, program_disturbs, ratio_table, stochastic_round, uniform, word)

M_ROUND = 3  # slots 3 (set) and 4 (reset): the uniform that rounds n_eff to a pulse count

Table = tuple[np.ndarray, np.ndarray, np.ndarray, float, float]


def table_arrays(device: TabularDevice) -> Table:
    """(grid, mu, sd, G0, G1): the device's table as contiguous float64 arrays for the kernels."""
    grid = np.ascontiguousarray(device.g_grid_S, dtype=np.float64)
    mu = np.ascontiguousarray([device.dg_up_mean_S, device.dg_down_mean_S], dtype=np.float64)
    sd = np.ascontiguousarray([device.dg_up_std_S, device.dg_down_std_S], dtype=np.float64)
    return grid, mu, sd, float(device.g_min_S), float(device.g_max_S)


@njit(cache=True)
def find(grid: np.ndarray, u: float) -> int:
    """Index j with grid[j] ≤ u < grid[j+1] by bisection; −1 below the grid, B − 1 at or above its end."""
    n = grid.shape[0]
    if u < grid[0]:
        return -1
    if u >= grid[n - 1]:
        return n - 1
    lo = 0
    hi = n - 1
    while hi - lo > 1:
        mid = (lo + hi) >> 1
        if grid[mid] <= u:
            lo = mid
        else:
            hi = mid
    return lo


@njit(cache=True)
def value(grid: np.ndarray, tab: np.ndarray, r: int, j: int, u: float) -> float:
    """tab[r] linearly interpolated at u in segment j of :func:`find` (np.interp's formula), held at the ends."""
    n = grid.shape[0]
    if j < 0:
        return tab[r, 0]
    if j >= n - 1:
        return tab[r, n - 1]
    return (tab[r, j + 1] - tab[r, j]) / (grid[j + 1] - grid[j]) * (u - grid[j]) + tab[r, j]


@njit(cache=True)
def apply_pulses(g: float, lo: float, hi: float, f: float, r: int, m: int, grid: np.ndarray, mu: np.ndarray,
                 sd: np.ndarray, g0: float, g1: float, seed: np.uint64, base: int) -> float:
    """m pulses of polarity r on one device at conductance g (S), one at a time (module doc); returns G (S)."""
    if m <= 0 or hi <= lo:
        return g
    nominal = lo == g0 and hi == g1
    k = 1.0 if nominal else (hi - lo) / (g1 - g0)
    for p in range(m):
        u = g if nominal else g0 + (g - lo) / k
        j = find(grid, u)
        step = f * value(grid, mu, r, j, u)
        s = value(grid, sd, r, j, u)
        if s > 0.0:
            step += s * normal(word(seed, base + p), 0)
        g = min(max(g + k * step, lo), hi)
    return g


# ------------------------------------------------------------------------------------------ program
@njit(cache=True)
def _program_row(i: int, g: np.ndarray, g32: np.ndarray, counts: np.ndarray, par: np.ndarray, grid: np.ndarray,
                 mu: np.ndarray, sd: np.ndarray, g0: float, g1: float, s_up: float, s_dn: float, h_up: float,
                 e_up: float, h_dn: float, e_dn: float, loads: tuple, key: np.uint64) -> None:
    col_up, col_dn, row_up, row_dn = loads
    cols = g.shape[1]
    for j in range(cols):
        n = np.int64(counts[i, j])
        if n == 0 and h_up == 0.0 and h_dn == 0.0:
            continue
        m_up = n if n > 0 else 0
        m_dn = -n if n < 0 else 0
        seed = device_seed(key, i * cols + j)
        d_up, d_dn = program_disturbs(i, j, m_up, m_dn, col_up, col_dn, row_up, row_dn, h_up, h_dn, seed)
        k_up = stochastic_round(m_up * s_up + d_up * e_up, uniform(seed, M_ROUND))
        k_dn = stochastic_round(m_dn * s_dn + d_dn * e_dn, uniform(seed, M_ROUND + 1))
        if k_up == 0 and k_dn == 0:
            continue
        lo = par[0, i, j]
        hi = par[1, i, j]
        gn = apply_pulses(g[i, j], lo, hi, par[2, i, j], 0, k_up, grid, mu, sd, g0, g1, seed, M_NOISE1)
        gn = apply_pulses(gn, lo, hi, par[4, i, j], 1, k_dn, grid, mu, sd, g0, g1, seed, M_NOISE2)
        g[i, j] = gn
        g32[i, j] = np.float32(gn)


@njit(cache=True)
def _loads(counts: np.ndarray, needed: bool) -> tuple:
    if needed:
        return _line_loads(counts)
    z = np.zeros(1, dtype=np.int64)
    return z, z, z, z


@njit(cache=True, parallel=True)
def program_par(g: np.ndarray, g32: np.ndarray, counts: np.ndarray, par: np.ndarray, grid: np.ndarray,
                mu: np.ndarray, sd: np.ndarray, g0: float, g1: float, s_up: float, s_dn: float, h_up: float,
                e_up: float, h_dn: float, e_dn: float, key: np.uint64) -> None:
    """Signed counts per device (rows in parallel), set phase then reset phase: device (i, j) with count n takes
    round(n⁺·s↑ + d↑·e↑) set pulses, then round(n⁻·s↓ + d↓·e↓) reset pulses, d ~ Binomial(H, h) half-select
    disturbs with H as in :func:`crossbar_sim.kernels.program_disturb`. Updates g and g32 in place."""
    loads = _loads(counts, h_up > 0.0 or h_dn > 0.0)
    for i in prange(g.shape[0]):
        _program_row(i, g, g32, counts, par, grid, mu, sd, g0, g1, s_up, s_dn, h_up, e_up, h_dn, e_dn, loads, key)


@njit(cache=True)
def program_ser(g: np.ndarray, g32: np.ndarray, counts: np.ndarray, par: np.ndarray, grid: np.ndarray,
                mu: np.ndarray, sd: np.ndarray, g0: float, g1: float, s_up: float, s_dn: float, h_up: float,
                e_up: float, h_dn: float, e_dn: float, key: np.uint64) -> None:
    """:func:`program_par` on one thread."""
    loads = _loads(counts, h_up > 0.0 or h_dn > 0.0)
    for i in range(g.shape[0]):
        _program_row(i, g, g32, counts, par, grid, mu, sd, g0, g1, s_up, s_dn, h_up, e_up, h_dn, e_dn, loads, key)


# ------------------------------------------------------------------------------------------ outer pulse
@njit(cache=True)
def _outer_row(ii: int, g: np.ndarray, g32: np.ndarray, par: np.ndarray, grid: np.ndarray, mu: np.ndarray,
               sd: np.ndarray, g0: float, g1: float, p: np.ndarray, q: np.ndarray, rows_idx: np.ndarray,
               cols_idx: np.ndarray, slots: int, mode: int, r: int, s: float, h: float, e_d: float,
               key: np.uint64, ctab: np.ndarray) -> None:
    cols = g.shape[1]
    i = rows_idx[ii]
    pi = p[i]
    for jj in range(cols_idx.shape[0]):
        j = cols_idx[jj]
        pc = pi * q[j]
        ph = pi + q[j] - 2.0 * pc if h > 0.0 else 0.0
        if pc == 0.0 and ph <= 0.0:
            continue
        seed = device_seed(key, i * cols + j)
        n_c, n_d = coincidences(pc, ph, slots, mode, h, seed, ctab)
        m = stochastic_round(n_c * s + n_d * e_d, uniform(seed, M_ROUND + r))
        if m > 0:
            gn = apply_pulses(g[i, j], par[0, i, j], par[1, i, j], par[2 + 2 * r, i, j], r, m, grid, mu, sd, g0,
                              g1, seed, M_NOISE1)
            g[i, j] = gn
            g32[i, j] = np.float32(gn)


@njit(cache=True, parallel=True)
def outer_par(g: np.ndarray, g32: np.ndarray, par: np.ndarray, grid: np.ndarray, mu: np.ndarray, sd: np.ndarray,
              g0: float, g1: float, p: np.ndarray, q: np.ndarray, rows_idx: np.ndarray, cols_idx: np.ndarray,
              slots: int, mode: int, r: int, s: float, h: float, e_d: float, key: np.uint64) -> None:
    """One rank-1 pulse phase of polarity r over rows_idx × cols_idx (rows in parallel). Coincidences n_c:
    Binomial(slots, p_i·q_j) (stochastic), the stochastically rounded mean (expected) or the nearest integer
    mean (nearest); half-select disturbs n_d as in :func:`crossbar_sim.kernels.outer_par`. Device (i, j) takes
    round(n_c·s + n_d·e_d) pulses of the table."""
    ctab = ratio_table(slots)
    for ii in prange(rows_idx.shape[0]):
        _outer_row(ii, g, g32, par, grid, mu, sd, g0, g1, p, q, rows_idx, cols_idx, slots, mode, r, s, h, e_d,
                   key, ctab)


@njit(cache=True)
def outer_ser(g: np.ndarray, g32: np.ndarray, par: np.ndarray, grid: np.ndarray, mu: np.ndarray, sd: np.ndarray,
              g0: float, g1: float, p: np.ndarray, q: np.ndarray, rows_idx: np.ndarray, cols_idx: np.ndarray,
              slots: int, mode: int, r: int, s: float, h: float, e_d: float, key: np.uint64) -> None:
    """:func:`outer_par` on one thread."""
    ctab = ratio_table(slots)
    for ii in range(rows_idx.shape[0]):
        _outer_row(ii, g, g32, par, grid, mu, sd, g0, g1, p, q, rows_idx, cols_idx, slots, mode, r, s, h, e_d,
                   key, ctab)


@njit(cache=True)
def pulse_cell(g: np.ndarray, g32: np.ndarray, par: np.ndarray, grid: np.ndarray, mu: np.ndarray, sd: np.ndarray,
               g0: float, g1: float, i: int, j: int, r: int, count: int, s: float, key: np.uint64) -> None:
    """``count`` pulses of polarity r (n_eff = count·s) on device (i, j) alone, no half-select disturb: the same
    draws as :func:`outer_ser` with p, q one-hot at i, j and slots = count."""
    seed = device_seed(key, i * g.shape[1] + j)
    m = stochastic_round(count * s, uniform(seed, M_ROUND + r))
    gn = apply_pulses(g[i, j], par[0, i, j], par[1, i, j], par[2 + 2 * r, i, j], r, m, grid, mu, sd, g0, g1, seed,
                      M_NOISE1)
    g[i, j] = gn
    g32[i, j] = np.float32(gn)


# ------------------------------------------------------------------------------------------ stale-cache guard
def _consts(k: object) -> float:
    return float(sum(getattr(k, n) * 7.0 ** e for e, n in enumerate(
        ("M_COUNT", "M_DIST_UP", "M_DIST_DOWN", "M_NOISE1", "M_NOISE2", "MODE_EXPECTED", "MODE_NEAREST"))))


_CONSTS = _consts(K)


@njit(cache=True)
def _helper_digest(key: np.uint64) -> np.ndarray:
    """Outputs of every imported helper, as compiled into this module."""
    seed = device_seed(key, 5)
    u = uniform(seed, 1)
    out = np.empty(9)
    acc = 0.0
    for m in range(3):  # the three count modes
        n_c, n_d = coincidences(0.3, 0.4, 12, m, 0.5, seed, ratio_table(12))
        acc = acc * 1000.0 + n_c * 31.0 + n_d
    loads = np.array([3, 5], dtype=np.int64)
    d_up, d_dn = program_disturbs(1, 0, 1, 0, loads, loads, loads, loads, 0.4, 0.3, seed)
    out[8] = acc * 1000.0 + d_up * 31.0 + d_dn
    out[7] = _CONSTS  # kernels' slot and mode constants as frozen into this module's compiled code
    out[0] = u
    out[1] = normal(word(seed, 3), 0)
    out[2] = binomial(40, 0.37, u)
    out[3] = binomial_n(12, 0.21, u, ratio_table(12))
    out[4] = stochastic_round(3.4, u)
    out[5] = np.float64(mix64(seed) >> np.uint64(11))
    a, b, c, d = _line_loads(np.array([[1, -2], [3, 0]], dtype=np.int32))
    out[6] = a[0] * 1000 + b[1] * 100 + c[1] * 10 + d[0]
    return out


def _reference_digest(key: np.uint64) -> np.ndarray:
    """The same outputs from kernels' own compiled functions."""
    seed = np.uint64(K.device_seed(key, 5))  # Numba returns uint64 as a Python int: keep the type
    u = K.uniform(seed, 1)
    a, b, c, d = K._line_loads(np.array([[1, -2], [3, 0]], dtype=np.int32))
    return np.array([u, K.normal(np.uint64(K.word(seed, 3)), 0), K.binomial(40, 0.37, u),
                     K.binomial_n(12, 0.21, u, K.ratio_table(12)), K.stochastic_round(3.4, u),
                     np.float64(K.mix64(seed) >> np.uint64(11)), a[0] * 1000 + b[1] * 100 + c[1] * 10 + d[0],
                     _consts(K), _coincidence_digest(K, seed)])


def _coincidence_digest(k: object, seed: np.uint64) -> float:
    """:func:`_helper_digest`'s ``out[8]`` from kernels' own ``coincidences`` and ``program_disturbs``."""
    acc = 0.0
    for m in range(3):
        n_c, n_d = k.coincidences(0.3, 0.4, 12, m, 0.5, seed, k.ratio_table(12))  # type: ignore[attr-defined]
        acc = acc * 1000.0 + n_c * 31.0 + n_d
    loads = np.array([3, 5], dtype=np.int64)
    d_up, d_dn = k.program_disturbs(1, 0, 1, 0, loads, loads, loads, loads, 0.4, 0.3, seed)  # type: ignore[attr-defined]
    return acc * 1000.0 + d_up * 31.0 + d_dn


_FRESH = False


def ensure_fresh() -> bool:
    """Recompile this module's kernels if their cached code embeds helpers that kernels.py has since changed.
    Returns True if it had to."""
    global _FRESH
    if _FRESH:
        return False
    key = np.uint64(0x243F6A8885A308D3)
    stale = not np.array_equal(_helper_digest(key), _reference_digest(key))
    if stale:
        for fn in (find, value, apply_pulses, _program_row, _loads, program_par, program_ser, _outer_row,
                   outer_par, outer_ser, pulse_cell, _helper_digest):
            fn.recompile()
    _FRESH = True
    return stale
