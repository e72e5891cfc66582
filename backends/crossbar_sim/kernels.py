"""Numba kernels of the simulator: arrays in, arrays updated in place, no Python objects.

Random numbers (no global state): every write operation takes one 64-bit ``key`` from the backend's Generator;
device k = i·cols + j owns the stream ``seed = mix64(key + k·γ)`` whose m-th word is ``mix64(seed + m·γ₂)``
(splitmix64 finaliser on a counter). A draw depends only on (key, device, m), never on the thread computing it, so
results are bit-identical for any thread count and for the serial and parallel drivers. Samplers: 53-bit
uniforms, a 256-layer ziggurat normal (exact to 52-bit resolution), exact binomials by inversion. Stream slots
per device and operation: :data:`M_COUNT` coincidence count, :data:`M_DIST_UP` / :data:`M_DIST_DOWN` disturb
counts, from :data:`M_NOISE1` / :data:`M_NOISE2` the normals of a first/second write.

The pulse map (see :mod:`crossbar_sim.device_arrays`): with ``par`` planes (Gmin, Gmax, a↑, b↑, a↓, b↓),

    saturating:  G ← a − (a − G)·exp(−n_eff·b)        linear:  G ← G + n_eff·a
    then  G ← clip(G + σ_c2c·(Gmax − Gmin)·√n_eff·z, Gmin, Gmax),  z ~ N(0, 1)   (a write only if n_eff > 0).

Threads: each kernel has a parallel (prange over rows) and a serial driver; the backend picks serial for small
work. Importing this module sets ``GOMP_SPINCOUNT=1000`` and ``KMP_BLOCKTIME=0`` unless already set: with the
default OpenMP spin-wait, idle OpenMP workers steal the CPUs that BLAS needs right after a parallel kernel
(measured: a 785×200 float32 matmul alternating with a kernel took 8 ms instead of 0.15 ms on 2 cores).

All jitted code lives in this one module on purpose: Numba's on-disk cache (``cache=True``) is invalidated only by
changes to a function's own source file, so a kernel inlining helpers from another module could keep stale code.
"""
from __future__ import annotations

import math
import os

os.environ.setdefault("GOMP_SPINCOUNT", "1000")
os.environ.setdefault("KMP_BLOCKTIME", "0")

import numpy as np  # noqa: E402
from numba import njit, prange  # noqa: E402

M_COUNT, M_DIST_UP, M_DIST_DOWN = 0, 1, 2
M_NOISE1, M_NOISE2 = 1 << 20, 2 << 20

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_GAMMA2 = np.uint64(0xD1B54A32D192ED03)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)
_S8, _S11, _S12 = np.uint64(8), np.uint64(11), np.uint64(12)
_ONE, _B255 = np.uint64(1), np.uint64(255)
_TWO_M53 = 1.0 / 9007199254740992.0


def _ziggurat_tables(n: int = 256, r: float = 3.6541528853610088) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Layer boundaries of an n-layer ziggurat under f(x) = exp(−x²/2): X[0] = v/f(r) (the base strip, tail
    included), X[1] = r, X[i+1] = f⁻¹(f(X[i]) + v/X[i]), X[n] = 0, each layer of area v. Returns the fast-accept
    thresholds K[i] = ⌊2⁵²·X[i+1]/X[i]⌋, the scales W[i] = X[i]·2⁻⁵², and F[i] = f(X[i]) (F[0] unused)."""
    f = lambda x: math.exp(-0.5 * x * x)  # noqa: E731
    v = r * f(r) + math.sqrt(math.pi / 2) * math.erfc(r / math.sqrt(2))
    x = [v / f(r), r]
    for i in range(1, n - 1):
        x.append(math.sqrt(-2.0 * math.log(f(x[i]) + v / x[i])))
    x.append(0.0)
    k = np.array([int(2.0**52 * x[i + 1] / x[i]) for i in range(n)], dtype=np.int64)
    w = np.array([x[i] * 2.0**-52 for i in range(n)])
    fx = np.array([f(xi) for xi in x])
    return k, w, fx


_ZK, _ZW, _ZF = _ziggurat_tables()
_ZR = 3.6541528853610088


@njit(cache=True)
def mix64(z: np.uint64) -> np.uint64:
    """splitmix64 finaliser: a bijective 64-bit mix."""
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@njit(cache=True)
def device_seed(key: np.uint64, k: int) -> np.uint64:
    """Seed of device k's stream within the operation keyed ``key``."""
    return mix64(key + np.uint64(k) * _GAMMA)


