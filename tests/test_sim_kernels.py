"""The simulator's random-number kernels: exact binomial draws, the ziggurat normal, thread independence."""
from __future__ import annotations

import math

import numba
import numpy as np
import pytest
from numba import njit

from crossbar_ctl.config import config_from_dict
from crossbar_sim import kernels
from crossbar_sim.backend import SimBackend


@njit(cache=False)
def _binomial_draws(n: int, pi: float, count: int, key: np.uint64, use_table: bool) -> np.ndarray:
    out = np.empty(count, dtype=np.int64)
    ctab = kernels.ratio_table(n)
    for k in range(count):
        u = kernels.uniform(kernels.device_seed(key, k), 0)
        out[k] = kernels.binomial_n(n, pi, u, ctab) if use_table else kernels.binomial(n, pi, u)
    return out


@njit(cache=False)
def _normal_draws(count: int, key: np.uint64) -> np.ndarray:
    out = np.empty(count)
    for k in range(count):
        out[k] = kernels.normal(kernels.device_seed(key, k), 3)
    return out


def _pmf(n: int, pi: float) -> np.ndarray:
    return np.array([math.comb(n, k) * pi**k * (1 - pi) ** (n - k) for k in range(n + 1)])


@pytest.mark.parametrize("use_table", [True, False])
@pytest.mark.parametrize("n,pi", [(32, 0.02), (32, 0.3), (32, 0.93), (7, 0.5), (1, 0.4), (300, 0.25), (1000, 0.6)])
def test_binomial_matches_the_pmf(n: int, pi: float, use_table: bool) -> None:
    count = 200_000
    d = _binomial_draws(n, pi, count, np.uint64(1234567 + n), use_table)
    assert d.min() >= 0 and d.max() <= n
    freq = np.bincount(d, minlength=n + 1) / count
    pmf = _pmf(n, pi)
    # every cell within 5 standard errors
    assert np.all(np.abs(freq - pmf) <= 5 * np.sqrt(pmf * (1 - pmf) / count) + 1e-6)
    assert d.mean() == pytest.approx(n * pi, abs=5 * math.sqrt(n * pi * (1 - pi) / count))


def test_binomial_edge_cases() -> None:
    ctab = kernels.ratio_table(10)
    for u in (0.0, 0.5, 0.999999):
        assert kernels.binomial(10, 0.0, u) == 0
        assert kernels.binomial(10, 1.0, u) == 10
        assert kernels.binomial(0, 0.5, u) == 0
        assert kernels.binomial_n(10, 1.0, u, ctab) == 10
        assert kernels.binomial_n(10, 0.0, u, ctab) == 0
    assert kernels.stochastic_round(2.25, 0.2) == 3 and kernels.stochastic_round(2.25, 0.3) == 2


def test_ziggurat_normal_is_standard_normal() -> None:
    count = 1_000_000
    z = _normal_draws(count, np.uint64(99))
    assert abs(z.mean()) < 5 / math.sqrt(count)
    assert z.var() == pytest.approx(1.0, abs=5 * math.sqrt(2 / count))
    assert np.mean(z**4) == pytest.approx(3.0, abs=5 * math.sqrt(96 / count))
    # Kolmogorov–Smirnov distance to Φ (critical value at the 0.1 % level ≈ 1.95/√n)
    zs = np.sort(z[:200_000])
    phi = 0.5 * (1 + np.vectorize(math.erf)(zs / math.sqrt(2)))
    ecdf = np.arange(1, zs.size + 1) / zs.size
    assert np.max(np.abs(ecdf - phi)) < 1.95 / math.sqrt(zs.size)
    # the tail beyond the base layer (|z| > r) is produced at the right rate
    tail = np.mean(np.abs(z) > kernels._ZR)
    p_tail = math.erfc(kernels._ZR / math.sqrt(2))
    assert tail == pytest.approx(p_tail, abs=5 * math.sqrt(p_tail / count))


def test_uniform_in_unit_interval_and_streams_differ() -> None:
    seed = kernels.device_seed(np.uint64(5), 17)
    u = np.array([kernels.uniform(seed, m) for m in range(5000)])
    assert u.min() >= 0.0 and u.max() < 1.0
    assert u.mean() == pytest.approx(0.5, abs=0.02)
    assert kernels.device_seed(np.uint64(5), 17) != kernels.device_seed(np.uint64(5), 18)
    assert kernels.device_seed(np.uint64(5), 17) != kernels.device_seed(np.uint64(6), 17)


def _mixed_run(threads: int) -> np.ndarray:
    old = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        cfg = config_from_dict({"seed": 8, "array": {"tiles": 1, "rows": 300, "cols": 200},
                                "device": {"preset": "agsi", "sigma_d2d_shape": 0.1, "half_select_disturb": 0.01}})
        b = SimBackend(cfg)
        rng = np.random.default_rng(0)
        b.program(0, rng.integers(-20, 21, (300, 200)).astype(np.int32))
        b.outer_pulse(0, rng.random(300), rng.random(200), 1, 32)
        b.outer_pulse(0, rng.random(300), rng.random(200), -1, 32, mode="expected")
        return b.true_conductance(0)
    finally:
        numba.set_num_threads(old)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two Numba threads")
def test_results_do_not_depend_on_the_thread_count() -> None:
    assert np.array_equal(_mixed_run(1), _mixed_run(2))


def test_serial_and_parallel_drivers_agree_bit_for_bit() -> None:
    cfg = config_from_dict({"seed": 3, "array": {"tiles": 1, "rows": 64, "cols": 48},
                            "device": {"preset": "agsi", "sigma_d2d_g_max": 0.1}})
    results = []
    for par in (True, False):
        b = SimBackend(cfg)
        t = b._tiles[0]
        d = t.dev
        rng = np.random.default_rng(1)
        counts = rng.integers(-30, 31, (64, 48)).astype(np.int32)
        tab = t.table(1.0, 0.75, 1000)
        fn = kernels.program_par if par else kernels.program_ser
        fn(t.g, t.g32, counts, d.par, np.array([d.linear_up, d.linear_down]), tab, 0.05, np.uint64(77))
        p, q = rng.random(64), rng.random(48)
        rows, cols = np.flatnonzero(p > 0.3), np.flatnonzero(q > 0.5)
        fn = kernels.outer_par if par else kernels.outer_ser
        fn(t.g, t.g32, d.par, p, q, rows, cols, 32, False, True, False, tab, 0.0, 0.0, 0.05, np.uint64(78))
        results.append(t.g.copy())
        assert np.array_equal(t.g32, t.g.astype(np.float32))
    assert np.array_equal(results[0], results[1])


def test_program_beyond_the_pulse_table_uses_the_same_arithmetic() -> None:
    cfg = config_from_dict({"seed": 1, "array": {"tiles": 1, "rows": 3, "cols": 4}, "device": {"preset": "agsi"}})
    counts = np.array([[5, -7, 0, 9], [3, 2, -1, 8], [0, 0, 6, -9]], dtype=np.int32)
    out = []
    for kmax in (20, 4):
        b = SimBackend(cfg)
        t = b._tiles[0]
        tab = kernels.pulse_table(1.0, 1.0, t.rates[0], t.rates[1], kmax)
        kernels.program_ser(t.g, t.g32, counts, t.dev.par, t.lins, tab, 0.035, np.uint64(5))
        out.append(t.g.copy())
    assert np.array_equal(out[0], out[1])