@njit(cache=True)
def word(seed: np.uint64, m: int) -> np.uint64:
    """The m-th 64-bit word of a device stream."""
    return mix64(seed + np.uint64(m) * _GAMMA2)


@njit(cache=True)
def uniform(seed: np.uint64, m: int) -> float:
    """The m-th uniform of a device stream, in [0, 1) with 53 random bits."""
    return np.float64(word(seed, m) >> _S11) * _TWO_M53


@njit(cache=True)
def _normal_slow(seed: np.uint64, m: int) -> float:
    """The ziggurat from slot m including rejections (see :func:`normal`)."""
    while True:
        x = word(seed, m)
        i = np.int64(x & _B255)
        sgn = 1.0 - 2.0 * np.float64((x >> _S8) & _ONE)
        mant = np.int64(x >> _S12)
        z = np.float64(mant) * _ZW[i]
        if mant < _ZK[i]:
            return sgn * z
        if i == 0:  # tail |z| > r: Marsaglia's exponential method
            t = m + 1
            while True:
                xt = -math.log(1.0 - uniform(seed, t)) / _ZR
                yt = -math.log(1.0 - uniform(seed, t + 1))
                if yt + yt > xt * xt:
                    return sgn * (_ZR + xt)
                t += 2
        fi = _ZF[i]
        if fi + uniform(seed, m + 1) * (_ZF[i + 1] - fi) < math.exp(-0.5 * z * z):
            return sgn * z
        m += 4  # rejected: next attempt


@njit(cache=True)
def normal(seed: np.uint64, m: int) -> float:
    """A standard normal from stream slots m, m+1, …: 256-layer ziggurat on the 64-bit word m (8 bits layer,
    1 bit sign, 52 bits abscissa); a rejected attempt moves on by 4 slots; the tail uses Marsaglia's method.
    The fast path is kept apart so that it inlines."""
    x = word(seed, m)
    i = np.int64(x & _B255)
    mant = np.int64(x >> _S12)
    if mant < _ZK[i]:
        return (1.0 - 2.0 * np.float64((x >> _S8) & _ONE)) * (np.float64(mant) * _ZW[i])
    return _normal_slow(seed, m)


@njit(cache=True)
def binomial(n: int, pi: float, u: float) -> int:
    """Exact Binomial(n, π) draw by inversion of the uniform ``u`` ∈ [0, 1).

    π > 1/2 draws n − Binomial(n, 1 − π). Mean n·π < 20: walk the CDF up from 0 with
    P(k+1) = P(k)·(n−k)/(k+1)·π/(1−π), P(0) = (1−π)ⁿ. Otherwise start at the mode (P from lgamma) and take
    outcomes alternately above and below it (an exact inversion in that order), O(√(nπ(1−π))) steps."""
    if n <= 0 or pi <= 0.0:
        return 0
    if pi >= 1.0:
        return n
    flip = pi > 0.5
    pp = 1.0 - pi if flip else pi
    r = pp / (1.0 - pp)
    k = 0
    if n * pp < 20.0:
        f = math.exp(n * math.log1p(-pp))
        while True:
            u -= f
            if u < 0.0 or k >= n:
                break
            k += 1
            f *= r * (n - k + 1) / k
    else:
        m = min(int((n + 1) * pp), n)
        f = math.exp(math.lgamma(n + 1.0) - math.lgamma(m + 1.0) - math.lgamma(n - m + 1.0)
                     + m * math.log(pp) + (n - m) * math.log1p(-pp))
        u -= f
        k = m
        lo = m
        hi = m
        f_lo = f
        f_hi = f
        while u >= 0.0:
            if hi < n:
                f_hi *= r * (n - hi) / (hi + 1)
                hi += 1
                u -= f_hi
                if u < 0.0:
                    k = hi
                    break
            if lo > 0:
                f_lo *= lo / ((n - lo + 1) * r)
                lo -= 1
                u -= f_lo
                if u < 0.0:
                    k = lo
                    break
            if hi >= n and lo <= 0:
                k = m
                break
    return n - k if flip else k


@njit(cache=True)
def ipow(x: float, n: int) -> float:
    """xⁿ for an integer n ≥ 0 by repeated squaring (a few ulp)."""
    r = 1.0
    while n > 0:
        if n & 1:
            r *= x
        x *= x
        n >>= 1
    return r


@njit(cache=True)
def ratio_table(n: int) -> np.ndarray:
    """c[k] = (n − k + 1)/k for k = 1..n: the pmf ratios P(k)/P(k−1)·(1−π)/π of Binomial(n, π)."""
    c = np.zeros(n + 1)
    for k in range(1, n + 1):
        c[k] = (n - k + 1) / k
    return c


@njit(cache=True)
def binomial_n(n: int, pi: float, u: float, ctab: np.ndarray) -> int:
    """:func:`binomial` for the n that ``ctab`` = :func:`ratio_table` (n) was built for: the same inversion from
    0 (P(0) = (1−π)ⁿ by squaring, ratios from the table), the fast path for the small means that dominate."""
    if n <= 0 or pi <= 0.0:
        return 0
    if pi >= 1.0:
        return n
    flip = pi > 0.5
    pp = 1.0 - pi if flip else pi
    if n * pp >= 20.0:
        return binomial(n, pi, u)
    q = 1.0 - pp
    r = pp / q
    f = ipow(q, n)
    k = 0
    while True:
        u -= f
        if u < 0.0 or k >= n:
            break
        k += 1
        f *= r * ctab[k]
    return n - k if flip else k


@njit(cache=True)
def stochastic_round(x: float, u: float) -> int:
    """⌊x⌋ + 1 with probability x − ⌊x⌋ (u uniform), else ⌊x⌋: unbiased rounding."""
    fl = math.floor(x)
    return int(fl) + (1 if u < x - fl else 0)

@njit(cache=True)
def pulse_table(s_up: float, s_down: float, b_up: float, b_down: float, kmax: int) -> np.ndarray:
    """Per polarity and pulse count k = 0..kmax: rows 0/1 n_eff = k·s (↑/↓), 2/3 exp(−n_eff·b) for a tile whose
    saturating rate b is the same on every free device (NaN rows otherwise), 4/5 √n_eff. Computed with the same
    operations as the per-device path, so using it changes no bit of the result."""
    tab = np.empty((6, kmax + 1))
    for k in range(kmax + 1):
        nu = k * s_up
        nd = k * s_down
        tab[0, k] = nu
        tab[1, k] = nd
        tab[2, k] = math.exp(-nu * b_up)
        tab[3, k] = math.exp(-nd * b_down)
        tab[4, k] = math.sqrt(nu)
        tab[5, k] = math.sqrt(nd)
    return tab


@njit(cache=True, inline="always")
def advance(parf: np.ndarray, k: int, g: float, r: int, lin: bool, neff: float, e: float, sq: float,
            sigma: float, seed: np.uint64, m: int) -> float:
    """One write of ``neff`` effective pulses of polarity r (0 = set/up, 1 = reset/down) to device k (flat index
    i·cols + j; ``parf`` = ``par`` viewed as (6, rows·cols)) at conductance ``g``: the affine map, c2c noise
    N(0, σ·(Gmax − Gmin)·√neff) (stream slots from m), clip to [Gmin, Gmax]. ``e`` = exp(−neff·b) and
    ``sq`` = √neff if the caller has them, else NaN. Returns the new G (S). The polarity selects parameter planes
    by index arithmetic, not by a branch (mixed signs stay fast)."""
    a = parf[2 + 2 * r, k]
    if lin:
        gn = g + neff * a
    else:
        if e != e:
            e = math.exp(-neff * parf[3 + 2 * r, k])
        gn = a - (a - g) * e
    lo = parf[0, k]
    hi = parf[1, k]
    if sigma > 0.0:
        if sq != sq:
            sq = math.sqrt(neff)
        gn += sigma * (hi - lo) * sq * normal(seed, m)
    return min(max(gn, lo), hi)


@njit(cache=True, inline="always")
def flat(par: np.ndarray) -> np.ndarray:
    """``par`` (planes, rows, cols) as a (planes, rows·cols) view: kernels index devices by k = i·cols + j (one
    flat loop runs faster than nested short rows)."""
    return par.reshape(par.shape[0], par.shape[1] * par.shape[2])


# ------------------------------------------------------------------------------------------ program
@njit(cache=True, inline="always")
def _program_span(start: int, stop: int, gf: np.ndarray, g32f: np.ndarray, cf: np.ndarray, parf: np.ndarray,
                  lins: np.ndarray, tab: np.ndarray, sigma: float, key: np.uint64) -> None:
    """Devices start..stop−1 (flat) of a program: see :func:`program_par`."""
    kt = tab.shape[1]
    nan = np.nan
    for k in range(start, stop):
        n = cf[k]
        if n == 0:
            continue
        r = np.int64(n < 0)
        m = abs(n)
        if m < kt:
            neff = tab[r, m]
            e = tab[2 + r, m]
            sq = tab[4 + r, m]
        else:  # beyond the table (only if a caller skipped the limit check): the same arithmetic, uncached
            neff = m * tab[r, 1]
            e = nan
            sq = nan
        if neff == 0.0:
            continue
        gn = advance(parf, k, gf[k], r, lins[r], neff, e, sq, sigma, device_seed(key, k), M_NOISE1)
        gf[k] = gn
        g32f[k] = np.float32(gn)


@njit(cache=True, parallel=True)
def program_par(g: np.ndarray, g32: np.ndarray, counts: np.ndarray, par: np.ndarray, lins: np.ndarray,
                tab: np.ndarray, sigma: float, key: np.uint64) -> None:
    """Signed counts per device, rows in parallel: n > 0 one write of n_eff = tab[0, n] set pulses, n < 0 one
    write of tab[1, |n|] reset pulses (see :func:`pulse_table`); zeros and n_eff = 0 are skipped. ``lins`` =
    (set polarity linear, reset polarity linear). Updates g and g32 (C-contiguous) in place."""
    rows, cols = g.shape
    gf, g32f, cf, parf = g.ravel(), g32.ravel(), counts.ravel(), flat(par)
    for i in prange(rows):
        _program_span(i * cols, (i + 1) * cols, gf, g32f, cf, parf, lins, tab, sigma, key)


@njit(cache=True)
def program_ser(g: np.ndarray, g32: np.ndarray, counts: np.ndarray, par: np.ndarray, lins: np.ndarray,
                tab: np.ndarray, sigma: float, key: np.uint64) -> None:
    """:func:`program_par` on one thread."""
    _program_span(0, g.size, g.ravel(), g32.ravel(), counts.ravel(), flat(par), lins, tab, sigma, key)


@njit(cache=True)
def _line_loads(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per polarity: column sums and row maxima of the pulse counts (int64)."""
    rows, cols = counts.shape
    col_up = np.zeros(cols, dtype=np.int64)
    col_dn = np.zeros(cols, dtype=np.int64)
    row_up = np.zeros(rows, dtype=np.int64)
    row_dn = np.zeros(rows, dtype=np.int64)
    for i in range(rows):
        for j in range(cols):
            n = np.int64(counts[i, j])
            if n > 0:
                col_up[j] += n
                row_up[i] = max(row_up[i], n)
            elif n < 0:
                col_dn[j] -= n
                row_dn[i] = max(row_dn[i], -n)
    return col_up, col_dn, row_up, row_dn


@njit(cache=True, inline="always")
def program_disturbs(i: int, j: int, m_up: int, m_dn: int, col_up: np.ndarray, col_dn: np.ndarray,
                     row_up: np.ndarray, row_dn: np.ndarray, h_up: float, h_dn: float,
                     seed: np.uint64) -> tuple[int, int]:
    """Half-select disturbs of device (i, j) in a row-by-row ``program`` with own counts m_up/m_dn:
    Binomial(H, h) per polarity, H = its line loads (:func:`_line_loads`) minus twice its own count."""
    d_up = 0
    d_dn = 0
    if h_up > 0.0:
        d_up = binomial(col_up[j] + row_up[i] - 2 * m_up, h_up, uniform(seed, M_DIST_UP))
    if h_dn > 0.0:
        d_dn = binomial(col_dn[j] + row_dn[i] - 2 * m_dn, h_dn, uniform(seed, M_DIST_DOWN))
    return d_up, d_dn


@njit(cache=True, parallel=True)
def program_disturb(g: np.ndarray, g32: np.ndarray, counts: np.ndarray, par: np.ndarray, lin_up: bool,
                    lin_down: bool, s_up: float, s_down: float, h_up: float, e_up: float, h_down: float,
                    e_down: float, sigma: float, key: np.uint64) -> None:
    """:func:`program_par` with half-select disturb under V/2 biasing, row by row, set phase then reset phase.

    Per polarity, device (i, j) with own count m is half-selected H = (max_j' m_ij' − m) + (Σ_i' m_i'j − m)
    slots (its row's remaining slots, plus the slots its column fires for the other rows); it takes
    d ~ Binomial(H, h) disturb pulses of e effective pulses each. Then one write of m·s↑ + d·e↑ (set), then one
    of the reset polarity."""
    rows, cols = g.shape
    col_up, col_dn, row_up, row_dn = _line_loads(counts)
    parf = flat(par)
    nan = np.nan
    for i in prange(rows):
        for j in range(cols):
            n = np.int64(counts[i, j])
            m_up = n if n > 0 else 0
            m_dn = -n if n < 0 else 0
            k = i * cols + j
            seed = device_seed(key, k)
            d_up, d_dn = program_disturbs(i, j, m_up, m_dn, col_up, col_dn, row_up, row_dn, h_up, h_down, seed)
            gn = g[i, j]
            neff = m_up * s_up + d_up * e_up
            if neff > 0.0:
                gn = advance(parf, k, gn, 0, lin_up, neff, nan, nan, sigma, seed, M_NOISE1)
            neff = m_dn * s_down + d_dn * e_down
            if neff > 0.0:
                gn = advance(parf, k, gn, 1, lin_down, neff, nan, nan, sigma, seed, M_NOISE2)
            g[i, j] = gn
            g32[i, j] = np.float32(gn)


# ------------------------------------------------------------------------------------------ outer pulse
# outer_pulse count modes: Binomial(slots, p q) draws, the stochastically rounded mean, the nearest integer mean
MODE_STOCHASTIC, MODE_EXPECTED, MODE_NEAREST = 0, 1, 2

@njit(cache=True, inline="always")
def coincidences(pc: float, ph: float, slots: int, mode: int, h: float, seed: np.uint64,
                 ctab: np.ndarray) -> tuple[int, int]:
    """(n_c, n_d) of one device in a rank-1 phase: coincident pulses — Binomial(slots, p·q) (stochastic), the
    stochastically rounded mean (expected) or the nearest integer mean (nearest) — and half-select disturbs
    (ph = p + q − 2pq per slot, probability h each; drawn among the slots without a coincidence)."""
    if mode == MODE_EXPECTED:
        n_c = stochastic_round(slots * pc, uniform(seed, M_COUNT))
    elif mode == MODE_NEAREST:
        n_c = int(np.floor(slots * pc + 0.5))
    else:
        n_c = binomial_n(slots, pc, uniform(seed, M_COUNT), ctab)
    n_d = 0
    if ph > 0.0:
        if mode != MODE_STOCHASTIC:
            n_d = stochastic_round(slots * h * ph, uniform(seed, M_DIST_UP))
        elif pc < 1.0:
            n_d = binomial(slots - n_c, h * ph / (1.0 - pc), uniform(seed, M_DIST_UP))
    return n_c, n_d


@njit(cache=True, inline="always")
def _outer_row(ii: int, g: np.ndarray, g32: np.ndarray, parf: np.ndarray, p: np.ndarray, q: np.ndarray,
               rows_idx: np.ndarray, cols_idx: np.ndarray, slots: int, mode: int, up: bool, lin: bool,
               tab: np.ndarray, h: float, e_d: float, sigma: float, key: np.uint64, ctab: np.ndarray) -> None:
    cols = g.shape[1]
    i = rows_idx[ii]
    pi = p[i]
    r = 0 if up else 1
    for jj in range(cols_idx.shape[0]):
        j = cols_idx[jj]
        qj = q[j]
        pc = pi * qj
        ph = pi + qj - 2.0 * pc if h > 0.0 else 0.0
        if pc == 0.0 and ph <= 0.0:
            continue
        k = i * cols + j
        seed = device_seed(key, k)
        n_c, n_d = coincidences(pc, ph, slots, mode, h, seed, ctab)
        if n_d == 0:
            neff = tab[r, n_c]
            e = tab[2 + r, n_c]
            sq = tab[4 + r, n_c]
        else:
            neff = tab[r, n_c] + n_d * e_d
            e = np.nan
            sq = np.nan
        if neff > 0.0:
            gn = advance(parf, k, g[i, j], r, lin, neff, e, sq, sigma, seed, M_NOISE1)
            g[i, j] = gn
            g32[i, j] = np.float32(gn)


@njit(cache=True, parallel=True)
def outer_par(g: np.ndarray, g32: np.ndarray, par: np.ndarray, p: np.ndarray, q: np.ndarray, rows_idx: np.ndarray,
              cols_idx: np.ndarray, slots: int, mode: int, up: bool, lin: bool, tab: np.ndarray, h: float,
              e_d: float, sigma: float, key: np.uint64) -> None:
    """One rank-1 pulse phase over the devices rows_idx × cols_idx (rows in parallel).

    Per slot a device sees a coincidence (prob. πc = p·q), a half-select (πh = p + q − 2pq) or nothing.
    Stochastic: n_c ~ Binomial(slots, πc), n_d ~ Binomial(slots − n_c, h·πh/(1 − πc)) (exactly the multinomial
    marginal of disturbs at probability h per half-select slot). Expected: n_c, n_d are the stochastically
    rounded means slots·πc and slots·h·πh. One write of n_eff = tab[↑/↓, n_c] + n_d·e_d effective pulses."""
    ctab = ratio_table(slots)
    parf = flat(par)
    for ii in prange(rows_idx.shape[0]):
        _outer_row(ii, g, g32, parf, p, q, rows_idx, cols_idx, slots, mode, up, lin, tab, h, e_d, sigma, key,
                   ctab)


@njit(cache=True)
def outer_ser(g: np.ndarray, g32: np.ndarray, par: np.ndarray, p: np.ndarray, q: np.ndarray, rows_idx: np.ndarray,
              cols_idx: np.ndarray, slots: int, mode: int, up: bool, lin: bool, tab: np.ndarray, h: float,
              e_d: float, sigma: float, key: np.uint64) -> None:
    """:func:`outer_par` on one thread."""
    ctab = ratio_table(slots)
    parf = flat(par)
    for ii in range(rows_idx.shape[0]):
        _outer_row(ii, g, g32, parf, p, q, rows_idx, cols_idx, slots, mode, up, lin, tab, h, e_d, sigma, key,
                   ctab)
